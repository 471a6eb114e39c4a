"""Mllama (Llama 3.2 Vision, ``MllamaForConditionalGeneration``): images enter through cross-attention, not as
sequence positions.

The prompt holds one ``<|image|>`` text token per image; the LM's cross-attention layers (``cross_attention_layers``
of the text config, blocks with ``cross_attn`` and no ``self_attn``) attend to the *cross-attention states*: the
projector's output over every image, tile and patch, flattened to ``(batch, keys, d)`` with key
``(i * max_num_tiles + t) * P + j`` = image ``i``, tile ``t`` (row-major over the image's ``rows x cols`` canvas;
tiles past its count are padding that ``cross_attention_mask`` hides), ``j = 0`` the tile's CLS and ``j >= 1``
patch ``j - 1`` row-major (``P = (tile / patch)^2 + 1``). The geometry lives in that key space (``space="keys"``):
each tile's patch grid is one :class:`ImageGrid` whose box is the tile's pixels mapped back through the
processor's aspect-preserving resize (padding right / bottom, so boxes may extend past the image); CLS keys and
padding tiles are separators. The tile layout is read back from the image processor's own canvas functions.

Hook points: ``vision.embed`` is the tower's ``layernorm_pre`` output (patch + CLS embeddings with the tile and
position embeddings added, ``(images, tiles, P, d)``: one row per key), ``vision.blocks.*`` are the tower's local
layers then its gated global layers (rows: every tile's CLS + patches, padded to a multiple of 8 per tile, all tiles
of an image in one sequence; ``tower_layout = "keys"``: row ``(i * max_num_tiles + t) * S + j`` feeds key
``(i * max_num_tiles + t) * P + j``, :mod:`mmlens.model.tower_geometry`), ``xattn.states`` (the cross-attention states, what gradient methods
differentiate), ``lm.blocks.{i}.xattn.*`` on cross-attention blocks (``lm.blocks.{i}.attn.*`` on the others). Methods that need
image tokens in the sequence refuse in one line (:meth:`mmlens.model.batch.Batch.image_positions`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn
from transformers.models.mllama.image_processing_pil_mllama import (
    get_image_size_fit_to_canvas,
    get_optimal_tiled_canvas,
)

from mmlens.adapters.base import Adapter, register_adapter
from mmlens.hooks.points import ModelParts
from mmlens.model.geometry import ImageGeometry, ImageGrid


@register_adapter
class MllamaAdapter(Adapter):
    family = "mllama"
    model_types = ("mllama",)
    model_class = "MllamaForConditionalGeneration"
    input_point: ClassVar[str] = "xattn.states"
    pixel_layout = "image_tiles"  # each image's tiles, padded to max_image_tiles (see mmlens.model.pixels)
    tower_layout = "keys"

    def pixel_views(self, x: torch.Tensor, resize_to: Any) -> list[torch.Tensor]:
        """The image resized into its tile canvas (size and tile grid from the image processor's own resize
        run on an empty image), padded bottom / right with black, cut into tiles row-major."""
        import numpy as np

        ip = self.processor.image_processor
        empty, (rows, cols) = ip.resize(np.zeros((1, *x.shape[-2:]), dtype=np.uint8), size=ip.size,
                                        max_image_tiles=ip.max_image_tiles, resample=ip.resample)
        x = resize_to(x, empty.shape[-2:])
        th, tw = int(ip.size.height), int(ip.size.width)
        x = torch.nn.functional.pad(x, (0, cols * tw - x.shape[-1], 0, rows * th - x.shape[-2]))
        return [x[:, r * th:(r + 1) * th, c * tw:(c + 1) * tw] for r in range(rows) for c in range(cols)]

    def parts(self) -> ModelParts:
        inner = self.model.model
        vision = inner.vision_model
        return ModelParts(
            lm_blocks=inner.language_model.layers,
            lm_norm=inner.language_model.norm,
            unembed=self.model.lm_head,
            # the local layers, then the gated global ones (one list: vision.blocks.{0..local + global - 1})
            vision_blocks=nn.ModuleList([*vision.transformer.layers, *vision.global_transformer.layers]),
            vision_embed=vision.layernorm_pre,
            vision_stem=(vision.patch_embedding, vision.class_embedding, vision.gated_positional_embedding,
                         vision.pre_tile_positional_embedding, vision.layernorm_pre),
            lm_cross_attn="cross_attn",
            cross_states=inner.multi_modal_projector,
        )

    def keys_per_tile(self) -> int:
        vc = self.model.config.vision_config
        return (int(vc.image_size) // int(vc.patch_size)) ** 2 + 1

    def tile_layout(self, image: Image.Image) -> tuple[int, int, tuple[int, int]]:
        """(rows, cols, resized (w, h)) of ``image``'s tile canvas, as the image processor computes it."""
        ip = self.processor.image_processor
        tile = int(self.model.config.vision_config.image_size)
        w, h = image.size
        canvas_h, canvas_w = get_optimal_tiled_canvas(h, w, max_image_tiles=int(ip.max_image_tiles), tile_size=tile)
        new_h, new_w = get_image_size_fit_to_canvas(h, w, canvas_h, canvas_w, tile)
        return int(canvas_h) // tile, int(canvas_w) // tile, (int(new_w), int(new_h))

    def geometry(self, inputs: dict[str, torch.Tensor], images: list[Image.Image]) -> list[ImageGeometry]:
        vc = self.model.config.vision_config
        tile, per = int(vc.image_size), self.keys_per_tile()
        side, max_tiles = int(vc.image_size) // int(vc.patch_size), int(vc.max_num_tiles)
        out = []
        for i, img in enumerate(images):
            rows, cols, (rw, rh) = self.tile_layout(img)
            sx, sy = img.size[0] / rw, img.size[1] / rh  # original pixels per resized pixel
            base = i * max_tiles * per
            grids = []
            for t in range(rows * cols):
                r, c = divmod(t, cols)
                start = base + t * per + 1
                box = (c * tile * sx, r * tile * sy, (c + 1) * tile * sx, (r + 1) * tile * sy)
                grids.append(ImageGrid(torch.arange(start, start + side * side).reshape(side, side), box, kind="tiles"))
            positions = torch.arange(base, base + max_tiles * per)
            in_grid = torch.cat([g.positions.flatten() for g in grids])
            separators = positions[~torch.isin(positions, in_grid)]
            out.append(ImageGeometry(i, img.size, positions, grids, separators, space="keys",
                                     notes={"tile_grid": (rows, cols), "resized": (rw, rh)}))
        return out

    def extend_inputs(self, inputs: dict[str, Any], ids: list[int]) -> dict[str, Any]:
        """As the base, and the answer tokens see the images the last prompt token sees (as ``generate`` does)."""
        seq = int(inputs["input_ids"].shape[1])
        out = super().extend_inputs(inputs, ids)
        mask = inputs.get("cross_attention_mask")
        if torch.is_tensor(mask):
            mask = mask[:, :seq]
            out["cross_attention_mask"] = torch.cat([mask, mask[:, -1:].expand(-1, len(ids), -1, -1)], dim=1)
        return out
