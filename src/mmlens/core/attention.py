"""Attention weights and attention-edge edits for chosen layers only, without changing the forward.

transformers dispatches every attention call through ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``.
For the attention modules a trace needs, mmlens gives the module a private copy of its config whose
implementation is ``"mmlens"``: a wrapper that calls the module's original implementation (sdpa, eager,
flash...) with the same arguments, so outputs stay bit-identical, and on the side recomputes only the
requested rows of ``softmax(q k^T * scale + mask)`` for the capture. Other layers run untouched, and no
``layers x heads x N x N`` stack ever exists.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

IMPLEMENTATION = "mmlens"

#: Called with the attention probabilities (batch, heads, rows, keys) of the selected rows.
WeightsCallback = Callable[[torch.Tensor], None]
#: Returns a boolean (batch or 1, 1 or heads, queries, keys) tensor of edges to block, or None.
MaskEdit = Callable[[torch.Size], torch.Tensor | None]


class AttentionTap:
    """Per-module state installed while a trace is active."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.original_config = module.config
        self.original_impl = module.config._attn_implementation or "eager"
        self.weight_callbacks: list[tuple[torch.Tensor | None, WeightsCallback]] = []
        self.mask_edits: list[MaskEdit] = []

    def install(self) -> None:
        config = copy.copy(self.original_config)
        # Set the private field directly: the public setter would also rewrite shared sub-configs.
        object.__setattr__(config, "_attn_implementation_internal", IMPLEMENTATION)
        self.module.config = config
        self.module._mmlens_tap = self

    def remove(self) -> None:
        self.module.config = self.original_config
        if getattr(self.module, "_mmlens_tap", None) is self:
            del self.module._mmlens_tap

    def original_function(self) -> Callable[..., Any]:
        if self.original_impl == "eager":
            modeling = sys.modules[type(self.module).__module__]
            return modeling.eager_attention_forward
        return ALL_ATTENTION_FUNCTIONS[self.original_impl]


def _expand_kv(key: torch.Tensor, n_heads: int) -> torch.Tensor:
    if key.shape[1] == n_heads:
        return key
    return key.repeat_interleave(n_heads // key.shape[1], dim=1)


def _additive_mask(mask: torch.Tensor | None, q_len: int, k_len: int, causal: bool, device, dtype) -> torch.Tensor:
    """Turn whatever mask the implementation received into an additive float mask (b|1, 1|h, q, k)."""
    if mask is None:
        if not causal:
            return torch.zeros(1, 1, q_len, k_len, device=device, dtype=dtype)
        offset = k_len - q_len
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(offset)
        mask = allowed[None, None]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=device, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    return mask[..., :k_len].to(dtype)


def attention_probs(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask)`` for the selected query ``rows`` only (float32)."""
    n_heads = query.shape[1]
    k = _expand_kv(key, n_heads).float()
    q = query.float() if rows is None else query[:, :, rows].float()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    full = _additive_mask(mask, query.shape[2], key.shape[2], getattr(module, "is_causal", False), q.device, q.dtype)
    if rows is not None:
        full = full[:, :, rows] if full.shape[2] > 1 else full
    return torch.softmax(scores + full, dim=-1)


def _apply_edits(tap: AttentionTap, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None):
    """Merge the taps' blocked edges into the mask, keeping the mask's own format."""
    shape = torch.Size((query.shape[0], query.shape[1], query.shape[2], key.shape[2]))
    blocked = None
    for edit in tap.mask_edits:
        b = edit(shape)
        if b is not None:
            blocked = b if blocked is None else blocked | b
    if blocked is None:
        return mask
    base = _additive_mask(mask, shape[2], shape[3], getattr(tap.module, "is_causal", False), query.device, query.dtype)
    return base.masked_fill(blocked.to(query.device), torch.finfo(query.dtype).min)


def mmlens_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The ``"mmlens"`` attention implementation: original call + capture / edge edits."""
    tap: AttentionTap = module._mmlens_tap
    mask = _apply_edits(tap, query, key, attention_mask)
    fn = tap.original_function()
    if mask is not attention_mask and tap.original_impl not in ("eager", "sdpa"):
        fn = ALL_ATTENTION_FUNCTIONS["sdpa"]  # flash kernels take no dense mask: fall back for edited layers
    out, weights = fn(module, query, key, value, mask, scaling=scaling, dropout=dropout, **kwargs)
    for rows, callback in tap.weight_callbacks:
        if weights is not None and rows is None and weights.shape[2] == query.shape[2]:
            callback(weights)
        else:
            callback(attention_probs(module, query, key, mask, scaling, rows).to(query.dtype))
    return out, weights


AttentionInterface.register(IMPLEMENTATION, mmlens_attention)
