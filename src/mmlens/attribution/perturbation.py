"""Black-box perturbation methods: occlusion and RISE (SHAP methods live in ``perturbation_shap``).

Every method scores all targets from the same teacher-forced forwards (one forward scores every answer
token of every perturbed row), ``batch_size`` perturbed rows per forward, and reports
``extras["forward_calls"]`` and ``extras["rows"]``.

>>> from mmlens.testing import tiny_subject
>>> from mmlens.testing.tiny_models import tiny_images
>>> from mmlens.model.targets import resolve_targets
>>> lm = tiny_subject("llava")
>>> batch = lm.prepare(tiny_images("llava", 1), "what color is the cat ?", answer="red cat")
>>> out = occlusion(lm, batch, resolve_targets(lm.tokenizer, batch), patch=16)
>>> out.pixel_maps[0][0].shape, out.extras["forward_calls"], out.extras["rows"]
((32, 48), 2, 12)
"""

from __future__ import annotations

import numpy as np
import torch

from mmlens.attribution.output import MethodOutput
from mmlens.attribution.perturbation_masks import (
    baseline_array,
    blend,
    default_patch,
    image_array,
    occlusion_windows,
    position_scores,
    rise_grids,
    rise_mask,
    window_average,
    window_keep,
)
from mmlens.attribution.regions import SEGMENTATIONS, paint, region_labels
from mmlens.catalog import register_method
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.model.targets import Target
from mmlens.perturb.scoring import (
    Evaluator,
    mask_token_id,
    masked_input_ids,
    prompt_words,
)
from mmlens.util.options import check_choice, check_float, check_int

_LEAF, _TIER = "data/input-output", "black-box"


# -- shared helpers ---------------------------------------------------------------------------------------
def resolve_seed(seed: int | None) -> int:
    """``seed``, or with ``None`` one drawn from torch's global RNG (which :func:`mmlens.explain` seeds)."""
    if seed is None:
        return int(torch.randint(0, 2**31 - 1, ()))
    return check_int("seed", seed, 0)


def _min_side(batch: Batch) -> int:
    return min(min(img.size) for img in batch.images)


# -- occlusion ------------------------------------------------------------------------------------------
@register_method("occlusion", leaf=_LEAF, tier=_TIER,
                 summary="slide a patch over each image (and mask each prompt word); score = drop of the target")
def occlusion(
    subject: Subject,
    batch: Batch,
    targets: list[Target],
    patch: int | None = None,
    stride: int | None = None,
    baseline: str = "mean",
    words: bool = True,
    regions: str = "windows",
    n_segments: int = 50,
    batch_size: int = 32,
    progress: bool | None = None,
) -> MethodOutput:
    """Occlusion: drop ``value(original) - value(occluded)`` of every target.

    ``regions="windows"`` (default): each image in turn gets a ``patch x patch`` square (original pixels;
    default: about 8 x 8 windows per image) slid by ``stride`` (default ``patch``; a last window flush with
    each edge covers every pixel), filled with ``baseline`` ("mean" colour, "black" or "blur");
    ``pixel_maps[t][i]`` is the average drop over the windows covering each pixel. ``regions="slic"`` or
    ``"felzenszwalb"``: each superpixel (about ``n_segments`` per image, see
    :func:`~mmlens.attribution.regions.region_labels`) is filled in turn and its drop painted on its pixels.
    With ``words``, each prompt word is replaced by the pad (or unk) token in turn and its drop is the score
    of its token positions. One reference forward + one forward per ``batch_size`` perturbed rows.

    >>> out = occlusion(lm, batch, targets, patch=16, baseline="black")          # doctest: +SKIP
    >>> out = occlusion(lm, batch, targets, regions="slic", n_segments=40)      # doctest: +SKIP
    """
    ev = Evaluator(subject, batch, targets, batch_size, progress, desc="occlusion")
    check_choice("regions", regions, ("windows", *SEGMENTATIONS))
    arrays = [image_array(img) for img in batch.images]
    bases = [baseline_array(img, baseline) for img in batch.images]
    word_pos = prompt_words(subject, batch) if words else []
    fill = mask_token_id(subject) if word_pos else 0
    if regions == "windows":
        side = _min_side(batch)
        patches = [default_patch(img.size) for img in batch.images] if patch is None else \
            [check_int("patch", patch, 1, side, why=" (the smallest image side, in pixels)")] * len(batch.images)
        strides = patches if stride is None else \
            [check_int("stride", stride, 1, min(patches), why=" (the patch size)")] * len(batch.images)
        corners = [occlusion_windows(img.size, p, s) for img, p, s in zip(batch.images, patches, strides)]
        counts = [len(cs) for cs in corners]
        layout = {"patch": patches, "stride": strides, "windows": counts}

        def keep_mask(i: int, j: int) -> np.ndarray:  # built per row: stride-1 windows would not fit in memory
            return window_keep(batch.images[i].size, corners[i][j], patches[i])
    else:
        labels = [region_labels(img, regions, n_segments=n_segments) for img in batch.images]
        counts = [int(lab.max()) + 1 for lab in labels]
        layout = {"regions": regions, "regions_per_image": counts}

        def keep_mask(i: int, j: int) -> np.ndarray:
            return (labels[i] != j).astype(np.float32)
    jobs = [(i, j) for i, c in enumerate(counts) for j in range(c)] + [(-1, w) for w in range(len(word_pos))]

    def make_rows(lo: int, hi: int) -> tuple[list[list], torch.Tensor | None]:
        sets, keep = [], torch.ones(hi - lo, len(word_pos), dtype=torch.bool)
        for r, (i, what) in enumerate(jobs[lo:hi]):
            images = list(batch.images)
            if i >= 0:
                images[i] = blend(arrays[i], bases[i], keep_mask(i, what))
            else:
                keep[r, what] = False
            sets.append(images)
        return sets, (masked_input_ids(batch, word_pos, keep, fill) if not keep.all() else None)

    reference = ev.reference()
    drops = (reference[None] - ev.run(len(jobs), make_rows)).T.numpy()  # (T, rows)
    maps_by_image, start = [], 0
    for i, img in enumerate(batch.images):
        d = drops[:, start : start + counts[i]]
        maps_by_image.append(window_average(img.size, corners[i], patches[i], d) if regions == "windows"
                             else np.stack([paint(labels[i], row) for row in d]))
        start += counts[i]
    pixel_maps = [[m[t] for m in maps_by_image] for t in range(len(targets))]
    word_scores = torch.from_numpy(drops[:, start:])
    scores = position_scores(batch, len(targets), pixel_maps, word_pos, word_scores)
    extras = {"forward_calls": ev.calls, "rows": ev.rows, **layout, "baseline": baseline,
              "words": len(word_pos), "reference": reference.tolist()}
    return MethodOutput(scores, pixel_maps, extras)


