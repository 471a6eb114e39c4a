"""Deletion and insertion curves (Petsiuk et al. 2018, RISE): remove or reveal image patches in the order of
the map and follow the probability of the answer.

The image is split into ``cells x cells`` patches; patches are ranked by the map's mean value over them (ties
broken by a seeded random order, so a flat map is not scored in reading order). For ``k`` patches:

- deletion: the top-``k`` patches of the original image are replaced by the baseline (a faithful map makes the
  answer's probability fall fast: low area under the curve is better);
- insertion: the top-``k`` patches of the original image are revealed on the baseline image (a faithful map
  makes the probability rise fast: high area under the curve is better).

The curve value is the probability of the whole teacher-forced answer (``exp`` of the summed log-probs of its
tokens); every point of one curve is scored in batched forwards (:class:`~mmlens.perturb.scoring.Evaluator`).
The AUC is the trapezoid over the share of patches removed (or revealed), in [0, 1].

Default baseline: the image's mean colour. A blur (``baseline="blur"``, radius 1/16 of the longer side) keeps
the colour of flat objects such as ShapesVQA shapes, so blurring a patch removes little of its evidence.

Departures from Petsiuk et al., stated: they rank single *pixels* by the map and remove them in that order,
deleting to black (zeros) and inserting onto a blurred copy of the image. The defaults here rank ``cells x
cells`` patches and use the mean colour for both curves (pixel-by-pixel deletion of a 64 px image leaves
scattered single-pixel holes, an input the model never saw; the mean colour is the same reference for both
curves). ``order="pixel"`` ranks pixels as the reference does (ties in a seeded random order, ``steps`` curve
points, default ``cells * cells``); with ``baseline="black"`` for deletion and ``baseline="blur"`` for
insertion it is the reference protocol.

>>> curve = deletion(lm, ex)                                    # doctest: +SKIP
>>> curve.auc, curve.fractions[:3], curve.values[:3]            # doctest: +SKIP
(0.21, [0.0, 0.015625, 0.03125], [0.93, 0.91, 0.62])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmlens.errors import InputError
from mmlens.evaluation.metrics._maps import image_and_map
from mmlens.evaluation.registry import register_metric
from mmlens.model.subject import Subject
from mmlens.perturb.scoring import Evaluator, check_int
from mmlens.results.explanation import Explanation, TargetKey

MODES = ("deletion", "insertion")
ORDERS = ("patch", "pixel")


@dataclass
class CurveScore:
    """A deletion or insertion curve: ``values[j]`` = answer probability with ``fractions[j]`` of the patches
    removed (deletion) or revealed (insertion); ``score`` = ``auc``."""

    mode: str
    fractions: list[float]
    values: list[float]
    auc: float
    cells: int
    baseline: str
    order: list[int] = field(default_factory=list)  # patch indices (row-major), most important first ([] for pixels)
    unit: str = "patch"  # "patch" | "pixel": what is ranked and removed

    @property
    def score(self) -> float:
        return self.auc

    def __float__(self) -> float:
        return float(self.auc)


def patch_order(heat: np.ndarray, cells: int, seed: int = 0) -> np.ndarray:
    """Patch indices (row-major over a ``cells x cells`` grid) from the highest mean map value to the lowest;
    ties in a random order drawn from ``default_rng(seed)``.

    >>> heat = np.zeros((4, 4)); heat[2:, :2] = 1.0     # bottom-left patch of a 2 x 2 grid
    >>> int(patch_order(heat, 2)[0])
    2
    """
    from mmlens.attribution.perturbation_masks import cell_index_map

    heat = np.asarray(heat, dtype=np.float64)
    if heat.ndim != 2:
        raise InputError(f"map of shape {heat.shape}: pass an (H, W) map")
    if not np.isfinite(heat).all():
        raise InputError("the map holds NaN or infinite values: the deletion/insertion order is undefined")
    h, w = heat.shape
    index = cell_index_map((w, h), cells).ravel()
    n = cells * cells
    counts = np.bincount(index, minlength=n)
    means = np.bincount(index, weights=heat.ravel(), minlength=n) / np.maximum(counts, 1)
    tie_break = np.random.default_rng(seed).random(n)
    return np.lexsort((tie_break, -means))


def pixel_rank(heat: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(H, W)`` rank of each pixel, 0 for the highest map value; ties in a random order from
    ``default_rng(seed)``.

    >>> pixel_rank(np.array([[0.0, 2.0], [1.0, 1.0]]), seed=0)[0].tolist()
    [3, 0]
    """
    heat = np.asarray(heat, dtype=np.float64)
    if heat.ndim != 2 or not np.isfinite(heat).all():
        raise InputError("pass a finite (H, W) map: the deletion/insertion order is undefined")
    order = np.lexsort((np.random.default_rng(seed).random(heat.size), -heat.ravel()))
    rank = np.empty(heat.size, dtype=np.int64)
    rank[order] = np.arange(heat.size)
    return rank.reshape(heat.shape)


def curve_points(n_patches: int, steps: int | None) -> list[int]:
    """Numbers of patches ``k`` at which the curve is measured: all of ``0..n_patches`` (``steps=None``), or
    ``steps + 1`` evenly spaced values from 0 to ``n_patches``.

    >>> curve_points(4, None), curve_points(64, 4)
    ([0, 1, 2, 3, 4], [0, 16, 32, 48, 64])
    """
    if steps is None or steps >= n_patches:
        return list(range(n_patches + 1))
    return sorted({int(v) for v in np.rint(np.linspace(0, n_patches, steps + 1))})


