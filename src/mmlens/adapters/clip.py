"""CLIP (``CLIPModel``): a ViT with a CLS token and a causal text transformer pooled at its end token.

Joint sequence (see :mod:`mmlens.adapters.dual_encoder`): position 0 is the vision CLS token (a separator),
positions ``1 .. (crop / patch)^2`` the patches row-major over the centre crop the image processor keeps
(resize shortest edge, centre crop), then the caption. The bundled ``"demo:clip"`` is a CLIP.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from mmlens.adapters.base import register_adapter
from mmlens.adapters.dual_encoder import DualEncoderAdapter
from mmlens.adapters.embedding_parts import EmbeddingParts, encoder_embedding_parts
from mmlens.adapters.llava import processed_box
from mmlens.hooks.points import ModelParts
from mmlens.model.geometry import ImageGrid


def tower_parts(model: Any, joint: torch.nn.Module) -> ModelParts:
    """Both towers of a CLIP / SigLIP model: ``vision.*`` and ``text.*`` hook points, no language model, and the
    joint sequence's input embeddings ``joint`` (``joint.embed``)."""
    vision, text = model.vision_model, model.text_model
    return ModelParts(
        lm_blocks=torch.nn.ModuleList(), lm_norm=None, unembed=None,
        vision_blocks=vision.encoder.layers, vision_embed=vision.embeddings,
        vision_stem=(vision.embeddings, getattr(vision, "pre_layrnorm", None)),  # CLIP: a norm after
        text_blocks=text.encoder.layers, text_embed=text.embeddings,
        tower_attn_out="out_proj", tower_mlp="mlp", joint_embed=joint,
    )


@register_adapter
class ClipAdapter(DualEncoderAdapter):
    family = "clip"
    model_types = ("clip",)
    pixel_layout = "stack"
    model_class = "CLIPModel"

    def parts(self) -> ModelParts:
        return tower_parts(self.model, self.joint)

    def n_vision_tokens(self, inputs: dict[str, Any]) -> int:
        cfg = self.model.config.vision_config
        return 1 + (cfg.image_size // cfg.patch_size) ** 2

    def embedding_parts(self) -> EmbeddingParts:
        """CLS pooling, final layernorm, linear visual projection."""
        return encoder_embedding_parts(self, self.model.vision_model, None, self.model.visual_projection,
                                       self.model.config.projection_dim)

    def text_kwargs(self) -> dict[str, Any]:
        """Captions padded to the longest, truncated at the text tower's length (it pools its end token)."""
        return {"padding": True, "truncation": True,
                "max_length": int(self.model.config.text_config.max_position_embeddings)}

    def image_embeds(self, inputs: dict[str, Any]) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output

    def text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def vision_grids(self, inputs: dict[str, Any], image: Image.Image,
                     positions: torch.Tensor) -> tuple[list[ImageGrid], torch.Tensor]:
        cfg = self.model.config.vision_config
        side = cfg.image_size // cfg.patch_size
        box = processed_box(self.processor.image_processor, image.size)
        return [ImageGrid(positions[1:].reshape(side, side), box)], positions[:1]
