"""Seeded train / validation / test splits by image (never by token), and Hewitt & Liang's control task.

A probe trained on some tokens of an image and tested on other tokens of the same image would be tested on
what it has seen; every split here assigns whole samples (images) to one part.

Control task (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks"): each *type* (in
their case a word type; here by default an object's colour and shape) is given one fixed label drawn at random
from the task's empirical label distribution, so the control task can only be solved by memorising types. A
probe's *selectivity* is its task accuracy minus its control accuracy, with the same probe settings on both:
high selectivity means the accuracy reflects the representation, not the probe's capacity to memorise.

>>> idx = np.repeat(np.arange(10), 3)                   # 10 images, 3 tokens each
>>> tr, va, te = split_by_image(idx, seed=0)
>>> set(idx[tr]) & set(idx[te]), int(tr.sum() + va.sum() + te.sum())
(set(), 30)
>>> control_labels(np.array(["a", "b", "a"]), np.array(["x", "y", "x"]), seed=0)[0] == \\
...     control_labels(np.array(["a", "b", "a"]), np.array(["x", "y", "x"]), seed=0)[2]
True
"""

from __future__ import annotations

import numpy as np

from mmlens.errors import InputError

FRACTIONS = (0.6, 0.2, 0.2)


def split_by_image(index: np.ndarray, seed: int, fractions: tuple[float, float, float] = FRACTIONS
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks (train, val, test) over rows, whole images (``index`` values) per part, seeded."""
    index = np.asarray(index)
    images = np.unique(index)
    if len(images) < 3:
        raise InputError(f"only {len(images)} image(s) hold rows: a train / validation / test split needs at least "
                         "3; collect more samples")
    order = np.random.default_rng(seed).permutation(images)
    n_train = max(1, round(fractions[0] * len(images)))
    n_val = max(1, round(fractions[1] * len(images)))
    n_train = min(n_train, len(images) - 2)
    n_val = min(n_val, len(images) - n_train - 1)
    parts = (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])
    return tuple(np.isin(index, p) for p in parts)  # type: ignore[return-value]


def control_labels(types: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Hewitt & Liang's control task: each distinct type gets one label drawn (seeded) from the empirical
    distribution of ``labels``; returns the control label of every row."""
    types, labels = np.asarray(types).astype(str), np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    kinds = np.unique(types)  # sorted: the same types get the same labels for the same seed
    drawn = values[rng.choice(len(values), size=len(kinds), p=counts / counts.sum())]
    lookup = dict(zip(kinds.tolist(), drawn.tolist()))
    return np.asarray([lookup[t] for t in types.tolist()], dtype=labels.dtype)


def check_classes(labels: np.ndarray, what: str) -> np.ndarray:
    """The sorted classes of ``labels``; fewer than two is one line naming the property."""
    classes = np.unique(np.asarray(labels).astype(str))
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if len(classes) else "no labels"
        raise InputError(f"{what} has {found} among {len(labels)} rows: a probe needs at least 2 classes; pick "
                         "another property or group, or more samples")
    return classes
