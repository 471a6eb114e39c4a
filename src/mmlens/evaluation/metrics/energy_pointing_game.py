"""Energy-based pointing game (Wang et al. 2020, Score-CAM): share of positive attribution inside the mask."""

from __future__ import annotations

import numpy as np

from mmlens.evaluation.metrics._maps import check_map_and_mask
from mmlens.evaluation.registry import register_metric


@register_metric("energy_in_mask", "localisation", higher_is_better=True,
                 summary="share of the map's positive mass that falls inside the evidence mask",
                 degenerate="chance", degenerate_note="no positive mass, or the same mass everywhere: the mask's area share")
def energy_in_mask(heat: np.ndarray, mask: np.ndarray) -> float:
    """``sum(max(heat, 0) * mask) / sum(max(heat, 0))``; a flat map scores the mask's area share.

    >>> m = np.zeros((4, 4), bool); m[:2] = True
    >>> energy_in_mask(m.astype(float), m), energy_in_mask(np.ones((4, 4)), m)
    (1.0, 0.5)
    """
    heat, mask = check_map_and_mask(heat, mask)
    pos = np.clip(heat, 0, None)
    total = pos.sum()
    if total <= 0:
        return float(mask.mean())  # no positive evidence anywhere: chance
    return float(pos[mask].sum() / total)
