"""Integrated Gradients and SmoothGrad: Captum's algorithms on a function of the language model's input
embeddings at the attributed positions (image, text or both), with image baselines built by re-running the
vision tower on a black / blurred / noise image (see :mod:`mmlens.attribution.gradient` for the shared
gradient machinery, objectives and contrasts).

Captum's rules (its Gauss-Legendre nodes and weights and internal batching; NoiseTunnel's noise draws) run
here with every target sharing each forward along the path (:func:`path_gradients`: one batched backward
per ``target_batch`` targets) and the vision tower + projector computed once, since only the LM inputs
change; the numbers equal a Captum call per target on :func:`embedding_function`.

>>> import mmlens                                                                    # doctest: +SKIP
>>> ex = mmlens.explain(lm, "cat.png", "what is this?", method="integrated_gradients", steps=32)  # doctest: +SKIP
>>> ex.extras["convergence_delta"]                                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from mmlens.attribution.batched import batched_grad, check_target_batch, chunks, resolve_target_batch
from mmlens.attribution.gradient import gradient_mode, input_point, scores_output
from mmlens.attribution.output import MethodOutput
from mmlens.attribution.path_rule import gauss_legendre
from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.model.batch import Batch, repeat_inputs
from mmlens.model.feature_cache import cached_image_features
from mmlens.model.images import blurred
from mmlens.model.subject import Subject
from mmlens.model.targets import Target, check_objective, foil_batch, targets_tail
from mmlens.util.options import check_choice, check_float, check_int

BASELINES = ("black", "blur", "noise", "zero")
MODALITIES = ("image", "text", "both")


# -- Captum on a function of the embeddings ---------------------------------------------------------------------


class _Reached(Exception):
    """Raised inside the forward once the input point is reached: the rest of the model need not run."""


def input_embeddings(subject: Subject, batch: Batch) -> torch.Tensor:
    """The input embeddings ``(1, N, D)`` of ``batch`` (detached; see :func:`~mmlens.attribution.gradient.input_point`).

    The forward stops at the input point (the language model does not run)."""
    got: list[torch.Tensor] = []

    def stop(t: torch.Tensor) -> torch.Tensor:
        got.append(t.detach())
        raise _Reached

    try:
        with torch.no_grad(), subject.trace() as tr:
            tr.edit(input_point(subject), stop)
            subject.forward(batch)
    except _Reached:
        pass
    if not got:
        raise RuntimeError(f"the forward never reached {input_point(subject)!r}")
    return got[0]


def attributed_positions(batch: Batch, modality: str) -> torch.Tensor:
    """Image positions, prompt-text positions, or both (sorted); the image keys of the cross-attention states
    where the images enter through cross-attention (then only ``modality="image"``: the text is another input)."""
    check_choice("modality", modality, MODALITIES)
    if batch.in_key_space:
        if modality != "image":
            raise InputError(f"modality={modality!r}: this model's images enter through cross-attention keys and its "
                             "text through the token sequence, two separate inputs: use modality='image'")
        return batch.key_positions()
    image, text = batch.image_positions(), batch.text_positions()
    if modality == "image":
        return image
    if modality == "text":
        return text
    return torch.cat([image, text]).sort().values


def embedding_logits(subject: Subject, batch: Batch, positions: torch.Tensor,
                     tail: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``g(emb) -> logits (k, seq, V)`` when the LM input embeddings at ``positions`` are ``emb``
    (``(k, len(positions), D)``; the other positions keep ``batch``'s embeddings). The ``k`` rows run as one
    batch of ``k`` through the language model (the vision tower runs once per call). ``tail``: logits of the
    last ``tail`` positions only (see :meth:`~mmlens.model.subject.Subject.forward`)."""
    pos = torch.as_tensor(positions, dtype=torch.long)

    def g(emb: torch.Tensor) -> torch.Tensor:
        rows = batch  # cross-attention states (key space): the token rows must be k rows too
        if batch.in_key_space and emb.shape[0] > 1:
            rows = replace(batch, inputs=repeat_inputs(batch.inputs, emb.shape[0]))

        def put(t: torch.Tensor) -> torch.Tensor:
            out = t.detach().expand(emb.shape[0], -1, -1).clone()
            out[:, pos.to(out.device)] = emb.to(out.device, out.dtype)
            return out

        with subject.trace() as tr:
            tr.edit(input_point(subject), put)
            return subject.forward(rows, tail=tail)

    return g


