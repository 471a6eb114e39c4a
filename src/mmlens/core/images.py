"""Reading user images: paths, PIL images or arrays -> RGB PIL images, with conversions recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmlens.errors import InputError

ImageLike = Union[str, Path, Image.Image, np.ndarray]


def to_rgb(image: ImageLike, name: str = "image") -> tuple[Image.Image, str | None]:
    """Return ``(rgb_image, conversion_note)``; note is None when the input was already RGB.

    Alpha is composited on white; palette, greyscale, 16-bit and CMYK images are converted.

    >>> img, note = to_rgb(Image.new("RGBA", (4, 4)))
    >>> img.mode, note
    ('RGB', 'converted RGBA -> RGB (alpha composited on white)')
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"{name} file {str(path)!r} not found: pass an existing image path or a PIL image")
        try:
            with Image.open(path) as opened:
                opened.load()
                pil = opened.copy()
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"{name} file {str(path)!r} is not a readable image ({err.__class__.__name__}): "
                             "pass a PNG/JPEG/... file") from None
    elif isinstance(image, np.ndarray):
        pil = _from_array(image, name)
    elif isinstance(image, Image.Image):
        pil = image
    else:
        raise InputError(f"{name} has type {type(image).__name__}: pass a file path, a PIL image or an HxWx3 uint8 array")
    if pil.width < 1 or pil.height < 1:
        raise InputError(f"{name} is empty ({pil.width}x{pil.height}): pass an image with pixels")
    return _convert(pil)


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4)):
        if arr.dtype != np.uint8:
            hi = float(arr.max()) if arr.size else 1.0
            arr = np.clip(arr / (hi if hi > 1 else 1.0) * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    raise InputError(f"{name} array has shape {arr.shape}: pass HxW, HxWx3 or HxWx4")


def _convert(pil: Image.Image) -> tuple[Image.Image, str | None]:
    mode = pil.mode
    if mode == "RGB":
        return pil, None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in pil.info):
        rgba = pil.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), f"converted {mode} -> RGB (alpha composited on white)"
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(pil, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = ((arr - lo) / (hi - lo) * 255.0) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB"), f"converted {mode} -> RGB (rescaled to 8-bit)"
    try:
        return pil.convert("RGB"), f"converted {mode} -> RGB"
    except (ValueError, OSError) as err:
        raise InputError(f"image mode {mode!r} cannot be converted to RGB ({err}): save it as an RGB PNG") from None
