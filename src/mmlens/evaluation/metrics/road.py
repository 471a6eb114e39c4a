"""ROAD (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution Methods"): remove the
map's top-k% pixels with noisy linear imputation and compare the answer-probability drop with the drop for a
random k% of the pixels.

Removing pixels by painting them a constant colour lets the *shape* of the removed set leak information (and
creates inputs the model never saw); ROAD instead replaces every removed pixel by a weighted average of its 8
neighbours (weight 1/6 for the 4 direct neighbours, 1/12 for the 4 diagonal ones), solved jointly for all removed
pixels as one sparse linear system (removed neighbours are unknowns too), plus Gaussian noise:

    for each removed pixel p:  (sum_{q in N(p)} w_q) x_p - sum_{q in N(p), removed} w_q x_q
                                                         = sum_{q in N(p), kept} w_q v_q

(``N(p)``: the neighbours inside the image; ``v``: the original values), then ``x_p += noise * 255 * eps``,
``eps ~ N(0, 1)`` seeded. Every connected group of removed pixels touches a kept pixel unless the whole image is
removed, so the system is non-singular; a fully removed image gets its mean colour (plus noise).

Score (higher is better): ``drop(top-k) - drop(random k)`` averaged over the ``fractions`` k, with ``drop`` =
probability of the teacher-forced answer on the original image minus that on the imputed one. A map that
ranks the evidence first removes it and makes the answer fall more than removing the same number of random
pixels; a map no better than chance scores about 0. The random pixel set is drawn from ``seed`` alone, so every
method of one sample is compared with the same random removal.

Departure from the paper, stated: Rong et al. report MoRF / LeRF curves over k; this metric keeps the
top-k-vs-random comparison of the issue at a few ``fractions`` (default 5, 10 and 20 %).

>>> arr = np.array([[0.0, 0.0, 0.0, 9.0]]); removed = np.array([[False, True, True, False]])
>>> noisy_linear_impute(arr, removed, noise=0.0)[0].tolist()       # linear between the kept ends
[0.0, 3.0, 6.0, 9.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mmlens.errors import InputError
from mmlens.evaluation.metrics._maps import image_and_map
from mmlens.evaluation.registry import register_metric
from mmlens.model.subject import Subject
from mmlens.results.explanation import Explanation, TargetKey

#: (dy, dx) -> weight of the neighbour: 1/6 direct, 1/12 diagonal (they sum to 1).
NEIGHBOURS: tuple[tuple[tuple[int, int], float], ...] = (
    ((-1, 0), 1 / 6), ((1, 0), 1 / 6), ((0, -1), 1 / 6), ((0, 1), 1 / 6),
    ((-1, -1), 1 / 12), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((1, 1), 1 / 12),
)
DEFAULT_FRACTIONS = (0.05, 0.1, 0.2)


def noisy_linear_impute(arr: np.ndarray, removed: np.ndarray, noise: float = 0.01, seed: int = 0,
                        value_range: float = 255.0) -> np.ndarray:
    """``arr`` (``(H, W)`` or ``(H, W, C)``) with the ``removed`` pixels (``(H, W)`` bool) replaced by the
    solution of the ROAD neighbour system plus seeded Gaussian noise of std ``noise * value_range``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    arr = np.asarray(arr, dtype=np.float64)
    removed = np.asarray(removed, dtype=bool)
    flat = arr.ndim == 2
    values = arr[..., None] if flat else arr
    h, w = removed.shape
    if values.shape[:2] != (h, w):
        raise InputError(f"mask shape {removed.shape} differs from the image's (H, W) {values.shape[:2]}")
    out = values.copy()
    m = int(removed.sum())
    if m == 0:
        return out[..., 0] if flat else out
    rng = np.random.default_rng(seed)
    if m == h * w:  # nothing to average from: the mean colour
        solved = np.broadcast_to(values.reshape(-1, values.shape[2]).mean(0), (m, values.shape[2])).copy()
    else:
        index = np.full((h, w), -1, dtype=np.int64)
        index[removed] = np.arange(m)
        ys, xs = np.nonzero(removed)
        rows, cols, data = [np.arange(m)], [np.arange(m)], [np.zeros(m)]
        rhs = np.zeros((m, values.shape[2]))
        for (dy, dx), weight in NEIGHBOURS:
            qy, qx = ys + dy, xs + dx
            inside = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
            p, qy, qx = index[ys[inside], xs[inside]], qy[inside], qx[inside]
            data[0][p] += weight  # the diagonal: the weights of the neighbours that exist
            unknown = removed[qy, qx]
            rows.append(p[unknown])
            cols.append(index[qy[unknown], qx[unknown]])
            data.append(np.full(int(unknown.sum()), -weight))
            np.add.at(rhs, p[~unknown], weight * values[qy[~unknown], qx[~unknown]])
        system = coo_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(m, m))
        solved = np.asarray(spsolve(system.tocsc(), rhs)).reshape(m, values.shape[2])
    out[removed] = solved + float(noise) * float(value_range) * rng.standard_normal(solved.shape)
    return out[..., 0] if flat else out


