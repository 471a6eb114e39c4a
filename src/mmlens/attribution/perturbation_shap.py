"""Shapley-value methods over image regions and prompt words: KernelSHAP (Captum) and MM-SHAP.

Players are the regions of each original image (the cells of a ``cells x cells`` grid, or superpixels:
:mod:`mmlens.attribution.regions`) and the words of the prompt. A coalition (binary vector) becomes one
perturbed row: absent regions show the baseline, absent words are replaced by the pad (or unk) token.
:class:`~mmlens.attribution.regions.Game` evaluates coalitions in batches, each distinct coalition once,
all targets at once, so Captum's per-target runs (same seed, same samples) cost the model forwards of the
first target only.

>>> from mmlens.testing import tiny_subject
>>> from mmlens.testing.tiny_models import tiny_images
>>> from mmlens.model.targets import resolve_targets
>>> lm = tiny_subject("llava")
>>> batch = lm.prepare(tiny_images("llava", 1), "what color is the cat ?", answer="red cat")
>>> out = mm_shap(lm, batch, resolve_targets(lm.tokenizer, batch), cells=2)    # 4 cells + 6 words: exact
>>> out.extras["estimator"], out.extras["rows"], round(out.extras["t_shap"][0] + out.extras["i_shap"][0], 6)
('exact', 1024, 1.0)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from captum._utils.models.linear_model.model import LinearModel
from captum.attr import KernelShap, ShapleyValueSampling

from mmlens.attribution.output import MethodOutput
from mmlens.attribution.perturbation import resolve_seed
from mmlens.attribution.regions import Game, RegionFeatures
from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.model.targets import Target
from mmlens.perturb.scoring import Evaluator, prompt_words
from mmlens.util.options import check_int
from mmlens.util.progress import progress_bar

_LEAF, _TIER = "data/input-output", "black-box"
ESTIMATORS = ("auto", "exact", "kernel", "permutation")
#: "auto" computes exact Shapley values up to this many players (2^10 = 1024 coalitions)
EXACT_MAX_PLAYERS = 10
#: "exact" refuses more players than this (2^16 = 65,536 coalitions)
EXACT_LIMIT = 16


# -- Captum glue ----------------------------------------------------------------------------------------
def _fit_weighted_least_squares(model: LinearModel, dataloader: Any, construct_kwargs: dict, alpha: float = 0.0,
                                **_: Any) -> dict:
    xs, ys, ws = zip(*[(b[0], b[1], b[2] if len(b) == 3 else torch.ones(len(b[0]))) for b in dataloader])
    x, y, w = (torch.cat(v).double() for v in (xs, ys, ws))
    w = w.flatten()
    xm = (w[:, None] * x).sum(0) / w.sum()
    ym = (w * y.flatten()).sum() / w.sum()
    sw = w.sqrt()[:, None]
    a, b = (x - xm) * sw, (y.flatten() - ym)[:, None] * sw
    if alpha > 0:  # ridge: sqrt(alpha) I appended as extra rows with target 0
        a = torch.cat([a, math.sqrt(alpha) * torch.eye(x.shape[1], dtype=a.dtype)])
        b = torch.cat([b, torch.zeros(x.shape[1], 1, dtype=b.dtype)])
    coef = torch.linalg.lstsq(a, b, driver="gelsd").solution[:, 0]
    model._construct_model_params(norm_type=None, weight_values=coef.float(),
                                  bias_value=(ym - xm @ coef).float().reshape(1))
    return {}


class WeightedLinearRegression(LinearModel):
    """Weighted least squares with intercept in closed form (what scikit-learn's ``LinearRegression`` fits
    for Captum's KernelShap, minimum-norm when rank-deficient), so KernelShap runs without scikit-learn;
    ``alpha > 0`` fits weighted ridge regression instead (scikit-learn's ``Ridge``, LIME's surrogate)."""

    def __init__(self, alpha: float = 0.0) -> None:
        super().__init__(train_fn=lambda *args, **kwargs: _fit_weighted_least_squares(*args, alpha=alpha, **kwargs))


def attribute_players(explainer: Any, n_players: int, target: int, n_samples: int, batch_size: int,
                      seed: int) -> torch.Tensor:
    """A Captum perturbation explainer (KernelShap, ShapleyValueSampling, Lime) over ``n_players`` binary
    players (all present vs all absent) for one target column, seeded (torch's RNG restored after):
    ``(n_players,)``. With the same seed every target sees the same samples, so a caching :class:`Game`
    runs the model once for all targets."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        phi = explainer.attribute(torch.ones(1, n_players), baselines=torch.zeros(1, n_players), target=target,
                                  feature_mask=torch.arange(n_players)[None], n_samples=n_samples,
                                  perturbations_per_eval=batch_size)
    return phi[0].float()


def captum_kernel_shap(game: Game, n_players: int, target: int, n_samples: int, batch_size: int,
                       seed: int) -> torch.Tensor:
    """Captum ``KernelShap`` of ``game`` for one target column, seeded: ``(n_players,)``."""
    ks = KernelShap(game)
    ks.interpretable_model = WeightedLinearRegression()
    return attribute_players(ks, n_players, target, n_samples, batch_size, seed)


def captum_permutation_shapley(game: Game, n_players: int, target: int, n_samples: int, batch_size: int,
                               seed: int) -> torch.Tensor:
    """Captum ``ShapleyValueSampling`` (``n_samples`` random permutations) for one target: ``(n_players,)``."""
    return attribute_players(ShapleyValueSampling(game), n_players, target, n_samples, batch_size, seed)


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
def check_players(batch: Batch, cells: int, n_samples: int, seed: int | None) -> tuple[int, int, int]:
    """``cells``, ``n_samples`` and the seed checked (one-line InputError otherwise)."""
    side = min(min(img.size) for img in batch.images)
    return (check_int("cells", cells, 1, side, why=" (the smallest image side, in pixels)"),
            check_int("n_samples", n_samples, 1), resolve_seed(seed))


@register_method("kernel_shap", leaf=_LEAF, tier=_TIER,
                 summary="KernelSHAP (Captum) over image grid cells (or superpixels) and prompt words")
def kernel_shap(
    subject: Subject,
    batch: Batch,
    targets: list[Target],
    cells: int = 8,
    regions: str = "grid",
    n_segments: int = 50,
    n_samples: int = 200,
    baseline: str = "mean",
    words: bool = True,
    seed: int | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> MethodOutput:
    """KernelSHAP: Captum ``KernelShap`` with one player per region of each original image (``regions``:
    "grid" = ``cells x cells`` cells, or "slic" / "felzenszwalb" superpixels, about ``n_segments``; see
    :func:`~mmlens.attribution.regions.region_labels`) and per prompt word (``words``). Captum samples ``n_samples`` coalitions, ``batch_size`` per
    forward (``perturbations_per_eval``), seeded by ``seed`` (``None``: drawn from torch's global RNG;
    torch's RNG is restored afterwards). Each coalition is a perturbed row (absent cells -> ``baseline``,
    absent words -> pad token) scoring all targets at once. The regression is weighted least squares in
    closed form (scikit-learn not needed). ``pixel_maps``: each region's value on its pixels;
    ``extras["phi"]``: ``(T, players)`` values.

    >>> out = kernel_shap(lm, batch, targets, cells=4, n_samples=64)             # doctest: +SKIP
    """
    ev = Evaluator(subject, batch, targets, batch_size, progress, desc="KernelSHAP")
    cells, n_samples, seed = check_players(batch, cells, n_samples, seed)
    features = RegionFeatures(subject, batch, cells, baseline, words, regions, n_segments)
    with progress_bar(math.ceil(n_samples / batch_size), "KernelSHAP", progress) as bar:
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
    cells, n_samples, seed = check_players(batch, cells, n_samples, seed)
    features = RegionFeatures(subject, batch, cells, baseline, words=True)
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
        with progress_bar(math.ceil(rows / batch_size), "MM-SHAP", progress) as bar:
            game = Game(ev, features, bar)
            phi = torch.stack([run(game, n, t, n_samples, batch_size, seed) for t in range(len(targets))])
    image = phi[:, : features.n_image_players].abs().sum(1).double()
    text = phi[:, features.n_image_players :].abs().sum(1).double()
    total = image + text
    t_shap = torch.where(total > 0, text / total.clamp_min(1e-300), torch.full_like(total, float("nan")))
    extras = {"forward_calls": ev.calls, "rows": ev.rows, "estimator": estimator, "n_samples": n_samples,
              "seed": seed, "baseline": baseline, "t_shap": t_shap.tolist(), "i_shap": (1 - t_shap).tolist()}
    return features.output(phi, extras)
