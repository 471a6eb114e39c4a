"""Attention-tier attribution: raw attention from the target's query positions, and attention rollout.

Both read the language model's attention probabilities through ``Tracer.capture_attention``: one forward
pass explains every target, and heads are reduced inside the hook, one layer at a time.

>>> import mmlens                                                                   # doctest: +SKIP
>>> ex = mmlens.explain(lm, "cat.png", "what is this?", method="attention", layers=[-1])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmlens.attribution.output import MethodOutput
from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.model.targets import Target
from mmlens.util.options import check_choice, check_float, select_indices

# -- positions ---------------------------------------------------------------------------------------------


def target_rows(targets: list[Target], batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The sorted union of every target's query positions, and per target the indices of its rows in it."""
    per = [t.query_positions(batch) for t in targets]
    rows = torch.unique(torch.cat(per))
    return rows, [torch.searchsorted(rows, p) for p in per]


# -- attention ---------------------------------------------------------------------------------------------


def _reduce(w: torch.Tensor, heads: list[int], how: str) -> torch.Tensor:
    w = w[0, heads].float()
    return w.mean(0) if how == "mean" else w.amax(0)


@register_method(
    "attention",
    leaf="model/token/visual-text",
    tier="attention",
    summary="attention from the target's query positions to every position, averaged (or maxed) over heads and layers",
)
def attention(
    subject: Subject,
    batch: Batch,
    targets: list[Target],
    layers: int | Sequence[int] | None = None,
    heads: int | Sequence[int] | None = None,
    aggregate: str = "mean",
) -> MethodOutput:
    """Score of position ``k`` for a target = ``agg_{layers, heads} A[q, k]``, averaged over the target's
    query positions ``q`` (the positions whose logits predict its tokens). ``aggregate`` ("mean" | "max")
    reduces the selected ``heads`` inside the hook, then the selected ``layers``. One forward pass for all
    targets; only the query rows are computed. Images that enter through cross-attention (Mllama): ``k`` runs
    over the image keys and ``A`` is the cross-attention of the selected layers that have one.
    """
    subject.require_language_model()
    layer_ids = select_indices("layers", layers, subject.n_layers)
    head_ids = select_indices("heads", heads, subject.n_heads)
    how = check_choice("aggregate", aggregate, ("mean", "max"))
    rows, index = target_rows(targets, batch)
    if batch.in_key_space:
        return _cross_attention(subject, batch, layer_ids, head_ids, how, rows, index)
    with torch.no_grad(), subject.trace() as tr:
        for layer in layer_ids:
            tr.capture_attention(f"lm.blocks.{layer}.attn.weights", rows=rows,
                                 reduce=lambda w: _reduce(w, head_ids, how))
        subject.forward(batch)
        stack = torch.stack([tr[f"lm.blocks.{layer}.attn.weights"].cpu() for layer in layer_ids])  # (L, R, N)
    per_row = stack.mean(0) if how == "mean" else stack.amax(0)
    scores = torch.stack([per_row[i].mean(0) for i in index])
    return MethodOutput(scores, extras={"layers": layer_ids, "heads": head_ids, "query_positions": rows.tolist()})


def cross_layers(subject: Subject, layer_ids: list[int]) -> list[int]:
    """The layers of ``layer_ids`` that cross-attend to image keys (``lm.blocks.{i}.xattn.weights``); a one-line
    InputError naming the model's cross-attention layers when there are none."""
    cross = [int(n.split(".")[2]) for n in subject.hook_points("lm.blocks.") if n.endswith(".xattn.weights")]
    found = [layer for layer in layer_ids if layer in cross]
    if not found:
        raise InputError(f"layers {layer_ids} have no cross-attention, the only path from this model's images to "
                         f"the text: pick layers from {cross}")
    return found


