"""Attention that keeps no probabilities for backward: query rows in chunks, recomputed in backward.

Eager attention keeps each layer's ``heads x N x N`` probabilities until backward, for every layer at once
(8 layers x 12 heads at 2,936 positions: 3.3 GB). :class:`RowChunkedAttention` computes the same output
one chunk of query rows at a time and saves only ``query``, ``key`` and ``value``. Its backward recomputes
each chunk's probabilities ``P`` exactly as the forward did (:meth:`AttentionCall.logits
<mmlens.hooks.attention.AttentionCall.logits>`: the mask transformers passed, causal / sliding window /
bidirectional blocks, softcap, grouped-query heads, sinks), forms ``dP = dO V^T``, hands ``(P, dP)`` of
the chunk to a reader (what attention-gradient methods reduce: ``grad_A * A``), and returns
``dQ, dK, dV`` from ``dS = P * (dP - rowsum(dP * P))``. Peak memory per layer is then
``O(chunk x N)`` during backward and nothing between forward and backward.

The probabilities are float32 (the output is cast back to the query's dtype). Dropout is not applied
(models are explained in eval mode). Backward may run batched over targets
(``torch.autograd.grad(..., is_grads_batched=True)``): everything it does is out of place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from mmlens.hooks.attention import AttentionCall

#: called in backward with (first query row of the chunk, P, dtarget/dP), both (batch, heads, rows, keys) float32
ChunkReader = Callable[[int, torch.Tensor, torch.Tensor], None]


class RowChunks:
    """What a tap asks of one layer: ``rows`` query rows per chunk, ``on_chunk`` per chunk in backward and
    ``on_done()`` once the layer's backward has read every chunk."""

    def __init__(self, rows: int, on_chunk: ChunkReader, on_done: Callable[[], None]) -> None:
        self.rows, self.on_chunk, self.on_done = rows, on_chunk, on_done


def _spans(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _repeat_heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    return t if t.shape[1] == n_heads else t.repeat_interleave(n_heads // t.shape[1], dim=1)


def _sum_groups(grad: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Gradient of repeated key / value heads summed back onto the shared head (inverse of the repeat)."""
    b, h, n, d = grad.shape
    return grad if h == kv_heads else grad.reshape(b, kv_heads, h // kv_heads, n, d).sum(2)


class RowChunkedAttention(torch.autograd.Function):
    """``softmax(logits) @ value`` in query-row chunks; returns ``(batch, queries, heads, head_dim)`` like
    transformers' attention functions. See the module docstring."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, call: AttentionCall,
                plan: RowChunks) -> torch.Tensor:
        heads = query.shape[1]
        k = _repeat_heads(key, heads).float()
        v = _repeat_heads(value, heads)
        outs = []
        for span in _spans(query.shape[2], plan.rows):
            p = call.softmax(call.logits(span, query, k)[0], span)
            outs.append(torch.matmul(p.to(v.dtype), v))
        ctx.save_for_backward(query, key, value)
        ctx.call, ctx.plan = call, plan
        return torch.cat(outs, dim=2).transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        query, key, value = ctx.saved_tensors
        call, plan = ctx.call, ctx.plan
        heads = query.shape[1]
        k = _repeat_heads(key, heads).float()
        v = _repeat_heads(value, heads).float()
        go = grad_out.transpose(1, 2).float()  # (batch, heads, queries, head_dim)
        dq, dk, dv = [], None, None
        for span in _spans(query.shape[2], plan.rows):
            scores, tanh = call.logits(span, query, k)
            p = call.softmax(scores, span)
            g = go[:, :, span]
            dp = torch.matmul(g, v.transpose(-1, -2))
            plan.on_chunk(span.start, p, dp)
            ds = p * (dp - (dp * p).sum(-1, keepdim=True))
            if tanh is not None:
                ds = ds * (1 - tanh * tanh)
            ds = ds * call.scaling
            dq.append(torch.matmul(ds, k))
            dk_part = torch.matmul(ds.transpose(-1, -2), query[:, :, span].float())
            dv_part = torch.matmul(p.transpose(-1, -2), g)
            dk = dk_part if dk is None else dk + dk_part
            dv = dv_part if dv is None else dv + dv_part
        plan.on_done()
        return (torch.cat(dq, dim=2).to(query.dtype), _sum_groups(dk, key.shape[1]).to(key.dtype),
                _sum_groups(dv, value.shape[1]).to(value.dtype), None, None)


def row_chunked_attention(call: AttentionCall, value: torch.Tensor, plan: RowChunks) -> torch.Tensor:
    """The attention output of ``call`` (``(batch, queries, heads, head_dim)``, the query's dtype) through
    :class:`RowChunkedAttention`."""
    out = RowChunkedAttention.apply(call.query, call.key, value, call, plan)
    return out.to(call.query.dtype)
