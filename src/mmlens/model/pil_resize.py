"""Pillow's ``Image.resize`` re-implemented in torch: bit-exact forward, differentiable backward.

Hugging Face's PIL image processors resize 8-bit images with Pillow, which resamples in two separable passes
(horizontal then vertical, or the reverse: recent Pillow picks the order by size, so :func:`pass_order` asks the
installed Pillow once per shape), each a convolution with the filter stretched by the scale factor when shrinking
(antialiasing), with coefficients rounded to 22-bit fixed point and every pass's output rounded to uint8.
:func:`resize` reproduces that: the forward value equals Pillow's output exactly (``exact=True``) and the
backward is the gradient of the same passes in floating point (a straight-through estimator for the rounding:
round in the forward, identity in the backward). ``exact=False`` gives the float resize (each pass clipped to
0..255 as Pillow clips it, no rounding).

>>> import numpy as np, torch
>>> from PIL import Image
>>> img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
>>> ours = resize(torch.tensor(img, dtype=torch.float64).permute(2, 0, 1), (9, 13), "bicubic")
>>> want = np.asarray(Image.fromarray(img).resize((13, 9), Image.Resampling.BICUBIC))
>>> bool((ours.permute(1, 2, 0).numpy() == want).all())
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from mmlens.errors import InputError

PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c


def _bicubic(x: float) -> float:
    a, x = -0.5, abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x *= math.pi
    return math.sin(x) / x


def _hamming(x: float) -> float:
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x *= math.pi
    return math.sin(x) / x * (0.54 + 0.46 * math.cos(x))


#: Pillow's resampling filters: name -> (support, filter); keys are also Pillow's ``Resampling`` numbers
FILTERS: dict[str, tuple[float, Callable[[float], float]]] = {
    "box": (0.5, lambda x: 1.0 if -0.5 < x <= 0.5 else 0.0),
    "bilinear": (1.0, lambda x: max(0.0, 1.0 - abs(x))),
    "hamming": (1.0, _hamming),
    "bicubic": (2.0, _bicubic),
    "lanczos": (3.0, lambda x: _sinc(x) * _sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0),
}
_PIL_CODES = {1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def filter_name(resample: object) -> str:
    """Pillow resample code / enum / name -> a key of :data:`FILTERS` (one-line InputError for nearest)."""
    code = getattr(resample, "value", resample)
    name = _PIL_CODES.get(code, code) if isinstance(code, int) else str(code).lower()
    if name not in FILTERS:
        raise InputError(f"resample={resample!r} is not reproduced by the differentiable resize (a nearest-neighbour "
                         "resize has no useful gradient): use a token-level method for this processor")
    return name


@lru_cache(maxsize=256)
def coefficients(in_size: int, out_size: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights, fixed)``: the ``(out_size, in_size)`` float64 resampling matrix of Pillow's
    ``precompute_coeffs`` and its 22-bit fixed-point rounding (``normalize_coeffs_8bpc``)."""
    support, fn = FILTERS[name]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        row = [fn((x + xmin - center + 0.5) / filterscale) for x in range(xmax - xmin)]
        total = sum(row)
        if total != 0.0:
            row = [w / total for w in row]
        weights[xx, xmin:xmax] = torch.tensor(row, dtype=torch.float64)
    unit = float(1 << PRECISION_BITS)
    fixed = torch.where(weights < 0, torch.trunc(-0.5 + weights * unit), torch.trunc(0.5 + weights * unit))
    return weights, fixed


def _pass(x: torch.Tensor, out_size: int, name: str, exact: bool, dim: int) -> torch.Tensor:
    """One resampling pass of ``x`` along ``dim`` (-1: width, -2: height)."""
    in_size = x.shape[dim]
    if in_size == out_size:  # Pillow skips a pass whose size does not change
        return x
    weights, fixed = coefficients(in_size, out_size, name)
    xt = x.transpose(dim, -1)
    smooth = (xt @ weights.to(x.device, x.dtype).T).clamp(0, 255)  # Pillow clips each pass to 0..255
    if exact:
        with torch.no_grad():
            acc = xt.detach().round().double() @ fixed.to(x.device).T + float(1 << (PRECISION_BITS - 1))
            exact_value = torch.floor(acc / float(1 << PRECISION_BITS)).clamp(0, 255).to(x.dtype)
        smooth = smooth + (exact_value - smooth).detach()
    return smooth.transpose(dim, -1)


def round_uint8(x: torch.Tensor) -> torch.Tensor:
    """``x`` clamped to 0..255 and rounded in the forward, the identity in the backward (straight-through)."""
    return x + (x.detach().clamp(0, 255).round() - x.detach())


def _passes(x: torch.Tensor, size: tuple[int, int], name: str, exact: bool, order: str) -> torch.Tensor:
    for axis in order:
        x = _pass(x, size[0], name, exact, -2) if axis == "v" else _pass(x, size[1], name, exact, -1)
    return x


@lru_cache(maxsize=1024)
def pass_order(in_size: tuple[int, int], out_size: tuple[int, int], name: str) -> str:
    """``"hv"`` (horizontal pass first) or ``"vh"``: the order the installed Pillow uses for this resize of a
    ``(height, width)`` image, found by resizing a seeded noise image with Pillow once (the rounding between
    the passes makes the two orders differ). RuntimeError if neither order reproduces Pillow."""
    (h, w), (oh, ow) = in_size, out_size
    if h == oh or w == ow:
        return "hv"  # one pass: the order does not matter
    from PIL import Image

    probe = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    code = {v: k for k, v in _PIL_CODES.items()}[name]
    want = torch.as_tensor(np.array(Image.fromarray(probe.numpy()).resize((ow, oh), code))).permute(2, 0, 1)
    x = probe.permute(2, 0, 1).double()
    for order in ("hv", "vh"):
        if torch.equal(_passes(x, out_size, name, True, order), want.double()):
            return order
    raise RuntimeError(f"the differentiable resize does not reproduce this Pillow's {name} resize of {w}x{h} -> "
                       f"{ow}x{oh}")


def resize(x: torch.Tensor, size: tuple[int, int], resample: object = "bicubic", exact: bool = True) -> torch.Tensor:
    """Resize ``x`` (``(..., H, W)`` floats on the 0..255 scale) to ``size = (height, width)`` as Pillow resizes
    an 8-bit image (two passes, in :func:`pass_order`). ``exact=True``: the input is rounded to 8 bits and so
    is each pass (the forward equals Pillow's output); the backward is that of the float passes either way."""
    name = filter_name(resample)
    size = (int(size[0]), int(size[1]))
    order = pass_order((int(x.shape[-2]), int(x.shape[-1])), size, name)
    if exact:
        x = round_uint8(x)
    return _passes(x, size, name, exact, order)
