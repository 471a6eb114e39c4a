"""Shapley-value methods over image grid cells and prompt words: KernelSHAP (Captum) and MM-SHAP.

Players are the cells of a ``cells x cells`` grid on each original image and the words of the prompt. A
coalition (binary vector) becomes one perturbed row: absent cells show the baseline, absent words are
replaced by the pad (or unk) token. :class:`Game` evaluates coalitions in batches, each distinct
coalition once, all targets at once, so Captum's per-target runs (same seed, same samples) cost the
model forwards of the first target only.

>>> from mmlens.testing import tiny_subject
>>> from mmlens.testing.tiny_models import tiny_images
>>> from mmlens.core.targets import resolve_targets
>>> lm = tiny_subject("llava")
>>> batch = lm.prepare(tiny_images("llava", 1), "what color is the cat ?", answer="red cat")
>>> out = mm_shap(lm, batch, resolve_targets(lm.tokenizer, batch), cells=2)    # 4 cells + 6 words: exact
>>> out.extras["estimator"], out.extras["rows"], round(out.extras["t_shap"][0] + out.extras["i_shap"][0], 6)
('exact', 1024, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from captum._utils.models.linear_model.model import LinearModel
from captum.attr import KernelShap, ShapleyValueSampling
from PIL import Image

from mmlens.core.batch import Batch
from mmlens.core.options import check_int
from mmlens.core.batching import Evaluator, mask_token_id, masked_input_ids, progress_bar, prompt_words
from mmlens.core.registry import register_method
from mmlens.core.subject import Subject
from mmlens.core.targets import Target
from mmlens.errors import InputError
from mmlens.attribution.output import MethodOutput
from mmlens.attribution.perturbation import position_scores, resolve_seed
from mmlens.attribution.perturbation_masks import baseline_array, blend, cell_index_map, image_array

_LEAF, _TIER = "data/input-output", "black-box"
ESTIMATORS = ("auto", "exact", "kernel", "permutation")
#: "auto" computes exact Shapley values up to this many players (2^10 = 1024 coalitions)
EXACT_MAX_PLAYERS = 10
#: "exact" refuses more players than this (2^16 = 65,536 coalitions)
EXACT_LIMIT = 16


# -- players ----------------------------------------------------------------------------------------------
class CellFeatures:
    """Players: ``cells x cells`` grid cells of each image (row-major, image by image), then prompt words.

    >>> feats = CellFeatures(lm, batch, cells=2)                             # doctest: +SKIP
    >>> feats.n_players, feats.n_image_players                               # doctest: +SKIP
    (10, 4)
    """

    def __init__(self, subject: Subject, batch: Batch, cells: int, baseline: str = "mean", words: bool = True):
        self.batch, self.cells = batch, cells
        self.maps = [cell_index_map(img.size, cells) for img in batch.images]
        self.arrays = [image_array(img) for img in batch.images]
        self.bases = [baseline_array(img, baseline) for img in batch.images]
        self.words = prompt_words(subject, batch) if words else []
        self.fill = mask_token_id(subject) if self.words else 0
        self.n_image_players = len(batch.images) * cells * cells

    @property
    def n_players(self) -> int:
        return self.n_image_players + len(self.words)

    def rows(self, z: torch.Tensor) -> tuple[list[list[Image.Image]], torch.Tensor | None]:
        """Perturbed rows for coalitions ``z`` ``(k, n_players)`` (1 = present)."""
        z = (z > 0.5).cpu()
        n_cells = self.cells * self.cells
        sets = []
        for row in z:
            images = []
            for i, img in enumerate(self.batch.images):
                cells = row[i * n_cells : (i + 1) * n_cells].numpy()
                images.append(img if cells.all() else
                              blend(self.arrays[i], self.bases[i], cells[self.maps[i]].astype(np.float32)))
            sets.append(images)
        keep = z[:, self.n_image_players :]
        ids = masked_input_ids(self.batch, self.words, keep, self.fill) if self.words and not keep.all() else None
        return sets, ids

    def output(self, phi: torch.Tensor, extras: dict[str, Any]) -> MethodOutput:
        """MethodOutput from player values ``phi`` ``(T, n_players)``: cell values painted on the pixels,
        word values on the words' token positions."""
        n_cells = self.cells * self.cells
        phi_np = phi.double().numpy()
        pixel_maps = [[phi_np[t, i * n_cells + m].astype(np.float32) for i, m in enumerate(self.maps)]
                      for t in range(phi.shape[0])]
        scores = position_scores(self.batch, phi.shape[0], pixel_maps, self.words, phi[:, self.n_image_players :])
        extras = {**extras, "phi": phi.tolist(), "cells": self.cells, "words": len(self.words),
                  "image_players": self.n_image_players}
        return MethodOutput(scores, pixel_maps, extras)


