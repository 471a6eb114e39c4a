"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one square patch grid per image.

The processor optionally pads to a square (``do_pad``), resizes (shortest edge or fixed size) and
centre-crops; each image becomes ``(crop / patch)^2`` tokens (+1 CLS when the feature strategy is
``"full"``), in row-major order. The bundled demo model is a LLaVA and uses this adapter unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image

from mmlens.adapters.base import Adapter, register_adapter
from mmlens.hooks.points import ModelParts
from mmlens.model.geometry import Box, ImageGeometry, ImageGrid, resize_crop_box


def _get(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def processed_box(image_processor: Any, size: tuple[int, int]) -> Box:
    """Original-pixel region that a resize(/pad)/centre-crop image processor turns into its square input.

    >>> from transformers import CLIPImageProcessorPil
    >>> processed_box(CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32), (64, 32))
    (16.0, 0.0, 48.0, 32.0)
    """
    w, h = size
    offset_x = offset_y = 0.0
    if getattr(image_processor, "do_pad", False):  # LlavaImageProcessor: pad to a centred square first
        side = max(w, h)
        offset_x, offset_y = -float((side - w) // 2), -float((side - h) // 2)
        w = h = side
    target = getattr(image_processor, "size", None) or {}
    if getattr(image_processor, "do_resize", True) and target:
        short = _get(target, "shortest_edge")
        if short:
            if w <= h:
                resized = (short, int(short * h / w))
            else:
                resized = (int(short * w / h), short)
        else:
            resized = (_get(target, "width") or w, _get(target, "height") or h)
    else:
        resized = (w, h)
    crop = None
    if getattr(image_processor, "do_center_crop", False):
        cs = image_processor.crop_size
        crop = (_get(cs, "width"), _get(cs, "height"))
    x0, y0, x1, y1 = resize_crop_box((w, h), resized, crop)
    return (x0 + offset_x, y0 + offset_y, x1 + offset_x, y1 + offset_y)


def square_grid_geometry(
    index: int, image: Image.Image, positions: torch.Tensor, box: Box, n_prefix: int = 0
) -> ImageGeometry:
    """Geometry of one image whose tokens are ``n_prefix`` non-spatial tokens then a square grid."""
    grid = positions[n_prefix:]
    side = math.isqrt(grid.numel())
    if side * side != grid.numel():
        raise ValueError(f"{grid.numel()} image tokens do not form a square grid")
    return ImageGeometry(
        image_index=index,
        size=image.size,
        positions=positions,
        grids=[ImageGrid(grid.reshape(side, side), box, kind="image")],
        separators=positions[:n_prefix],
    )


def tower_projector_lm_parts(model: Any) -> ModelParts:
    """Parts of the families built as ``model.model.{vision_tower, multi_modal_projector, language_model}``
    with a top-level ``lm_head`` (LLaVA, LLaVA-NeXT, PaliGemma)."""
    inner = model.model
    vision = getattr(inner.vision_tower, "vision_model", inner.vision_tower)  # transformers 4 nests it
    return ModelParts(
        lm_blocks=inner.language_model.layers,
        lm_norm=inner.language_model.norm,
        unembed=model.lm_head,
        vision_blocks=vision.encoder.layers,
        vision_embed=vision.embeddings,
        vision_stem=(vision.embeddings, getattr(vision, "pre_layrnorm", None)),  # CLIP: a norm after
        projector=inner.multi_modal_projector,
        image_features=inner,
    )


@register_adapter
class LlavaAdapter(Adapter):
    family = "llava"
    model_types = ("llava",)
    model_class = "LlavaForConditionalGeneration"
    pixel_layout = "stack"  # resize / centre crop / normalise (see mmlens.model.pixels)

    def parts(self) -> ModelParts:
        return tower_projector_lm_parts(self.model)

    def tokens_per_image(self) -> tuple[int, int]:
        """(non-spatial prefix tokens, grid tokens) per image."""
        vcfg = self.model.config.vision_config
        side = vcfg.image_size // vcfg.patch_size
        full = self.model.config.vision_feature_select_strategy == "full"
        return int(full), side * side

    def geometry(self, inputs: dict[str, torch.Tensor], images: list[Image.Image]) -> list[ImageGeometry]:
        prefix, grid = self.tokens_per_image()
        chunks = self.split_image_positions(inputs["input_ids"], [prefix + grid] * len(images))
        ip = self.processor.image_processor
        return [
            square_grid_geometry(i, img, pos, processed_box(ip, img.size), prefix)
            for i, (img, pos) in enumerate(zip(images, chunks))
        ]
