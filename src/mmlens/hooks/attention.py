"""Attention weights and attention-edge edits for chosen layers only, without changing the forward.

transformers dispatches every attention call through ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``.
For the attention modules a trace needs, mmlens gives the module a private copy of its config whose
implementation is ``"mmlens"``: a wrapper that calls the module's original implementation (sdpa, eager,
flash...) with the same arguments, so outputs stay bit-identical, and on the side recomputes only the
requested rows of the probabilities, in float32, exactly as transformers' eager attention defines them::

    s = q k^T * scaling;  s = softcap * tanh(s / softcap);  s += position_bias + mask
    p = softmax([s, sink])[..., :-1]         (sink: gpt-oss ``s_aux`` / per-query ``sinks``, if any)

with grouped-query heads repeated, and sliding windows / causality taken from the mask (or built from
``sliding_window`` / ``is_causal`` when the implementation got no mask). Dropout is not applied (eval).
Other layers run untouched, and no ``layers x heads x N x N`` stack ever exists. A tap with ``row_chunks``
(``Tracer.recompute_attention``) runs the layer's attention itself, in query-row chunks whose probabilities
are recomputed in backward (:mod:`mmlens.hooks.attention_chunks`).

Positions are absolute token indices. In a decode step with a KV cache the queries are the newest tokens
and the keys may start later than 0 (sliding-window caches): a pre-hook on the module reads both offsets
from the cache, so edge edits and row captures address the same tokens as in a full forward, and
captured rows always have one column per absolute key position ``0 .. last query``.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from mmlens.errors import InputError
from mmlens.hooks.attention_chunks import RowChunks, row_chunked_attention

IMPLEMENTATION = "mmlens"

#: Called with the attention probabilities (batch, heads, rows, keys) of the selected rows (float32).
WeightsCallback = Callable[[torch.Tensor], None]
#: Called with (absolute query positions, absolute key positions), both on the query's device; returns
#: ``(rows, hit, bias)``: the boolean (queries, keys) edges it edits, the batch rows they apply to (None: all
#: rows) and ``bias``: None blocks the edges, a float is added to their attention logits (re-weighting); or
#: None when the call has none of its edges. All edits of a call share one buffer per kind.
MaskEdit = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor | None, torch.Tensor, float | None] | None"]


class AttentionTap:
    """Per-module state installed while a trace is active."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.original_config = module.config
        self.original_impl = module.config._attn_implementation or "eager"
        self.weight_callbacks: list[tuple[torch.Tensor | None, WeightsCallback]] = []
        self.mask_edits: list[MaskEdit] = []
        #: run this module's attention in query-row chunks recomputed in backward (hooks.attention_chunks)
        self.row_chunks: RowChunks | None = None
        #: (absolute position of query 0, of key 0) for the current call, read from the KV cache
        self.offsets: tuple[int, int] | None = None
        self.cross = False  # a cross-attention module (offsets are not a KV cache's)
        self._handle: Any = None

    def install(self) -> None:
        config = copy.copy(self.original_config)
        # Set the private field directly: the public setter would also rewrite shared sub-configs.
        object.__setattr__(config, "_attn_implementation_internal", IMPLEMENTATION)
        self.module.config = config
        self.module._mmlens_tap = self
        self._handle = self.module.register_forward_pre_hook(self._read_cache, with_kwargs=True)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.module.config = self.original_config
        if getattr(self.module, "_mmlens_tap", None) is self:
            del self.module._mmlens_tap

    def _read_cache(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Before the module updates its cache: where this call's queries and keys start."""
        self.offsets = None
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        layer = getattr(module, "layer_idx", None)
        if "cross_attention_states" in kwargs:  # cross-attention: keys are the image keys 0..K-1, queries the tokens
            seen = int(cache.get_seq_length(0)) if cache is not None and hidden is not None else 0
            self.offsets = (max(seen - int(hidden.shape[-2]), 0) if seen else 0, 0)  # layer 0 ran this step already
            self.cross = True
            return
        if cache is None or hidden is None or layer is None or not hasattr(cache, "get_mask_sizes"):
            return
        past = int(cache.get_seq_length(layer))
        _, kv_offset = cache.get_mask_sizes(int(hidden.shape[-2]), layer)
        self.offsets = (past, int(kv_offset))

    def original_function(self) -> Callable[..., Any]:
        if self.original_impl == "eager":
            return self.eager_function()
        return ALL_ATTENTION_FUNCTIONS[self.original_impl]

    def eager_function(self) -> Callable[..., Any]:
        """The module's own eager attention (handles its softcap / sinks), else sdpa."""
        modeling = sys.modules[type(self.module).__module__]
        return getattr(modeling, "eager_attention_forward", None) or ALL_ATTENTION_FUNCTIONS["sdpa"]


def _expand_kv(key: torch.Tensor, n_heads: int) -> torch.Tensor:
    if key.shape[1] == n_heads:
        return key
    return key.repeat_interleave(n_heads // key.shape[1], dim=1)


@dataclass
class AttentionCall:
    """One call of an attention implementation, with everything that shapes its probabilities."""

    module: torch.nn.Module
    query: torch.Tensor
    key: torch.Tensor
    mask: torch.Tensor | None
    scaling: float
    causal: bool
    q_offset: int  # absolute position of query row 0
    k_offset: int  # absolute position of key column 0
    from_cache: bool  # offsets read from a KV cache (vs. inferred as k_len - q_len, 0)
    softcap: float | None = None
    sliding_window: int | None = None
    sinks: torch.Tensor | None = None
    position_bias: torch.Tensor | None = None

    @classmethod
    def of(cls, module, query, key, mask, scaling, kwargs: dict, offsets: tuple[int, int] | None) -> AttentionCall:
        if mask is not None and not torch.is_tensor(mask):
            raise InputError(f"{type(mask).__name__} attention masks (flex_attention) cannot be read or edited: "
                             "load the model with attn_implementation='eager' or 'sdpa'")
        if scaling is None:
            scaling = getattr(module, "head_dim", query.shape[-1]) ** -0.5
        is_causal = kwargs.get("is_causal")
        causal = bool(getattr(module, "is_causal", False) if is_causal is None else is_causal)
        q_len, k_len = query.shape[2], key.shape[2]
        q_off, k_off = offsets if offsets is not None else (k_len - q_len, 0)
        sinks = kwargs.get("s_aux")
        sinks = kwargs.get("sinks") if sinks is None else sinks
        return cls(module, query, key, mask, float(scaling), causal, q_off, k_off, offsets is not None,
                   kwargs.get("softcap"), kwargs.get("sliding_window"), sinks, kwargs.get("position_bias"))

    @property
    def q_positions(self) -> torch.Tensor:
        return torch.arange(self.query.shape[2]) + self.q_offset

    @property
    def k_positions(self) -> torch.Tensor:
        return torch.arange(self.key.shape[2]) + self.k_offset

    def additive_mask(self, dtype: torch.dtype, index: torch.Tensor | None = None) -> torch.Tensor:
        """The mask this call applies, as an additive float mask (b|1, 1|h, q, k); only query rows ``index``
        when given (selected before any conversion: captures need a few rows of a long sequence)."""
        mask, device = self.mask, self.query.device
        if mask is not None and mask.ndim == 4:
            if index is not None:
                mask = _rows(mask, index, self.query.shape[2])
            mask = mask[..., : self.key.shape[2]]
            if mask.dtype == torch.bool:
                return torch.zeros(mask.shape, device=device, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
            return mask.to(dtype)
        # no dense mask: build causality / the window from absolute positions (a 2D mask pads keys)
        q_pos = self.q_positions.to(device)
        q, k = (q_pos if index is None else q_pos[index])[:, None], self.k_positions.to(device)[None, :]
        allowed = (k <= q) if self.causal else torch.ones(q.shape[0], k.shape[1], dtype=torch.bool, device=device)
        if self.sliding_window is not None:
            allowed = allowed & ((q - k < self.sliding_window) if self.causal else ((q - k).abs() < self.sliding_window))
        allowed = allowed[None, None]
        if mask is not None:  # (batch, keys) padding mask, 1 = attend
            allowed = allowed & mask[:, None, None, : self.key.shape[2]].bool()
        return torch.zeros(allowed.shape, device=device, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)

    def local_rows(self, rows: torch.Tensor | None) -> torch.Tensor | None:
        """Indices into this call's queries of absolute ``rows`` (negative: from the last query)."""
        q_len = self.query.shape[2]
        if rows is None:
            return torch.arange(q_len)
        local = torch.where(rows < 0, rows + q_len, rows - self.q_offset)
        local = local[(local >= 0) & (local < q_len)]
        return local if local.numel() else None

    def probs(self, local: torch.Tensor) -> torch.Tensor:
        """Float32 probabilities of query rows ``local`` (batch, heads, rows, keys)."""
        index = local.to(self.query.device)
        return self.softmax(self.logits(index)[0], index)

    def logits(self, index: torch.Tensor | slice, query: torch.Tensor | None = None,
               key: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Float32 logits of query rows ``index`` (softcapped, plus position bias and mask), and the softcap's
        ``tanh`` (None without softcap: what backward needs). ``query`` / ``key`` default to the call's;
        ``key`` may come already float32 with its heads repeated."""
        query = self.query if query is None else query
        key = self.key if key is None else key
        q = query[:, :, index].float()
        k = _expand_kv(key, query.shape[1]).float()
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scaling
        tanh = None
        if self.softcap is not None:
            tanh = torch.tanh(scores / self.softcap)
            scores = tanh * self.softcap
        if self.position_bias is not None:
            scores = scores + _rows(self.position_bias.float(), index, query.shape[2])
        return scores + self.additive_mask(torch.float32, index), tanh

    def softmax(self, scores: torch.Tensor, index: torch.Tensor | slice) -> torch.Tensor:
        """Probabilities from :meth:`logits` of query rows ``index``, with the attention sink if any."""
        if self.sinks is None:
            return torch.softmax(scores, dim=-1)
        sinks = self.sinks.float()
        if sinks.ndim == 1:  # one learned logit per head
            sinks = sinks.view(1, -1, 1, 1)
        else:  # per query (batch, heads, queries, 1)
            sinks = _rows(sinks, index, self.query.shape[2])
        sinks = sinks.expand(scores.shape[0], scores.shape[1], scores.shape[2], 1)
        return torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1]

    def absolute_keys(self, p: torch.Tensor) -> torch.Tensor:
        """Columns of ``p`` re-indexed by absolute key position ``0 .. last query`` (cache calls only)."""
        total = self.q_offset + self.query.shape[2]
        if not self.from_cache or (self.k_offset == 0 and p.shape[-1] == total):
            return p
        n = min(p.shape[-1], total - self.k_offset)
        return torch.nn.functional.pad(p[..., :n], (self.k_offset, total - self.k_offset - n))


def _rows(t: torch.Tensor, index: torch.Tensor, q_len: int) -> torch.Tensor:
    """Query rows ``index`` of a (.., q|1, k) tensor that broadcasts over queries when its q axis is 1."""
    return t[:, :, index] if t.shape[2] == q_len and q_len > 1 else t


def _apply_edits(tap: AttentionTap, call: AttentionCall) -> torch.Tensor | None:
    """Merge the taps' edits into the mask (as an additive mask in the query dtype): blocked edges and
    re-weighted ones (a bias on their logits).

    One (batch | 1, 1, q, k) buffer per kind on the query's device holds every edit, whatever the number of
    edits (a per-row knockout of a large batch adds one edit per row)."""
    device = call.query.device
    q_pos, k_pos = call.q_positions.to(device), call.k_positions.to(device)
    edits = [e for e in (edit(q_pos, k_pos) for edit in tap.mask_edits) if e is not None]
    if not edits:
        return call.mask
    shape = (call.query.shape[0] if any(rows is not None for rows, _, _ in edits) else 1, 1, len(q_pos), len(k_pos))
    blocked = torch.zeros(shape, dtype=torch.bool, device=device) if any(b is None for *_, b in edits) else None
    bias = torch.zeros(shape, device=device) if any(b is not None for *_, b in edits) else None
    for rows, hit, b in edits:
        index = slice(None) if rows is None else rows.to(device)
        if b is None:
            blocked[index, 0] |= hit
        else:
            bias[index, 0] += hit * b
    dtype = call.query.dtype
    mask = call.additive_mask(dtype)
    if bias is not None:
        mask = mask + bias.to(dtype)
    return mask if blocked is None else mask.masked_fill(blocked, torch.finfo(dtype).min)


def captured_probs(call: AttentionCall, weights: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor | None:
    """Float32 probabilities of ``rows`` (absolute positions) in this call, or None if it has none of them.

    All rows of an implementation that returned its weights: those very weights (in the autograd graph). When
    the model runs in lower precision: their exact float32 values, and :func:`graph_tensor` gives the weights the
    forward used (whose gradient is this map's gradient: a tensor derived from them would get none).
    """
    local = call.local_rows(rows)
    if local is None:
        return None
    if rows is None and weights is not None and weights.shape[2] == call.query.shape[2]:
        if weights.dtype == torch.float32:
            return call.absolute_keys(weights)
        p = call.absolute_keys(call.probs(local).detach())
        if p.shape == weights.shape:  # (keys at absolute positions: the gradient lines up with the weights')
            p._mmlens_graph = weights  # type: ignore[attr-defined]
        return p
    return call.absolute_keys(call.probs(local))


def graph_tensor(p: torch.Tensor) -> torch.Tensor:
    """The tensor of the autograd graph behind probabilities ``p`` from :func:`captured_probs` (``p`` itself in
    float32; in lower precision the weights the forward used): register gradient hooks on this one."""
    return getattr(p, "_mmlens_graph", p)


def mmlens_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The ``"mmlens"`` attention implementation: original call + capture / edge edits."""
    tap: AttentionTap = module._mmlens_tap
    call = AttentionCall.of(module, query, key, attention_mask, scaling, kwargs, tap.offsets)
    call.from_cache = call.from_cache and not tap.cross
    mask = _apply_edits(tap, call)
    if tap.row_chunks is not None:
        call.mask = mask
        out, weights = row_chunked_attention(call, value, tap.row_chunks), None
    else:
        fn = tap.original_function()
        if mask is not attention_mask and tap.original_impl not in ("eager", "sdpa"):
            fn = tap.eager_function()  # flash / flex kernels take no dense mask: the module's eager for edited layers
        out, weights = fn(module, query, key, value, mask, scaling=scaling, dropout=dropout, **kwargs)
        call.mask = mask
    for rows, callback in tap.weight_callbacks:
        p = captured_probs(call, weights, rows)
        if p is not None:
            callback(p)
    return out, weights


AttentionInterface.register(IMPLEMENTATION, mmlens_attention)
