"""What a dual encoder's towers look like, for the methods that read the image embedding directly (TextSpan's
decomposition, SpLiCE, the modality gap, concept bottlenecks): an adapter's :meth:`embedding_parts` returns an
:class:`EmbeddingParts`, and ``mmlens.embedding`` reads only that description (as the tracing machinery reads
only :class:`~mmlens.hooks.points.ModelParts`).

The vision tower is a pre-norm transformer: ``vision_blocks`` (each ``x + attn(attn_norm(x))`` then an MLP on
the residual), a final layernorm, then a *pooling* (``"cls"``: the first row; ``"attention"``: one learned query
attending over every row, :class:`AttentionPool`) and an optional linear ``projection`` into the joint space.

>>> from mmlens.testing.tiny_dual import tiny_dual_subject
>>> p = tiny_dual_subject("siglip").adapter.embedding_parts()
>>> p.pooling, p.cls_tokens, p.projection is None, p.has_text
('attention', 0, True, True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class BlockLayout:
    """Attribute names inside one vision block: its attention module and the layernorm in front of it, and the
    attention's query / key / value / output projections (``nn.Linear``; the attention scales by ``scale``)."""

    attn: str
    attn_norm: str
    q: str
    k: str
    v: str
    out: str
    scale: str


@dataclass(frozen=True)
class AttentionPool:
    """Attention pooling: ``probe`` ``(1, 1, D)`` queries every row through ``attention`` (an
    ``nn.MultiheadAttention``, batch first); the pooled vector is ``a + mlp(a)`` for the attention output ``a``
    (``mlp``: the residual branch, layernorm included)."""

    probe: torch.Tensor
    attention: nn.MultiheadAttention
    mlp: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EmbeddingParts:
    """A dual encoder's image tower (modules the decomposition reads) and both towers' embedding functions."""

    vision_blocks: nn.ModuleList
    block: BlockLayout
    final_norm: nn.LayerNorm
    #: ``"cls"`` (the embedding reads the first row) or ``"attention"`` (``attention_pool``)
    pooling: str
    #: leading non-patch rows (the CLS token) before the patch grid
    cls_tokens: int
    attention_pool: AttentionPool | None
    #: linear map from the pooled vector into the joint space, or None (the pooled vector is the embedding)
    projection: nn.Linear | None
    #: width of the joint (image / text) embedding space
    embed_dim: int
    #: image embeddings ``(B, D)`` (projected, not normalised) of the image processor's outputs
    encode_image: Callable[[dict[str, Any]], torch.Tensor]
    #: text embeddings ``(B, D)`` of plain texts, tokenized as the text tower expects; None: no text tower
    encode_text: Callable[[list[str]], torch.Tensor] | None
    #: ``(image_emb, text_emb) -> similarity logits`` row by row (scale, and bias where the model has one)
    similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @property
    def has_text(self) -> bool:
        return self.encode_text is not None


#: the pre-norm encoder block of transformers' two-tower image-text models
ENCODER_BLOCK = BlockLayout(attn="self_attn", attn_norm="layer_norm1", q="q_proj", k="k_proj", v="v_proj",
                            out="out_proj", scale="scale")


def encoder_embedding_parts(adapter: Any, vision: nn.Module, pool: AttentionPool | None, projection: nn.Linear | None,
                            embed_dim: int) -> EmbeddingParts:
    """The :class:`EmbeddingParts` of a transformers two-tower model whose vision transformer ``vision`` has
    ``encoder.layers`` and ``post_layernorm`` (CLS pooling when ``pool`` is None)."""
    return EmbeddingParts(
        vision_blocks=vision.encoder.layers, block=ENCODER_BLOCK, final_norm=vision.post_layernorm,
        pooling="cls" if pool is None else "attention", cls_tokens=1 if pool is None else 0, attention_pool=pool,
        projection=projection, embed_dim=int(embed_dim), encode_image=adapter.image_embeds,
        encode_text=adapter.encode_texts, similarity=adapter.similarity_logits,
    )