@dataclass
class RoadScore:
    """Answer-probability drops when the map's top-k pixels (``drops``) or a random k (``random_drops``) are
    imputed, per share ``k`` in ``fractions``; ``score`` = mean of ``drops - random_drops``."""

    fractions: list[float]
    drops: list[float]
    random_drops: list[float]
    original: float
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return float(np.mean(np.subtract(self.drops, self.random_drops)))

    def __float__(self) -> float:
        return self.score


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    items = [fractions] if isinstance(fractions, (int, float)) else list(fractions)
    if not items or not all(isinstance(k, (int, float)) and 0 < k < 1 for k in items):
        raise InputError(f"fractions={fractions!r}: pass shares of pixels in (0, 1), e.g. 0.05,0.1,0.2")
    return [float(k) for k in items]


@register_metric("road", "faithfulness", higher_is_better=True, needs_model=True,
                 summary="answer-probability drop when the map's top-k% pixels are removed with ROAD noisy linear "
                         "imputation, minus the drop for a random k% (mean over k = 5, 10, 20%); > 0: the map "
                         "ranks evidence above chance",
                 degenerate="chance", degenerate_note="every pixel ties: removed in a seeded random order (about 0)")
def road(subject: Subject, ex: Explanation, *, target: TargetKey = None, image: int = 0,
         heat: np.ndarray | None = None, fractions: Sequence[float] = DEFAULT_FRACTIONS, noise: float = 0.01,
         seed: int = 0, batch_size: int = 64) -> RoadScore:
    """ROAD top-k vs random-k drop of ``ex``'s map (or ``heat``) on the probability of ``ex``'s answer.

    >>> road(lm, ex, fractions=[0.1]).score                       # doctest: +SKIP
    0.31
    """
    from PIL import Image

    from mmlens.evaluation.baselines import answer_batch
    from mmlens.evaluation.metrics.deletion_insertion import pixel_rank
    from mmlens.model.targets import resolve_targets
    from mmlens.perturb.scoring import Evaluator, check_int

    ks = _check_fractions(fractions)
    if not (isinstance(noise, (int, float)) and noise >= 0):
        raise InputError(f"noise={noise!r}: pass a noise std >= 0 (share of the 0-255 range)")
    check_int("batch_size", batch_size, 1)
    i, original, heat = image_and_map(ex, image, target, heat)
    arr = np.asarray(original, dtype=np.float64)
    ranked = pixel_rank(heat, seed)
    shuffled = np.random.default_rng([seed, 1]).permutation(heat.size).reshape(heat.shape)
    sets = []
    for j, k in enumerate(ks):
        count = max(1, round(k * heat.size))
        for order in (ranked, shuffled):
            filled = noisy_linear_impute(arr, order < count, noise, seed=seed * 1009 + j)
            img = Image.fromarray(np.clip(np.rint(filled), 0, 255).astype(np.uint8), mode="RGB")
            images = list(ex.images)
            images[i] = img
            sets.append(images)
    batch = answer_batch(subject, ex)
    ev = Evaluator(subject, batch, resolve_targets(subject.tokenizer, batch, "answer"), batch_size=batch_size,
                   progress=False, desc="road")
    p0 = float(ev.reference()[0].double().exp())
    probs = ev.run(len(sets), lambda lo, hi: (sets[lo:hi], None))[:, 0].double().exp().tolist()
    drops = [p0 - probs[2 * j] for j in range(len(ks))]
    random_drops = [p0 - probs[2 * j + 1] for j in range(len(ks))]
    return RoadScore(ks, drops, random_drops, p0, {"drop": float(np.mean(drops)),
                                                   "random_drop": float(np.mean(random_drops))})