class Game:
    """Coalition values ``v(z)`` ``(k, n_targets)`` for binary ``z`` ``(k, n_players)``; one forward per call
    over the coalitions not seen before (the Captum forward function)."""

    def __init__(self, evaluator: Evaluator, features: CellFeatures, bar: Any = None):
        self.ev, self.features, self.bar = evaluator, features, bar
        self.cache: dict[bytes, torch.Tensor] = {}

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        keys = [bytes(row) for row in (z > 0.5).to(torch.uint8).cpu().numpy()]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            missing = torch.tensor(np.stack([np.frombuffer(k, dtype=np.uint8) for k in todo]))
            for key, value in zip(todo, self.ev.values(*self.features.rows(missing))):
                self.cache[key] = value
            if self.bar is not None:
                self.bar.update(1)
        return torch.stack([self.cache[k] for k in keys]).to(z.device)


# -- Captum glue ----------------------------------------------------------------------------------------
def _fit_weighted_least_squares(model: LinearModel, dataloader: Any, construct_kwargs: dict, **_: Any) -> dict:
    xs, ys, ws = zip(*[(b[0], b[1], b[2] if len(b) == 3 else torch.ones(len(b[0]))) for b in dataloader])
    x, y, w = (torch.cat(v).double() for v in (xs, ys, ws))
    w = w.flatten()
    xm = (w[:, None] * x).sum(0) / w.sum()
    ym = (w * y.flatten()).sum() / w.sum()
    sw = w.sqrt()[:, None]
    coef = torch.linalg.lstsq((x - xm) * sw, (y.flatten() - ym)[:, None] * sw, driver="gelsd").solution[:, 0]
    model._construct_model_params(norm_type=None, weight_values=coef.float(),
                                  bias_value=(ym - xm @ coef).float().reshape(1))
    return {}


class WeightedLinearRegression(LinearModel):
    """Weighted least squares with intercept in closed form (what scikit-learn's ``LinearRegression`` fits
    for Captum's KernelShap, minimum-norm when rank-deficient), so KernelShap runs without scikit-learn."""

    def __init__(self) -> None:
        super().__init__(train_fn=_fit_weighted_least_squares)


def captum_kernel_shap(game: Game, n_players: int, target: int, n_samples: int, batch_size: int,
                       seed: int) -> torch.Tensor:
    """Captum ``KernelShap`` of ``game`` for one target column, seeded: ``(n_players,)``."""
    ks = KernelShap(game)
    ks.interpretable_model = WeightedLinearRegression()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        phi = ks.attribute(torch.ones(1, n_players), baselines=torch.zeros(1, n_players), target=target,
                           feature_mask=torch.arange(n_players)[None], n_samples=n_samples,
                           perturbations_per_eval=batch_size)
    return phi[0].float()


