"""Image-only processors for Qwen2-VL / Qwen2.5-VL that work without torchvision.

transformers' ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` declare three sub-processors (image processor,
tokenizer, *video processor*) and refuse to build without all three; every video processor needs torchvision.
The subclasses here declare only ``image_processor`` and ``tokenizer`` (``ProcessorMixin.get_attributes`` reads the
``__init__`` signature), so they build with the PIL image processor (``Qwen2VLImageProcessorPil``) and otherwise
run the parent's image code unchanged: ``<|image_pad|>`` is expanded to ``image_grid_thw[i].prod() // merge_size**2``
copies per image (several images per prompt work), and ``mm_token_type_ids`` (needed by the model's M-RoPE) is
returned. Videos are rejected with a clear error unless :mod:`mmlens.adapters.video` attached its frame processor.
The adapters name these classes as their ``image_only_class``, which ``Adapter.load_processor`` loads from a saved
folder / hub id when ``AutoProcessor`` cannot build the full processor (no torchvision).
"""

from __future__ import annotations

from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.processing_utils import MultiModalData, ProcessorMixin

__all__ = [
    "ImageOnlyQwen2VLProcessor",
    "ImageOnlyQwen2_5_VLProcessor",

]


class _ImageOnlyQwenMixin:
    """Shared ``__init__`` / guards. Must come first in the bases so its ``__init__`` signature is the one
    ``ProcessorMixin.get_attributes`` inspects (-> attributes ``["image_processor", "tokenizer"]``)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        if image_processor is None or tokenizer is None:
            raise ValueError(f"{type(self).__name__} needs both an image_processor and a tokenizer.")
        # Same token resolution as Qwen2VLProcessor.__init__ (tokenizer attributes win over the defaults).
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.image_token
        )
        unk_id = getattr(tokenizer, "unk_token_id", None)
        if self.image_token_id is None or (unk_id is not None and self.image_token_id == unk_id):
            raise ValueError(f"The tokenizer does not know the image token {self.image_token!r}.")
        video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(video_token)
        if video_token_id is None or (unk_id is not None and video_token_id == unk_id):
            # Without this guard <unk> tokens would be typed as "video" in mm_token_type_ids and break M-RoPE.
            video_token, video_token_id = None, None
        self.video_token = video_token
        self.video_token_id = video_token_id
        # Skip Qwen2VLProcessor.__init__ (it would pass a video_processor positional arg).
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    @property
    def video_token_ids(self) -> list[int]:
        # ProcessorMixin's default would be [None]; an empty list keeps np.isin clean in create_mm_token_type_ids.
        return [self.video_token_id] if self.video_token_id is not None else []

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        if videos is not None and getattr(self, "video_processor", None) is None:  # mmlens.adapters.video sets one
            raise ValueError(
                f"{type(self).__name__} is image-only (video processors need torchvision); pass images, not videos."
            )
        return super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def _get_num_multimodal_tokens(self, image_sizes=None, video_sizes=None, **kwargs) -> MultiModalData:
        if video_sizes is not None:
            raise ValueError(f"{type(self).__name__} is image-only: video_sizes are not supported.")
        return super()._get_num_multimodal_tokens(image_sizes=image_sizes, **kwargs)


class ImageOnlyQwen2VLProcessor(_ImageOnlyQwenMixin, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without a video processor (image processor + tokenizer only).

    >>> # processor = ImageOnlyQwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tok)
    """


class ImageOnlyQwen2_5_VLProcessor(_ImageOnlyQwenMixin, Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor (image processor + tokenizer only)."""
