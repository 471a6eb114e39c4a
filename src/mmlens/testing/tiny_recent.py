"""Tiny builders of the families added after the first five (see :mod:`mmlens.testing.tiny_models` for the
conventions: hidden 32, 2 layers per tower, word tokenizer, real PIL image processors and processors).

llava_onevision (SigLIP 32 px / patch 8, no CLS, ``vision_feature_select_strategy="full"``, Qwen2 LM,
``image_grid_pinpoints`` (H, W) = 32x64, 64x32, 64x64, ``vision_aspect_ratio="anyres_max_1"`` so that grids of
more than one tile's worth of features are bilinearly shrunk, as ``anyres_max_9`` does past 9 tiles)
    Per image: base 4x4 = 16 tokens, then the unpadded tile grid with a newline per row:
    - 80x24 -> 1x2 tiles -> unpadded 2x8 (16 features, ratio 1: kept) -> 16 + 2*9 = 34.
    - 40x80 -> 2x1 tiles -> 8x4 (ratio sqrt(2) > 1.1: shrunk to 5x2) -> 16 + 5*3 = 31.
    The processor is :func:`mmlens.adapters.image_only.image_only_processor` of ``LlavaOnevisionProcessor``.

llava_next_video (LLaVA-NeXT's CLIP 32 px / patch 8 tower, pinpoints and image layout: 34, 56, 70 tokens for the
three sizes; videos: each frame shortest edge 32 + centre crop 32, 4x4 patches average-pooled to 2x2 = 4 tokens per
frame, no newline). The processor is :class:`mmlens.adapters.llava_next_video.ImageOnlyLlavaNextVideoProcessor`.

gemma3 (SigLIP 48 px / patch 8 = 6x6 patches, average-pooled 2x2 to ``mm_tokens_per_image=9`` = 3x3 tokens;
Gemma 3 LM: layer 0 sliding window 8, 4 query / 2 kv heads, bidirectional attention inside each image block)
    Pan & scan on (min crop 16 px, at most 3 crops, from aspect 1.2): 80x40 -> whole image + 2 crops = 27 tokens,
    40x100 -> whole + 3 crops = 36, 48x48 -> 9. Each 9-token block sits between ``<start_of_image>`` and
    ``<end_of_image>``; crops come after "here is the original image ... and here are some crops" text.

idefics3 (vision 48 px / patch 8 = 6x6 patches, pixel shuffle 2 -> 3x3 = 9 tokens per tile; Llama LM; image
processor: longest edge 96, tiles of 48)
    80x40 -> resized 96x48 -> 1x2 tiles + global = 27 tokens; 40x100 -> 48x96 -> 2x1 + global = 27;
    48x48 -> 96x96 -> 2x2 + global = 45. Tags ``<fake_token_around_image>``, ``<row_r_col_c>``, ``<global-img>``
    surround the ``<image>`` tokens.

smolvlm: the same sizes, layout and token counts as idefics3, with SmolVLM's classes and
:class:`mmlens.adapters.smolvlm.ImageOnlySmolVLMProcessor`.

qwen3_vl (``Qwen2VLImageProcessorPil`` with 16 px patches, merge 2: images resized to multiples of 32 px; vision
tower with learned 4x4 position embeddings (interpolated), DeepStack from vision block 0 into LM block 0)
    96x64 -> grid_thw (1, 4, 6) -> 2x3 = 6 tokens; 64x128 -> (1, 8, 4) -> 4x2 = 8; 64x64 -> 2x2 = 4.
    Videos: at most 32*32*64 pixels for all frames together (Qwen3-VL's video budget), so 3-4 frames of 96x64 keep
    their size: grid_thw (2, 4, 6), 2x3 tokens per pair of frames.

internvl (InternVL vision 32 px / patch 8 + CLS (dropped), pixel shuffle 0.5 -> 2x2 = 4 tokens per tile; Qwen2 LM;
``GotOcr2ImageProcessorPil`` tiles of 32 px, 1..4 tiles, thumbnail when more than one)
    80x40 -> 2x1 (cols x rows) tiles + thumbnail = 12 tokens; 40x100 -> 1x3 + thumbnail = 16; 48x48 -> 2x2 +
    thumbnail = 20. Tokens between ``<img>`` and ``</img>``; the placeholder is ``<IMG_CONTEXT>``.
"""

from __future__ import annotations

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    GotOcr2ImageProcessorPil,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVisionConfig,
    LlavaNextImageProcessorPil,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SiglipVisionConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
    SmolVLMVisionConfig,
)
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

