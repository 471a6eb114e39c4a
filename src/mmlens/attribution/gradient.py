"""Gradient-tier attribution over the language model's input embeddings.

Every method here differentiates a :class:`~mmlens.model.targets.Target` (answer tokens, or a contrast)
with respect to the adapter's input point (:func:`input_point`): for an MLLM ``lm.blocks.0.resid_pre``, the
LM's input embeddings, i.e. the projector output at image positions and the token embeddings at text
positions; for a dual encoder ``joint.embed``, its towers' input embeddings (patch embeddings at image
positions, caption token embeddings at text positions; the target is the image-caption similarity). Parameters are frozen for the duration (no parameter
gradients are built or accumulated). ``objective`` picks the differentiated quantity: the target tokens'
summed log-probs (``"log_prob"``, the default here), logits (``"logit"``) or joint probability (``"prob"``).

A contrast whose foil has several tokens runs the foil sequence through its own forward with the *same*
input embeddings at the positions both sequences share (the prompt, and the answer before the span), and
backward goes through the difference, so the gradient is that of ``value(answer) - value(foil)``.

- ``saliency`` / ``input_x_gradient`` / ``gradcam``: one forward, one batched backward per ``target_batch``
  targets (default: :func:`~mmlens.attribution.batched.resolve_target_batch`).
- ``integrated_gradients`` / ``smoothgrad``: in :mod:`mmlens.attribution.captum_gradients` (same contract).

>>> import mmlens                                                                    # doctest: +SKIP
>>> ex = mmlens.explain(lm, "cat.png", "what is this?", method="input_x_gradient")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from mmlens.attribution.batched import batched_grad, chunks, resolve_target_batch
from mmlens.attribution.output import MethodOutput
from mmlens.catalog import register_method
from mmlens.errors import UnsupportedModelError
from mmlens.model.batch import Batch
from mmlens.model.feature_cache import cached_image_features
from mmlens.model.subject import Subject
from mmlens.model.targets import Target, check_objective, foil_batch, targets_tail

INPUT = "lm.blocks.0.resid_pre"


def input_point(subject: Subject) -> str:
    """The hook point holding ``subject``'s input embeddings of the whole sequence (what gradients are taken of);
    for a model whose images are cross-attention keys (Mllama), the cross-attention states ``xattn.states``."""
    return subject.adapter.input_point


def scores_output(batch: Batch, scores: torch.Tensor, extras: dict[str, Any] | None = None) -> MethodOutput:
    """A method's ``(T, N)`` scores over the input point's rows: sequence positions, or the cross-attention keys
    when the images enter through them (then the sequence scores are zeros and the keys carry the map)."""
    if batch.in_key_space:
        return MethodOutput(torch.zeros(scores.shape[0], batch.seq_len), extras=extras or {}, key_scores=scores)
    return MethodOutput(scores, extras=extras or {})

# -- model state for gradients ----------------------------------------------------------------------------


@contextmanager
def frozen_params(model: torch.nn.Module) -> Iterator[None]:
    """Parameters ``requires_grad=False`` inside (restored after): gradients reach only the inputs we ask for."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _impls(config: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"": config._attn_implementation}
    for name in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, name, None)
        if sub is not None and hasattr(sub, "_attn_implementation"):
            out[name] = _impls(sub)
    return out


@contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Eager attention inside (every sub-model's implementation restored after).

    Eager attention returns the probabilities it multiplies the values with, so a trace captures them
    inside the autograd graph (``capture_attention(rows=None, detach=False)``): what attention-gradient
    methods differentiate. Not thread-safe: it switches the shared model's configuration.
    """
    saved = _impls(model.config)
    model.set_attn_implementation("eager")
    try:
        if model.config.get_text_config()._attn_implementation != "eager":
            raise UnsupportedModelError(f"{type(model).__name__} cannot switch to eager attention, which "
                                        "attention-gradient methods need: use saliency or integrated_gradients")
        yield
    finally:
        model.set_attn_implementation(saved)


@contextmanager
def gradient_mode(subject: Subject, eager: bool = False) -> Iterator[None]:
    """Grad enabled, parameters frozen, optionally eager attention."""
    with frozen_params(subject.model), torch.enable_grad():
        if eager:
            with eager_attention(subject.model):
                yield
        else:
            yield


def leaf_input(tr: Any, point: str = INPUT) -> list[torch.Tensor]:
    """Make the input embeddings at ``point`` a leaf that requires grad (inside a trace); returns a list that
    receives it."""
    holder: list[torch.Tensor] = []

    def make_leaf(t: torch.Tensor) -> torch.Tensor:
        x = t.detach().requires_grad_(True)
        holder.append(x)
        return x

    tr.edit(point, make_leaf)
    return holder


def tied_foil_logits(subject: Subject, batch: Batch, target: Target, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``target``'s foil sequence (see :func:`~mmlens.model.targets.foil_batch`) whose LM input
    embeddings at the positions shared with ``batch`` are ``x``'s (``(1, N, D)``, differentiable), so a
    backward through the contrast reaches ``x`` from both forwards."""
    shared = batch.prompt_len + target.indices[0]

    def tie(t: torch.Tensor) -> torch.Tensor:
        if batch.in_key_space:  # x: the cross-attention states, the same images for both sequences
            return x.to(t.dtype)
        return torch.cat([x[:, :shared].to(t.dtype), t[:, shared:]], dim=1)

    with subject.trace() as tr:
        tr.edit(input_point(subject), tie)
        return subject.forward(foil_batch(subject, batch, target), tail=target.foil_tail)


#: reduces one chunk's gradients ``(k, N, D)`` (float32) given the input embeddings ``(N, D)`` to ``(k, ...)``
Reduce = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def input_gradients(subject: Subject, batch: Batch, targets: list[Target], objective: str = "log_prob",
                    target_batch: int | None = None, reduce: Reduce | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """LM input embeddings ``(N, D)`` and the targets' gradients w.r.t. them, ``(T, N, D)`` float32, or
    ``reduce(x, grads)`` of each chunk of targets concatenated (so the full ``(T, N, D)`` stack never exists).

    One forward pass (plus one per multi-token contrast foil); one batched backward per ``target_batch``
    targets (the graph is kept between chunks), see :mod:`mmlens.attribution.batched`.
    """
    check_objective(objective)
    size = resolve_target_batch(target_batch, subject, batch)
    out = []
    with gradient_mode(subject), cached_image_features(subject):  # a foil forward reuses the image features
        with subject.trace() as tr:
            holder = leaf_input(tr, input_point(subject))
            logits = subject.forward(batch, tail=targets_tail(targets, batch))
        x = holder[0]
        xf = x[0].detach().float()
        parts = list(chunks(len(targets), size))
        for c, part in enumerate(parts):
            values = []
            for t in part:
                target = targets[t]
                foil = tied_foil_logits(subject, batch, target, x) if target.needs_foil_forward else None
                values.append(target.value(logits, batch, objective, foil).sum())
            (g,) = batched_grad(torch.stack(values), x, retain_graph=c < len(parts) - 1)
            g = g[:, 0].detach().float()
            out.append(g if reduce is None else reduce(xf, g))
            del g, values
    return xf, torch.cat(out)


# -- saliency, input x gradient, Grad-CAM ---------------------------------------------------------------------


@register_method(
    "saliency",
    leaf="data/input-output",
    tier="gradient",
    summary="L2 norm of the gradient of the target w.r.t. each position's input embedding",
)
def saliency(subject: Subject, batch: Batch, targets: list[Target], objective: str = "log_prob",
             target_batch: int | None = None) -> MethodOutput:
    """Score of position ``p`` = ``|| d target / d e_p ||_2`` with ``e_p`` the LM input embedding at ``p``."""
    _, scores = input_gradients(subject, batch, targets, objective, target_batch, lambda x, g: g.norm(dim=-1).cpu())
    return scores_output(batch, scores)


@register_method(
    "input_x_gradient",
    leaf="data/input-output",
    tier="gradient",
    summary="gradient times input embedding, summed over the hidden dimension, per position",
)
def input_x_gradient(subject: Subject, batch: Batch, targets: list[Target], objective: str = "log_prob",
                     target_batch: int | None = None) -> MethodOutput:
    """Score of position ``p`` = ``sum_d e_p[d] * d target / d e_p[d]`` (signed)."""
    _, scores = input_gradients(subject, batch, targets, objective, target_batch, lambda x, g: (g * x).sum(-1).cpu())
    return scores_output(batch, scores)


@register_method(
    "gradcam",
    leaf="model/architecture/analysis",
    tier="gradient",
    summary="Grad-CAM over each image's tokens at the language model's input (projector output)",
)
def gradcam(subject: Subject, batch: Batch, targets: list[Target], objective: str = "log_prob",
            target_batch: int | None = None) -> MethodOutput:
    """Grad-CAM with the image tokens as the spatial axis and the hidden units as channels.

    Activation ``A`` = ``lm.blocks.0.resid_pre`` at image ``i``'s positions (the projector output, one row
    per LM image token; a dual encoder's patch embeddings at ``joint.embed``); channel weights ``w_c = mean_p dtarget/dA[p, c]`` over image ``i``'s positions;
    score ``= relu(sum_c w_c A[p, c])`` at those positions, 0 elsewhere.

    Why the LM side and not the vision tower's last block: the map from vision-tower tokens to LM image
    positions is family-specific (a CLS token dropped, LLaVA-NeXT tiles and unpadding, Qwen2-VL's 2x2 merge),
    while the LM's image positions already carry each family's geometry, so this works unchanged for every
    family and its scores map onto pixels through the same ``geometry.heatmap`` as every other method.
    ``vision_gradcam`` (:mod:`mmlens.attribution.vision_gradcam`) reads the tower's own block instead.
    """

    def cam(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        scores = torch.zeros(g.shape[0], x.shape[0])  # x: (N, D), N = sequence positions or cross-attention keys
        for geom in batch.geometry:
            pos = geom.positions.to(x.device)
            weights = g[:, pos].mean(1)  # (k, D)
            scores[:, geom.positions] = torch.relu(weights @ x[pos].T).cpu()
        return scores

    _, scores = input_gradients(subject, batch, targets, objective, target_batch, cam)
    return scores_output(batch, scores)
