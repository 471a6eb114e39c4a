"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): SigLIP base image + anyres-max tiles.

A single image per prompt sample is tiled as in LLaVA-NeXT: the base image (squashed to the tile size, no CLS)
as a square grid, then the tiles stitched into one grid, its padding rows / columns removed (``unpad_image``),
and, past ``anyres_max_N`` tiles' worth of features (ratio > 1.1), bilinearly shrunk to
``(rows // ratio, cols // ratio)`` over the same pixel box; one ``image_newline`` token ends each row. mmlens hands
the processor a flat image list, so every image of a prompt is tiled (``batch_num_images`` = 1 each; HF's nested
multi-image mode, base grid + one newline per image, is not used). Videos: every frame squashed to the base
tile, 2x2 bilinearly pooled, one newline token after the last frame (:mod:`mmlens.adapters.video`).
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from transformers import LlavaOnevisionProcessor

from mmlens.adapters.base import register_adapter
from mmlens.adapters.llava_next import LlavaNextAdapter
from mmlens.adapters.video import call_with_frames, pooled_video_geometry
from mmlens.errors import UnsupportedModelError
from mmlens.model.geometry import Box, ImageGeometry


@register_adapter
class LlavaOnevisionAdapter(LlavaNextAdapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)
    model_class = "LlavaOnevisionForConditionalGeneration"
    processor_class = LlavaOnevisionProcessor
    supports_video = True

    def video_inputs(self, frames: list[Image.Image], fps: float, text: str) -> dict[str, torch.Tensor]:
        """Each frame squashed to the base tile, see :mod:`mmlens.adapters.video`."""
        return call_with_frames(self.processor, "pooled", frames, fps, text)

    def video_geometry(self, inputs: dict[str, torch.Tensor], frames: list[Image.Image],
                       fps: float) -> list[ImageGeometry]:
        """``ceil(side / 2)^2`` bilinearly pooled tokens per frame over the whole (squashed) frame, then one
        newline token after the last frame."""
        width, height = frames[0].size
        side = math.ceil(self._base_side() / 2)
        return pooled_video_geometry(inputs, frames, fps, int(self.model.config.video_token_index), side,
                                     (0.0, 0.0, float(width), float(height)), newline=True)

    def _base_side(self) -> int:
        cfg = self.model.config
        if cfg.vision_feature_select_strategy != "full":
            raise UnsupportedModelError("LLaVA-OneVision geometry needs vision_feature_select_strategy='full'")
        return cfg.vision_config.image_size // cfg.vision_config.patch_size

    def _tile_layout(self, size_wh: tuple[int, int]) -> tuple[int, int, Box]:
        """(rows, cols, box) of the high-resolution grid after unpadding and the anyres-max shrink (the rest of
        the layout, base grid + tiles + one newline per row, is LLaVA-NeXT's)."""
        side = self._base_side()
        rows, cols, box = super()._tile_layout(size_wh)
        max_tiles = int(self.model.config.vision_aspect_ratio.removeprefix("anyres_max_"))
        ratio = math.sqrt(rows * cols / (max_tiles * side**2))
        if ratio > 1.1:
            rows, cols = int(rows // ratio), int(cols // ratio)
        return rows, cols, box
