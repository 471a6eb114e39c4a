"""LLaVA-NeXT-Video (``LlavaNextVideoForConditionalGeneration``): LLaVA-NeXT for images, pooled frames for videos.

Images: LLaVA-NeXT's layout (base grid + unpadded any-resolution tiles, one newline token per row). Videos: each
frame resized (shortest edge) and centre-cropped as the family's video processor does, its patch features
(CLS dropped) average-pooled ``spatial_pool_stride`` x ``spatial_pool_stride`` (``vision_resampler``), then
projected: ``(side // stride)^2`` tokens per frame, frames in order, no newline (:mod:`mmlens.adapters.video`).

``LlavaNextVideoProcessor`` takes its video processor (torchvision) as its *first* argument;
:class:`ImageOnlyLlavaNextVideoProcessor` builds from the image processor and tokenizer alone.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, LlavaNextVideoProcessor
from transformers.processing_utils import ProcessorMixin

from mmlens.adapters.base import register_adapter
from mmlens.adapters.image_only import image_only_processor
from mmlens.adapters.llava import processed_box
from mmlens.adapters.llava_next import LlavaNextAdapter
from mmlens.adapters.video import call_with_frames, pooled_video_geometry
from mmlens.model.geometry import ImageGeometry


class ImageOnlyLlavaNextVideoProcessor(image_only_processor(LlavaNextVideoProcessor)):
    """``LlavaNextVideoProcessor`` without a video processor (mmlens hands it frames, see ``adapters.video``)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, patch_size=None,
                 vision_feature_select_strategy=None, video_token="<video>", image_token="<image>",
                 num_additional_image_tokens=0, **kwargs):
        # LlavaNextVideoProcessor.__init__'s settings; its super().__init__ would take a video processor first
        self.patch_size = patch_size
        self.num_additional_image_tokens = num_additional_image_tokens
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.image_token = getattr(tokenizer, "image_token", image_token)
        self.video_token = getattr(tokenizer, "video_token", video_token)
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def frame_processor(image_processor: Any) -> CLIPImageProcessorPil:
    """What the family's video processor does to a frame (shortest-edge resize, centre crop, normalise), with the
    image processor's settings, in PIL."""
    ip = image_processor
    return CLIPImageProcessorPil(size=dict(ip.size), crop_size=dict(ip.crop_size), image_mean=ip.image_mean,
                                 image_std=ip.image_std, resample=ip.resample, do_center_crop=True)


@register_adapter
class LlavaNextVideoAdapter(LlavaNextAdapter):
    family = "llava_next_video"
    model_types = ("llava_next_video",)
    model_class = "LlavaNextVideoForConditionalGeneration"
    processor_class = LlavaNextVideoProcessor
    image_only_class = ImageOnlyLlavaNextVideoProcessor
    supports_video = True

    def video_inputs(self, frames: list[Image.Image], fps: float, text: str) -> dict[str, torch.Tensor]:
        """Frames cropped like the family's video processor; the processor expands ``<video>``."""
        return call_with_frames(self.processor, "pooled", frames, fps, text,
                                frame_processor(self.processor.image_processor))

    def video_geometry(self, inputs: dict[str, torch.Tensor], frames: list[Image.Image],
                       fps: float) -> list[ImageGeometry]:
        """``(side // stride)^2`` tokens per frame over the centre crop (a last odd patch row / column, which the
        pooling drops, is cut from the box)."""
        cfg = self.model.config
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        stride = int(cfg.spatial_pool_stride)
        pooled = side // stride
        x0, y0, x1, y1 = processed_box(frame_processor(self.processor.image_processor), frames[0].size)
        keep = pooled * stride / side
        box = (x0, y0, x0 + (x1 - x0) * keep, y0 + (y1 - y0) * keep)
        return pooled_video_geometry(inputs, frames, fps, int(cfg.video_token_index), pooled, box, newline=False)
