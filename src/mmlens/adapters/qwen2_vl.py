"""Qwen2-VL and Qwen2.5-VL: dynamic resolution, 2x2 patch merge, several images per prompt;
videos (frames) with two frames per token (:mod:`mmlens.adapters.video`).

Each image is resized (no crop) to multiples of ``patch * merge`` pixels; ``image_grid_thw[i] = (t, h, w)``
counts patches, and the image gets ``t * h * w / merge^2`` tokens, row-major over the merged
``(h / merge) x (w / merge)`` grid, between ``<|vision_start|>`` and ``<|vision_end|>``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from PIL import Image
from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

from mmlens.adapters.base import Adapter, register_adapter
from mmlens.adapters.qwen_processor import ImageOnlyQwen2_5_VLProcessor, ImageOnlyQwen2VLProcessor
from mmlens.adapters.video import call_with_frames, qwen_video_geometry
from mmlens.hooks.points import ModelParts
from mmlens.hooks.views import RowOrder
from mmlens.model.geometry import ImageGeometry, ImageGrid


@register_adapter
class Qwen2VLAdapter(Adapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    model_class = "Qwen2VLForConditionalGeneration"
    processor_class = Qwen2VLProcessor
    image_only_class = ImageOnlyQwen2VLProcessor
    supports_video = True
    #: the frame layout of :mod:`mmlens.adapters.video` (Qwen3-VL: "qwen3")
    video_layout = "qwen"
    tower_layout = "merge_windows"
    pixel_layout = "patches"

    def pixel_resize(self, height: int, width: int) -> tuple[int, int]:
        """Qwen's ``smart_resize``: multiples of patch x merge inside the processor's pixel budget."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        ip = self.processor.image_processor
        return tuple(smart_resize(height, width, factor=ip.patch_size * ip.merge_size,  # type: ignore[return-value]
                                  min_pixels=ip.size.shortest_edge, max_pixels=ip.size.longest_edge))

    def parts(self) -> ModelParts:
        inner = self.model.model
        return ModelParts(
            lm_blocks=inner.language_model.layers,
            lm_norm=inner.language_model.norm,
            unembed=self.model.lm_head,
            vision_blocks=inner.visual.blocks,
            vision_embed=inner.visual.patch_embed,
            vision_stem=(inner.visual.patch_embed, getattr(inner.visual, "pos_embed", None)),  # Qwen3-VL
            projector=inner.visual.merger,
            vision_attn="attn",
            image_features=inner,  # after the merger, back in sequence order (Qwen2.5-VL un-windows there)
            vision_attn_chunked=True,  # one attention call per image (Qwen2.5-VL: per window)
        )

    def geometry(self, inputs: dict[str, torch.Tensor], images: list[Image.Image]) -> list[ImageGeometry]:
        merge = int(self.model.config.vision_config.spatial_merge_size)
        thw = inputs["image_grid_thw"].tolist()
        shapes = [(t, h // merge, w // merge) for t, h, w in thw]
        chunks = self.split_image_positions(inputs["input_ids"], [t * r * c for t, r, c in shapes])
        out = []
        for i, (img, pos, (t, rows, cols)) in enumerate(zip(images, chunks, shapes)):
            w, h = img.size
            box = (0.0, 0.0, float(w), float(h))
            grids = [ImageGrid(frame, box, kind="image") for frame in pos.reshape(t, rows, cols)]
            out.append(ImageGeometry(i, img.size, pos, grids, notes={"grid_thw": tuple(thw[i])}))
        return out

    def video_inputs(self, frames: list[Image.Image], fps: float, text: str) -> dict[str, torch.Tensor]:
        """Two frames per token (``temporal_patch_size``), see :mod:`mmlens.adapters.video`."""
        return call_with_frames(self.processor, self.video_layout, frames, fps, text)

    def video_geometry(self, inputs: dict[str, torch.Tensor], frames: list[Image.Image],
                       fps: float) -> list[ImageGeometry]:
        merge = int(self.model.config.vision_config.spatial_merge_size)
        return qwen_video_geometry(inputs, frames, fps, int(self.model.config.video_token_id), merge)


@register_adapter
class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    model_class = "Qwen2_5_VLForConditionalGeneration"
    processor_class = Qwen2_5_VLProcessor
    image_only_class = ImageOnlyQwen2_5_VLProcessor

    def parts(self) -> ModelParts:
        """As Qwen2-VL; the vision blocks run on patches in window order, shown in patch order."""
        return replace(super().parts(), vision_rows=RowOrder(self.model.model.visual, self._window_order))

    def _window_order(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """Patch permutation of one vision-tower call: held row i = input patch ``perm[i]`` (HF permutes
        merged 2x2 units by ``window_index`` before block 0 and reverses it after the merger)."""
        from transformers.vision_utils import get_vision_window_index

        visual = self.model.model.visual
        grid_thw = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
        window_index, _ = get_vision_window_index(
            grid_thw, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
            patch_size=visual.patch_size, kwargs=dict(kwargs),
        )
        unit = visual.spatial_merge_unit
        return (window_index[:, None] * unit + torch.arange(unit, device=window_index.device)).flatten()