def _cross_attention(subject: Subject, batch: Batch, layer_ids: list[int], head_ids: list[int], how: str,
                     rows: torch.Tensor, index: list[torch.Tensor]) -> MethodOutput:
    """:func:`attention` for images that enter through cross-attention (Mllama): the same reduction over the
    cross-attention probabilities (query rows -> image keys) of the selected layers that cross-attend."""
    names = [f"lm.blocks.{layer}.xattn.weights" for layer in cross_layers(subject, layer_ids)]
    with torch.no_grad(), subject.trace() as tr:
        for name in names:
            tr.capture_attention(name, rows=rows, reduce=lambda w: _reduce(w, head_ids, how))
        subject.forward(batch)
        stack = torch.stack([tr[name].cpu() for name in names])  # (L, R, keys)
    per_row = stack.mean(0) if how == "mean" else stack.amax(0)
    keys = torch.stack([per_row[i].mean(0) for i in index])
    layers = [int(n.split(".")[2]) for n in names]
    return MethodOutput(torch.zeros(len(index), batch.seq_len), key_scores=keys,
                        extras={"layers": layers, "heads": head_ids, "query_positions": rows.tolist(),
                                "cross_attention": True})


# -- rollout -----------------------------------------------------------------------------------------------


def attention_rollout(
    attn_stack: Sequence[torch.Tensor], rows: torch.Tensor | Sequence[int], residual: float = 0.5
) -> torch.Tensor:
    """Rows ``rows`` of Abnar & Zuidema's attention rollout ``A'_L @ ... @ A'_1``.

    ``attn_stack[l]`` is layer ``l``'s ``(N, N)`` head-fused attention; ``A'_l = (1 - residual) A_l +
    residual I`` with rows renormalised to sum to 1. Computed from the last layer down on the requested
    rows only: ``r <- r @ A'_l``. Returns ``(len(rows), N)``.

    >>> a = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    >>> attention_rollout([a, a], [1])
    tensor([[0.4375, 0.5625]])
    """
    if not attn_stack:
        raise ValueError("attention_rollout needs at least one layer")
    n = attn_stack[0].shape[-1]
    eye = torch.eye(n, dtype=torch.float32, device=attn_stack[0].device)
    rows = torch.as_tensor(rows, dtype=torch.long, device=eye.device)
    out: torch.Tensor | None = None
    for a in reversed(attn_stack):
        a = (1.0 - residual) * a.float() + residual * eye
        a = a / a.sum(-1, keepdim=True)
        out = a[rows] if out is None else out @ a
    return out


@register_method(
    "rollout",
    leaf="model/architecture/analysis",
    tier="attention",
    summary="attention rollout (Abnar & Zuidema 2020): product over layers of head-fused attention plus identity",
)
def rollout(
    subject: Subject,
    batch: Batch,
    targets: list[Target],
    residual: float = 0.5,
    head_fusion: str = "mean",
) -> MethodOutput:
    """Attention rollout read at the target's query rows (averaged over them): see :func:`attention_rollout`.

    Memory: the product runs from the last layer backwards, so each layer's head-fused ``N x N`` attention is
    kept (``layers x N x N`` float32; heads are fused inside the hook, one layer at a time).
    """
    subject.require_language_model()
    batch.require_sequence_images()  # rollout multiplies self-attention over the sequence: no image keys in it
    residual = check_float("residual", residual, 0.0, 1.0)
    how = check_choice("head_fusion", head_fusion, ("mean", "max"))
    heads = list(range(subject.n_heads))
    rows, index = target_rows(targets, batch)
    with torch.no_grad(), subject.trace() as tr:
        names = tr.capture_attention("lm.blocks.*.attn.weights", rows=None, reduce=lambda w: _reduce(w, heads, how))
        subject.forward(batch)
        stack = [tr[name] for name in sorted(names, key=_layer_of)]
    rolled = attention_rollout(stack, rows.to(stack[0].device), residual).cpu()
    scores = torch.stack([rolled[i].mean(0) for i in index])
    return MethodOutput(scores, extras={"query_positions": rows.tolist()})


def _layer_of(name: str) -> int:
    return int(name.split(".")[2])
