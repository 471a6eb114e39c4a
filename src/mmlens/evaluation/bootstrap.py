"""95% bootstrap confidence intervals over samples, streamed (Poisson bootstrap).

Each sample ``i`` gets ``n_boot`` seeded Poisson(1) weights (drawn from ``default_rng([seed, i, 'boot'])``, so the
weights depend on the sample, not on the order in which an engine delivers the samples); replicate ``b``'s mean
is ``sum_i w_ib x_i / sum_i w_ib``. The interval is the percentile interval of the replicate means. A Poisson(1)
weight is the large-n limit of how often the multinomial bootstrap draws one sample (Hanley & MacGibbon 2006;
Chamandy et al. 2012), and it needs no second pass and no per-sample storage: memory is ``2 * n_boot`` floats
per score, whatever ``n``. The same weights are used for every method and metric of a sample (a paired
bootstrap: a resampled set of samples is the same set for every row of the table).

>>> acc = BootstrapMean()
>>> for i, x in enumerate([0.2, 0.4, 0.6, 0.8]):
...     acc.add(x, sample_weights(seed=0, index=i))
>>> lo, hi = acc.interval()
>>> bool(0.2 <= lo < 0.5 < hi <= 0.8)
True
>>> bootstrap_ci([0.2, 0.4, 0.6, 0.8], seed=0) == (lo, hi)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

N_BOOT = 1000
LEVEL = 0.95
_STREAM = 0xB007  # keeps the bootstrap's random stream apart from the samples' own seeds


def sample_weights(seed: int, index: int, n_boot: int = N_BOOT) -> np.ndarray:
    """The ``n_boot`` Poisson(1) bootstrap weights of sample ``index`` (float64)."""
    return np.random.default_rng([int(seed), int(index), _STREAM]).poisson(1.0, int(n_boot)).astype(np.float64)


class BootstrapMean:
    """Streaming Poisson-bootstrap replicates of a mean (NaN values skipped)."""

    def __init__(self, n_boot: int = N_BOOT) -> None:
        self.sums = np.zeros(int(n_boot))
        self.weights = np.zeros(int(n_boot))

    def add(self, value: float, weights: np.ndarray) -> None:
        value = float(value)
        if math.isnan(value):
            return
        self.sums += weights * value
        self.weights += weights

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        """Percentile interval of the replicate means (NaN, NaN without data)."""
        ok = self.weights > 0
        if not ok.any():
            return float("nan"), float("nan")
        means = self.sums[ok] / self.weights[ok]
        tail = 50.0 * (1.0 - float(level))
        lo, hi = np.percentile(means, [tail, 100.0 - tail])
        return float(lo), float(hi)


def bootstrap_ci(values: Sequence[float], seed: int = 0, indices: Sequence[int] | None = None,
                 n_boot: int = N_BOOT, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` bootstrap interval of the mean of ``values`` (``values[j]`` belongs to sample
    ``indices[j]``, default ``j``); the same numbers as the benchmark's streamed intervals.

    >>> bootstrap_ci([1.0, 1.0, 1.0])
    (1.0, 1.0)
    """
    acc = BootstrapMean(n_boot)
    for j, value in enumerate(values):
        acc.add(value, sample_weights(seed, j if indices is None else indices[j], n_boot))
    return acc.interval(level)
