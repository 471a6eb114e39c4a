"""Metric catalog: each metric declares its category, whether higher scores are better, and how it treats a
degenerate map (all zeros, or constant: no pixel preferred).

``degenerate`` is one of :data:`DEGENERATE` plus a sentence in ``degenerate_note``:

- ``"chance"``: the metric is defined and scores what a random tie-break scores (e.g. the mask's area share);
- ``"zero"``: a defined value at the bottom of the scale (sparseness: an even map has Gini 0);
- ``"fixed"``: another defined value, given in the note (randomisation: two constant maps correlate 1);
- ``"nan"``: undefined (e.g. a relative change against an all-zero map); the sample's score is NaN, left out
  of the mean and counted in the benchmark table's NaN column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mmlens.errors import InputError

CATEGORIES = ("localisation", "faithfulness", "randomisation", "robustness", "complexity")
DEGENERATE = ("chance", "zero", "fixed", "nan")


@dataclass(frozen=True)
class MetricInfo:
    name: str
    category: str
    higher_is_better: bool
    needs_model: bool
    summary: str
    fn: Callable
    degenerate: str = "nan"
    degenerate_note: str = ""


_METRICS: dict[str, MetricInfo] = {}


def register_metric(name: str, category: str, higher_is_better: bool, summary: str, needs_model: bool = False,
                    degenerate: str = "nan", degenerate_note: str = "") -> Callable:
    """Decorator adding a metric to the catalog (``degenerate``: its treatment of an all-zero / constant map,
    one of :data:`DEGENERATE`, with ``degenerate_note`` saying what it scores)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown metric category {category!r}; use one of {CATEGORIES}")
    if degenerate not in DEGENERATE:
        raise ValueError(f"unknown degenerate-map treatment {degenerate!r}; use one of {DEGENERATE}")

    def deco(fn: Callable) -> Callable:
        _METRICS[name] = MetricInfo(name, category, higher_is_better, needs_model, summary, fn, degenerate,
                                    degenerate_note)
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
