"""TextSpan's decomposition (Gandelsman et al., ICLR 2024): a dual encoder's image embedding as the sum of the
direct contributions of the input embedding, every attention head (per head and per patch token), every MLP and
the biases, through the final layernorm (linearised with each image's actual scale) and the projection. The
towers' modules come from the adapter's :class:`~mmlens.adapters.embedding_parts.EmbeddingParts`.

CLS pooling: the CLS row enters the final layernorm; head ``h`` of layer ``l`` writes ``sum_t a[l,h,0,t] v[t]
W_o^h`` into it, so its per-token contributions are indexed by the *source* token ``t`` (token 0 = CLS).
Attention pooling: every row enters the pooling attention; a component's per-token contribution is what its row
``t`` adds through the pooling (pooling weights fixed at their actual values), and the pooling's residual MLP is
one more term (``head.mlp``).

>>> from mmlens.testing.tiny_dual import tiny_dual_model_and_processor
>>> from mmlens.testing.tiny_models import tiny_images
>>> d = decompose(tiny_dual_model_and_processor("clip"), tiny_images("llava", n=2))
>>> tuple(d.contributions.shape[:2]), d.error() < 1e-4
((2, 10), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmlens.catalog import register_method
from mmlens.adapters.embedding_parts import BlockLayout, EmbeddingParts
from mmlens.embedding.tower import Tower, _attn, _non_empty, tower
from mmlens.model.images import ImageLike
from mmlens.util.options import check_int
from mmlens.util.progress import progress


@dataclass
class Decomposition:
    """``contributions[i, c]``: component ``names[c]``'s direct contribution to image ``i``'s ``embedding``."""

    names: list[str]
    contributions: torch.Tensor
    embedding: torch.Tensor
    n_layers: int
    n_heads: int
    #: ``(n_images, layers, heads, tokens, d)`` per-token head contributions (``per_token=True``)
    tokens: torch.Tensor | None = None
    #: patch grid ``(rows, cols)``; ``cls`` tokens come first in ``tokens``
    grid: tuple[int, int] | None = None
    cls: int = 0
    notes: list[str] = field(default_factory=list)

    def head(self, layer: int, head: int) -> int:
        """Index of head ``head`` of layer ``layer`` in ``names``."""
        return self.names.index(f"L{layer}.H{head}")

    def heads(self) -> list[int]:
        return [self.head(layer, h) for layer in range(self.n_layers) for h in range(self.n_heads)]

    def error(self) -> float:
        """Largest absolute difference between the components' sum and the model's embedding."""
        return float((self.contributions.sum(1) - self.embedding).abs().max())

    def summary(self) -> dict[str, Any]:
        norms = self.contributions.norm(dim=-1).mean(0)
        return {"n_images": int(self.embedding.shape[0]), "components": self.names,
                "mean_norm": [round(float(x), 6) for x in norms], "reconstruction_error": self.error(),
                "embedding_norm": float(self.embedding.norm(dim=-1).mean()), "notes": self.notes}


@register_method("textspan-decompose", leaf="model/embedding/visual", tier="activations", kind="embedding",
                 summary="TextSpan decomposition: image embedding = sum of heads (per token), MLPs, input, biases")
@torch.no_grad()
def decompose(model: Any, images: Sequence[ImageLike], per_token: bool = False, batch_size: int = 16,
              show: bool | None = None) -> Decomposition:
    """Decompose the image embeddings of ``images`` into direct contributions (sum = embedding, exactly).

    ``model``: an image-text dual encoder with its processor (see :func:`~mmlens.embedding.tower`) or an MLLM subject
    (then the projector's input is decomposed by layer and head, see :mod:`mmlens.embedding.decompose_mllm`)."""
    t = tower(model)
    images = _non_empty(images, "images")
    batch_size = check_int("batch_size", batch_size, 1, 1024)
    if t.kind == "mllm":
        from mmlens.embedding.decompose_mllm import decompose_mllm

        return decompose_mllm(t, images, show=show)
    parts = [_decompose_batch(t, images[i : i + batch_size], per_token)
             for i in progress(range(0, len(images), batch_size), "decomposing", show)]
    names, grid = parts[0][0], parts[0][4]
    return Decomposition(names, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]), t.n_layers,
                         t.n_heads, torch.cat([p[3] for p in parts]) if per_token else None, grid, t.parts.cls_tokens)


