"""Metric catalog: each metric declares its category and whether higher scores are better."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mmlens.errors import InputError

CATEGORIES = ("localisation", "faithfulness", "randomisation", "robustness", "complexity")


@dataclass(frozen=True)
class MetricInfo:
    name: str
    category: str
    higher_is_better: bool
    needs_model: bool
    summary: str
    fn: Callable


_METRICS: dict[str, MetricInfo] = {}


def register_metric(name: str, category: str, higher_is_better: bool, summary: str, needs_model: bool = False) -> Callable:
    """Decorator adding a metric to the catalog."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown metric category {category!r}; use one of {CATEGORIES}")

    def deco(fn: Callable) -> Callable:
        _METRICS[name] = MetricInfo(name, category, higher_is_better, needs_model, summary, fn)
        return fn

    return deco


def metrics() -> list[MetricInfo]:
    _load()
    return sorted(_METRICS.values(), key=lambda m: (CATEGORIES.index(m.category), m.name))


def get_metric(name: str) -> MetricInfo:
    _load()
    if name not in _METRICS:
        raise InputError(f"unknown metric {name!r}: choose one of {', '.join(sorted(_METRICS))}")
    return _METRICS[name]


def _load() -> None:
    import mmlens.evaluation.metrics  # noqa: F401  (registers the built-in metrics)
