"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): base image grid + any-resolution tiles.

Per image the tokens are: the base image (squashed to the tile size) as a square grid, then the tiles
stitched into one high-resolution grid, its pure-padding rows/columns removed (``unpad_image``), laid
out row-major with one ``image_newline`` token after each row. The processor fitted the image into the
best pinpoint resolution keeping its aspect ratio and centred it with zero padding; the grid box below
maps the unpadded grid back onto the original pixels through exactly those steps.
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.modeling_llava_next import unpad_image

from mmlens.adapters.base import register_adapter
from mmlens.adapters.llava import LlavaAdapter
from mmlens.model.geometry import Box, ImageGeometry, ImageGrid


def _fit(size_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the image resized to fit ``target_hw`` keeping aspect, rounded as the processor
    rounds (``get_patch_output_size``): the scale is a float first, then ``ceil(side * scale)``, which is not
    always ``ceil(side * target / other_side)`` (e.g. 19x19 into 336x672 -> 336x337)."""
    (h, w), (th, tw) = size_hw, target_hw
    scale_w, scale_h = tw / w, th / h
    if scale_w < scale_h:
        return min(math.ceil(h * scale_w), th), tw
    return th, min(math.ceil(w * scale_h), tw)


def tile_layout(size_wh: tuple[int, int], tile: int, patch: int, pinpoints: list) -> tuple[int, int, Box]:
    """(rows, cols, original-pixel box) of the unpadded high-resolution feature grid of one image.

    Which feature rows / columns survive is the model's ``unpad_image``; where the resized image sits in the
    padded frame is the processor's (fit as :func:`_fit`, centred with the extra pixel after).
    """
    per_tile = tile // patch
    w, h = size_wh
    th, tw = select_best_resolution((h, w), pinpoints)
    frame_rows, frame_cols = th // tile * per_tile, tw // tile * per_tile
    rows, cols = unpad_image(torch.zeros(1, frame_rows, frame_cols), (h, w)).shape[1:]
    # Where the unpadded feature grid sits in the padded frame, then in original pixels.
    px = tile / per_tile  # frame pixels per feature
    top, left = (frame_rows - rows) // 2 * px, (frame_cols - cols) // 2 * px
    nh, nw = _fit((h, w), (th, tw))
    paste_y, paste_x = (th - nh) // 2, (tw - nw) // 2
    sy, sx = h / nh, w / nw
    box = ((left - paste_x) * sx, (top - paste_y) * sy, (left + cols * px - paste_x) * sx, (top + rows * px - paste_y) * sy)
    return int(rows), int(cols), box


def tile_canvas(size_wh: tuple[int, int], tile: int, pinpoints: list) -> tuple[int, int, Box]:
    """(tile rows, tile columns, original-pixel box of the whole padded frame the tiles cut): where the vision
    tower's tile patches lie, padding included (the processor's fit and centring, as :func:`tile_layout`)."""
    w, h = size_wh
    th, tw = select_best_resolution((h, w), pinpoints)
    nh, nw = _fit((h, w), (th, tw))
    paste_y, paste_x = (th - nh) // 2, (tw - nw) // 2
    sy, sx = h / nh, w / nw
    return th // tile, tw // tile, (-paste_x * sx, -paste_y * sy, (tw - paste_x) * sx, (th - paste_y) * sy)


@register_adapter
class LlavaNextAdapter(LlavaAdapter):
    family = "llava_next"
    model_types = ("llava_next",)
    model_class = "LlavaNextForConditionalGeneration"
    tower_layout = "anyres"
    pixel_layout = "tiles"  # base view + any-resolution tiles (see mmlens.model.pixels)

    def _tile_layout(self, size_wh: tuple[int, int]) -> tuple[int, int, Box]:
        """(rows, cols, original-pixel box) of the unpadded high-resolution grid of one image."""
        cfg = self.model.config
        return tile_layout(size_wh, cfg.vision_config.image_size, cfg.vision_config.patch_size, cfg.image_grid_pinpoints)

    def geometry(self, inputs: dict[str, torch.Tensor], images: list[Image.Image]) -> list[ImageGeometry]:
        _, base = self.tokens_per_image()
        side = math.isqrt(base)
        layouts = [self._tile_layout(img.size) for img in images]
        counts = [base + r * (c + 1) for r, c, _ in layouts]
        chunks = self.split_image_positions(inputs["input_ids"], counts)
        out = []
        for i, (img, pos, (rows, cols, box)) in enumerate(zip(images, chunks, layouts)):
            hi = pos[base:].reshape(rows, cols + 1)
            w, h = img.size
            grids = [
                ImageGrid(pos[:base].reshape(side, side), (0.0, 0.0, float(w), float(h)), kind="base"),
                ImageGrid(hi[:, :cols], box, kind="tiles"),
            ]
            out.append(ImageGeometry(i, img.size, pos, grids, separators=hi[:, cols],
                                     notes={"tile_grid": (rows, cols), "tile_canvas": tile_canvas(
                                         img.size, self.model.config.vision_config.image_size,
                                         self.model.config.image_grid_pinpoints)}))
        return out
