"""Gemma 3 (``Gemma3ForConditionalGeneration``): SigLIP square grid average-pooled, optional pan & scan crops.

Each image is squashed to the tower's square input; the projector average-pools the patch grid to
``sqrt(mm_tokens_per_image)`` per side, row-major, between ``<start_of_image>`` and ``<end_of_image>``. With pan &
scan (the image processor's ``do_pan_and_scan``) a long image is also cut into 2..max crops along its long side;
each crop is squashed and pooled the same way and follows the whole image in the sequence. The crop boxes are
read from the image processor's own ``pan_and_scan`` run on an index image, so they are its exact slices.
Image tokens attend to each other both ways (``token_type_ids``), the rest of the prompt is causal, and
sliding-window layers alternate with global ones.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmlens.adapters.base import Adapter, register_adapter
from mmlens.adapters.llava import tower_projector_lm_parts
from mmlens.hooks.points import ModelParts
from mmlens.model.geometry import Box, ImageGeometry, ImageGrid

_PAN_AND_SCAN = ("do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops",
                 "pan_and_scan_min_ratio_to_activate")


@register_adapter
class Gemma3Adapter(Adapter):
    family = "gemma3"
    model_types = ("gemma3",)
    pixel_layout = "stack"  # the whole image, then its pan & scan crops (see mmlens.model.pixels)
    model_class = "Gemma3ForConditionalGeneration"

    def parts(self) -> ModelParts:
        return tower_projector_lm_parts(self.model)

    def processor_kwargs(self) -> dict[str, Any]:
        """Pan & scan settings: the image processor's own where set, else the processor's call defaults."""
        ip = self.processor.image_processor
        defaults = getattr(type(self.processor), "images_kwargs", {})
        return {k: getattr(ip, k) if getattr(ip, k, None) is not None else defaults.get(k) for k in _PAN_AND_SCAN}

    def crop_boxes(self, image: Image.Image) -> list[Box]:
        """Original-pixel boxes of the pan & scan crops of ``image`` (empty when it is not cut)."""
        options = self.processor_kwargs()
        if not options.pop("do_pan_and_scan"):
            return []
        w, h = image.size
        index = np.arange(w * h, dtype=np.int64).reshape(1, h, w)
        crops = self.processor.image_processor.pan_and_scan(index, **options)
        boxes = []
        for crop in crops:
            y0, x0 = divmod(int(crop[0, 0, 0]), w)
            boxes.append((float(x0), float(y0), float(x0 + crop.shape[2]), float(y0 + crop.shape[1])))
        return boxes

    def geometry(self, inputs: dict[str, torch.Tensor], images: list[Image.Image]) -> list[ImageGeometry]:
        n = int(self.model.config.mm_tokens_per_image)
        side = math.isqrt(n)
        boxes = [[(0.0, 0.0, float(img.width), float(img.height)), *self.crop_boxes(img)] for img in images]
        chunks = self.split_image_positions(inputs["input_ids"], [n * len(b) for b in boxes])
        out = []
        for i, (img, pos, img_boxes) in enumerate(zip(images, chunks, boxes)):
            blocks = pos.reshape(len(img_boxes), side, side)
            grids = [ImageGrid(blocks[0], img_boxes[0], kind="base" if len(img_boxes) > 1 else "image")]
            grids += [ImageGrid(b, box, kind="crop") for b, box in zip(blocks[1:], img_boxes[1:])]
            out.append(ImageGeometry(i, img.size, pos, grids, notes={"crops": len(img_boxes) - 1}))
        return out
