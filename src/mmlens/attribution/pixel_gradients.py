"""Pixel-level gradients: saliency, Integrated Gradients and SmoothGrad with respect to the original image's
pixels, through a differentiable copy of the image processor (:mod:`mmlens.model.pixels`: resize, crop,
normalise, patching; its forward equals the processor's ``pixel_values``, checked on every call).

Each method returns a full-resolution map per image (``pixel_maps``: channels summed), and per-token scores
pooled over each token's pixel box, so the faithfulness metrics read them as they read token-level maps.
Every family's processor is reproduced (tiles, crops and patch rows included); an input whose
``pixel_values`` the copy does not reproduce within 1e-4 is refused with one line naming the difference.

>>> import mmlens                                                                    # doctest: +SKIP
>>> ex = mmlens.explain(lm, "cat.png", "what is this?", method="pixel_integrated_gradients", steps=16)  # doctest: +SKIP
>>> ex.pixel_maps[0][0].shape == (image.height, image.width)                        # doctest: +SKIP
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from mmlens.attribution.batched import batched_grad, check_target_batch, chunks, resolve_target_batch
from mmlens.attribution.gradient import gradient_mode
from mmlens.attribution.output import MethodOutput
from mmlens.attribution.path_rule import gauss_legendre
from mmlens.attribution.perturbation_masks import position_scores
from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.model.batch import Batch, cat_inputs
from mmlens.model.images import blurred
from mmlens.model.pixels import PixelPipeline, check_pixels, image_tensor
from mmlens.model.subject import Subject
from mmlens.model.targets import Target, check_objective, foil_batch, targets_tail
from mmlens.util.options import check_choice, check_float, check_int

PIXEL_BASELINES = ("black", "blur")
Images = list[torch.Tensor]


def pixel_function(subject: Subject, batch: Batch, targets: list[Target], objective: str = "log_prob",
                   exact: bool = True) -> tuple[Callable[[Images], torch.Tensor], Images]:
    """``(f, images)``: ``f(rows) -> (T, k)`` the targets' values on ``k`` rows of ``batch`` whose images are
    ``rows[i][r]`` (``rows[i]``: ``(k, H, W, 3)`` per image, 0..255, fed through
    :class:`~mmlens.model.pixels.PixelPipeline`), all ``k`` rows in one forward; and the original images as
    ``(H, W, 3)`` tensors. Refuses (one line) a family whose pipeline does not match its processor."""
    pipe = PixelPipeline(subject)
    check_pixels(pipe, batch)
    foils = {t: foil_batch(subject, batch, target) for t, target in enumerate(targets) if target.needs_foil_forward}

    def run(b: Batch, pixels: list[torch.Tensor], tail: int) -> torch.Tensor:  # k rows: consecutive prompts' images
        return subject.forward(replace(b, inputs=cat_inputs([{**b.inputs, "pixel_values": p} for p in pixels])),
                               tail=tail)

    def f(rows: Images) -> torch.Tensor:
        pixels = [pipe([img[r] for img in rows], exact) for r in range(rows[0].shape[0])]
        logits = run(batch, pixels, targets_tail(targets, batch))
        return torch.stack([t.value(logits, batch, objective, run(foils[i], pixels, t.foil_tail) if i in foils else None)
                            for i, t in enumerate(targets)])

    return f, [image_tensor(img) for img in batch.images]


def pixel_grads(f: Callable[[Images], torch.Tensor], rows: Images, n_targets: int,
                size: int) -> tuple[torch.Tensor, Images]:
    """``(values, grads)``: ``f(rows)`` ``(T, k)`` and, per image, each row's ``d value_t / d pixel``
    ``(T, k, H, W, 3)`` from one forward of the ``k`` rows and one batched backward per ``size`` targets."""
    leaves = [img.detach().clone().requires_grad_(True) for img in rows]
    values = f(leaves)
    out: list[list[torch.Tensor]] = [[] for _ in leaves]
    parts = list(chunks(n_targets, size))
    for c, part in enumerate(parts):
        grads = batched_grad(values[part.start:part.stop], leaves, retain_graph=c < len(parts) - 1)
        for i, g in enumerate(grads):
            out[i].append(g.detach())
    return values.detach(), [torch.cat(g) for g in out]


def _setup(subject: Subject, batch: Batch, targets: list[Target], objective: str, exact: bool,
           target_batch: int | None, rows: int = 1) -> tuple[Callable[[Images], torch.Tensor], Images, int]:
    check_objective(objective)
    check_target_batch(target_batch)
    if not isinstance(exact, bool):
        raise InputError(f"exact={exact!r}: pass True (8-bit rounding as the processor) or False (smooth copy)")
    f, images = pixel_function(subject, batch, targets, objective, exact)
    return f, images, resolve_target_batch(target_batch, subject, batch, rows)


def _output(batch: Batch, maps: list[torch.Tensor], extras: dict) -> MethodOutput:
    """``maps[i]``: ``(T, H_i, W_i)`` per image -> pixel maps and pooled per-token scores."""
    n = maps[0].shape[0]
    pixel_maps = [[m[t].float().numpy() for m in maps] for t in range(n)]
    return MethodOutput(position_scores(batch, n, pixel_maps), pixel_maps, extras)


@register_method(
    "pixel_saliency",
    leaf="data/input-output",
    tier="gradient",
    summary="|gradient| of the target w.r.t. the original image's pixels (through the processor), summed over RGB",
)
def pixel_saliency(subject: Subject, batch: Batch, targets: list[Target], objective: str = "log_prob",
                   exact: bool = True, target_batch: int | None = None) -> MethodOutput:
    """Map of image ``i`` = ``sum_c |d target / d x_i[h, w, c]|`` on the original pixels (0..255 scale);
    ``exact``: the forward sees exactly the processor's ``pixel_values`` (8-bit rounding straight-through)."""
    with gradient_mode(subject):
        f, images, size = _setup(subject, batch, targets, objective, exact, target_batch)
        _, grads = pixel_grads(f, [x[None] for x in images], len(targets), size)
    return _output(batch, [g[:, 0].abs().sum(-1) for g in grads], {"exact": exact})


