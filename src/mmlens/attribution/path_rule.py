"""The integration rule of Integrated Gradients: Gauss-Legendre nodes and weights on ``[0, 1]``, the rule Captum's
``IntegratedGradients`` uses by default (``method="gausslegendre"``), from numpy's public ``leggauss`` rather than
Captum's private helpers.

>>> weights, alphas = gauss_legendre(4)
>>> round(sum(weights), 6), all(0 < a < 1 for a in alphas)
(1.0, True)
"""

from __future__ import annotations

import numpy as np


def gauss_legendre(steps: int) -> tuple[list[float], list[float]]:
    """``(weights, alphas)`` of the ``steps``-point Gauss-Legendre rule on ``[0, 1]`` (nodes and weights of
    ``[-1, 1]`` rescaled by one half); ``sum(w * f(a))`` approximates the integral of ``f`` over ``[0, 1]``."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (0.5 * weights).tolist(), (0.5 * (1 + nodes)).tolist()
