"""SmolVLM (``SmolVLMForConditionalGeneration``): Idefics3's layout (sub-image grid + global image, pixel
shuffle, row / column tags), a SmolVLM vision tower and connector.

``SmolVLMProcessor`` needs a video processor (torchvision) and ``num2words`` (only to write video prompts);
:class:`ImageOnlySmolVLMProcessor` runs its image code without either.
"""

from __future__ import annotations

from transformers import SmolVLMProcessor
from transformers.processing_utils import ProcessorMixin

from mmlens.adapters.base import register_adapter
from mmlens.adapters.idefics3 import Idefics3Adapter
from mmlens.adapters.image_only import image_only_processor


class ImageOnlySmolVLMProcessor(image_only_processor(SmolVLMProcessor)):
    """``SmolVLMProcessor`` for images: its ``__init__`` minus the video processor and the ``num2words`` check."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_len: int = 169, chat_template=None, **kwargs):
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.image_seq_len = image_seq_len
        self.video_token = getattr(tokenizer, "video_token", "<video>")
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """The generic template rendering (SmolVLM's own reads video-processor defaults first)."""
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template=chat_template, **kwargs)


@register_adapter
class SmolVLMAdapter(Idefics3Adapter):
    family = "smolvlm"
    model_types = ("smolvlm",)
    model_class = "SmolVLMForConditionalGeneration"
    processor_class = SmolVLMProcessor
    image_only_class = ImageOnlySmolVLMProcessor

