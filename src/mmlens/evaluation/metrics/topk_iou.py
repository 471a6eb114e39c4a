"""IoU of the map's top region with the evidence mask."""

from __future__ import annotations

import numpy as np

from mmlens.errors import InputError
from mmlens.evaluation.metrics._maps import check_map_and_mask
from mmlens.evaluation.registry import register_metric


@register_metric("topk_iou", "localisation", higher_is_better=True,
                 summary="IoU between the top-k% pixels of the map and the mask (k = mask area by default)",
                 degenerate="chance", degenerate_note="ties broken in a seeded random order: the IoU of a random pixel set")
def topk_iou(heat: np.ndarray, mask: np.ndarray, k: float | None = None, seed: int = 0) -> float:
    """IoU of the ``k`` share of highest-scored pixels with ``mask`` (``k`` defaults to the mask's area share,
    so a map equal to the mask scores 1). Pixels tied at the cut are taken in a random order drawn from
    ``default_rng(seed)``, not in reading order (which would favour masks near the top of the image).

    >>> m = np.zeros((4, 4), bool); m[0] = True
    >>> topk_iou(m.astype(float), m)
    1.0
    """
    heat, mask = check_map_and_mask(heat, mask)
    share = float(mask.mean()) if k is None else float(k)
    if not 0 < share <= 1:
        raise InputError(f"k={k}: pass a share of pixels in (0, 1]")
    n = max(1, round(share * heat.size))
    tie_break = np.random.default_rng(seed).random(heat.size)
    order = np.lexsort((tie_break, -heat.ravel()))
    top = np.zeros(heat.size, bool)
    top[order[:n]] = True
    top = top.reshape(heat.shape)
    return float((top & mask).sum() / (top | mask).sum())
