"""SigLIP (``SiglipModel``) and SigLIP 2 (``Siglip2Model``): no CLS token, a sigmoid similarity with a bias.

SigLIP resizes the whole image to a fixed square: positions ``0 .. (size / patch)^2 - 1`` of the joint
sequence are the patches row-major over the whole image. SigLIP 2 (NaFlex) resizes to a patch grid that keeps
the aspect ratio (``spatial_shapes`` = rows, cols) inside ``max_num_patches`` slots: the first rows x cols
slots are the patches row-major, the rest padding (separators). The caption follows (see
:mod:`mmlens.adapters.dual_encoder`; real SigLIP checkpoints were trained on captions padded to 64 tokens).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image

from mmlens.adapters.base import register_adapter
from mmlens.adapters.clip import tower_parts
from mmlens.adapters.dual_encoder import DualEncoderAdapter
from mmlens.adapters.embedding_parts import AttentionPool, EmbeddingParts, encoder_embedding_parts
from mmlens.errors import InputError
from mmlens.hooks.points import ModelParts
from mmlens.model.geometry import ImageGrid


@register_adapter
class SiglipAdapter(DualEncoderAdapter):
    family = "siglip"
    model_types = ("siglip",)
    pixel_layout = "stack"
    model_class = "SiglipModel"

    def parts(self) -> ModelParts:
        return tower_parts(self.model, self.joint)

    def processor_kwargs(self) -> dict[str, Any]:
        """Captions padded to the text tower's length, as SigLIP was trained (it pools the last position)."""
        return SiglipAdapter.text_kwargs(self)

    def text_kwargs(self) -> dict[str, Any]:
        return {"padding": "max_length", "truncation": True,
                "max_length": min(64, self.model.config.text_config.max_position_embeddings)}

    def embedding_parts(self) -> EmbeddingParts:
        """Attention-pooling head (a probe query, multi-head attention, a residual MLP), no projection."""
        vision = self.model.vision_model
        head = getattr(vision, "head", None)
        if head is None:
            raise InputError(f"this {self.family} vision tower has no pooling head (vision_use_head=False): its image "
                             "embedding is undefined; load a checkpoint with the head")
        pool = AttentionPool(head.probe, head.attention, lambda a: head.mlp(head.layernorm(a)))
        return encoder_embedding_parts(self, vision, pool, None, self.model.config.vision_config.hidden_size)

    def n_vision_tokens(self, inputs: dict[str, Any]) -> int:
        cfg = self.model.config.vision_config
        return (cfg.image_size // cfg.patch_size) ** 2

    def image_embeds(self, inputs: dict[str, Any]) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output

    def text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def vision_grids(self, inputs: dict[str, Any], image: Image.Image,
                     positions: torch.Tensor) -> tuple[list[ImageGrid], torch.Tensor]:
        side = math.isqrt(positions.numel())
        box = (0.0, 0.0, float(image.size[0]), float(image.size[1]))  # resized whole, no crop
        return [ImageGrid(positions.reshape(side, side), box)], positions[:0]


@register_adapter
class Siglip2Adapter(SiglipAdapter):
    family = "siglip2"
    model_types = ("siglip2",)
    pixel_layout = "padded_patches"  # see mmlens.model.pixels

    def pixel_resize(self, height: int, width: int) -> tuple[int, int]:
        """NaFlex: the patch grid that keeps the aspect ratio within ``max_num_patches``."""
        from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches

        ip = self.processor.image_processor
        return get_image_size_for_max_num_patches(height, width, ip.patch_size, ip.max_num_patches)
    model_class = "Siglip2Model"

    def processor_kwargs(self) -> dict[str, Any]:
        """The image processor's own patch settings (``Siglip2Processor``'s defaults would override them)."""
        ip = self.processor.image_processor
        return {**super().processor_kwargs(), "max_num_patches": ip.max_num_patches, "patch_size": ip.patch_size}

    def n_vision_tokens(self, inputs: dict[str, Any]) -> int:
        return int(inputs["pixel_values"].shape[1])  # max_num_patches slots, padding included

    def image_embeds(self, inputs: dict[str, Any]) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=inputs["pixel_values"], spatial_shapes=inputs["spatial_shapes"],
                                             pixel_attention_mask=inputs["pixel_attention_mask"]).pooler_output

    def vision_grids(self, inputs: dict[str, Any], image: Image.Image,
                     positions: torch.Tensor) -> tuple[list[ImageGrid], torch.Tensor]:
        rows, cols = (int(v) for v in inputs["spatial_shapes"][0])
        box = (0.0, 0.0, float(image.size[0]), float(image.size[1]))
        return [ImageGrid(positions[: rows * cols].reshape(rows, cols), box)], positions[rows * cols :]
