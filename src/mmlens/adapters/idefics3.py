"""Idefics3 (``Idefics3ForConditionalGeneration``): a grid of sub-images + a global image, pixel shuffle.

The image processor resizes the image so its longest edge is ``size["longest_edge"]``, then up to multiples
of the tile size ``max_image_size["longest_edge"]`` (both whole-image resizes, so each axis is only scaled),
and cuts it into ``rows x cols`` tiles, row-major, followed by the whole image squashed to one tile (the global
image; an image that fits one tile gives only that). Each tile's patch grid is pixel-shuffled (``scale_factor``
x ``scale_factor`` patches -> one token), row-major. In the text each tile is ``<fake_token_around_image>
<row_r_col_c>`` + its tokens, the global image ``<fake_token_around_image><global-img>`` + its tokens: the
row / column / global tags are text tokens, not image tokens, so they are not part of the geometry. The tile
counts are read back from the image processor's own resize functions run on an empty image of the same size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from transformers.image_utils import SizeDict

from mmlens.adapters.base import Adapter, register_adapter
from mmlens.hooks.points import ModelParts
from mmlens.model.geometry import Box, ImageGeometry, ImageGrid


@register_adapter
class Idefics3Adapter(Adapter):
    family = "idefics3"
    model_types = ("idefics3",)
    model_class = "Idefics3ForConditionalGeneration"

    def parts(self) -> ModelParts:
        inner = self.model.model
        return ModelParts(
            lm_blocks=inner.text_model.layers,
            lm_norm=inner.text_model.norm,
            unembed=self.model.lm_head,
            vision_blocks=inner.vision_model.encoder.layers,
            vision_embed=inner.vision_model.embeddings,
            projector=inner.connector,
            image_features=inner,
        )

    def tokens_per_tile(self) -> int:
        cfg = self.model.config
        return (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 // cfg.scale_factor**2

    def tile_layout(self, image: Image.Image) -> tuple[int, int, tuple[int, int]]:
        """(rows, cols, resized (w, h)) of the sub-image grid; rows = cols = 0 when the image is not split."""
        ip = self.processor.image_processor
        tile = int(ip.max_image_size["longest_edge"])
        w, h = image.size
        if not ip.do_image_splitting:
            return 0, 0, (w, h)
        resized = np.zeros((1, h, w), dtype=np.uint8)
        if ip.do_resize:
            resized = ip.resize(resized, ip.size if isinstance(ip.size, SizeDict) else SizeDict(**ip.size))
        rh, rw = ip.resize_for_vision_encoder(resized, tile).shape[-2:]
        if rh <= tile and rw <= tile:
            return 0, 0, (rw, rh)
        return rh // tile, rw // tile, (rw, rh)

    pixel_layout = "views"  # the views below, padded into one row (see mmlens.model.pixels)

    def pixel_views(self, x: torch.Tensor, resize_to: Callable[..., torch.Tensor]) -> list[torch.Tensor]:
        """The image processor's views of ``x`` (``(3, H, W)``, 0..255): its resizes (sizes read from its own
        resize functions run on an empty image) through the differentiable ``resize_to(t, (h, w))``, then the
        row-major tiles and the global image."""
        ip = self.processor.image_processor
        tile = int(ip.max_image_size["longest_edge"])
        empty = np.zeros((1, *x.shape[-2:]), dtype=np.uint8)
        if ip.do_resize:
            empty = ip.resize(empty, ip.size if isinstance(ip.size, SizeDict) else SizeDict(**ip.size))
            x = resize_to(x, empty.shape[-2:])
        if not ip.do_image_splitting:
            return [resize_to(x, (tile, tile))]
        x = resize_to(x, ip.resize_for_vision_encoder(empty, tile).shape[-2:])
        h, w = x.shape[-2:]
        if h <= tile and w <= tile:
            return [x]
        views = [x[:, r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
                 for r in range((h - tile) // tile + 1) for c in range((w - tile) // tile + 1)]
        return [*views, resize_to(x, (tile, tile))]

    def geometry(self, inputs: dict[str, torch.Tensor], images: list[Image.Image]) -> list[ImageGeometry]:
        n = self.tokens_per_tile()
        side = math.isqrt(n)
        layouts = [self.tile_layout(img) for img in images]
        chunks = self.split_image_positions(inputs["input_ids"], [n * (r * c + 1) for r, c, _ in layouts])
        out = []
        for i, (img, pos, (rows, cols, (rw, rh))) in enumerate(zip(images, chunks, layouts)):
            w, h = img.size
            blocks = pos.reshape(rows * cols + 1, side, side)
            tw, th = w / cols if cols else w, h / rows if rows else h  # one tile in original pixels
            boxes: list[Box] = [(c * tw, r * th, (c + 1) * tw, (r + 1) * th) for r in range(rows) for c in range(cols)]
            grids = [ImageGrid(b, box, kind="tiles") for b, box in zip(blocks[:-1], boxes)]
            grids.append(ImageGrid(blocks[-1], (0.0, 0.0, float(w), float(h)), kind="global" if boxes else "image"))
            out.append(ImageGeometry(i, img.size, pos, grids, notes={"tile_grid": (rows, cols), "resized": (rw, rh)}))
        return out
