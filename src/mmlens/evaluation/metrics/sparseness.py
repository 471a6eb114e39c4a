"""Sparseness (Chalasani et al. 2020): Gini index of the absolute attributions."""

from __future__ import annotations

import numpy as np

from mmlens.evaluation.registry import register_metric


@register_metric("sparseness", "complexity", higher_is_better=True,
                 summary="Gini index of |map|: 0 = spread evenly, 1 = all mass on one pixel",
                 degenerate="zero", degenerate_note="an all-zero or constant map is spread evenly: 0")
def sparseness(heat: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Gini index of ``|heat|`` (the mask is not used).

    >>> sparseness(np.ones((3, 3))), round(sparseness(np.eye(1, 9).reshape(3, 3)), 3)
    (0.0, 0.889)
    """
    x = np.sort(np.abs(np.asarray(heat, dtype=np.float64)).ravel())
    n = x.size
    if x.sum() == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * x.sum()))
