"""mmlens: explain and interpret multimodal large language models.

>>> import mmlens
>>> lm = mmlens.load("demo")                       # doctest: +SKIP
>>> lm.generate("cat.png", "what color is the cat?").text   # doctest: +SKIP
"""

import mmlens.attribution  # noqa: F401  (the method packages register themselves in the catalog)
import mmlens.embedding  # noqa: F401
import mmlens.inference  # noqa: F401
import mmlens.layer  # noqa: F401
import mmlens.neuron  # noqa: F401
import mmlens.probing  # noqa: F401
import mmlens.token  # noqa: F401
import mmlens.training  # noqa: F401
from mmlens._version import __version__
from mmlens.catalog import methods
from mmlens.embedding import decompose as decompose_embedding
from mmlens.embedding import modality_gap, splice, text_spans, train_cbm
from mmlens.errors import InputError, MMLensError, UnsupportedModelError
from mmlens.evaluation.bootstrap import bootstrap_ci
from mmlens.evaluation.planted import run_planted
from mmlens.evaluation.pope import run_pope
from mmlens.explain import explain
from mmlens.hooks.tracing import Tracer, count_hooks
from mmlens.inference.decoding import PAI, VCD, DecodedGeneration, Steering, generate_with
from mmlens.inference.result import GroundingResult
from mmlens.inference.signals import generate_explained
from mmlens.inference.steering import SteeringVector, steering_vector
from mmlens.inference.tuned_lens import TunedLens, lens_kl, train_tuned_lens
from mmlens.model.batch import AnswerScore, Batch, Generation
from mmlens.model.geometry import ImageGeometry, ImageGrid
from mmlens.model.loading import load
from mmlens.model.pixels import PixelPipeline, check_pixels
from mmlens.model.subject import Subject
from mmlens.model.tower_geometry import TowerGeometry, tower_geometry
from mmlens.model.video import Video
from mmlens.model.zero_shot import ZeroShot, zero_shot
from mmlens.neuron.sae import SparseAutoencoder, ce_recovered, generate_with_feature, load_sae, save_sae, train_sae
from mmlens.results.explanation import Explanation
from mmlens.runs.activation_reader import ActivationReader
from mmlens.runs.activations import collect_activations
from mmlens.runs.checkpoint_probe import probe_checkpoints
from mmlens.runs.engine import run_dataset
from mmlens.runs.stats_run import run_ce_recovered, run_head_stats, run_neuron_stats, run_pruning_curve, run_stat
from mmlens.training import TracInResult, tracin, training_samples
from mmlens.runs.explain_job import explain_dataset, load_explanation

__all__ = [
    "ActivationReader",
    "AnswerScore",
    "Batch",
    "DecodedGeneration",
    "Explanation",
    "Generation",
    "GroundingResult",
    "ImageGeometry",
    "ImageGrid",
    "InputError",
    "MMLensError",
    "PAI",
    "PixelPipeline",
    "Steering",
    "SteeringVector",
    "SparseAutoencoder",
    "Subject",
    "Video",
    "TowerGeometry",
    "TracInResult",
    "Tracer",
    "TunedLens",
    "UnsupportedModelError",
    "VCD",
    "ZeroShot",
    "__version__",
    "collect_activations",
    "ce_recovered",
    "check_pixels",
    "bootstrap_ci",
    "count_hooks",
    "decompose_embedding",
    "explain",
    "generate_explained",
    "generate_with",
    "generate_with_feature",
    "lens_kl",
    "explain_dataset",
    "load",
    "load_explanation",
    "load_sae",
    "probe_checkpoints",
    "methods",
    "modality_gap",
    "run_planted",
    "run_pope",
    "run_dataset",
    "run_ce_recovered",
    "run_head_stats",
    "run_neuron_stats",
    "run_pruning_curve",
    "run_stat",
    "save_sae",
    "serve",
    "splice",
    "text_spans",
    "tower_geometry",
    "train_cbm",
    "train_sae",
    "steering_vector",
    "train_tuned_lens",
    "tracin",
    "training_samples",
    "zero_shot",
]


def __getattr__(name: str):
    if name == "serve":
        from mmlens.web import serve

        return serve
    raise AttributeError(f"module 'mmlens' has no attribute {name!r}")