from mmlens.adapters.image_only import image_only_processor
from mmlens.adapters.llava_next_video import ImageOnlyLlavaNextVideoProcessor
from mmlens.adapters.smolvlm import ImageOnlySmolVLMProcessor
from mmlens.testing.tiny_configs import (
    HEADS,
    HIDDEN,
    LAYERS,
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIALS,
    clip_vision_config,
    llama_config,
    special_ids,
    tiny_tokenizer,
)
from mmlens.testing.word_tokenizer import LLAVA_CHAT_TEMPLATE

IMAGE_SIZES: dict[str, tuple[tuple[int, int], ...]] = {  # PIL (width, height)
    "llava_next_video": ((80, 24), (40, 80), (72, 56)),
    "llava_onevision": ((80, 24), (40, 80), (72, 56)),
    "gemma3": ((80, 40), (40, 100), (48, 48)),
    "idefics3": ((80, 40), (40, 100), (48, 48)),
    "smolvlm": ((80, 40), (40, 100), (48, 48)),
    "qwen3_vl": ((96, 64), (64, 128), (64, 64)),
    "internvl": ((80, 40), (40, 100), (48, 48)),
}

_PINPOINTS = [[32, 64], [64, 32], [64, 64]]
#: LLaVA's template with a video slot (``<video>``), as LLaVA-OneVision's / LLaVA-NeXT-Video's real templates have
LLAVA_VIDEO_CHAT_TEMPLATE = LLAVA_CHAT_TEMPLATE.replace(
    "{% if item['type'] == 'image' %}<image>\n{% endif %}",
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'video' %}<video>\n{% endif %}")
assert LLAVA_VIDEO_CHAT_TEMPLATE != LLAVA_CHAT_TEMPLATE


def siglip_config(image_size: int = 32, patch_size: int = 8, **extra) -> SiglipVisionConfig:
    return SiglipVisionConfig(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                              num_attention_heads=HEADS, image_size=image_size, patch_size=patch_size,
                              vision_use_head=False, **extra)


def build_llava_onevision():
    tok = tiny_tokenizer(("<image>", "<video>"), {"image_token": "<image>", "video_token": "<video>"},
                         LLAVA_VIDEO_CHAT_TEMPLATE)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32},
                                                      image_grid_pinpoints=_PINPOINTS)
    processor = image_only_processor(LlavaOnevisionProcessor)(
        image_processor=image_processor, tokenizer=tok, num_image_tokens=16, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_1", chat_template=LLAVA_VIDEO_CHAT_TEMPLATE)
    text = llama_config(tok).to_dict() | {"model_type": "qwen2"}
    config = LlavaOnevisionConfig(vision_config=siglip_config(), text_config=text, image_token_index=tok.image_token_id,
                                  video_token_index=tok.video_token_id, vision_feature_select_strategy="full",
                                  vision_feature_layer=-1, vision_aspect_ratio="anyres_max_1",
                                  image_grid_pinpoints=_PINPOINTS)
    return LlavaOnevisionForConditionalGeneration(config), processor


def build_llava_next_video():
    """LLaVA-NeXT's tiny CLIP tower + Llama with LLaVA-NeXT-Video's classes: images as LLaVA-NeXT, video frames
    resized / centre-cropped to 32 px, 4x4 patches average-pooled to 2x2 = 4 tokens per frame."""
    tok = tiny_tokenizer(("<image>", "<video>"), {"image_token": "<image>", "video_token": "<video>"},
                         LLAVA_VIDEO_CHAT_TEMPLATE)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                 image_grid_pinpoints=_PINPOINTS)
    processor = ImageOnlyLlavaNextVideoProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_VIDEO_CHAT_TEMPLATE)
    config = LlavaNextVideoConfig(vision_config=clip_vision_config(), text_config=llama_config(tok),
                                  image_token_index=tok.image_token_id, video_token_index=tok.video_token_id,
                                  vision_feature_select_strategy="default", vision_feature_layer=-2,
                                  image_grid_pinpoints=_PINPOINTS, spatial_pool_mode="average", spatial_pool_stride=2,
                                  image_seq_length=16, video_seq_length=4)
    return LlavaNextVideoForConditionalGeneration(config), processor


GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_gemma3():
    named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    tok = tiny_tokenizer(("<start_of_turn>", "<end_of_turn>", *named.values()), named, GEMMA3_CHAT_TEMPLATE)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": 48, "width": 48}, do_pan_and_scan=True, pan_and_scan_min_crop_size=16,
        pan_and_scan_max_num_crops=3, pan_and_scan_min_ratio_to_activate=1.2)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=9,
                                chat_template=GEMMA3_CHAT_TEMPLATE)
    text = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=HIDDEN // HEADS, query_pre_attn_scalar=HIDDEN // HEADS,
        sliding_window=8, layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
        **special_ids(tok))
    config = Gemma3Config(vision_config=siglip_config(48, 8), text_config=text, mm_tokens_per_image=9,
                          boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                          image_token_index=tok.image_token_id)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # transformers zero-initialises the projection: images would not reach the LM
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, HIDDEN**-0.5)
    return model, processor


IDEFICS3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ 'User' if message['role'] == 'user' else 'Assistant' }}:"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
_ROW_COL = tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))


def build_idefics3(smolvlm: bool = False):
    """Idefics3, or SmolVLM (same layout; its own classes, image-only processor, and a Llama LM here too)."""
    specials = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *_ROW_COL)
    tok = tiny_tokenizer(specials, {"image_token": "<image>"}, IDEFICS3_CHAT_TEMPLATE)
    ip_cls, processor_cls = ((SmolVLMImageProcessorPil, ImageOnlySmolVLMProcessor) if smolvlm
                             else (Idefics3ImageProcessorPil, Idefics3Processor))
    image_processor = ip_cls(size={"longest_edge": 96}, max_image_size={"longest_edge": 48})
    processor = processor_cls(image_processor=image_processor, tokenizer=tok, image_seq_len=9,
                              chat_template=IDEFICS3_CHAT_TEMPLATE)
    vision_cls, config_cls, model_cls = ((SmolVLMVisionConfig, SmolVLMConfig, SmolVLMForConditionalGeneration)
                                         if smolvlm else
                                         (Idefics3VisionConfig, Idefics3Config, Idefics3ForConditionalGeneration))
    vision = vision_cls(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, image_size=48, patch_size=8)
    config = config_cls(vision_config=vision, text_config=llama_config(tok), scale_factor=2,
                        image_token_id=tok.image_token_id)
    return model_cls(config), processor


def build_qwen3_vl():
    named = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
             "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
    tok = tiny_tokenizer(QWEN_SPECIALS, named, QWEN_CHAT_TEMPLATE)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=64 * 64, max_pixels=32 * 32 * 16, patch_size=16, merge_size=2,
                                               temporal_patch_size=2)
    processor = image_only_processor(Qwen3VLProcessor)(image_processor=image_processor, tokenizer=tok,
                                                       chat_template=QWEN_CHAT_TEMPLATE)
    # video pixel bounds (for all frames together), as a saved video_preprocessor_config.json would give them
    processor._mmlens_video_settings = {"size": {"shortest_edge": 64 * 64, "longest_edge": 32 * 32 * 64}}
    text = {"vocab_size": len(tok), "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
            "head_dim": HIDDEN // HEADS, "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                "mrope_interleaved": True}, **special_ids(tok)}
    vision = {"depth": LAYERS, "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_heads": HEADS,
              "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": HIDDEN,
              "num_position_embeddings": 16, "deepstack_visual_indexes": [0]}
    ids = {name: getattr(tok, name) for name in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                 "vision_end_token_id")}
    return Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=text, vision_config=vision, **ids)), processor


INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<IMG_CONTEXT>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_internvl():
    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tok = tiny_tokenizer(("<|im_start|>", "<|im_end|>", *named.values()), named, INTERNVL_CHAT_TEMPLATE)
    image_processor = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, min_patches=1, max_patches=4)
    processor = image_only_processor(InternVLProcessor)(image_processor=image_processor, tokenizer=tok,
                                                        image_seq_length=4, chat_template=INTERNVL_CHAT_TEMPLATE)
    vision = InternVLVisionConfig(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                                  num_attention_heads=HEADS, image_size=32, patch_size=8)
    text = llama_config(tok).to_dict() | {"model_type": "qwen2"}
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=tok.context_image_token_id,
                            image_seq_length=4)
    return InternVLForConditionalGeneration(config), processor


BUILDERS = {
    "llava_next_video": build_llava_next_video,
    "llava_onevision": build_llava_onevision,
    "gemma3": build_gemma3,
    "idefics3": build_idefics3,
    "smolvlm": lambda: build_idefics3(smolvlm=True),
    "qwen3_vl": build_qwen3_vl,
    "internvl": build_internvl,
}
