"""Gradient-tier attribution over the language model's input embeddings.

Every method here differentiates a :class:`~mmlens.model.targets.Target` (answer tokens, or a contrast)
with respect to ``lm.blocks.0.resid_pre``: the LM's input embeddings, i.e. the projector output at image
positions and the token embeddings at text positions. Parameters are frozen for the duration (no parameter
gradients are built or accumulated). ``objective`` picks the differentiated quantity: the target tokens'
summed log-probs (``"log_prob"``, the default here), logits (``"logit"``) or joint probability (``"prob"``).

A contrast whose foil has several tokens runs the foil sequence through its own forward with the *same*
input embeddings at the positions both sequences share (the prompt, and the answer before the span), and
backward goes through the difference, so the gradient is that of ``value(answer) - value(foil)``.

- ``saliency`` / ``input_x_gradient`` / ``gradcam``: one forward, one backward per target.
- ``integrated_gradients`` / ``smoothgrad``: Captum on :func:`embedding_function`, a function of the
  embeddings at the attributed positions (image, text or both).

>>> import mmlens                                                                    # doctest: +SKIP
>>> ex = mmlens.explain(lm, "cat.png", "what is this?", method="integrated_gradients", steps=32)  # doctest: +SKIP
>>> ex.extras["convergence_delta"]                                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image, ImageFilter

from mmlens.attribution.output import MethodOutput
from mmlens.catalog import register_method
from mmlens.errors import UnsupportedModelError
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.model.targets import Target, check_objective, foil_batch
from mmlens.util.options import check_choice, check_float, check_int

INPUT = "lm.blocks.0.resid_pre"
BASELINES = ("black", "blur", "noise", "zero")
MODALITIES = ("image", "text", "both")

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


def leaf_input(tr: Any) -> list[torch.Tensor]:
    """Make the LM input embeddings a leaf that requires grad (inside a trace); returns a list that receives it."""
    holder: list[torch.Tensor] = []

    def make_leaf(t: torch.Tensor) -> torch.Tensor:
        x = t.detach().requires_grad_(True)
        holder.append(x)
        return x

    tr.edit(INPUT, make_leaf)
    return holder


def tied_foil_logits(subject: Subject, batch: Batch, target: Target, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``target``'s foil sequence (see :func:`~mmlens.model.targets.foil_batch`) whose LM input
    embeddings at the positions shared with ``batch`` are ``x``'s (``(1, N, D)``, differentiable), so a
    backward through the contrast reaches ``x`` from both forwards."""
    shared = batch.prompt_len + target.indices[0]

    def tie(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :shared].to(t.dtype), t[:, shared:]], dim=1)

    with subject.trace() as tr:
        tr.edit(INPUT, tie)
        return subject.forward(foil_batch(subject, batch, target))


def input_gradients(subject: Subject, batch: Batch, targets: list[Target],
                    objective: str = "log_prob") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """LM input embeddings ``(N, D)`` and, per target, the gradient of the target w.r.t. them ``(N, D)``.

    One forward pass (plus one per multi-token contrast foil); one backward per target (the graph is kept
    between targets).
    """
    check_objective(objective)
    with gradient_mode(subject):
        with subject.trace() as tr:
            holder = leaf_input(tr)
            logits = subject.forward(batch)
        x = holder[0]
        grads = []
        for t, target in enumerate(targets):
            foil = tied_foil_logits(subject, batch, target, x) if target.needs_foil_forward else None
            value = target.value(logits, batch, objective, foil).sum()
            (g,) = torch.autograd.grad(value, x, retain_graph=t < len(targets) - 1)
            grads.append(g[0].detach().float())
    return x[0].detach().float(), grads


# -- saliency, input x gradient, Grad-CAM ---------------------------------------------------------------------


@register_method(
    "saliency",
    leaf="data/input-output",
    tier="gradient",
    summary="L2 norm of the gradient of the target w.r.t. each position's input embedding",
)
def saliency(subject: Subject, batch: Batch, targets: list[Target], objective: str = "log_prob") -> MethodOutput:
    """Score of position ``p`` = ``|| d target / d e_p ||_2`` with ``e_p`` the LM input embedding at ``p``."""
    _, grads = input_gradients(subject, batch, targets, objective)
    return MethodOutput(torch.stack([g.norm(dim=-1) for g in grads]).cpu())