def _run(t: Tower, inputs: dict[str, torch.Tensor]) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Forward the vision tower with hooks: each block's input / mask / attention output / output."""
    records: list[dict[str, Any]] = [{} for _ in t.blocks]
    handles = []
    try:
        for i, block in enumerate(t.blocks):
            rec = records[i]

            def pre(m: nn.Module, args: tuple, kwargs: dict, rec: dict = rec) -> None:
                rec["x"] = args[0] if args else kwargs["hidden_states"]
                rec["mask"] = args[1] if len(args) > 1 else kwargs.get("attention_mask")

            def post(m: nn.Module, args: Any, out: Any, rec: dict = rec) -> None:
                rec["out"] = out[0] if isinstance(out, (tuple, list)) else out

            def attn(m: nn.Module, args: Any, out: Any, rec: dict = rec) -> None:
                rec["attn"] = out[0] if isinstance(out, (tuple, list)) else out

            handles += [block.register_forward_pre_hook(pre, with_kwargs=True), block.register_forward_hook(post),
                        getattr(block, t.parts.block.attn).register_forward_hook(attn)]
        embedding = t.parts.encode_image(inputs)
    finally:
        for h in handles:
            h.remove()
    return records, embedding.float()


def _heads(layout: BlockLayout, block: nn.Module, x: torch.Tensor, mask: Any, n_heads: int,
           cls_only: bool) -> torch.Tensor:
    """Per-head outputs of ``block``'s attention (out projection applied, no bias): ``(B, H, T, D)``.

    ``cls_only``: the CLS row's output split by *source* token (``[b, h, t]`` = what token t sends)."""
    attn = getattr(block, layout.attn)
    h = getattr(block, layout.attn_norm)(x)
    b, n, d = h.shape
    dh = d // n_heads
    q, k, v = (getattr(attn, name)(h).view(b, n, n_heads, dh).transpose(1, 2) for name in (layout.q, layout.k, layout.v))
    scores = (q @ k.transpose(-1, -2)) * getattr(attn, layout.scale)
    if torch.is_tensor(mask):
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    w = scores.softmax(-1)
    per = w[:, :, :1, :].transpose(-1, -2) * v if cls_only else w @ v  # (B, H, T, dh)
    wo = getattr(attn, layout.out).weight.view(d, n_heads, dh)  # D x H x dh
    return torch.einsum("bhtk,dhk->bhtd", per, wo)


def _decompose_batch(t: Tower, images: list, per_token: bool):
    inputs = t.pixel_inputs(images)
    records, pooled = _run(t, inputs)
    parts = t.parts
    H, cls_only = t.n_heads, parts.pooling == "cls"
    comps: list[tuple[str, torch.Tensor]] = []  # name -> (B, T', D) at the readout rows
    heads_tok = []
    x0 = records[0]["x"].float()
    comps.append(("embed", x0[:, :1] if cls_only else x0))
    for i, (block, rec) in enumerate(zip(t.blocks, records, strict=True)):
        x = rec["x"].float()
        ph = _heads(parts.block, block, x, rec["mask"], H, cls_only)  # (B, H, T, D)
        bias = getattr(getattr(block, parts.block.attn), parts.block.out).bias
        bias = torch.zeros(x.shape[-1]) if bias is None else bias.float()
        mlp = rec["out"].float() - x - rec["attn"].float()
        heads_tok.append(ph)
        for h in range(H):
            comps.append((f"L{i}.H{h}", ph[:, h].sum(1, keepdim=True) if cls_only else ph[:, h]))
        rows = 1 if cls_only else x.shape[1]
        comps.append((f"L{i}.attn_bias", bias.expand(x.shape[0], rows, -1)))
        comps.append((f"L{i}.mlp", mlp[:, :1] if cls_only else mlp))
    final = records[-1]["out"].float()
    read = _ClsReadout(parts, final) if cls_only else _PoolReadout(parts, final, inputs)
    names = [n for n, _ in comps]
    contributions = torch.stack([read.apply(c) for _, c in comps], 1)
    extra = read.extras(contributions.sum(1))
    names += [n for n, _ in extra]
    contributions = torch.cat([contributions, torch.stack([e for _, e in extra], 1)], 1)
    # the projection is linear: each term goes through its weight, its bias joins the "bias" term
    contributions = _linear(contributions, parts.projection, bias=False)
    if parts.projection is not None and parts.projection.bias is not None:
        contributions[:, names.index("bias")] += parts.projection.bias.float()
    tokens = None
    if per_token:  # (B, L, H, T, D): each head's per-token terms through the readout
        tokens = torch.stack([torch.stack([_linear(read.apply(ph[:, h], keep_rows=True), parts.projection, False)
                                           for h in range(H)], 1) for ph in heads_tok], 1)
    n_patch = final.shape[1] - parts.cls_tokens
    side = int(round(n_patch**0.5))
    grid = (side, side) if side * side == n_patch else None
    return names, contributions.cpu(), pooled.cpu(), tokens.cpu() if tokens is not None else None, grid


