"""mmlens: explain and interpret multimodal large language models.

>>> import mmlens
>>> lm = mmlens.load("demo")                       # doctest: +SKIP
>>> lm.generate("cat.png", "what color is the cat?").text   # doctest: +SKIP
"""

from mmlens.core.batch import AnswerScore, Batch, Generation
from mmlens.core.geometry import ImageGeometry, ImageGrid
from mmlens.core.loading import load
from mmlens.core.results import Explanation
from mmlens.core.subject import Subject
from mmlens.core.tracing import Tracer, count_hooks
from mmlens.errors import InputError, MMLensError, UnsupportedModelError
from mmlens.core.registry import methods
from mmlens.explain import explain

__version__ = "0.1.0"

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
    "load",
    "methods",
    "serve",
]


def __getattr__(name: str):  # noqa: ANN202 - lazy: `import mmlens` does not import Gradio
    if name == "serve":
        from mmlens.web import serve

        return serve
    raise AttributeError(f"module 'mmlens' has no attribute {name!r}")