@register_method(
    "pixel_integrated_gradients",
    leaf="data/input-output",
    tier="gradient",
    summary="Integrated Gradients (Captum's rule) over the original image's pixels from a blurred / black image",
)
def pixel_integrated_gradients(subject: Subject, batch: Batch, targets: list[Target], steps: int = 32,
                               baseline: str = "blur", blur_radius: float | None = None,
                               objective: str = "log_prob", exact: bool = True, internal_batch_size: int = 8,
                               target_batch: int | None = None) -> MethodOutput:
    """Captum's ``IntegratedGradients`` rule (Gauss-Legendre nodes and weights, ``n_steps=steps``) on the
    original pixels, from a blurred (Gaussian, ``blur_radius`` px, default 1/16 of the longer side; the
    default) or black copy of each image (from black, every bright background pixel differs from the baseline
    and collects attribution: on the demo data its maps point at the background, see benchmarks/RESULTS.md);
    map = attributions summed over RGB (signed), so a map sums to its share of ``f(input) - f(baseline)``;
    ``extras["convergence_delta"]`` is Captum's (sum - that difference). The path runs
    ``internal_batch_size`` points per forward (Captum's internal batching: each point's pixel pipeline and
    vision tower run in that forward; fewer use less memory), every target sharing each forward. With
    ``exact=True`` the path's forward rounds to 8 bits as the processor does (gradients straight-through),
    which adds to the delta; ``exact=False`` integrates the smooth copy of the processor.
    """
    steps = check_int("steps", steps)
    check_choice("baseline", baseline, PIXEL_BASELINES)
    if blur_radius is not None:
        blur_radius = check_float("blur_radius", blur_radius, 0.0, open_low=True)
    ibs = check_int("internal_batch_size", internal_batch_size)

    step_sizes, alphas = gauss_legendre(steps)
    with gradient_mode(subject):
        f, images, size = _setup(subject, batch, targets, objective, exact, target_batch, min(ibs, steps))
        bases = ([torch.zeros_like(x) for x in images] if baseline == "black"
                 else [image_tensor(blurred(img, blur_radius)) for img in batch.images])
        diffs = [x - b for x, b in zip(images, bases)]
        total = [torch.zeros(len(targets), *x.shape, dtype=torch.float64) for x in images]
        for span in chunks(steps, ibs):  # rows of path points b + a * (x - b), one forward each chunk
            rows = [torch.stack([b + alphas[j] * d for j in span]) for b, d in zip(bases, diffs)]
            _, grads = pixel_grads(f, rows, len(targets), size)
            for acc, g in zip(total, grads):
                for r, j in enumerate(span):
                    acc += step_sizes[j] * g[:, r].double()
        with torch.no_grad():  # f(input) and f(baseline) from one forward of two rows
            ends = f([torch.stack([x, b]) for x, b in zip(images, bases)]).double()
    attr = [acc * d for acc, d in zip(total, diffs)]  # (T, H, W, 3) per image
    sums = sum(a.flatten(1).sum(1) for a in attr)
    deltas = [float(sums[t] - (ends[t, 0] - ends[t, 1])) for t in range(len(targets))]
    return _output(batch, [a.sum(-1) for a in attr], {"convergence_delta": deltas, "baseline": baseline,
                                                      "exact": exact})


@register_method(
    "pixel_smoothgrad",
    leaf="data/input-output",
    tier="gradient",
    summary="SmoothGrad: mean |gradient| w.r.t. the original pixels over noisy copies of the image",
)
def pixel_smoothgrad(subject: Subject, batch: Batch, targets: list[Target], nt_samples: int = 10,
                     stdevs: float = 0.15, objective: str = "log_prob", exact: bool = True,
                     internal_batch_size: int = 8, target_batch: int | None = None) -> MethodOutput:
    """Mean over ``nt_samples`` copies of the image with Gaussian pixel noise of std ``stdevs`` x 255 (SmoothGrad's
    noise level relative to the pixel range) of ``sum_c |d target / d x[h, w, c]|``; ``internal_batch_size``
    noisy copies per forward (drawn in the same order whatever the batch size: the maps do not depend on
    it), every target sharing each forward."""
    nt_samples = check_int("nt_samples", nt_samples)
    stdevs = check_float("stdevs", stdevs, 0.0, open_low=True)
    ibs = check_int("internal_batch_size", internal_batch_size)
    with gradient_mode(subject):
        f, images, size = _setup(subject, batch, targets, objective, exact, target_batch, min(ibs, nt_samples))
        total = [torch.zeros(len(targets), *x.shape[:2], dtype=torch.float64) for x in images]
        for span in chunks(nt_samples, ibs):
            noisy = [[x + torch.randn(x.shape, dtype=x.dtype) * (stdevs * 255.0) for x in images] for _ in span]
            _, grads = pixel_grads(f, [torch.stack(row) for row in zip(*noisy)], len(targets), size)
            for acc, g in zip(total, grads):
                for r in range(len(span)):
                    acc += g[:, r].abs().sum(-1).double()
    return _output(batch, [t / nt_samples for t in total], {"noise_std": stdevs * 255.0, "exact": exact})
