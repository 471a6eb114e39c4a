"""Pixel-space masks for the perturbation methods: baselines, blending, occlusion windows, RISE masks,
grid-cell features, and pooling pixel maps onto image-token positions.

Masks are ``(H, W)`` float arrays over an image's original pixels, ``1`` = keep the pixel, ``0`` = show
the baseline; :func:`blend` turns (image, baseline, mask) into the perturbed PIL image.

>>> import numpy as np
>>> from PIL import Image
>>> img = Image.new("RGB", (4, 2), (200, 100, 50))
>>> out = blend(image_array(img), baseline_array(img, "black"), np.array([[1, 1, 0, 0]] * 2, float))
>>> np.array(out)[0, :, 0].tolist()
[200, 200, 0, 0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmlens.errors import InputError
from mmlens.model.batch import Batch
from mmlens.model.geometry import ImageGeometry
from mmlens.model.images import blurred

BASELINES = ("mean", "black", "blur")


# -- images ---------------------------------------------------------------------------------------------
def image_array(image: Image.Image) -> np.ndarray:
    """``(H, W, 3)`` float32 RGB array of ``image``."""
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def baseline_array(image: Image.Image, kind: str, blur_radius: float | None = None) -> np.ndarray:
    """What a masked pixel shows: ``"mean"`` (the image's mean colour), ``"black"`` or ``"blur"`` (a Gaussian
    blur of the image, radius ``blur_radius`` or :data:`~mmlens.model.images.BLUR_SHARE` of the longer side).

    >>> baseline_array(Image.new("RGB", (2, 2), (10, 20, 30)), "mean")[0, 0].tolist()
    [10.0, 20.0, 30.0]
    """
    arr = image_array(image)
    if kind == "mean":
        return np.broadcast_to(arr.mean(axis=(0, 1)), arr.shape).astype(np.float32)
    if kind == "black":
        return np.zeros_like(arr)
    if kind == "blur":
        return image_array(blurred(image, blur_radius))
    raise InputError(f"baseline={kind!r} is not supported: pass one of {', '.join(BASELINES)}")


def blend(arr: np.ndarray, base: np.ndarray, keep: np.ndarray) -> Image.Image:
    """The image ``arr * keep + base * (1 - keep)`` (``keep``: ``(H, W)`` in [0, 1]) as an RGB PIL image."""
    k = keep[..., None].astype(np.float32)
    out = arr * k + base * (1.0 - k)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")


# -- occlusion ------------------------------------------------------------------------------------------
def default_patch(size: tuple[int, int], windows: int = 8) -> int:
    """Square patch side (pixels) so that about ``windows x windows`` patches cover an image of ``size``.

    >>> default_patch((336, 336)), default_patch((80, 24))
    (42, 6)
    """
    w, h = size
    return max(1, min(math.ceil(math.sqrt(w * h) / windows), w, h))


def window_starts(length: int, patch: int, stride: int) -> list[int]:
    """Window starts along one side: every ``stride`` pixels, plus one flush with the far edge so that
    every pixel is covered.

    >>> window_starts(10, 4, 4)
    [0, 4, 6]
    """
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] + patch < length:
        starts.append(length - patch)
    return starts


def occlusion_windows(size: tuple[int, int], patch: int, stride: int) -> list[tuple[int, int]]:
    """Top-left ``(x, y)`` corners of the square windows, row-major."""
    w, h = size
    return [(x, y) for y in window_starts(h, patch, stride) for x in window_starts(w, patch, stride)]


def window_keep(size: tuple[int, int], corner: tuple[int, int], patch: int) -> np.ndarray:
    """Keep-mask with one ``patch x patch`` window at ``corner`` set to 0."""
    w, h = size
    keep = np.ones((h, w), dtype=np.float32)
    x, y = corner
    keep[y : y + patch, x : x + patch] = 0.0
    return keep


def window_average(size: tuple[int, int], corners: Sequence[tuple[int, int]], patch: int,
                   scores: np.ndarray) -> np.ndarray:
    """``(T, H, W)`` average of ``scores[:, k]`` over the windows ``k`` covering each pixel."""
    w, h = size
    total = np.zeros((scores.shape[0], h, w), dtype=np.float64)
    count = np.zeros((h, w), dtype=np.float64)
    for k, (x, y) in enumerate(corners):
        total[:, y : y + patch, x : x + patch] += scores[:, k, None, None]
        count[y : y + patch, x : x + patch] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


# -- RISE -----------------------------------------------------------------------------------------------
def rise_grids(n_masks: int, n_images: int, cells: int, p: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Low-resolution binary grids ``(N, n_images, cells, cells)`` (1 with probability ``p``) and random
    shifts in [0, 1) ``(N, n_images, 2)``, from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    grids = (rng.random((n_masks, n_images, cells, cells)) < p).astype(np.float32)
    shifts = rng.random((n_masks, n_images, 2))
    return grids, shifts


def rise_mask(grid: np.ndarray, shift: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RISE mask ``(H, W)`` in [0, 1]: the ``cells x cells`` grid upsampled bilinearly to ``(cells + 1)``
    cells of ``ceil(side / cells)`` pixels, then cropped at a random shift of less than one cell."""
    w, h = size
    cells = grid.shape[0]
    cw, ch = math.ceil(w / cells), math.ceil(h / cells)
    up = F.interpolate(torch.from_numpy(grid)[None, None], size=((cells + 1) * ch, (cells + 1) * cw),
                       mode="bilinear", align_corners=False)[0, 0].numpy()
    dx, dy = int(shift[0] * cw), int(shift[1] * ch)
    return up[dy : dy + h, dx : dx + w]