# -- RISE -----------------------------------------------------------------------------------------------
@register_method("rise", leaf=_LEAF, tier=_TIER,
                 summary="RISE: random low-resolution masks, map = target-weighted average of the masks")
def rise(
    subject: Subject,
    batch: Batch,
    targets: list[Target],
    n_masks: int = 500,
    cells: int = 7,
    p: float = 0.5,
    baseline: str = "mean",
    seed: int | None = None,
    prob: bool = False,
    centered: bool = True,
    batch_size: int = 32,
    progress: bool | None = None,
) -> MethodOutput:
    """RISE (Petsiuk et al. 2018): ``n_masks`` random binary ``cells x cells`` grids (cell kept with
    probability ``p``), bilinearly upsampled with a random shift of less than one cell, blend each image
    with ``baseline`` (every image of the prompt masked independently in each row). For image ``i``:
    ``map = sum_m value_m * mask_m,i / (n_masks * p)``, the expected target value when the pixel is kept.
    ``value`` is the target value (a log-prob), or its ``exp`` with ``prob=True`` (the paper's class
    probability). ``centered`` (default) subtracts the mean value over masks first, so the map shows how much
    keeping a pixel raises the target above its average rather than a large constant offset (the
    uncentred map of the paper is ``centered=False``; the two differ by ``mean * mask density``). Seeded by ``seed`` (``None``: drawn from torch's global RNG, so
    ``mmlens.explain(..., seed=...)`` decides; the seed used is in ``extras``). Only images are masked:
    prompt positions score 0.

    >>> out = rise(lm, batch, targets, n_masks=64, seed=0)                       # doctest: +SKIP
    """
    ev = Evaluator(subject, batch, targets, batch_size, progress, desc="RISE")
    n_masks = check_int("n_masks", n_masks, 1)
    cells = check_int("cells", cells, 1, _min_side(batch), why=" (the smallest image side, in pixels)")
    p = check_float("p", p, 0.0, 1.0, open_low=True, open_high=True)
    seed = resolve_seed(seed)
    arrays = [image_array(img) for img in batch.images]
    bases = [baseline_array(img, baseline) for img in batch.images]
    grids, shifts = rise_grids(n_masks, len(batch.images), cells, p, seed)
    sizes = [img.size for img in batch.images]
    sums = [np.zeros((len(targets), h, w), dtype=np.float64) for w, h in sizes]
    mask_sums = [np.zeros((h, w), dtype=np.float64) for w, h in sizes]
    masks: dict[int, list[list[np.ndarray]]] = {}

    def make_rows(lo: int, hi: int) -> tuple[list[list], None]:
        masks[lo] = [[rise_mask(grids[m, i], shifts[m, i], sizes[i]) for i in range(len(sizes))] for m in range(lo, hi)]
        return [[blend(a, b, mk) for a, b, mk in zip(arrays, bases, row)] for row in masks[lo]], None

    total = torch.zeros(len(targets), dtype=torch.float64)
    for lo, hi, values in ev.chunks(n_masks, make_rows):
        v = (values.exp() if prob else values).double()  # (b, T)
        total += v.sum(0)
        rows = masks.pop(lo)
        for i in range(len(sizes)):
            stack = np.stack([row[i] for row in rows])
            sums[i] += np.einsum("bt,bhw->thw", v.numpy(), stack)
            mask_sums[i] += stack.sum(0)
    mean = (total / n_masks).numpy()
    if centered:
        sums = [s - mean[:, None, None] * m[None] for s, m in zip(sums, mask_sums)]
    maps = [s / (n_masks * p) for s in sums]
    pixel_maps = [[m[t].astype(np.float32) for m in maps] for t in range(len(targets))]
    scores = position_scores(batch, len(targets), pixel_maps)
    extras = {"forward_calls": ev.calls, "rows": ev.rows, "n_masks": n_masks, "cells": cells, "p": p,
              "seed": seed, "baseline": baseline, "prob": prob, "centered": centered, "mean_value": mean.tolist()}
    return MethodOutput(scores, pixel_maps, extras)