@register_method(
    "input_x_gradient",
    leaf="data/input-output",
    tier="gradient",
    summary="gradient times input embedding, summed over the hidden dimension, per position",
)
def input_x_gradient(subject: Subject, batch: Batch, targets: list[Target], objective: str = "log_prob") -> MethodOutput:
    """Score of position ``p`` = ``sum_d e_p[d] * d target / d e_p[d]`` (signed)."""
    x, grads = input_gradients(subject, batch, targets, objective)
    return MethodOutput(torch.stack([(g * x).sum(-1) for g in grads]).cpu())


@register_method(
    "gradcam",
    leaf="model/architecture/analysis",
    tier="gradient",
    summary="Grad-CAM over each image's tokens at the language model's input (projector output)",
)
def gradcam(subject: Subject, batch: Batch, targets: list[Target], objective: str = "log_prob") -> MethodOutput:
    """Grad-CAM with the image tokens as the spatial axis and the hidden units as channels.

    Activation ``A`` = ``lm.blocks.0.resid_pre`` at image ``i``'s positions (the projector output, one row
    per LM image token); channel weights ``w_c = mean_p dtarget/dA[p, c]`` over image ``i``'s positions;
    score ``= relu(sum_c w_c A[p, c])`` at those positions, 0 elsewhere.

    Why the LM side and not the vision tower's last block: the map from vision-tower tokens to LM image
    positions is family-specific (a CLS token dropped, LLaVA-NeXT tiles and unpadding, Qwen2-VL's 2x2 merge),
    while the LM's image positions already carry each family's geometry, so this works unchanged for every
    family and its scores map onto pixels through the same ``geometry.heatmap`` as every other method.
    """
    x, grads = input_gradients(subject, batch, targets, objective)
    scores = torch.zeros(len(targets), batch.seq_len)
    for t, g in enumerate(grads):
        for geom in batch.geometry:
            pos = geom.positions.to(x.device)
            weights = g[pos].mean(0)
            scores[t, geom.positions] = torch.relu(x[pos] @ weights).cpu()
    return MethodOutput(scores)


# -- Captum on a function of the embeddings ---------------------------------------------------------------------


def input_embeddings(subject: Subject, batch: Batch) -> torch.Tensor:
    """The LM input embeddings ``(1, N, D)`` of ``batch`` (detached)."""
    with torch.no_grad(), subject.trace() as tr:
        tr.capture(INPUT)
        subject.forward(batch)
    return tr[INPUT]


def attributed_positions(batch: Batch, modality: str) -> torch.Tensor:
    """Image positions, prompt-text positions, or both (sorted)."""
    check_choice("modality", modality, MODALITIES)
    image, text = batch.image_positions(), batch.text_positions()
    if modality == "image":
        return image
    if modality == "text":
        return text
    return torch.cat([image, text]).sort().values


