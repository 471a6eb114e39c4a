"""Attention knockout (Geva et al. 2023 style, for image tokens): block attention edges between position
groups over a window of layers and measure the change in the target's probability."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.layer.logit_lens import check_layers, check_positions
from mmlens.model.batch import Batch, cat_inputs
from mmlens.model.subject import Subject
from mmlens.model.targets import Target, resolve_targets
from mmlens.results.grid import GridResult
from mmlens.util.progress import progress


@dataclass
class KnockoutGrid(GridResult):
    """``values[window, pair]`` = p(knocked out) - p(clean) for the target."""


def position_groups(batch: Batch, target: Target) -> dict[str, torch.Tensor]:
    """The standard groups: every image token, the question (prompt text), the target's query positions. Images
    that enter through cross-attention (Mllama): ``image`` is every cross-attention key."""
    last = target.query_positions(batch)
    text = batch.text_positions()
    question = text[~torch.isin(text, last)]
    image = batch.key_positions() if batch.in_key_space else batch.image_positions()
    return {"image": image, "question": question, "last": last}


DEFAULT_PAIRS = {"image -> question": ("question", "image"), "image -> last": ("last", "image"),
                 "question -> last": ("last", "question")}


def _windows(layers: list[int], window: int) -> list[list[int]]:
    if window < 1:
        raise InputError(f"window={window}: pass 1 or more layers")
    half = window // 2
    return [[m for m in layers if abs(m - l) <= half and (window % 2 or m - l < half)] for l in layers]


@register_method("attention_knockout", leaf="model/layer/components", tier="intervention",
                 summary="block attention between position groups over a window of layers; effect on the answer",
                 kind="analysis")
@torch.no_grad()
def attention_knockout(
    subject: Subject,
    batch: Batch,
    pairs: Mapping[str, tuple[Any, Any]] | None = None,
    window: int | None = None,
    layers: Sequence[int] | None = None,
    target: Any = "answer",
    batch_size: int = 32,
    show_progress: bool = False,
) -> KnockoutGrid:
    """Knockout grid: rows are layer windows (centred on each layer; ``window=None`` = one row, all layers),
    columns the ``pairs`` ``name -> (query group, key group)``: group names (``image``, ``question``,
    ``last``) or explicit position lists. Edges ``keys -> queries`` (information flowing from key to query
    positions) are blocked. One batched forward per ``batch_size`` cells. Images that enter through cross-attention
    (Mllama): a pair whose key group is ``image`` cuts every edge from the image keys to its queries in the window's
    cross-attention layers (their cross-attention output is zero at those queries: no image information reaches
    them there); other pairs block edges in the window's self-attention layers.

    >>> grid = attention_knockout(lm, batch, window=3)                  # doctest: +SKIP
    >>> grid.values[:, grid.col_labels.index("image -> last")]          # doctest: +SKIP
    """
    subject.require_language_model("attention knockout")
    layers_ = check_layers(subject, layers)
    (tgt,) = resolve_targets(subject.tokenizer, batch, target)[:1]
    groups = position_groups(batch, tgt)
    chosen = dict(DEFAULT_PAIRS if pairs is None else pairs)
    resolved = {name: (_group(groups, batch, q), _group(groups, batch, k)) for name, (q, k) in chosen.items()}
    to_keys = {name for name, (_, k) in chosen.items() if batch.in_key_space and isinstance(k, str) and k == "image"}
    windows = [layers_] if window is None else _windows(layers_, window)
    cells = [(w, name) for w in range(len(windows)) for name in resolved]
    inputs = subject.model_inputs(batch)
    p_clean = float(tgt.value(subject.adapter.joint_logits(inputs, tgt.tail(batch)), batch).exp())
    values = torch.zeros(len(windows), len(resolved))
    names = list(resolved)
    n_forwards = 1
    for start in progress(range(0, len(cells), batch_size), "attention knockout", enabled=show_progress):
        chunk = cells[start : start + batch_size]
        with subject.trace() as tr:
            for r, (w, name) in enumerate(chunk):
                q, k = resolved[name]
                for layer in windows[w]:
                    kind = "xattn" if name in to_keys else "attn"
                    if f"lm.blocks.{layer}.{kind}.weights" not in subject.hook_point_map():
                        continue  # a cross-attention layer has no self-attention edges, and vice versa
                    if kind == "xattn":
                        tr.edit(f"lm.blocks.{layer}.xattn.out", _cut(r, q))
                    else:
                        tr.block_attention(f"lm.blocks.{layer}.attn.weights", q, k, rows=[r])
            logits = subject.adapter.joint_logits(cat_inputs([inputs] * len(chunk)), tgt.tail(batch))
        n_forwards += 1
        p = tgt.value(logits, batch).exp().cpu()
        for r, (w, name) in enumerate(chunk):
            values[w, names.index(name)] = float(p[r]) - p_clean
    rows = ["all layers"] if window is None else [f"layers {ws[0]}-{ws[-1]}" for ws in windows]
    return KnockoutGrid(
        kind="attention_knockout", values=values, row_labels=rows, col_labels=names,
        title=f"attention knockout: change in p({tgt.label!r}) (clean {p_clean:.3f})",
        value_name="p(knocked out) - p(clean)",
        meta={"model": subject.model_id, "method": "attention_knockout", "window": window, "layers": layers_,
              "target": tgt.label, "p_clean": p_clean, "forward_calls": n_forwards},
        extras={"pairs": {n: [q.tolist(), k.tolist()] for n, (q, k) in resolved.items()}},
    )


def _cut(row: int, queries: torch.Tensor):
    """Edit: zero a cross-attention output at ``queries`` of batch row ``row`` (every image-key edge cut)."""

    def fn(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t[row, queries.to(t.device)] = 0
        return t

    return fn


def _group(groups: dict[str, torch.Tensor], batch: Batch, spec: Any) -> torch.Tensor:
    if isinstance(spec, str):
        if spec not in groups:
            raise InputError(f"unknown position group {spec!r}: use {', '.join(groups)} or a list of positions")
        pos = groups[spec]
        if pos.numel() == 0:
            raise InputError(f"position group {spec!r} is empty for this input")
        return pos
    return check_positions(batch, spec)
