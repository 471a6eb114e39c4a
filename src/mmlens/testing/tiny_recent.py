"""Tiny builders of the families added after the first five (see :mod:`mmlens.testing.tiny_models` for the
conventions: hidden 32, 2 layers per tower, word tokenizer, real PIL image processors and processors).

llava_onevision (SigLIP 32 px / patch 8, no CLS, ``vision_feature_select_strategy="full"``, Qwen2 LM,
``image_grid_pinpoints`` (H, W) = 32x64, 64x32, 64x64, ``vision_aspect_ratio="anyres_max_1"`` so that grids of
more than one tile's worth of features are bilinearly shrunk, as ``anyres_max_9`` does past 9 tiles)
    Per image: base 4x4 = 16 tokens, then the unpadded tile grid with a newline per row:
    - 80x24 -> 1x2 tiles -> unpadded 2x8 (16 features, ratio 1: kept) -> 16 + 2*9 = 34.
    - 40x80 -> 2x1 tiles -> 8x4 (ratio sqrt(2) > 1.1: shrunk to 5x2) -> 16 + 5*3 = 31.
    The processor is :func:`mmlens.adapters.image_only.image_only_processor` of ``LlavaOnevisionProcessor``.
"""

from __future__ import annotations

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    SiglipVisionConfig,
)

from mmlens.adapters.image_only import image_only_processor
from mmlens.testing.tiny_configs import HEADS, HIDDEN, LAYERS, llama_config, tiny_tokenizer
from mmlens.testing.word_tokenizer import LLAVA_CHAT_TEMPLATE

IMAGE_SIZES: dict[str, tuple[tuple[int, int], ...]] = {  # PIL (width, height)
    "llava_onevision": ((80, 24), (40, 80), (72, 56)),
}

_PINPOINTS = [[32, 64], [64, 32], [64, 64]]


def siglip_config(image_size: int = 32, patch_size: int = 8, **extra) -> SiglipVisionConfig:
    return SiglipVisionConfig(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                              num_attention_heads=HEADS, image_size=image_size, patch_size=patch_size,
                              vision_use_head=False, **extra)


def build_llava_onevision():
    tok = tiny_tokenizer(("<image>", "<video>"), {"image_token": "<image>", "video_token": "<video>"},
                         LLAVA_CHAT_TEMPLATE)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32},
                                                      image_grid_pinpoints=_PINPOINTS)
    processor = image_only_processor(LlavaOnevisionProcessor)(
        image_processor=image_processor, tokenizer=tok, num_image_tokens=16, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_1", chat_template=LLAVA_CHAT_TEMPLATE)
    text = llama_config(tok).to_dict() | {"model_type": "qwen2"}
    config = LlavaOnevisionConfig(vision_config=siglip_config(), text_config=text, image_token_index=tok.image_token_id,
                                  video_token_index=tok.video_token_id, vision_feature_select_strategy="full",
                                  vision_feature_layer=-1, vision_aspect_ratio="anyres_max_1",
                                  image_grid_pinpoints=_PINPOINTS)
    return LlavaOnevisionForConditionalGeneration(config), processor


BUILDERS = {
    "llava_onevision": build_llava_onevision,
}