def embedding_logits(subject: Subject, batch: Batch, positions: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``g(emb) -> logits (k, seq, V)`` when the LM input embeddings at ``positions`` are ``emb``
    (``(k, len(positions), D)``; the other positions keep ``batch``'s embeddings). The ``k`` rows run as one
    batch of ``k`` through the language model (the vision tower runs once per call)."""
    pos = torch.as_tensor(positions, dtype=torch.long)

    def g(emb: torch.Tensor) -> torch.Tensor:
        def put(t: torch.Tensor) -> torch.Tensor:
            out = t.detach().expand(emb.shape[0], -1, -1).clone()
            out[:, pos.to(out.device)] = emb.to(out.device, out.dtype)
            return out

        with subject.trace() as tr:
            tr.edit(INPUT, put)
            return subject.forward(batch)

    return g


def embedding_function(
    subject: Subject, batch: Batch, target: Target, positions: torch.Tensor, objective: str = "log_prob"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(emb) -> (k,)``: ``target``'s value when the LM input embeddings at ``positions`` are ``emb``
    (see :func:`embedding_logits`); this is the function Captum attributes. A multi-token contrast foil runs
    its own forward with the same ``emb`` (``positions`` are prompt positions, shared by both sequences).

    >>> f = embedding_function(lm, batch, target, batch.image_positions())      # doctest: +SKIP
    >>> IntegratedGradients(f).attribute(x, baselines=torch.zeros_like(x))      # doctest: +SKIP
    """
    logits = embedding_logits(subject, batch, positions)
    if not target.needs_foil_forward:
        return lambda emb: target.value(logits(emb), batch, objective)
    foil = embedding_logits(subject, foil_batch(subject, batch, target), positions)
    return lambda emb: target.value(logits(emb), batch, objective, foil(emb))


def _image_variant(subject: Subject, batch: Batch, images: list[Image.Image]) -> torch.Tensor:
    """LM input embeddings ``(1, P, D)`` at ``batch``'s image positions when its images are replaced."""
    other = subject.prepare(images, batch.prompt)
    pos = batch.image_positions()
    if not torch.equal(other.image_positions(), pos):
        raise RuntimeError("the baseline images got a different image-token layout than the originals")
    return input_embeddings(subject, other)[:, pos.to(subject.device)]


def _baseline_images(batch: Batch, kind: str, blur_radius: float | None) -> list[Image.Image]:
    if kind == "black":
        return [Image.new("RGB", img.size) for img in batch.images]
    if kind == "blur":
        return [img.filter(ImageFilter.GaussianBlur(blur_radius or max(1.0, 0.05 * max(img.size))))
                for img in batch.images]
    noise = []  # uniform noise pixels from torch's (seeded) generator
    for img in batch.images:
        arr = torch.randint(0, 256, (img.height, img.width, 3), dtype=torch.uint8).numpy()
        noise.append(Image.fromarray(arr))
    return noise


def baseline_token_id(subject: Subject) -> int | None:
    """The token whose embedding stands for "no text": unk, else pad, else eos, skipping any whose
    embedding is all zeros (``padding_idx`` rows often are)."""
    tok, weight = subject.tokenizer, subject.model.get_input_embeddings().weight
    for name in ("unk_token_id", "pad_token_id", "eos_token_id"):
        value = getattr(tok, name, None)
        if value is not None and 0 <= int(value) < weight.shape[0] and bool(weight[int(value)].any()):
            return int(value)
    return None


def _text_variant(subject: Subject, batch: Batch, token_id: int) -> torch.Tensor:
    """LM input embeddings ``(1, N, D)`` of ``batch`` with every prompt-text token replaced by ``token_id``
    (through the model's own embedding module, so family scaling such as Gemma's applies; the input ids,
    and so Qwen2-VL's position ids, stay unchanged)."""
    emb = subject.model.get_input_embeddings()
    with torch.no_grad():
        vec = emb(torch.tensor([[token_id]], device=subject.device))[0, 0]
    text = batch.text_positions().to(subject.device)

    def swap(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out[:, text] = vec.to(out.dtype)
        return out

    swap._mmlens = True  # type: ignore[attr-defined]  (counted by count_hooks while installed)
    handle = emb.register_forward_hook(swap)
    try:
        return input_embeddings(subject, batch)
    finally:
        handle.remove()


def baseline_embeddings(subject: Subject, batch: Batch, positions: torch.Tensor, kind: str = "black",
                        blur_radius: float | None = None) -> torch.Tensor:
    """Baseline ``(1, len(positions), D)`` for the LM input embeddings at ``positions``.

    - "zero": zeros at every position;
    - "black" / "blur" / "noise": image positions get the embeddings of a black / blurred (Gaussian,
      ``blur_radius`` px, default 5% of the longer side) / uniform-noise image of the same size (hence the
      same token layout); prompt-text positions get the embedding of :func:`baseline_token_id`.

    Why not zeros for text: LMs normalise their input (RMSNorm / LayerNorm), so on the straight path from
    the zero vector nearly all the change happens in the first few percent of it, and a fixed number of
    steps misses it (large convergence delta); a token embedding has the norm of a real input.
    """
    check_choice("baseline", kind, BASELINES)
    hidden = int(subject.model.config.get_text_config().hidden_size)
    dtype = next(subject.model.parameters()).dtype
    base = torch.zeros(1, len(positions), hidden, dtype=dtype, device=subject.device)
    if kind == "zero":
        return base
    positions = torch.as_tensor(positions, dtype=torch.long)
    image_pos = batch.image_positions()
    is_image = torch.isin(positions, image_pos)
    if bool(is_image.any()):
        emb = _image_variant(subject, batch, _baseline_images(batch, kind, blur_radius))  # (1, P_img, D)
        where = torch.searchsorted(image_pos, positions[is_image])
        base[:, is_image.to(base.device)] = emb[:, where.to(base.device)].to(dtype)
    token = baseline_token_id(subject)
    if bool((~is_image).any()) and token is not None:
        text = _text_variant(subject, batch, token)
        base[:, (~is_image).to(base.device)] = text[:, positions[~is_image].to(base.device)].to(dtype)
    return base


def _batch_size(value: Any) -> int:
    return check_int("internal_batch_size", value)


@register_method(
    "integrated_gradients",
    leaf="data/input-output",
    tier="gradient",
    summary="Integrated Gradients (Captum) over the image (and/or text) token embeddings, summed per position",
)
def integrated_gradients(
    subject: Subject,
    batch: Batch,
    targets: list[Target],
    steps: int = 32,
    baseline: str = "black",
    modality: str = "image",
    internal_batch_size: int = 8,
    blur_radius: float | None = None,
    objective: str = "log_prob",
) -> MethodOutput:
    """Captum ``IntegratedGradients`` on :func:`embedding_function` (one call per target), ``n_steps=steps``
    (Gauss-Legendre), from :func:`baseline_embeddings` to the input. Score of position ``p`` = the
    attributions of its embedding summed over the hidden dimension, so the scores sum to
    ``f(input) - f(baseline)`` up to Captum's convergence delta (``extras["convergence_delta"]``).
    """
    steps = check_int("steps", steps)
    check_choice("baseline", baseline, BASELINES)
    check_objective(objective)
    ibs = _batch_size(internal_batch_size)
    if blur_radius is not None:
        blur_radius = check_float("blur_radius", blur_radius, 0.0, open_low=True)
    from captum.attr import IntegratedGradients

    positions = attributed_positions(batch, modality)
    x = input_embeddings(subject, batch)[:, positions.to(subject.device)]
    base = baseline_embeddings(subject, batch, positions, baseline, blur_radius)
    scores = torch.zeros(len(targets), batch.seq_len)
    deltas = []
    with torch.no_grad():  # f(input) and f(baseline) of every target from one forward of two rows
        end_logits = embedding_logits(subject, batch, positions)(torch.cat([x, base]))
        ends = torch.stack([embedding_function(subject, batch, t, positions, objective)(torch.cat([x, base]))
                            if t.needs_foil_forward else t.value(end_logits, batch, objective)
                            for t in targets], dim=1).double()  # (2, T)
    with gradient_mode(subject):
        for t, target in enumerate(targets):
            ig = IntegratedGradients(embedding_function(subject, batch, target, positions, objective))
            attr = ig.attribute(x, baselines=base, n_steps=steps, internal_batch_size=ibs)
            scores[t, positions] = attr[0].detach().float().sum(-1).cpu()
            # Captum's convergence delta: sum of attributions - (f(input) - f(baseline))
            deltas.append(float(attr.detach().double().sum() - (ends[0, t] - ends[1, t])))
    return MethodOutput(scores, extras={"convergence_delta": deltas, "positions": modality})


@register_method(
    "smoothgrad",
    leaf="data/input-output",
    tier="gradient",
    summary="SmoothGrad (Captum NoiseTunnel over saliency) on the image (and/or text) token embeddings",
)
def smoothgrad(
    subject: Subject,
    batch: Batch,
    targets: list[Target],
    nt_samples: int = 10,
    stdevs: float = 0.15,
    modality: str = "image",
    internal_batch_size: int = 8,
    objective: str = "log_prob",
) -> MethodOutput:
    """Captum ``NoiseTunnel(Saliency)`` (``nt_type="smoothgrad"``) on :func:`embedding_function`: the mean
    over ``nt_samples`` noisy copies of ``|d target / d e|``; score of position ``p`` = the L2 norm of that
    over the hidden dimension. ``stdevs`` is relative: the noise std is ``stdevs`` times the std of the
    attributed embeddings (embedding scales differ between models).
    """
    nt_samples = check_int("nt_samples", nt_samples)
    stdevs = check_float("stdevs", stdevs, 0.0, open_low=True)
    check_objective(objective)
    ibs = _batch_size(internal_batch_size)
    from captum.attr import NoiseTunnel, Saliency

    positions = attributed_positions(batch, modality)
    x = input_embeddings(subject, batch)[:, positions.to(subject.device)]
    sigma = stdevs * float(x.float().std())
    scores = torch.zeros(len(targets), batch.seq_len)
    with gradient_mode(subject):
        for t, target in enumerate(targets):
            nt = NoiseTunnel(Saliency(embedding_function(subject, batch, target, positions, objective)))
            attr = nt.attribute(x, nt_type="smoothgrad", nt_samples=nt_samples, nt_samples_batch_size=ibs, stdevs=sigma)
            scores[t, positions] = attr[0].detach().float().norm(dim=-1).cpu()
    return MethodOutput(scores, extras={"noise_std": sigma, "positions": modality})
