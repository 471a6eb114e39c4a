"""LIME over superpixels (or grid cells) and prompt words: a local linear surrogate of the model's answer.

Ribeiro et al. 2016, as in LIME's image explainer: the image is cut into superpixels (SLIC by default,
:mod:`mmlens.attribution.regions`), random subsets of superpixels and prompt words are hidden (superpixels
show the baseline, words become the pad token), and a weighted ridge regression of the target on the
present / absent indicators gives each region and word a score. Captum's ``Lime`` draws the samples;
the model runs ``batch_size`` perturbed rows per forward, every target from the same rows.

>>> from mmlens.testing import tiny_subject
>>> from mmlens.testing.tiny_models import tiny_images
>>> from mmlens.model.targets import resolve_targets
>>> lm = tiny_subject("llava")
>>> batch = lm.prepare(tiny_images("llava", 1), "what color is the cat ?", answer="red cat")
>>> out = lime(lm, batch, resolve_targets(lm.tokenizer, batch), n_samples=64, seed=0)
>>> out.pixel_maps[0][0].shape, out.extras["regions"], out.extras["forward_calls"]
((32, 48), 'slic', 2)
"""

from __future__ import annotations

import math

import torch
from captum.attr import Lime
from captum.attr._core.lime import get_exp_kernel_similarity_function

from mmlens.attribution.output import MethodOutput
from mmlens.attribution.perturbation_shap import (
    WeightedLinearRegression,
    attribute_players,
    check_players,
)
from mmlens.attribution.regions import Game, RegionFeatures
from mmlens.catalog import register_method
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.model.targets import Target
from mmlens.perturb.scoring import Evaluator
from mmlens.util.options import check_float
from mmlens.util.progress import progress_bar


@register_method("lime", leaf="data/input-output", tier="black-box",
                 summary="LIME (Captum): ridge surrogate over superpixels (SLIC) and prompt words")
def lime(
    subject: Subject,
    batch: Batch,
    targets: list[Target],
    regions: str = "slic",
    n_segments: int = 50,
    cells: int = 8,
    n_samples: int = 300,
    kernel_width: float = 0.25,
    alpha: float = 1.0,
    baseline: str = "mean",
    words: bool = True,
    seed: int | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> MethodOutput:
    """Captum ``Lime`` with one player per region of each image (``regions``: "slic" / "felzenszwalb"
    superpixels, about ``n_segments``, or "grid" = ``cells x cells``) and per prompt word (``words``).

    ``n_samples`` random coalitions (each player present with probability 1/2), weighted by
    ``exp(-d^2 / kernel_width^2)`` with ``d`` the cosine distance to the full input (LIME's image
    default 0.25), fitted by weighted ridge regression with penalty ``alpha`` (LIME's default 1). Seeded
    by ``seed`` (``None``: drawn from torch's global RNG; torch's RNG is restored afterwards).
    ``pixel_maps``: each region's coefficient on its pixels; ``extras["phi"]``: ``(T, players)``.

    >>> out = lime(lm, batch, targets, n_segments=40, n_samples=500)              # doctest: +SKIP
    """
    ev = Evaluator(subject, batch, targets, batch_size, progress, desc="LIME")
    cells, n_samples, seed = check_players(batch, cells, n_samples, seed)
    kernel_width = check_float("kernel_width", kernel_width, 0.0, open_low=True)
    alpha = check_float("alpha", alpha, 0.0)
    features = RegionFeatures(subject, batch, cells, baseline, words, regions, n_segments)
    n = features.n_players
    similarity = get_exp_kernel_similarity_function("cosine", kernel_width)
    with progress_bar(math.ceil(n_samples / batch_size), "LIME", progress) as bar:
        game = Game(ev, features, bar)
        explainer = Lime(game, interpretable_model=WeightedLinearRegression(alpha), similarity_func=similarity)
        phi = [attribute_players(explainer, n, t, n_samples, batch_size, seed) for t in range(len(targets))]
    extras = {"forward_calls": ev.calls, "rows": ev.rows, "n_samples": n_samples, "seed": seed,
              "baseline": baseline, "kernel_width": kernel_width, "alpha": alpha}
    return features.output(torch.stack(phi), extras)
