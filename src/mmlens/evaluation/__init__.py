"""Measured faithfulness: metrics (one file each, with category and score direction) and the benchmark.

The catalog is ``mmlens.evaluation.registry.metrics()``; ``mmlens.evaluation.metrics`` is the package of
metric modules.
"""

from mmlens.evaluation.registry import MetricInfo, get_metric, register_metric

__all__ = ["MetricInfo", "get_metric", "register_metric"]
