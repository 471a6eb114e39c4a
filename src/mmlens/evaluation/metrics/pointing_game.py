"""Pointing game (Zhang et al. 2016): is the map's peak inside the evidence mask?

Zhang et al. count a hit when the peak lies within 15 pixels (Euclidean) of the object, on PASCAL VOC / COCO
images of about 500 px on the longer side, i.e. 3 % of that side. Here the tolerance is a Euclidean distance
too, given in pixels (``tolerance``) or, scale-aware, as a share of the map's longer side
(``tolerance_share``; ``REFERENCE_TOLERANCE_SHARE`` = 15 / 500 reproduces the reference at any image size).
The default is a strict hit (no tolerance): benchmark masks are exact object masks, not loose annotations.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt

from mmlens.errors import InputError
from mmlens.evaluation.metrics._maps import check_map_and_mask
from mmlens.evaluation.registry import register_metric

#: Zhang et al.'s 15 px at their ~500 px images, as a share of the longer image side.
REFERENCE_TOLERANCE_SHARE = 15 / 500


def tolerance_pixels(shape: tuple[int, ...], tolerance: float = 0, tolerance_share: float | None = None) -> float:
    """The tolerance radius in pixels: ``tolerance_share`` x the longer side of ``shape`` when given, else
    ``tolerance``.

    >>> tolerance_pixels((64, 48), tolerance_share=REFERENCE_TOLERANCE_SHARE), tolerance_pixels((64, 48), 2)
    (1.92, 2)
    """
    if tolerance_share is not None:
        if not (isinstance(tolerance_share, (int, float)) and 0 <= tolerance_share <= 1):
            raise InputError(f"tolerance_share={tolerance_share!r}: pass a share of the longer side in [0, 1]")
        return float(tolerance_share) * max(shape)
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise InputError(f"tolerance={tolerance!r}: pass a distance in pixels >= 0")
    return tolerance


@register_metric("pointing_game", "localisation", higher_is_better=True,
                 summary="share of the map's peak pixels inside the evidence mask (ties split evenly; no "
                         "tolerance by default, Zhang et al. allow 15 px at ~500 px: tolerance_share=0.03)",
                 degenerate="chance", degenerate_note="every pixel ties for the peak: the mask's area share")
def pointing_game(heat: np.ndarray, mask: np.ndarray, tolerance: float = 0,
                  tolerance_share: float | None = None) -> float:
    """1.0 when the maximum lies inside ``mask`` or within a Euclidean distance of ``tolerance`` pixels of it
    (or ``tolerance_share`` x the longer side), 0.0 otherwise. When several pixels tie for the maximum, the
    score is the share of them that hit, so a flat map scores the mask's area share (chance) rather than
    whatever pixel comes first.

    >>> m = np.zeros((4, 4), bool); m[1:3, 1:3] = True
    >>> pointing_game(m.astype(float), m), pointing_game(np.ones((4, 4)), m)
    (1.0, 0.25)
    """
    heat, mask = check_map_and_mask(heat, mask)
    radius = tolerance_pixels(heat.shape, tolerance, tolerance_share)
    if radius > 0:
        mask = distance_transform_edt(~mask) <= radius
    peaks = heat >= heat.max()
    return float(mask[peaks].mean())