def embedding_function(
    subject: Subject, batch: Batch, target: Target, positions: torch.Tensor, objective: str = "log_prob"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(emb) -> (k,)``: ``target``'s value when the LM input embeddings at ``positions`` are ``emb``
    (see :func:`embedding_logits`); a direct Captum call per target attributes this function. A multi-token
    contrast foil runs its own forward with the same ``emb`` (``positions`` are prompt positions, shared by
    both sequences).

    >>> f = embedding_function(lm, batch, target, batch.image_positions())      # doctest: +SKIP
    >>> IntegratedGradients(f).attribute(x, baselines=torch.zeros_like(x))      # doctest: +SKIP
    """
    logits = embedding_logits(subject, batch, positions, target.tail(batch))
    if not target.needs_foil_forward:
        return lambda emb: target.value(logits(emb), batch, objective)
    foil = embedding_logits(subject, foil_batch(subject, batch, target), positions, target.foil_tail)
    return lambda emb: target.value(logits(emb), batch, objective, foil(emb))


def _image_variant(subject: Subject, batch: Batch, images: list[Image.Image]) -> torch.Tensor:
    """LM input embeddings ``(1, P, D)`` at ``batch``'s image positions when its images are replaced."""
    other = subject.prepare(batch.visual_input(images), batch.prompt)
    pos = batch.key_positions() if batch.in_key_space else batch.image_positions()
    if not torch.equal(other.key_positions() if other.in_key_space else other.image_positions(), pos):
        raise RuntimeError("the baseline images got a different image-token layout than the originals")
    return input_embeddings(subject, other)[:, pos.to(subject.device)]


def _baseline_images(batch: Batch, kind: str, blur_radius: float | None) -> list[Image.Image]:
    if kind == "black":
        return [Image.new("RGB", img.size) for img in batch.images]
    if kind == "blur":
        return [blurred(img, blur_radius) for img in batch.images]
    noise = []  # uniform noise pixels from torch's (seeded) generator
    for img in batch.images:
        arr = torch.randint(0, 256, (img.height, img.width, 3), dtype=torch.uint8).numpy()
        noise.append(Image.fromarray(arr))
    return noise


def baseline_token_id(subject: Subject) -> int | None:
    """The token whose embedding stands for "no text": unk, else pad, else eos, skipping any whose
    embedding is all zeros (``padding_idx`` rows often are)."""
    tok, weight = subject.tokenizer, subject.adapter.token_embedding().weight
    for name in ("unk_token_id", "pad_token_id", "eos_token_id"):
        value = getattr(tok, name, None)
        row = subject.adapter.embedding_row(value) if value is not None else -1
        if 0 <= row < weight.shape[0] and bool(weight[row].any()):
            return int(value)
    return None


def _text_variant(subject: Subject, batch: Batch, token_id: int) -> torch.Tensor:
    """Input embeddings ``(1, N, D)`` of ``batch`` with every prompt-text token replaced by ``token_id``
    (through the model's own embedding module, so family scaling such as Gemma's applies; the input ids,
    and so Qwen2-VL's position ids, stay unchanged). The embedding module sees the whole sequence (an MLLM:
    the text positions are replaced) or only its text (a dual encoder's text tower: all of it is)."""
    emb = subject.adapter.token_embedding()
    with torch.no_grad():
        vec = emb(torch.tensor([[subject.adapter.embedding_row(token_id)]], device=subject.device))[0, 0]
    text = batch.text_positions().to(subject.device)

    def swap(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        if out.shape[1] == batch.seq_len:
            out[:, text] = vec.to(out.dtype)
        elif out.shape[1] == len(text):
            out[:] = vec.to(out.dtype)
        else:
            raise RuntimeError(f"the input embedding module saw {out.shape[1]} positions, not the sequence's "
                               f"{batch.seq_len} or its {len(text)} text positions")
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
      ``blur_radius`` px, default 1/16 of the longer side) / uniform-noise image of the same size (hence the
      same token layout); prompt-text positions get the embedding of :func:`baseline_token_id`.

    Why not zeros for text: LMs normalise their input (RMSNorm / LayerNorm), so on the straight path from
    the zero vector nearly all the change happens in the first few percent of it, and a fixed number of
    steps misses it (large convergence delta); a token embedding has the norm of a real input.
    """
    check_choice("baseline", kind, BASELINES)
    hidden = subject.adapter.input_width()
    dtype = next(subject.model.parameters()).dtype
    base = torch.zeros(1, len(positions), hidden, dtype=dtype, device=subject.device)
    if kind == "zero":
        return base
    positions = torch.as_tensor(positions, dtype=torch.long)
    image_pos = batch.key_positions() if batch.in_key_space else batch.image_positions()
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


def foil_logits(subject: Subject, batch: Batch, targets: list[Target],
                positions: torch.Tensor) -> dict[int, Callable[[torch.Tensor], torch.Tensor]]:
    """``{t: logits function of the embeddings}`` for the targets whose contrast foil needs its own forward."""
    return {t: embedding_logits(subject, foil_batch(subject, batch, target), positions, target.foil_tail)
            for t, target in enumerate(targets) if target.needs_foil_forward}


def path_gradients(subject: Subject, batch: Batch, targets: list[Target], positions: torch.Tensor,
                   rows: Iterable[torch.Tensor], fold: Callable[[int, range, torch.Tensor], None],
                   foils: dict[int, Callable[[torch.Tensor], torch.Tensor]], objective: str = "log_prob",
                   target_batch: int | None = None, rows_per_target: int = 1) -> None:
    """For each ``(k, P, D)`` tensor of LM input embeddings at ``positions`` in ``rows``: one forward of its
    ``k`` rows (call it inside :func:`cached_image_features`: the vision tower then runs once), then one
    batched backward per ``target_batch`` targets; ``fold(i, part, grads)`` receives the gradients
    ``(len(part), k, P, D)`` of targets ``part`` (each row's target value w.r.t. that row)."""
    size = resolve_target_batch(target_batch, subject, batch, rows_per_target)
    parts = list(chunks(len(targets), size))
    logits_of = embedding_logits(subject, batch, positions, targets_tail(targets, batch))
    with gradient_mode(subject):
        for i, emb in enumerate(rows):
            emb = emb.detach().requires_grad_(True)
            logits = logits_of(emb)
            for c, part in enumerate(parts):
                values = torch.stack([targets[t].value(logits, batch, objective, foils[t](emb) if t in foils else None)
                                      for t in part])  # (len(part), k)
                (grads,) = batched_grad(values, emb, retain_graph=c < len(parts) - 1)
                fold(i, part, grads)


@register_method(
    "integrated_gradients",
    leaf="data/input-output",
    tier="gradient",
    summary="Integrated Gradients (Captum's rule) over the image (and/or text) token embeddings, summed per position",
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
    target_batch: int | None = None,
    convergence_delta: bool = True,
) -> MethodOutput:
    """Captum's ``IntegratedGradients`` rule on :func:`embedding_function` with ``n_steps=steps``
    (Gauss-Legendre, Captum's nodes and weights and its internal batching: ``internal_batch_size`` path
    points per forward), from :func:`baseline_embeddings` to the input. Score of position ``p`` = the
    attributions of its embedding summed over the hidden dimension, so the scores sum to ``f(input) -
    f(baseline)`` up to the convergence delta (``extras["convergence_delta"]``, Captum's definition; one
    forward of two rows, skipped with ``convergence_delta=False`` as Captum's ``return_convergence_delta``).

    Every target shares each forward along the path (one batched backward per ``target_batch`` targets), and
    the vision tower runs once for all of them: the numbers equal a Captum call per target.
    """
    steps = check_int("steps", steps)
    check_choice("baseline", baseline, BASELINES)
    check_objective(objective)
    ibs = _batch_size(internal_batch_size)
    check_target_batch(target_batch)
    if blur_radius is not None:
        blur_radius = check_float("blur_radius", blur_radius, 0.0, open_low=True)
    with cached_image_features(subject):  # the vision tower runs once per distinct image
        return _integrated_gradients(subject, batch, targets, steps, baseline, modality, ibs, blur_radius, objective,
                                     target_batch, bool(convergence_delta))


def _integrated_gradients(subject: Subject, batch: Batch, targets: list[Target], steps: int, baseline: str,
                          modality: str, ibs: int, blur_radius: float | None, objective: str,
                          target_batch: int | None, delta: bool = True) -> MethodOutput:
    positions = attributed_positions(batch, modality)
    full = input_embeddings(subject, batch)
    x = full[:, positions.to(subject.device)]
    base = baseline_embeddings(subject, batch, positions, baseline, blur_radius)
    step_sizes, alphas = gauss_legendre(steps)
    spans = list(chunks(steps, ibs))
    foils = foil_logits(subject, batch, targets, positions)
    diff = x - base
    attr = torch.zeros(len(targets), len(positions), device=subject.device, dtype=torch.float64)
    parts: list[torch.Tensor | None] = [None] * len(targets)

    def fold(i: int, part: range, grads: torch.Tensor) -> None:
        k = grads.shape[1]
        sizes = torch.tensor([step_sizes[j] for j in spans[i]]).float().view(1, k, 1).to(grads.device)
        total = (grads.contiguous().view(len(part), k, -1) * sizes).sum(1).view(len(part), *grads.shape[2:])
        for j, t in enumerate(part):  # Captum: attribution of this batch = summed scaled grads * (input - baseline)
            a = total[j] * diff[0]
            parts[t] = a if parts[t] is None else parts[t] + a
            if i == len(spans) - 1:
                attr[t] = parts[t].double().sum(-1)
                parts[t] = None

    rows = (torch.cat([base + alphas[j] * diff for j in span]) for span in spans)
    path_gradients(subject, batch, targets, positions, rows, fold, foils, objective, target_batch, min(ibs, steps))
    scores = torch.zeros(len(targets), full.shape[1])
    scores[:, positions] = attr.float().cpu()
    if not delta:
        return scores_output(batch, scores, {"positions": modality})
    with torch.no_grad():  # f(input) and f(baseline) of every target from one forward of two rows
        ends_in = torch.cat([x, base])
        end_logits = embedding_logits(subject, batch, positions, targets_tail(targets, batch))(ends_in)
        ends = torch.stack([t.value(end_logits, batch, objective, foils[i](ends_in) if i in foils else None)
                            for i, t in enumerate(targets)], dim=1).double()  # (2, T)
    # Captum's convergence delta: sum of attributions - (f(input) - f(baseline))
    deltas = [float(attr[t].sum() - (ends[0, t] - ends[1, t])) for t in range(len(targets))]
    return scores_output(batch, scores, {"convergence_delta": deltas, "positions": modality})


@register_method(
    "smoothgrad",
    leaf="data/input-output",
    tier="gradient",
    summary="SmoothGrad (Captum NoiseTunnel's rule over saliency) on the image (and/or text) token embeddings",
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
    target_batch: int | None = None,
) -> MethodOutput:
    """Captum's ``NoiseTunnel(Saliency)`` rule (``nt_type="smoothgrad"``) on :func:`embedding_function`: the
    mean over ``nt_samples`` noisy copies of ``|d target / d e|``, drawn ``internal_batch_size`` at a time as
    Captum draws them; score of position ``p`` = the L2 norm of that over the hidden dimension. ``stdevs``
    is relative: the noise std is ``stdevs`` times the std of the attributed embeddings (embedding scales
    differ between models). Every target sees the same noisy copies (one forward each, shared; one batched
    backward per ``target_batch`` targets; the vision tower runs once).
    """
    nt_samples = check_int("nt_samples", nt_samples)
    stdevs = check_float("stdevs", stdevs, 0.0, open_low=True)
    check_objective(objective)
    ibs = _batch_size(internal_batch_size)
    check_target_batch(target_batch)

    with cached_image_features(subject):  # the vision tower runs once
        return _smoothgrad(subject, batch, targets, nt_samples, stdevs, modality, ibs, objective, target_batch)


def _smoothgrad(subject: Subject, batch: Batch, targets: list[Target], nt_samples: int, stdevs: float,
                modality: str, ibs: int, objective: str, target_batch: int | None) -> MethodOutput:
    positions = attributed_positions(batch, modality)
    full = input_embeddings(subject, batch)
    x = full[:, positions.to(subject.device)]
    sigma = stdevs * float(x.float().std())
    sizes = [len(r) for r in chunks(nt_samples, ibs)]
    total = torch.zeros(len(targets), *x.shape[1:], device=subject.device, dtype=x.dtype)

    def noisy() -> Iterator[torch.Tensor]:
        for k in sizes:  # as Captum's NoiseTunnel draws them
            noise = torch.normal(0, torch.tensor(sigma, device=x.device).repeat((k, *x.shape[1:])))
            yield x.repeat_interleave(k, dim=0) + noise

    def fold(i: int, part: range, grads: torch.Tensor) -> None:
        total[part.start:part.stop] += grads.abs().sum(1).to(total.dtype)

    path_gradients(subject, batch, targets, positions, noisy(), fold, foil_logits(subject, batch, targets, positions),
                   objective, target_batch, sizes[0])
    scores = torch.zeros(len(targets), full.shape[1])
    scores[:, positions] = (total / nt_samples).float().norm(dim=-1).cpu()
    return scores_output(batch, scores, {"noise_std": sigma, "positions": modality})
