"""Attention heads: how much each head looks at the image, and what ablating it does to the answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.layer.logit_lens import check_layers
from mmlens.model.batch import Batch, cat_inputs
from mmlens.model.subject import Subject
from mmlens.model.targets import resolve_targets
from mmlens.results.grid import GridResult


@register_method("head_image_share", leaf="model/token/visual-text", tier="attention",
                 summary="share of attention from the answer positions to image tokens, per layer and head",
                 kind="analysis")
@torch.no_grad()
def head_image_share(subject: Subject, batch: Batch, target: Any = "answer",
                     layers: Sequence[int] | None = None) -> GridResult:
    """``values[layer, head]`` = attention mass on image tokens from the target's query positions (mean).

    >>> head_image_share(lm, batch).values.shape        # doctest: +SKIP
    torch.Size([4, 4])
    """
    layers_ = check_layers(subject, layers)
    (tgt,) = resolve_targets(subject.tokenizer, batch, target)[:1]
    rows = tgt.query_positions(batch)
    image = batch.image_positions()
    with subject.trace() as tr:
        tr.capture_attention("lm.blocks.*.attn.weights", rows=rows,
                             reduce=lambda w: w[0][:, :, image.to(w.device)].sum(-1).mean(-1).cpu())
        subject.forward(batch)
    values = torch.stack([tr[f"lm.blocks.{layer}.attn.weights"] for layer in layers_])
    return GridResult("head_image_share", values, [f"layer {layer}" for layer in layers_],
                      [f"head {h}" for h in range(values.shape[1])],
                      f"attention share on image tokens from {tgt.label!r}", "share of attention",
                      meta={"model": subject.model_id, "method": "head_image_share", "layers": layers_,
                            "target": tgt.label})


@register_method("head_ablation", leaf="model/layer/components", tier="intervention",
                 summary="zero each attention head's output in turn: change in the answer's probability",
                 kind="analysis")
@torch.no_grad()
def head_ablation(subject: Subject, batch: Batch, target: Any = "answer",
                  layers: Sequence[int] | None = None) -> GridResult:
    """``values[layer, head]`` = p(answer | head zeroed) - p(answer); one batched forward per layer."""
    layers_ = check_layers(subject, layers)
    (tgt,) = resolve_targets(subject.tokenizer, batch, target)[:1]
    n_heads = subject.n_heads
    inputs = subject.model_inputs(batch)
    p_clean = float(tgt.value(subject.model(**inputs, use_cache=False).logits, batch).exp())
    values = torch.zeros(len(layers_), n_heads)
    for i, layer in enumerate(layers_):
        with subject.trace() as tr:
            tr.edit(f"lm.blocks.{layer}.attn.heads", _zero_heads(n_heads))
            logits = subject.model(**cat_inputs([inputs] * n_heads), use_cache=False).logits
        values[i] = tgt.value(logits, batch).exp().cpu() - p_clean
    return GridResult("head_ablation", values, [f"layer {layer}" for layer in layers_],
                      [f"head {h}" for h in range(n_heads)], f"head ablation: change in p({tgt.label!r})",
                      "p(ablated) - p(clean)",
                      meta={"model": subject.model_id, "method": "head_ablation", "layers": layers_,
                            "target": tgt.label, "p_clean": p_clean, "forward_calls": 1 + len(layers_)})


def _zero_heads(n_heads: int):
    """Edit for a batch of ``n_heads`` rows: row h has head h's output zeroed."""

    def fn(h: torch.Tensor) -> torch.Tensor:
        if h.shape[0] != n_heads:
            raise InputError("head ablation expects one row per head")
        shaped = h.reshape(*h.shape[:-1], n_heads, -1).clone()
        idx = torch.arange(n_heads, device=h.device)
        shaped[idx, :, idx] = 0
        return shaped.reshape(h.shape)

    return fn
