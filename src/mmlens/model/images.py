"""Reading user images: paths, PIL images or arrays -> RGB PIL images, with conversions recorded."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmlens.errors import InputError
from mmlens.util import limits

ImageLike = Union[str, Path, Image.Image, np.ndarray]


def to_rgb(image: ImageLike, name: str = "image") -> tuple[Image.Image, str | None]:
    """Return ``(rgb_image, conversion_note)``; note is None when the input was already RGB.

    Alpha is composited on white; palette, greyscale, 16-bit and CMYK images are converted.

    >>> img, note = to_rgb(Image.new("RGBA", (4, 4)))
    >>> img.mode, note
    ('RGB', 'converted RGBA -> RGB (alpha composited on white)')
    """
    notes = []
    if isinstance(image, (str, Path)):
        pil, note = _open(image, name)
        notes += [note] if note else []
    elif isinstance(image, np.ndarray):
        _check_pixels(int(np.prod(image.shape[:2])) if image.ndim >= 2 else 0, name,
                      f"{image.shape[1]}x{image.shape[0]}" if image.ndim >= 2 else str(image.shape))
        pil = _from_array(image, name)
    elif isinstance(image, Image.Image):
        _check_pixels(image.width * image.height, name, f"{image.width}x{image.height}")  # before decoding
        try:
            image.load()
        except (ValueError, OSError) as err:
            raise InputError(f"{name} is a closed or unreadable PIL image ({err}): pass it before closing it, "
                             "or pass image.copy()") from None
        pil = image
    else:
        raise InputError(f"{name} has type {type(image).__name__}: pass a file path, a PIL image or an HxWx3 uint8 array")
    if pil.width < 1 or pil.height < 1:
        raise InputError(f"{name} is empty ({pil.width}x{pil.height}): pass an image with pixels")
    _check_pixels(pil.width * pil.height, name, f"{pil.width}x{pil.height}")
    pil, note = _downscale(pil)
    notes += [note] if note else []
    rgb, note = _convert(pil)
    notes += [note] if note else []
    return rgb, "; ".join(notes) or None


def _open(image: str | Path, name: str) -> tuple[Image.Image, str | None]:
    """Decode an image file after checking its size on disk and its declared pixel count."""
    text = str(image)
    if not text.strip():
        raise InputError(f"{name} path is empty: pass an image file")
    if text.lower().startswith(("http://", "https://", "ftp://")):
        raise InputError(f"{name} {text!r} is a URL, and URLs are not fetched: download the image first and pass its path")
    path = Path(image).expanduser()
    if path.is_dir():
        raise InputError(f"{name} {text!r} is a directory: pass an image file inside it")
    if not path.is_file():
        raise InputError(f"{name} file {text!r} not found: pass an existing image path or a PIL image")
    size = path.stat().st_size
    if size > limits.MAX_IMAGE_BYTES:
        raise InputError(f"{name} file {text!r} has {size:,} bytes, over the {limits.MAX_IMAGE_BYTES:,}-byte limit: "
                         "pass a smaller image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:  # reads the header only: the declared size is known before decoding
                _check_pixels(opened.width * opened.height, f"{name} file {text!r}", f"{opened.width}x{opened.height}")
                frames = int(getattr(opened, "n_frames", 1) or 1)
                if opened.width * opened.height > limits.SOFT_IMAGE_PIXELS and opened.format == "JPEG":
                    opened.draft("RGB", _fit(opened.width, opened.height))  # decode at a reduced scale
                opened.load()
                pil = opened.copy()
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"{name} file {text!r} declares over {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels (a "
                         f"decompression bomb?): pass an image of at most {limits.MAX_IMAGE_PIXELS:,} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise InputError(f"{name} file {text!r} is not a readable image ({err.__class__.__name__}): "
                         "pass a PNG/JPEG/... file") from None
    return pil, (f"used the first of {frames} frames" if frames > 1 else None)


def _check_pixels(pixels: int, name: str, size: str) -> None:
    if pixels > limits.MAX_IMAGE_PIXELS:
        raise InputError(f"{name} is {size} ({pixels:,} pixels), over the {limits.MAX_IMAGE_PIXELS:,}-pixel limit: "
                         "pass a smaller image")


def _fit(width: int, height: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio and at most ``SOFT_IMAGE_PIXELS`` pixels."""
    scale = (limits.SOFT_IMAGE_PIXELS / (width * height)) ** 0.5
    return max(1, int(width * scale)), max(1, int(height * scale))


def _downscale(pil: Image.Image) -> tuple[Image.Image, str | None]:
    if pil.width * pil.height <= limits.SOFT_IMAGE_PIXELS:
        return pil, None
    size = _fit(pil.width, pil.height)
    return (pil.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0),
            f"downscaled {pil.width}x{pil.height} -> {size[0]}x{size[1]} (over {limits.SOFT_IMAGE_PIXELS:,} pixels)")


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


#: The one default blur of every blurred baseline (perturbation masks, IG / SmoothGrad baselines, deletion /
#: insertion): a Gaussian of radius 1/16 of the image's longer side.
BLUR_SHARE = 1 / 16


def blurred(image: Image.Image, radius: float | None = None) -> Image.Image:
    """``image`` (RGB) blurred by a Gaussian of ``radius`` px (default ``BLUR_SHARE`` of the longer side).

    >>> blurred(Image.new("RGB", (32, 16))).size
    (32, 16)
    """
    from PIL import ImageFilter

    radius = radius if radius is not None else max(image.size) * BLUR_SHARE
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius))
