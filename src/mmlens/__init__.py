"""mmlens: explain and interpret multimodal large language models.

>>> import mmlens
>>> lm = mmlens.load("demo")                      # doctest: +SKIP
"""

from mmlens.errors import InputError, MMLensError, UnsupportedModelError

__version__ = "0.1.0"

__all__ = ["InputError", "MMLensError", "UnsupportedModelError", "__version__"]
