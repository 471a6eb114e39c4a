"""Probes: logistic regression (multiclass), ridge classification and a small MLP (scikit-learn), each with a
regularisation sweep chosen on a validation split, on standardised features (train mean / std).

>>> rng = np.random.default_rng(0); x = rng.normal(size=(60, 4)); y = (x[:, 0] > 0).astype(int)
>>> p = fit_probe(x[:40], y[:40], x[40:], y[40:], "logistic")
>>> p.accuracy(x[40:], y[40:]) > 0.8, p.param in LOGISTIC_C
(True, True)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmlens.errors import InputError
from mmlens.util.options import check_choice

KINDS = ("logistic", "ridge", "mlp")
LINEAR = ("logistic", "ridge")
#: inverse L2 strengths (logistic), L2 strengths (ridge, MLP) swept on the validation split
LOGISTIC_C = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
RIDGE_ALPHA = (1.0, 10.0, 100.0, 1e3, 1e4)
MLP_ALPHA = (1e-4, 1e-2, 1.0)
MLP_HIDDEN = 64
PARAM_NAME = {"logistic": "C", "ridge": "alpha", "mlp": "alpha"}


def grid_for(kind: str) -> tuple[float, ...]:
    return {"logistic": LOGISTIC_C, "ridge": RIDGE_ALPHA, "mlp": MLP_ALPHA}[kind]


def make_estimator(kind: str, param: float, seed: int = 0) -> Any:
    """The scikit-learn estimator of ``kind`` at regularisation ``param``."""
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=param, max_iter=500)
    if kind == "ridge":
        from sklearn.linear_model import RidgeClassifier

        return RidgeClassifier(alpha=param)
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(MLP_HIDDEN,), alpha=param, max_iter=300, early_stopping=False,
                         random_state=seed)


@dataclass
class Probe:
    """A fitted probe: its estimator on standardised features, the chosen ``param`` and the sweep."""

    kind: str
    param: float
    estimator: Any
    mean: np.ndarray
    scale: np.ndarray
    sweep: dict[float, float] = field(default_factory=dict)  # param -> validation accuracy
    selectivity_sweep: dict[float, float] = field(default_factory=dict)  # param -> validation selectivity

    def standardise(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) / self.scale

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.estimator.predict(self.standardise(x))

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(self.predict(x) == np.asarray(y)))

    def weights(self) -> dict[str, np.ndarray]:
        """Linear probes: ``coef`` (classes or 1, width) and ``intercept`` on standardised inputs, with ``mean`` and
        ``scale`` (the standardisation); an MLP keeps only the standardisation."""
        out = {"mean": self.mean.astype(np.float32), "scale": self.scale.astype(np.float32)}
        if self.kind in LINEAR:
            out["coef"] = np.atleast_2d(self.estimator.coef_).astype(np.float32)
            out["intercept"] = np.atleast_1d(self.estimator.intercept_).astype(np.float32)
        return out


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    mean, scale = x.mean(0), x.std(0)
    return mean, np.where(scale > 1e-8, scale, 1.0)


def fit_fixed(kind: str, param: float, x: np.ndarray, y: np.ndarray, seed: int = 0,
              stats: tuple[np.ndarray, np.ndarray] | None = None) -> Probe:
    """A probe of ``kind`` at ``param`` fitted on ``(x, y)`` (standardised with ``stats`` or the data's own)."""
    mean, scale = stats if stats is not None else standardisation(x)
    est = make_estimator(kind, param, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at the weakest regularisation of the sweep
        est.fit((np.asarray(x, np.float64) - mean) / scale, np.asarray(y))
    return Probe(kind, float(param), est, mean, scale)


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, kind: str = "logistic",
              grid: tuple[float, ...] | None = None, seed: int = 0) -> Probe:
    """Fit one probe per regularisation value of ``grid`` (default: the kind's sweep) on the training rows and
    keep the best on the validation rows (ties: the stronger regularisation)."""
    check_choice("kind", kind, KINDS)
    if len(np.unique(np.asarray(y_train).astype(str))) < 2:
        raise InputError("the training split holds a single class: a probe needs at least 2; use more samples")
    stats = standardisation(x_train)
    best: Probe | None = None
    sweep: dict[float, float] = {}
    # strongest regularisation first: small C (logistic) / large alpha (ridge, MLP)
    values = sorted(grid or grid_for(kind), reverse=kind != "logistic")
    for param in values:
        probe = fit_fixed(kind, param, x_train, y_train, seed, stats)
        sweep[float(param)] = probe.accuracy(x_val, y_val)
        if best is None or sweep[float(param)] > sweep[best.param]:
            best = probe
    assert best is not None
    best.sweep = sweep
    return best
