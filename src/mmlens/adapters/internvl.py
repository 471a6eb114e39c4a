"""InternVL 2.5 / 3 as in transformers (``InternVLForConditionalGeneration``): tiles + thumbnail, pixel shuffle.

The image processor (``GotOcr2ImageProcessor``, ``crop_to_patches`` on by the processor's default) picks the
``cols x rows`` tile grid whose aspect ratio is closest to the image's (``get_optimal_tiled_canvas``), resizes the
whole image to that canvas, cuts it into tiles row-major, and adds the whole image squashed to one tile (the
thumbnail) when there is more than one tile. Per tile the tower's patch grid (CLS dropped) is pixel-shuffled by
``downsample_ratio`` (2x2 patches -> one token), row-major; an image's tokens are all its tiles' then the
thumbnail's, between ``<img>`` and ``</img>``. Tile counts come from the image processor's own functions with
the processor's effective image options.
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from transformers import InternVLProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from mmlens.adapters.base import Adapter, register_adapter
from mmlens.errors import UnsupportedModelError
from mmlens.hooks.points import ModelParts
from mmlens.model.geometry import Box, ImageGeometry, ImageGrid


@register_adapter
class InternVLAdapter(Adapter):
    family = "internvl"
    model_types = ("internvl",)
    pixel_layout = "grid_tiles"  # crop_to_patches: a grid of tiles + thumbnail (see mmlens.model.pixels)
    model_class = "InternVLForConditionalGeneration"
    processor_class = InternVLProcessor

    def parts(self) -> ModelParts:
        inner = self.model.model
        tower = inner.vision_tower
        return ModelParts(
            lm_blocks=inner.language_model.layers,
            lm_norm=inner.language_model.norm,
            unembed=self.model.lm_head,
            vision_blocks=tower.encoder.layer,
            vision_embed=tower.embeddings,
            projector=inner.multi_modal_projector,
            vision_attn="attention",
            image_features=inner,
        )

    def tokens_per_tile(self) -> int:
        cfg = self.model.config
        if cfg.vision_feature_select_strategy != "default":
            raise UnsupportedModelError("InternVL geometry needs vision_feature_select_strategy='default' (no CLS)")
        side = cfg.vision_config.image_size[0] // cfg.vision_config.patch_size[0]
        return round(side * cfg.downsample_ratio) ** 2

    def tile_grid(self, image: Image.Image) -> tuple[int, int]:
        """(rows, cols) of the tile grid; (0, 0) when the image is one tile (no thumbnail then)."""
        ip, proc = self.processor.image_processor, self.processor
        options = proc._merge_kwargs(tokenizer_init_kwargs=proc.tokenizer.init_kwargs)["images_kwargs"]
        w, h = image.size
        n = ip.get_number_of_image_patches(h, w, options)
        if n == 1:
            return 0, 0
        size = options.get("size", ip.size)
        tile_h, tile_w = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
        cols, rows = get_optimal_tiled_canvas((h, w), (tile_h, tile_w), options.get("min_patches", ip.min_patches),
                                              options.get("max_patches", ip.max_patches))
        if rows * cols + 1 != n:
            raise UnsupportedModelError(f"InternVL image processor gives {n} tiles, not {rows}x{cols} + thumbnail")
        return rows, cols

    def geometry(self, inputs: dict[str, torch.Tensor], images: list[Image.Image]) -> list[ImageGeometry]:
        n = self.tokens_per_tile()
        side = math.isqrt(n)
        grids_rc = [self.tile_grid(img) for img in images]
        chunks = self.split_image_positions(inputs["input_ids"], [n * (r * c + 1) for r, c in grids_rc])
        out = []
        for i, (img, pos, (rows, cols)) in enumerate(zip(images, chunks, grids_rc)):
            w, h = img.size
            blocks = pos.reshape(-1, side, side)
            boxes: list[Box] = [(c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows)
                                for r in range(rows) for c in range(cols)]
            grids = [ImageGrid(b, box, kind="tiles") for b, box in zip(blocks[:-1], boxes)]
            grids.append(ImageGrid(blocks[-1], (0.0, 0.0, float(w), float(h)), kind="thumbnail" if boxes else "image"))
            out.append(ImageGeometry(i, img.size, pos, grids, notes={"tile_grid": (rows, cols)}))
        return out