def _linear(x: torch.Tensor, layer: nn.Linear | None, bias: bool) -> torch.Tensor:
    """``x`` through the projection (its bias only with ``bias``); ``x`` itself where there is none."""
    if layer is None:
        return x
    out = x @ layer.weight.float().T
    return out + layer.bias.float() if bias and layer.bias is not None else out


class _ClsReadout:
    """CLS row -> final layernorm (linearised with the image's own scale); terms before the projection."""

    def __init__(self, parts: EmbeddingParts, final: torch.Tensor) -> None:
        ln = parts.final_norm
        x = final[:, 0]
        self.sigma = (x.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()  # (B, 1)
        self.g, self.b = ln.weight.float(), ln.bias.float()

    def apply(self, c: torch.Tensor, keep_rows: bool = False) -> torch.Tensor:
        """``c``: (B, rows, D) terms that add up in the CLS row (rows summed unless ``keep_rows``)."""
        c = c if keep_rows else c.sum(1)
        sigma = self.sigma[:, None] if keep_rows else self.sigma
        return (c - c.mean(-1, keepdim=True)) / sigma * self.g

    def extras(self, total: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        return [("bias", self.b.expand(total.shape[0], -1))]


class _PoolReadout:
    """Every row -> final layernorm (linearised per row) -> the attention pooling (weights fixed); terms before
    the projection."""

    def __init__(self, parts: EmbeddingParts, final: torch.Tensor, inputs: dict[str, torch.Tensor]) -> None:
        ln, pool = parts.final_norm, parts.attention_pool
        self.sigma = (final.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()  # (B, T, 1)
        self.g, self.lnb = ln.weight.float(), ln.bias.float()
        mha = pool.attention
        d, self.H = final.shape[-1], mha.num_heads
        self.dh = d // self.H
        wq, wk, wv = mha.in_proj_weight.float().chunk(3)
        bq, bk, bv = mha.in_proj_bias.float().chunk(3)
        y = ln(final).float()
        q = (pool.probe.float()[:, 0] @ wq.T + bq).view(1, self.H, 1, self.dh)
        k = (y @ wk.T + bk).view(*y.shape[:2], self.H, self.dh).transpose(1, 2)  # (B, H, T, dh)
        scores = (q @ k.transpose(-1, -2))[:, :, 0] / self.dh**0.5  # (B, H, T)
        mask = inputs.get("pixel_attention_mask")
        if mask is not None:
            scores = scores.masked_fill(~mask.bool()[:, None, :], float("-inf"))
        self.a = scores.softmax(-1)
        self.wv, self.bv, self.wo, self.bo = wv, bv, mha.out_proj.weight.float(), mha.out_proj.bias.float()
        self.mlp = pool.mlp

    def apply(self, c: torch.Tensor, keep_rows: bool = False) -> torch.Tensor:
        z = (c - c.mean(-1, keepdim=True)) / self.sigma * self.g  # (B, T, D)
        v = (z @ self.wv.T).view(*z.shape[:2], self.H, self.dh)  # (B, T, H, dh)
        per = v * self.a.transpose(1, 2)[..., None]  # (B, T, H, dh)
        out = per.reshape(*z.shape[:2], -1) @ self.wo.T  # (B, T, D)
        return out if keep_rows else out.sum(1)

    def extras(self, total: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """The biases and the pooling's MLP term (``total``: the other terms' sum)."""
        bias = (self.lnb @ self.wv.T + self.bv) @ self.wo.T + self.bo
        pooled = total + bias  # the attention output at the probe
        mlp = self.mlp(pooled).float()
        return [("bias", bias.expand(total.shape[0], -1)), ("head.mlp", mlp)]