def perturbation_curve(
    subject: Subject,
    ex: Explanation,
    mode: str = "deletion",
    *,
    target: TargetKey = None,
    image: int = 0,
    heat: np.ndarray | None = None,
    cells: int = 8,
    steps: int | None = None,
    baseline: str = "mean",
    seed: int = 0,
    batch_size: int = 64,
    order: str = "patch",
) -> CurveScore:
    """Deletion or insertion curve of the map of ``target`` over image ``image`` of ``ex`` (or of ``heat``, an
    ``(H, W)`` map over that image's pixels) on the probability of ``ex``'s whole answer under ``subject``;
    ``order="pixel"`` ranks and removes single pixels (Petsiuk et al.) instead of ``cells x cells`` patches."""
    from mmlens.attribution.perturbation_masks import (
        baseline_array,
        blend,
        cell_index_map,
        image_array,
    )
    from mmlens.evaluation.baselines import answer_batch
    from mmlens.model.targets import resolve_targets

    if mode not in MODES:
        raise InputError(f"mode={mode!r}: pass one of {', '.join(MODES)}")
    if order not in ORDERS:
        raise InputError(f"order={order!r}: pass one of {', '.join(ORDERS)}")
    cells = check_int("cells", cells, 1, 64)
    if steps is not None:
        steps = check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    img_index, original, heat = image_and_map(ex, image, target, heat)
    if min(original.size) < cells:
        raise InputError(f"cells={cells} is larger than the image ({original.width}x{original.height}): pass fewer")
    arr, base = image_array(original), baseline_array(original, baseline)
    if order == "pixel":
        ranked, n_units = pixel_rank(heat, seed), heat.size
        points = curve_points(n_units, steps if steps is not None else cells * cells)
        patches: list[int] = []
    else:
        patches, n_units = patch_order(heat, cells, seed).tolist(), cells * cells
        points = curve_points(n_units, steps)
        rank = np.empty(n_units, dtype=np.int64)
        rank[patches] = np.arange(n_units)
        ranked = rank[cell_index_map(original.size, cells)]  # (H, W): rank of the patch holding each pixel

    batch = answer_batch(subject, ex)
    targets = resolve_targets(subject.tokenizer, batch, "answer")
    ev = Evaluator(subject, batch, targets, batch_size=batch_size, progress=False, desc=mode)
    others = list(batch.images)

    def rows(lo: int, hi: int) -> tuple[list[list[Any]], None]:
        sets = []
        for k in points[lo:hi]:
            top = (ranked < k).astype(np.float32)  # 1 on the k highest-ranked patches (or pixels)
            keep = 1.0 - top if mode == "deletion" else top
            images = list(others)
            images[img_index] = blend(arr, base, keep)
            sets.append(images)
        return sets, None

    log_p = ev.run(len(points), rows)[:, 0].double()
    values = log_p.exp().tolist()
    fractions = [k / n_units for k in points]
    auc = float(np.trapezoid(values, fractions))
    return CurveScore(mode, fractions, values, auc, cells, baseline, patches, order)


@register_metric("deletion", "faithfulness", higher_is_better=False, needs_model=True,
                 summary="area under the answer probability as the map's top patches are removed (to the mean colour "
                         "by default; Petsiuk et al. remove pixels to black: order=pixel, baseline=black); a "
                         "faithful map deletes the evidence first",
                 degenerate="chance", degenerate_note="every patch ties: removed in a seeded random order")
def deletion(subject: Subject, ex: Explanation, *, target: TargetKey = None, image: int = 0,
             heat: np.ndarray | None = None, cells: int = 8, steps: int | None = None, baseline: str = "mean",
             seed: int = 0, batch_size: int = 64, order: str = "patch") -> CurveScore:
    """Deletion curve and AUC (lower is better), see :func:`perturbation_curve` (``heat``: score this
    ``(H, W)`` map over the image instead of the explanation's own).

    >>> deletion(lm, ex, cells=4).auc                               # doctest: +SKIP
    """
    return perturbation_curve(subject, ex, "deletion", target=target, image=image, heat=heat, cells=cells,
                              steps=steps, baseline=baseline, seed=seed, batch_size=batch_size, order=order)


@register_metric("insertion", "faithfulness", higher_is_better=True, needs_model=True,
                 summary="area under the answer probability as the map's top patches are revealed on the "
                         "baseline image (mean colour by default; Petsiuk et al. reveal pixels on a blur: "
                         "order=pixel, baseline=blur); a faithful map reveals the evidence first",
                 degenerate="chance", degenerate_note="every patch ties: revealed in a seeded random order")
def insertion(subject: Subject, ex: Explanation, *, target: TargetKey = None, image: int = 0,
              heat: np.ndarray | None = None, cells: int = 8, steps: int | None = None, baseline: str = "mean",
              seed: int = 0, batch_size: int = 64, order: str = "patch") -> CurveScore:
    """Insertion curve and AUC (higher is better), see :func:`perturbation_curve` (``heat``: score this
    ``(H, W)`` map over the image instead of the explanation's own).

    >>> insertion(lm, ex, baseline="blur").auc                      # doctest: +SKIP
    """
    return perturbation_curve(subject, ex, "insertion", target=target, image=image, heat=heat, cells=cells,
                              steps=steps, baseline=baseline, seed=seed, batch_size=batch_size, order=order)