def captum_permutation_shapley(game: Game, n_players: int, target: int, n_samples: int, batch_size: int,
                               seed: int) -> torch.Tensor:
    """Captum ``ShapleyValueSampling`` (``n_samples`` random permutations) for one target: ``(n_players,)``."""
    sv = ShapleyValueSampling(game)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        phi = sv.attribute(torch.ones(1, n_players), baselines=torch.zeros(1, n_players), target=target,
                           feature_mask=torch.arange(n_players)[None], n_samples=n_samples,
                           perturbations_per_eval=batch_size)
    return phi[0].float()


def coalitions(n_players: int) -> torch.Tensor:
    """All ``2^n`` coalitions as rows: row ``s`` has player ``j`` present iff bit ``j`` of ``s`` is set.

    >>> coalitions(2).tolist()
    [[0, 0], [1, 0], [0, 1], [1, 1]]
    """
    s = torch.arange(2**n_players)[:, None]
    return ((s >> torch.arange(n_players)[None]) & 1).to(torch.uint8)


def exact_shapley(values: torch.Tensor) -> torch.Tensor:
    """Exact Shapley values ``(T, n)`` from the values ``(2^n, T)`` of every coalition (ordered as
    :func:`coalitions`): ``phi_j = sum_{S not containing j} |S|! (n-|S|-1)! / n! (v(S + j) - v(S))``.

    >>> exact_shapley(torch.tensor([[0.0], [1.0], [2.0], [5.0]])).tolist()   # v = x0 + 2 x1 + 2 x0 x1
    [[2.0, 3.0]]
    """
    n = int(round(math.log2(values.shape[0])))
    v = values.double()
    idx = torch.arange(2**n)
    size = coalitions(n).sum(1).long()
    weight = torch.tensor([math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)],
                          dtype=torch.float64)
    phi = torch.zeros(v.shape[1], n, dtype=torch.float64)
    for j in range(n):
        without = idx[(idx >> j) & 1 == 0]
        phi[:, j] = (weight[size[without]][:, None] * (v[without | (1 << j)] - v[without])).sum(0)
    return phi.float()


# -- methods ----------------------------------------------------------------------------------------------
@contextmanager
def _bar(total: int, desc: str, show: bool | None) -> Iterator[Any]:
    bar = progress_bar(total, desc, show)
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


def _check_common(batch: Batch, cells: int, n_samples: int, seed: int | None) -> tuple[int, int, int]:
    side = min(min(img.size) for img in batch.images)
    return (check_int("cells", cells, 1, side, why=" (the smallest image side, in pixels)"),
            check_int("n_samples", n_samples, 1), resolve_seed(seed))


@register_method("kernel_shap", leaf=_LEAF, tier=_TIER,
                 summary="KernelSHAP (Captum) over image grid cells and prompt words")
