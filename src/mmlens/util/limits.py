"""Every input limit in one place (documented in the README's "Limits" section).

Images: a file over :data:`MAX_IMAGE_BYTES`, or an image (file, PIL image or array) that declares more than
:data:`MAX_IMAGE_PIXELS` pixels, is refused before its pixels are decoded (decompression bombs); an image over
:data:`SOFT_IMAGE_PIXELS` is downscaled (aspect kept) to at most that many pixels, with a conversion note. Animated
images: the first frame is used (with a note). Videos (:class:`mmlens.Video`): 1 to :data:`MAX_VIDEO_FRAMES` frames
of one size, each checked as an image, at most :data:`MAX_VIDEO_PIXELS` pixels over all frames (an animated file's
declared size is checked before decoding). Prompts: at most :data:`MAX_PROMPT_CHARS` characters, and the prompt +
answer tokens must fit the model's context length. Option values: :data:`OPTION_RANGES`.
"""

from __future__ import annotations

from typing import Any

from mmlens.util.options import check_int

MAX_IMAGE_BYTES = 256 * 2**20          # 256 MiB on disk
MAX_IMAGE_PIXELS = 100_000_000         # refused above this (e.g. 10000 x 10000)
SOFT_IMAGE_PIXELS = 4096 * 4096        # downscaled above this (no model reads more; maps stay small)
MAX_PROMPT_CHARS = 100_000             # checked before tokenising
MAX_SAMPLES = 1_000_000                # benchmark --n
MAX_VIDEO_FRAMES = 256                 # frames of one video (each frame costs a vision-tower pass)
MAX_VIDEO_PIXELS = 300_000_000         # frames x width x height of a video (an animated file's: before decoding)

#: Inclusive integer ranges of method options that size the work (memory or time grows with them).
OPTION_RANGES: dict[str, tuple[int, int]] = {
    "steps": (1, 1024),
    "nt_samples": (1, 1024),
    "n_samples": (1, 20_000),
    "n_masks": (1, 20_000),
    "n_segments": (1, 10_000),
    "internal_batch_size": (1, 1024),
    "batch_size": (1, 1024),
    "max_new_tokens": (1, 4096),
    "n": (1, MAX_SAMPLES),
}


def check_option_ranges(options: dict[str, Any], where: str = "") -> None:
    """One-line :class:`~mmlens.errors.InputError` for a sizing option that is not an integer in its range."""
    for name, value in options.items():
        if name in OPTION_RANGES and value is not None:
            low, high = OPTION_RANGES[name]
            check_int(name, value, low, high, why=where)


def context_length(model: Any) -> int | None:
    """The number of positions the model's language part reads (None when its config does not say)."""
    config = getattr(model, "config", None)
    for cfg in (getattr(config, "text_config", None), config):
        value = getattr(cfg, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    return None
