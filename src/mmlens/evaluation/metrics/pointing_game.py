"""Pointing game (Zhang et al. 2016): is the map's peak inside the evidence mask?"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation

from mmlens.evaluation.metrics._maps import check_map_and_mask
from mmlens.evaluation.registry import register_metric


@register_metric("pointing_game", "localisation", higher_is_better=True,
                 summary="share of the map's peak pixels inside the evidence mask (ties split evenly)")
def pointing_game(heat: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> float:
    """1.0 when the maximum lies inside ``mask`` (dilated by ``tolerance`` pixels), 0.0 outside. When several
    pixels tie for the maximum, the score is the share of them inside, so a flat map scores the mask's area
    share (chance) rather than whatever pixel comes first.

    >>> m = np.zeros((4, 4), bool); m[1:3, 1:3] = True
    >>> pointing_game(m.astype(float), m), pointing_game(np.ones((4, 4)), m)
    (1.0, 0.25)
    """
    heat, mask = check_map_and_mask(heat, mask)
    if tolerance > 0:
        mask = binary_dilation(mask, iterations=int(tolerance))
    peaks = heat >= heat.max()
    return float(mask[peaks].mean())
