"""The image tower every embedding method reads: a dual encoder's vision side (with its text side), described by
its adapter's :class:`~mmlens.adapters.embedding_parts.EmbeddingParts`, or the vision tower of a supported MLLM
(its image embedding is the projector's input; no text side).

>>> from mmlens.testing.tiny_dual import tiny_dual_model_and_processor
>>> t = tower(tiny_dual_model_and_processor("clip"))
>>> t.kind, t.has_text, t.n_layers, t.n_heads, t.parts.pooling
('dual', True, 2, 2, 'cls')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from mmlens.adapters.base import adapter_for
from mmlens.errors import InputError, UnsupportedModelError
from mmlens.model.images import ImageLike, to_rgb
from mmlens.util.options import check_int
from mmlens.util.progress import progress

_NOT_A_TOWER = ("is not an image-text dual encoder or a supported MLLM: pass a dual encoder with its processor "
                "(or mmlens.load of one), or a Subject from mmlens.load")


class Tower:
    """A vision tower (and text tower, for dual encoders) with the modules the decomposition needs.

    ``kind`` is ``"dual"`` (an image-text dual encoder: ``parts`` is its adapter's ``EmbeddingParts``) or
    ``"mllm"`` (an MLLM's vision tower: ``parts`` is its adapter's ``ModelParts``; no text side)."""

    def __init__(self, model: nn.Module, processor: Any, subject: Any = None) -> None:
        self.model, self.processor, self.subject = model.eval(), processor, subject
        if subject is not None:
            adapter = subject.adapter
        else:
            try:
                adapter = adapter_for(model)(model, processor)
            except UnsupportedModelError:
                raise InputError(f"{type(model).__name__} {_NOT_A_TOWER}") from None
        if getattr(adapter, "dual_encoder", False):
            self.kind = "dual"
            self.parts = adapter.embedding_parts()
            self.blocks = self.parts.vision_blocks
        elif subject is not None:
            self.kind = "mllm"
            self.parts = adapter.parts()
            if self.parts.vision_blocks is None:
                raise InputError(f"{subject.model_id} names no vision tower: the embedding methods need one")
            if self.parts.projector is None and self.parts.image_features is None:
                raise InputError(f"{subject.model_id} hands its image features to cross-attention layers, not through "
                                 "a projector into the token sequence, which the embedding methods read: use attention "
                                 "or the gradient methods (they score the cross-attention keys)")
            self.blocks = self.parts.vision_blocks
        else:
            raise InputError(f"a bare {type(model).__name__} {_NOT_A_TOWER}")

    # -- shape ---------------------------------------------------------------------------------------------
    @property
    def has_text(self) -> bool:
        return self.kind == "dual" and self.parts.has_text

    @property
    def embed_dim(self) -> int:
        """Width of the image embedding (the joint space of a dual encoder)."""
        if self.kind == "dual":
            return self.parts.embed_dim
        return int(getattr(self.vision_config, "hidden_size", 0) or 0)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def n_heads(self) -> int:
        """Attention heads per vision block (read from the attention module: ``num_heads`` or width / ``head_dim``)."""
        attn = _attn(self.blocks[0])
        if isinstance(getattr(attn, "num_heads", None), int):
            return int(attn.num_heads)
        return int(self.vision_config.hidden_size) // int(attn.head_dim)

    @property
    def vision_config(self) -> Any:
        cfg = self.model.config
        return getattr(cfg, "vision_config", cfg)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def require_text(self, what: str) -> None:
        """One-line InputError when ``what`` needs a text tower that this tower lacks."""
        if not self.has_text:
            where = "this MLLM's vision tower" if self.kind == "mllm" else "this model"
            raise InputError(f"{what} needs a text encoder aligned with the image embedding, and {where} has none: "
                             "use `decompose` (layer / head contributions to the image embedding) here, or load an "
                             "image-text dual encoder for text-based methods")

    # -- inputs --------------------------------------------------------------------------------------------
    def pixel_inputs(self, images: Sequence[ImageLike]) -> dict[str, torch.Tensor]:
        """Processor outputs for ``images`` (pixel values and, for SigLIP 2, the patch mask and shapes)."""
        rgb = [to_rgb(img, name=f"image {i}")[0] for i, img in enumerate(images)]
        ip = getattr(self.processor, "image_processor", self.processor)
        out = dict(ip(images=rgb, return_tensors="pt"))
        dtype = next(self.model.parameters()).dtype
        return {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in out.items() if torch.is_tensor(v)}

    @torch.no_grad()
    def encode_images(self, images: Sequence[ImageLike], batch_size: int = 32, show: bool | None = None) -> torch.Tensor:
        """Image embeddings ``(n, d)`` (not normalised) as the model computes them."""
        self.require_text("encode_images")
        batch_size = check_int("batch_size", batch_size, 1, 4096)
        images = _non_empty(images, "images")
        chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        out = [self.parts.encode_image(self.pixel_inputs(c)) for c in progress(chunks, "images", show)]
        return torch.cat(out).float().cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Iterable[str], batch_size: int = 256, show: bool | None = None) -> torch.Tensor:
        """Text embeddings ``(m, d)``, encoded ``batch_size`` texts at a time (``texts`` may be a generator)."""
        self.require_text("encoding texts")
        batch_size = check_int("batch_size", batch_size, 1, 65536)
        out, chunk = [], []
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"text {text!r} is not a non-empty string: pass words or phrases")
            chunk.append(text)
            if len(chunk) == batch_size:
                out.append(self._texts(chunk))
                chunk = []
        if chunk:
            out.append(self._texts(chunk))
        if not out:
            raise InputError("no texts given: pass at least one word or phrase")
        return torch.cat(out)

    def _texts(self, texts: list[str]) -> torch.Tensor:
        return self.parts.encode_text(texts).float().cpu()


def tower(subject_or_model: Any, processor: Any = None) -> Tower:
    """The :class:`Tower` of a dual encoder (model + processor, a ``(model, processor)`` pair, or an object with
    ``.model`` / ``.processor``) or of an MLLM :class:`~mmlens.Subject`."""
    if isinstance(subject_or_model, Tower):
        return subject_or_model
    if isinstance(subject_or_model, tuple) and len(subject_or_model) == 2:
        subject_or_model, processor = subject_or_model
    if isinstance(subject_or_model, nn.Module):
        if processor is None:
            raise InputError("a bare model was given without its processor: pass tower(model, processor)")
        return Tower(subject_or_model, processor)
    model = getattr(subject_or_model, "model", None)
    if not isinstance(model, nn.Module):
        raise InputError(f"{type(subject_or_model).__name__} is not a model or subject: pass an image-text dual "
                         "encoder with its processor, or mmlens.load(...)")
    is_subject = hasattr(subject_or_model, "adapter")
    return Tower(model, processor or subject_or_model.processor, subject_or_model if is_subject else None)


def _attn(block: nn.Module) -> nn.Module:
    for name in ("self_attn", "attn", "attention"):
        if isinstance(getattr(block, name, None), nn.Module):
            return getattr(block, name)
    raise InputError(f"{type(block).__name__} has no attention module mmlens knows (self_attn / attn / attention)")


def _non_empty(items: Any, name: str) -> list:
    items = list(items) if not isinstance(items, list) else items
    if not items:
        raise InputError(f"no {name} given: pass at least one")
    return items