# -- grid-cell features (KernelSHAP, MM-SHAP) ------------------------------------------------------------
def cell_index_map(size: tuple[int, int], cells: int) -> np.ndarray:
    """``(H, W)`` int map of the ``cells x cells`` grid cell (row-major) holding each pixel.

    >>> cell_index_map((4, 2), 2).tolist()
    [[0, 0, 1, 1], [2, 2, 3, 3]]
    """
    w, h = size
    rows = np.minimum(np.arange(h) * cells // h, cells - 1)
    cols = np.minimum(np.arange(w) * cells // w, cells - 1)
    return rows[:, None] * cells + cols[None, :]


# -- pooling onto token positions -------------------------------------------------------------------------
def pool_to_positions(geometry: ImageGeometry, pixel_map: np.ndarray, out: torch.Tensor) -> None:
    """Write into ``out[pos]`` the mean of ``pixel_map`` over the pixel box of each grid position of
    ``geometry`` (boxes clipped to the image; positions over padding only keep their value)."""
    h, w = pixel_map.shape
    integral = np.zeros((h + 1, w + 1), dtype=np.float64)
    integral[1:, 1:] = pixel_map.astype(np.float64).cumsum(0).cumsum(1)
    for pos, boxes in geometry.position_boxes().items():
        sums, area = 0.0, 0
        for x0, y0, x1, y1 in boxes:
            a0, b0 = min(max(math.floor(x0), 0), w), min(max(math.floor(y0), 0), h)
            a1, b1 = min(max(math.ceil(x1), a0), w), min(max(math.ceil(y1), b0), h)
            sums += integral[b1, a1] - integral[b0, a1] - integral[b1, a0] + integral[b0, a0]
            area += (a1 - a0) * (b1 - b0)
        if area:
            out[pos] = sums / area


def position_scores(batch: Batch, n_targets: int, pixel_maps: list[list[np.ndarray]],
                    words: Sequence[torch.Tensor] = (), word_scores: torch.Tensor | None = None) -> torch.Tensor:
    """``(n_targets, seq_len)`` scores: each image-token position gets the mean of its image's pixel map over
    the token's pixel box (a video token that reads several frames: the mean over those frames); each prompt
    word's token positions get that word's score."""
    out = torch.zeros(n_targets, batch.seq_len)
    for t in range(n_targets):
        count = torch.zeros(batch.seq_len)
        for geom in batch.geometry:
            if geom.space != "sequence":  # cross-attention keys: pooled by the explainer (explain.key_scores)
                continue
            part, cells = torch.zeros(batch.seq_len), geom.grid_positions()
            pool_to_positions(geom, pixel_maps[t][geom.image_index], part)
            out[t, cells] += part[cells]
            count[cells] += 1
        out[t] /= count.clamp_min(1)
        if word_scores is not None:
            for w, positions in enumerate(words):
                out[t, positions] = float(word_scores[t, w])
    return out
