"""Measured faithfulness: metrics (one file each, with category and score direction) and the benchmark."""

from mmlens.evaluation.registry import MetricInfo, get_metric, metrics, register_metric

__all__ = ["MetricInfo", "get_metric", "metrics", "register_metric"]
