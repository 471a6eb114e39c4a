"""mmlens: explain and interpret multimodal large language models.

>>> import mmlens
>>> lm = mmlens.load("demo")                       # doctest: +SKIP
>>> lm.generate("cat.png", "what color is the cat?").text   # doctest: +SKIP
"""

import mmlens.attribution  # noqa: F401  (the method packages register themselves in the catalog)
import mmlens.embedding  # noqa: F401
import mmlens.layer  # noqa: F401
import mmlens.neuron  # noqa: F401
import mmlens.token  # noqa: F401
from mmlens._version import __version__
from mmlens.catalog import methods
from mmlens.embedding import decompose as decompose_embedding
from mmlens.embedding import modality_gap, splice, text_spans, train_cbm
from mmlens.errors import InputError, MMLensError, UnsupportedModelError
from mmlens.explain import explain
from mmlens.hooks.tracing import Tracer, count_hooks
from mmlens.model.batch import AnswerScore, Batch, Generation
from mmlens.model.geometry import ImageGeometry, ImageGrid
from mmlens.model.loading import load
from mmlens.model.subject import Subject
from mmlens.model.zero_shot import ZeroShot, zero_shot
from mmlens.results.explanation import Explanation

__all__ = [
    "AnswerScore",
    "Batch",
    "Explanation",
    "Generation",
    "ImageGeometry",
    "ImageGrid",
    "InputError",
    "MMLensError",
    "Subject",
    "Tracer",
    "UnsupportedModelError",
    "ZeroShot",
    "__version__",
    "count_hooks",
    "decompose_embedding",
    "explain",
    "load",
    "methods",
    "modality_gap",
    "serve",
    "splice",
    "text_spans",
    "train_cbm",
    "zero_shot",
]


def __getattr__(name: str):  # noqa: ANN202 - lazy: `import mmlens` does not import Gradio
    if name == "serve":
        from mmlens.web import serve

        return serve
    raise AttributeError(f"module 'mmlens' has no attribute {name!r}")
