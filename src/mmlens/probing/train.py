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
                model: str = "trained", tick: Callable[[int], None] | None = None
                ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, list[str]]]:
    """Per kind, one result row (per-seed ``accuracy``, ``control``, chosen ``param``, validation ``sweep``); the
    linear probes' weights as ``"{model}|{point}|{kind}|{seed}|{name}"``; each fit's class order."""
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
            row = rows[kind]
            row["accuracy"].append(probe.accuracy(x[test], y[test]))
            row["param"].append(probe.param)
            row["sweep"].append({f"{k:g}": round(v, 4) for k, v in probe.sweep.items()})
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


def pool_by_sample(x: np.ndarray, meta: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Mean activation per sample (rows in first-seen order); each metadata column keeps the sample's first row."""
    index = np.asarray(meta["index"])
    samples, first, inverse = np.unique(index, return_index=True, return_inverse=True)
    sums = np.zeros((len(samples), x.shape[1]), np.float64)
    np.add.at(sums, inverse, x)
    counts = np.bincount(inverse, minlength=len(samples))[:, None]
    return (sums / counts).astype(np.float32), {k: v[first] for k, v in meta.items()}