def kernel_shap(
    subject: Subject,
    batch: Batch,
    targets: list[Target],
    cells: int = 8,
    n_samples: int = 200,
    baseline: str = "mean",
    words: bool = True,
    seed: int | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> MethodOutput:
    """KernelSHAP: Captum ``KernelShap`` with one player per cell of a ``cells x cells`` grid on each original
    image and per prompt word (``words``). Captum samples ``n_samples`` coalitions, ``batch_size`` per
    forward (``perturbations_per_eval``), seeded by ``seed`` (``None``: drawn from torch's global RNG;
    torch's RNG is restored afterwards). Each coalition is a perturbed row (absent cells -> ``baseline``,
    absent words -> pad token) scoring all targets at once. The regression is weighted least squares in
    closed form (scikit-learn not needed). ``pixel_maps``: each cell's value on its pixels;
    ``extras["phi"]``: ``(T, players)`` values.

    >>> out = kernel_shap(lm, batch, targets, cells=4, n_samples=64)             # doctest: +SKIP
    """
    ev = Evaluator(subject, batch, targets, batch_size, progress, desc="KernelSHAP")
    cells, n_samples, seed = _check_common(batch, cells, n_samples, seed)
    features = CellFeatures(subject, batch, cells, baseline, words)
    with _bar(math.ceil(n_samples / batch_size), "KernelSHAP", progress) as bar:
        game = Game(ev, features, bar)
        phi = torch.stack([captum_kernel_shap(game, features.n_players, t, n_samples, batch_size, seed)
                           for t in range(len(targets))])
    extras = {"forward_calls": ev.calls, "rows": ev.rows, "n_samples": n_samples, "seed": seed, "baseline": baseline}
    return features.output(phi, extras)


@register_method("mm_shap", leaf=_LEAF, tier=_TIER,
                 summary="MM-SHAP: Shapley share of each target owed to the image vs the text (T-SHAP / I-SHAP)")
def mm_shap(
    subject: Subject,
    batch: Batch,
    targets: list[Target],
    cells: int | str = "auto",
    estimator: str = "auto",
    n_samples: int = 200,
    baseline: str = "mean",
    seed: int | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> MethodOutput:
    """MM-SHAP (Parcalabescu & Frank 2023): Shapley values ``phi`` of image-cell and prompt-word players,
    then per target ``T-SHAP = sum|phi_text| / (sum|phi_text| + sum|phi_image|)`` and ``I-SHAP = 1 - T-SHAP``
    (``extras["t_shap"]``, ``extras["i_shap"]``; NaN when every ``phi`` is 0).

    ``cells="auto"``: ``ceil(sqrt(#words))`` per side, so each image has about as many players as the text
    (as in the paper). ``estimator``: "exact" (all ``2^players`` coalitions), "kernel" (Captum KernelShap,
    ``n_samples`` coalitions), "permutation" (Captum ShapleyValueSampling, ``n_samples`` permutations,
    ``n_samples x players`` rows), "auto" = exact up to 10 players, else kernel.

    >>> out = mm_shap(lm, batch, targets)                                         # doctest: +SKIP
    >>> out.extras["t_shap"]                                                      # doctest: +SKIP
    [0.41, 0.37]
    """
    if estimator not in ESTIMATORS:
        raise InputError(f"estimator={estimator!r} is not supported: pass one of {', '.join(ESTIMATORS)}")
    ev = Evaluator(subject, batch, targets, batch_size, progress, desc="MM-SHAP")
    if cells == "auto":
        n_words = len(prompt_words(subject, batch))
        cells = max(1, min(math.ceil(math.sqrt(n_words)), min(min(img.size) for img in batch.images)))
    cells, n_samples, seed = _check_common(batch, cells, n_samples, seed)
    features = CellFeatures(subject, batch, cells, baseline, words=True)
    n = features.n_players
    if estimator == "auto":
        estimator = "exact" if n <= EXACT_MAX_PLAYERS else "kernel"
    if estimator == "exact":
        if n > EXACT_LIMIT:
            raise InputError(f"estimator='exact' needs at most {EXACT_LIMIT} players, got {n}: "
                             "pass fewer cells or estimator='kernel'")
        z = coalitions(n)
        phi = exact_shapley(ev.run(len(z), lambda lo, hi: features.rows(z[lo:hi])))
    else:
        run = captum_kernel_shap if estimator == "kernel" else captum_permutation_shapley
        rows = n_samples if estimator == "kernel" else n_samples * n + 1
        with _bar(math.ceil(rows / batch_size), "MM-SHAP", progress) as bar:
            game = Game(ev, features, bar)
            phi = torch.stack([run(game, n, t, n_samples, batch_size, seed) for t in range(len(targets))])
    image = phi[:, : features.n_image_players].abs().sum(1).double()
    text = phi[:, features.n_image_players :].abs().sum(1).double()
    total = image + text
    t_shap = torch.where(total > 0, text / total.clamp_min(1e-300), torch.full_like(total, float("nan")))
    extras = {"forward_calls": ev.calls, "rows": ev.rows, "estimator": estimator, "n_samples": n_samples,
              "seed": seed, "baseline": baseline, "t_shap": t_shap.tolist(), "i_shap": (1 - t_shap).tolist()}
    return features.output(phi, extras)
