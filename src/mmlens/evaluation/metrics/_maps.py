"""Checks shared by the map metrics."""

from __future__ import annotations

import numpy as np

from mmlens.errors import InputError


def check_map_and_mask(heat: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heat = np.asarray(heat, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if heat.shape != mask.shape:
        raise InputError(f"map shape {heat.shape} differs from mask shape {mask.shape}: pass a map over the mask's pixels")
    if not mask.any():
        raise InputError("the evidence mask is empty: pass a mask with at least one True pixel")
    if not np.isfinite(heat).all():
        raise InputError("the map holds NaN or infinite values")
    return heat, mask


def image_and_map(ex, image, target, heat) -> tuple[int, object, np.ndarray]:
    """(index, RGB image, map over its pixels) of ``ex``'s ``image``: ``heat`` if given, else the explanation's map
    for ``target``; a map of another shape is a one-line InputError."""
    index = ex._image(image)
    original = ex.images[index].convert("RGB")
    heat = ex.image_map(target, index) if heat is None else np.asarray(heat)
    if heat.shape != (original.height, original.width):
        raise InputError(f"map shape {heat.shape} differs from the image's (H, W) = "
                         f"{(original.height, original.width)}: pass a map over the image's pixels")
    return index, original, heat
