"""Distorted copies of an image: the "without the evidence" side of visual reliance and contrastive decoding.

``noise`` is VCD's distortion (Leng et al. 2024): the forward diffusion process at step ``NOISE_STEP`` of a
1000-step linear schedule, ``sqrt(a) * x + sqrt(1 - a) * eps`` on pixels scaled to [-1, 1]; ``blur`` is the
project's one default blur (:func:`mmlens.model.images.blurred`); ``remove`` is a uniform grey image of the
same size (the image's content gone, its token layout kept).

>>> from PIL import Image
>>> img = Image.new("RGB", (16, 16), (200, 30, 30))
>>> [distorted(img, kind).size for kind in DISTORTIONS]
[(16, 16), (16, 16), (16, 16)]
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmlens.model.images import blurred
from mmlens.util.options import check_choice

DISTORTIONS = ("noise", "blur", "remove")
#: diffusion step of VCD's noise (their default T = 500 of 1000)
NOISE_STEP = 500


def _alpha_bar(step: int, steps: int = 1000) -> float:
    betas = np.linspace(1e-4, 0.02, steps)
    return float(np.prod(1.0 - betas[:step]))


def distorted(image: Image.Image, kind: str = "noise", seed: int = 0) -> Image.Image:
    """``image`` (RGB) with its visual evidence destroyed by ``kind`` (one of :data:`DISTORTIONS`), same size."""
    check_choice("distortion", kind, DISTORTIONS)
    rgb = image.convert("RGB")
    if kind == "blur":
        return blurred(rgb)
    if kind == "remove":
        return Image.new("RGB", rgb.size, (128, 128, 128))
    x = np.asarray(rgb, dtype=np.float64) / 127.5 - 1.0
    a = _alpha_bar(NOISE_STEP)
    eps = np.random.default_rng(seed).standard_normal(x.shape)
    y = np.sqrt(a) * x + np.sqrt(1.0 - a) * eps
    return Image.fromarray(np.clip((y + 1.0) * 127.5, 0, 255).round().astype(np.uint8))


def distorted_all(images: list[Image.Image], kind: str = "noise", seed: int = 0) -> list[Image.Image]:
    """Every image of a prompt distorted (image ``i`` with noise seed ``seed + i``)."""
    return [distorted(img, kind, seed + i) for i, img in enumerate(images)]
