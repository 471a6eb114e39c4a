"""Probes on one hook point's activations over seeded splits by image: the task probe (regularisation chosen on
validation), the same probe settings on the control task, test accuracies per seed, and the linear weights.

>>> rng = np.random.default_rng(0); idx = np.repeat(np.arange(30), 2); y = np.where(idx % 2, "a", "b")
>>> x = rng.normal(size=(60, 5)) + (y == "a")[:, None] * 3
>>> rows, weights, classes = probe_point(x, y, idx, y, kinds=("logistic",), seeds=(0, 1))
>>> rows[0]["accuracy"], len(weights) > 0
([1.0, 1.0], True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mmlens.probing.fit import LINEAR, fit_fixed, fit_probe
from mmlens.probing.splits import check_classes, control_labels, split_by_image


def probe_point(x: np.ndarray, y: np.ndarray, index: np.ndarray, types: np.ndarray | None,
                kinds: Sequence[str] = ("logistic",), seeds: Sequence[int] = (0,), point: str = "",
                model: str = "trained", tick: Callable[[int], None] | None = None, select: str = "accuracy",
                floor: float = 0.95) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, list[str]]]:
    """Per kind, one result row (per-seed ``accuracy``, ``control``, chosen ``param``, validation ``sweep``); the
    linear probes' weights as ``"{model}|{point}|{kind}|{seed}|{name}"``; each fit's class order.

    ``select``: ``accuracy`` keeps the regularisation with the best validation accuracy; ``selectivity`` (Hewitt &
    Liang 2019: choose the probe's complexity for selectivity) keeps the one with the largest validation
    selectivity (task minus control accuracy) among those whose validation task accuracy is at least ``floor``
    (the most accurate one when none is); either way the test split only measures."""
    y = np.asarray(y).astype(str)
    check_classes(y, "this property")
    rows = {k: {"model": model, "point": point, "kind": k, "accuracy": [], "control": [] if types is not None else None,
                "param": [], "sweep": []} for k in kinds}
    weights: dict[str, np.ndarray] = {}
    classes: dict[str, list[str]] = {}
    for seed in seeds:
        train, val, test = split_by_image(index, seed)
        ctl = control_labels(types, y, seed) if types is not None else None
        for kind in kinds:
            probe = fit_probe(x[train], y[train], x[val], y[val], kind, seed=seed)
            if select == "selectivity" and ctl is not None and len(np.unique(ctl[train])) > 1:
                probe = most_selective(probe, x, y, ctl, train, val, seed, floor)
            row = rows[kind]
            row["accuracy"].append(probe.accuracy(x[test], y[test]))
            row["param"].append(probe.param)
            row["sweep"].append({f"{k:g}": round(v, 4) for k, v in probe.sweep.items()})
            if probe.selectivity_sweep:
                row.setdefault("selectivity_sweep", []).append({f"{k:g}": v for k, v in probe.selectivity_sweep.items()})
            if ctl is not None:  # the same probe settings (kind, regularisation) on the control task
                if len(np.unique(ctl[train])) < 2:
                    row["control"].append(float(np.mean(ctl[test] == ctl[train][0])))
                else:
                    control = fit_fixed(kind, probe.param, x[train], ctl[train], seed)
                    row["control"].append(control.accuracy(x[test], ctl[test]))
            key = f"{model}|{point}|{kind}|{seed}"
            if kind in LINEAR:
                weights.update({f"{key}|{name}": v for name, v in probe.weights().items()})
                classes[key] = [str(c) for c in probe.estimator.classes_]
            if tick is not None:
                tick(1)
    return list(rows.values()), weights, classes


def most_selective(probe: Any, x: np.ndarray, y: np.ndarray, ctl: np.ndarray, train: np.ndarray, val: np.ndarray,
                   seed: int, floor: float) -> Any:
    """Of ``probe``'s sweep, the setting with the largest validation selectivity whose validation accuracy is at
    least ``floor`` (``probe`` itself when none is); its ``selectivity_sweep`` holds every setting's."""
    scores = {}
    for param, acc in probe.sweep.items():
        control = fit_fixed(probe.kind, param, x[train], ctl[train], seed)
        scores[param] = acc - control.accuracy(x[val], ctl[val])
    ok = [p for p, acc in probe.sweep.items() if acc >= floor]
    if not ok:
        chosen = probe
    else:
        param = max(ok, key=lambda p: (scores[p], probe.sweep[p]))
        chosen = probe if param == probe.param else fit_fixed(probe.kind, param, x[train], y[train], seed)
    chosen.sweep = probe.sweep
    chosen.selectivity_sweep = {p: round(v, 4) for p, v in scores.items()}
    return chosen


def pool_by_sample(x: np.ndarray, meta: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Mean activation per sample (rows in first-seen order); each metadata column keeps the sample's first row."""
    index = np.asarray(meta["index"])
    samples, first, inverse = np.unique(index, return_index=True, return_inverse=True)
    sums = np.zeros((len(samples), x.shape[1]), np.float64)
    np.add.at(sums, inverse, x)
    counts = np.bincount(inverse, minlength=len(samples))[:, None]
    return (sums / counts).astype(np.float32), {k: v[first] for k, v in meta.items()}
