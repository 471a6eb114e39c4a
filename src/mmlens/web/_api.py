"""The only place the web page imports mmlens internals from (one place to fix paths after a restructure)."""

from __future__ import annotations

from mmlens.model.batch import Batch
from mmlens.model.images import to_rgb
from mmlens.util.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_PROMPT_CHARS

__all__ = ["Batch", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "MAX_PROMPT_CHARS", "to_rgb"]
