"""mmlens: explain and interpret multimodal large language models.

>>> import mmlens
>>> lm = mmlens.load("demo")                       # doctest: +SKIP
>>> lm.generate("cat.png", "what color is the cat?").text   # doctest: +SKIP
"""

import mmlens.attribution
import mmlens.layer
import mmlens.neuron
import mmlens.token  # noqa: F401
from mmlens._version import __version__
from mmlens.catalog import methods
from mmlens.errors import InputError, MMLensError, UnsupportedModelError
from mmlens.explain import explain
from mmlens.hooks.tracing import Tracer, count_hooks
from mmlens.model.batch import AnswerScore, Batch, Generation
from mmlens.model.geometry import ImageGeometry, ImageGrid
from mmlens.model.loading import load
from mmlens.model.subject import Subject
from mmlens.results.explanation import Explanation
from mmlens.runs.engine import run_dataset
from mmlens.runs.explain_job import explain_dataset, load_explanation

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
    "__version__",
    "count_hooks",
    "explain",
    "explain_dataset",
    "load",
    "load_explanation",
    "methods",
    "run_dataset",
    "serve",
]


def __getattr__(name: str):
    if name == "serve":
        from mmlens.web import serve

        return serve
    raise AttributeError(f"module 'mmlens' has no attribute {name!r}")
