"""Causal tracing / activation patching (Meng et al. 2022, adapted to image tokens).

A clean run and a corrupted run (noised image-token embeddings, another image, or another prompt of the
same length) share one batched forward; then each cell (layer, position group) of the grid restores the
clean activation there inside the corrupted run, many cells per batched forward. The indirect effect of a
cell is ``p(restored) - p(corrupted)`` for the target (by default the whole answer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.layer.logit_lens import check_layers, check_positions
from mmlens.model.batch import Batch, cat_inputs
from mmlens.model.labels import position_labels
from mmlens.model.subject import Subject
from mmlens.model.targets import resolve_targets
from mmlens.results.grid import GridResult
from mmlens.util.progress import progress

COMPONENTS = {"resid": "resid_post", "attn": "attn.out", "mlp": "mlp.out"}
CORRUPTIONS = ("noise", "image", "prompt")


@dataclass
class CausalTrace(GridResult):
    """``values[layer, group]`` = indirect effect; ``meta`` holds p_clean, p_corrupt and forward counts."""


def _groups(batch: Batch, positions: Any) -> dict[str, torch.Tensor]:
    if positions is None or positions == "each":
        return {str(p): torch.tensor([p]) for p in range(batch.seq_len)}
    if isinstance(positions, Mapping):
        groups = {str(k): check_positions(batch, v) for k, v in positions.items()}
        if not groups:
            raise InputError("no position groups given: pass a dict name -> positions, or 'each'")
        return groups
    return {str(int(p)): torch.tensor([int(p)]) for p in check_positions(batch, positions)}


def _corrupted(subject: Subject, batch: Batch, corrupt: str, corrupt_with: Any) -> dict[str, Any]:
    """Model inputs of the corrupted run (for 'noise' the clean inputs: the noise is added by a hook)."""
    clean = subject.model_inputs(batch)
    if corrupt == "noise":
        return clean
    if corrupt_with is None:
        raise InputError(f"corrupt={corrupt!r} needs corrupt_with=: pass the other {corrupt}")
    if corrupt == "image":
        images = corrupt_with if isinstance(corrupt_with, (list, tuple)) else [corrupt_with]
        other = subject.prepare(images, batch.prompt, answer=batch.answer_ids.tolist())
    else:
        other = subject.prepare(batch.visual_input(), str(corrupt_with), answer=batch.answer_ids.tolist())
    if other.seq_len != batch.seq_len or other.prompt_len != batch.prompt_len:
        raise InputError(f"the corrupted {corrupt} gives {other.seq_len} tokens, the clean input {batch.seq_len}: "
                         f"pass a {corrupt} of the same size / token length")
    inputs = subject.model_inputs(other)
    if all(torch.equal(inputs[k], clean[k]) for k in clean if torch.is_tensor(clean[k])):
        raise InputError(f"the corrupted {corrupt} leaves the input unchanged: pass a different {corrupt}")
    return inputs


@register_method("causal_trace", leaf="model/layer/components", tier="intervention",
                 summary="restore clean activations per (layer, position) in a corrupted run: indirect effects",
                 kind="analysis")
@torch.no_grad()
def causal_trace(
    subject: Subject,
    batch: Batch,
    corrupt: str = "noise",
    corrupt_with: Any = None,
    noise_scale: float = 3.0,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    positions: Any = "each",
    component: str = "resid",
    target: Any = "answer",
    batch_size: int = 32,
    show_progress: bool = False,
) -> CausalTrace:
    """Indirect-effect grid over ``layers`` x position groups.

    ``corrupt``: ``"noise"`` (Gaussian noise, ``noise_scale`` x the std of the image-token embeddings, added
    to the image tokens at the LM input; Mllama: to the image keys of the cross-attention states), ``"image"`` (``corrupt_with`` = other image(s) of the same size) or
    ``"prompt"`` (``corrupt_with`` = another prompt of the same token length). ``positions``: ``"each"``, a
    list of positions, or a dict ``name -> positions`` of groups. ``component``: ``resid`` | ``attn`` | ``mlp``.
    Forward passes: 1 (clean + corrupted rows together) + ceil(cells / batch_size).

    >>> grid = causal_trace(lm, lm.generate(img, "what color is the circle?").batch)   # doctest: +SKIP
    >>> grid.save("trace.png")                                                          # doctest: +SKIP
    """
    subject.require_language_model("causal tracing")
    if corrupt not in CORRUPTIONS:
        raise InputError(f"unknown corruption {corrupt!r}: use one of {', '.join(CORRUPTIONS)}")
    if component not in COMPONENTS:
        raise InputError(f"unknown component {component!r}: use one of {', '.join(COMPONENTS)}")
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}: pass 1 or more")
    if corrupt == "noise" and not noise_scale > 0:
        raise InputError(f"noise_scale={noise_scale} leaves the input unchanged: pass a value > 0 (3.0 is usual)")
    layers_ = check_layers(subject, layers)
    groups = _groups(batch, positions)
    (tgt,) = resolve_targets(subject.tokenizer, batch, target)[:1]
    clean_inputs = subject.model_inputs(batch)
    corrupted_inputs = _corrupted(subject, batch, corrupt, corrupt_with)
    noise: dict[str, torch.Tensor] = {}  # drawn in the first forward, from the clean row's embeddings
    point = COMPONENTS[component]

    def values(inputs: dict[str, Any], noise_rows: torch.Tensor | None, tr) -> torch.Tensor:
        if corrupt == "noise" and noise_rows is not None:
            # the image rows of the LM input; Mllama's images are the cross-attention states' keys instead
            key_space = batch.in_key_space
            img = (batch.key_positions() if key_space else batch.image_positions()).to(subject.device)

            def add_noise(h: torch.Tensor) -> torch.Tensor:
                if "value" not in noise:
                    noise["value"] = _draw_noise(h[0, img], noise_scale, seed)
                h = h.clone()
                h[noise_rows[:, None], img[None, :]] += noise["value"].to(h.device, h.dtype)
                return h

            tr.edit("xattn.states" if key_space else "lm.blocks.0.resid_pre", add_noise)
        logits = subject.adapter.joint_logits(inputs, tgt.tail(batch))
        return tgt.value(logits, batch).exp().cpu()

    # 1) clean and corrupted rows in one forward; keep the clean activations at every traced layer
    with subject.trace() as tr:
        for layer in layers_:
            tr.capture(f"lm.blocks.{layer}.{point}", reduce=lambda h: h[:1].clone())
        p_clean, p_corrupt = values(cat_inputs([clean_inputs, corrupted_inputs]), torch.tensor([1]), tr)
    clean_states = {layer: tr[f"lm.blocks.{layer}.{point}"] for layer in layers_}

    # 2) the grid, batch_size cells per forward
    cells = [(layer, name) for layer in layers_ for name in groups]
    effects = torch.zeros(len(layers_), len(groups))
    names = list(groups)
    n_forwards = 1
    chunks = range(0, len(cells), batch_size)
    for start in progress(chunks, "causal trace", enabled=show_progress):
        chunk = cells[start : start + batch_size]
        with subject.trace() as tr:
            for layer in sorted({c[0] for c in chunk}):
                rows = [(r, groups[name]) for r, (lay, name) in enumerate(chunk) if lay == layer]
                tr.edit(f"lm.blocks.{layer}.{point}", _restorer(rows, clean_states[layer]))
            out = values(cat_inputs([corrupted_inputs] * len(chunk)), torch.arange(len(chunk)), tr)
        n_forwards += 1
        for r, (layer, name) in enumerate(chunk):
            effects[layers_.index(layer), names.index(name)] = out[r] - p_corrupt
    labels = position_labels(subject.tokenizer, batch)
    col_labels = [labels[int(groups[n][0])] if n.isdigit() and groups[n].numel() == 1 else n for n in names]
    return CausalTrace(
        kind="causal_trace",
        values=effects,
        row_labels=[f"layer {layer}" for layer in layers_],
        col_labels=col_labels,
        title=f"causal trace ({component}, {corrupt}): p({tgt.label!r}) clean {float(p_clean):.3f}, "
              f"corrupted {float(p_corrupt):.3f}",
        value_name="p(restored) - p(corrupted)",
        meta={"model": subject.model_id, "method": "causal_trace", "corrupt": corrupt, "component": component,
              "noise_scale": noise_scale, "seed": seed, "layers": layers_, "target": tgt.label,
              "p_clean": float(p_clean), "p_corrupt": float(p_corrupt), "forward_calls": n_forwards,
              "cells": len(cells), "batch_size": batch_size},
        extras={"groups": {k: v.tolist() for k, v in groups.items()}},
    )


def _restorer(rows: list[tuple[int, torch.Tensor]], clean: torch.Tensor):
    """Edit that puts the clean activation back at each row's positions."""

    def fn(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        for r, pos in rows:
            p = pos.to(h.device)
            h[r, p] = clean[0, p].to(h.dtype)
        return h

    return fn


def _draw_noise(embeddings: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    """Seeded Gaussian noise shaped like the image-token ``embeddings``, scaled to their standard deviation."""
    gen = torch.Generator().manual_seed(seed)
    std = float(embeddings.float().std())
    return torch.randn(embeddings.shape, generator=gen) * (scale * std)


def expected_forwards(cells: int, batch_size: int) -> int:
    """The forward-pass budget of a grid: 1 + ceil(cells / batch_size)."""
    return 1 + math.ceil(cells / batch_size)
