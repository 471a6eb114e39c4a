r"""Tiny random-weight multimodal models with *real* transformers processors, fully offline.

Every family is built from real transformers classes (model, config, PIL image processor, processor) around a
word-level tokenizer (:mod:`mmlens.testing.word_tokenizer`), with random weights (deterministic for a given
``seed``), float32, hidden sizes 32, 2 layers per tower: a forward pass takes milliseconds on a CPU.

>>> model, processor = tiny_model_and_processor("llava")                        # doctest: +SKIP
>>> images = tiny_images("llava", n=1)
>>> prompt = tiny_prompt("llava", processor, n_images=1)                        # doctest: +SKIP
>>> inputs = processor(images=images, text=prompt, return_tensors="pt")         # doctest: +SKIP
>>> model(**inputs).logits.shape                      # (1, seq, len(processor.tokenizer))   # doctest: +SKIP

Prompt formats: llava / llava_next / qwen2_vl / qwen2_5_vl have a chat template (``processor.apply_chat_template``
with ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` content items, ``add_generation_prompt=True``,
``tokenize=False``). PaliGemma has none, like the real checkpoints: the documented prompt is
``"<image>" * n_images + "answer en what color is the cat ?"``; the processor inserts ``<s>`` (bos) after the last
``<image>`` and appends ``"\n"`` (dropped by the word tokenizer). :func:`tiny_prompt` builds either.

Image-token layout, as measured with transformers 5.24 on :func:`tiny_images` (sizes are PIL ``W x H``; the
processors and models report ``(H, W)``).  ``N`` = number of image placeholder tokens in ``input_ids`` (the id is
``model.config.image_token_id``); it always equals the number of rows of the projected image features
(``model.get_image_features(...).pooler_output``) and the model scatters those rows, in order, into the
placeholder positions.

llava (CLIP 32x32, patch 8, 1 CLS, ``vision_feature_select_strategy="default"`` drops CLS, feature layer -2)
    Every image -> resize shortest edge 32 + center crop 32x32 -> ``pixel_values (n, 3, 32, 32)``.
    N = (32/8)**2 = 16 per image, row-major over the 4x4 patch grid (token k = patch row k//4, col k%4).
    ``pooler_output``: list (one per image) of ``(16, 32)`` tensors. Processor: ``num_additional_image_tokens=1``.
    Prompt ``USER: <image>\nwhat color is the cat ? ASSISTANT:`` -> 1 ``<image>`` per image expanded to 16.

llava_next (same CLIP tower, ``image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]]`` in (H, W))
    ``pixel_values (n, max_tiles+1, 3, 32, 32)`` (tile 0 = base image resized to 32x32, then tiles row-major;
    zero-padded to the max tile count in the batch), ``image_sizes`` = original (H, W).
    Per image, tokens in this order: base grid 4x4 = 16 tokens (row-major), then the *unpadded* high-res grid
    (tiles stitched into (rows*4) x (cols*4) patches, then the rows/cols that are pure padding removed, see
    ``unpad_image``) row-major with one ``image_newline`` token appended after each row:
    - image 80x24 (H=24, W=80) -> pinpoint (32, 64) -> 1x2 tiles -> stitched 4x8 patches -> unpadded 2x8
      (resized content is 64x19 px, centered) -> 2*8 + 2 newlines = 18 -> N = 16 + 18 = 34.
    - image 40x80 (H=80, W=40) -> pinpoint (64, 32) -> 2x1 tiles -> 8x4 patches, no unpadding
      -> 8*4 + 8 = 40 -> N = 56.
    - image 72x56 (H=56, W=72) -> pinpoint (64, 64) -> 2x2 tiles -> 8x8 patches -> unpadded 6x8
      -> 6*8 + 6 = 54 -> N = 70.
    ``pooler_output``: list (one tensor per image) of shape ``(N_i, 32)``. Processor: ``patch_size=8``,
    ``num_additional_image_tokens=1``, ``vision_feature_select_strategy="default"``.

qwen2_vl / qwen2_5_vl (``Qwen2VLImageProcessorPil``: patch 14, merge 2, temporal_patch 2,
``min_pixels=56*56``, ``max_pixels=28*28*16``; image resized to multiples of 28)
    Prompt (chat template): ``<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>text<|im_end|>\n
    <|im_start|>assistant\n`` (the word tokenizer drops the newlines); the single ``<|image_pad|>`` per image is
    expanded to N copies, still between ``<|vision_start|>`` and ``<|vision_end|>``.
    ``image_grid_thw[i] = (1, H/14, W/14)`` in *patches*; N_i = t*h*w // merge_size**2 = (H/28)*(W/28), one token
    per merged 2x2 patch block, row-major over the merged (H/28) x (W/28) grid.
    ``pixel_values`` is flat ``(sum_i t*h*w, 3*2*14*14=1176)``, patches ordered per image in 2x2-block order.
    - image 84x56 (H=56, W=84) -> grid_thw (1, 4, 6) -> merged 2x3 -> N = 6.
    - image 56x112 (H=112, W=56) -> grid_thw (1, 8, 4) -> merged 4x2 -> N = 8.
    - image 56x56 -> grid_thw (1, 4, 4) -> merged 2x2 -> N = 4.
    Two images in one prompt: two ``<|vision_start|>...<|vision_end|>`` blocks, N = 6 + 8 = 14.
    ``pooler_output``: tuple (one tensor per image) of shape ``(N_i, 32)``.  The processor also returns
    ``mm_token_type_ids`` (1 on image pads); the model needs it (with ``image_grid_thw``) for M-RoPE.
    Processor: :class:`mmlens.adapters.qwen_processor.ImageOnlyQwen2VLProcessor` /
    ``ImageOnlyQwen2_5_VLProcessor`` (no video processor: those need torchvision). Qwen2.5-VL vision: window
    attention with ``window_size=56`` (2x2 merged tokens per window), ``fullatt_block_indexes=[1]``.

paligemma (SigLIP 32x32, patch 8, no CLS; ``SiglipImageProcessorPil`` resizes to 32x32 without crop)
    N = image_seq_length = (32/8)**2 = 16 per image, row-major over the 4x4 patch grid; input_ids are
    ``<image>*16*n <s> prompt-tokens``. ``token_type_ids`` are 0 everywhere without ``suffix`` (= the whole prompt,
    images included, is a bidirectional prefix; generated tokens get type 1) and the processor also returns
    ``labels`` = all -100: drop ``labels`` before ``generate``.
    ``pooler_output``: tensor ``(n_images, 16, 32)`` (projector output, no extra scaling in 5.24).
    The processor adds 1024 ``<locXXXX>`` + 128 ``<segXXX>`` tokens to the tokenizer, so ``len(tokenizer)``
    (= model vocab) is ~1.2k.

mllama (:mod:`mmlens.testing.tiny_mllama`): no image tokens in the sequence (one ``<|image|>`` text token per
image); the language model cross-attends to 17 keys per 32 px tile (4 x 4 patches + CLS), 4 tile slots per image.

paligemma2 (a variant in ``VARIANTS``, not ``FAMILIES``: same tower, processor and layout as paligemma)
    Gemma 2 language model as in PaliGemma 2: attention logits soft-capped at 50, final logits at 30, layer 0
    a sliding-window layer (window 8), 4 query heads over 2 key/value heads, eager attention.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import (
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from mmlens.adapters.qwen_processor import (
    ImageOnlyQwen2_5_VLProcessor,
    ImageOnlyQwen2VLProcessor,
)
from mmlens.testing.tiny_configs import (
    HEADS,
    HIDDEN,
    LAYERS,
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIALS,
    VISION,
    clip_vision_config,
    finish_model,
    gemma2_config,
    gemma_config,
    llama_config,
    sharpen_attention,
    special_ids,
    tiny_prompt_words,
    tiny_tokenizer,
)
from mmlens.testing.tiny_mllama import BUILDERS as MLLAMA_BUILDERS
from mmlens.testing.tiny_mllama import IMAGE_SIZES as MLLAMA_IMAGE_SIZES
from mmlens.testing.tiny_recent import BUILDERS as RECENT_BUILDERS
from mmlens.testing.tiny_recent import IMAGE_SIZES as RECENT_IMAGE_SIZES
from mmlens.testing.word_tokenizer import LLAVA_CHAT_TEMPLATE

__all__ = ["FAMILIES", "VARIANTS", "tiny_images", "tiny_video", "tiny_model_and_processor", "tiny_prompt", "tiny_prompt_words"]

FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "paligemma", *RECENT_BUILDERS, *MLLAMA_BUILDERS)
#: Extra tiny subjects of a registered family with a different language model, built on request only (not
#: in the family-parametrized suite): "paligemma2" = PaliGemma 2 (Gemma 2 LM: attention logit soft-capping,
#: sliding-window layers, grouped-query attention); see :func:`_build_paligemma2`.
VARIANTS = ("paligemma2",)

_IMAGE_SIZES: dict[str, tuple[tuple[int, int], ...]] = {  # PIL (width, height)
    "llava": ((48, 32), (32, 40), (36, 36)),
    "llava_next": ((80, 24), (40, 80), (72, 56)),
    "qwen2_vl": ((84, 56), (56, 112), (56, 56)),
    "qwen2_5_vl": ((84, 56), (56, 112), (56, 56)),
    "paligemma": ((48, 40), (32, 32), (40, 56)),
    "paligemma2": ((48, 40), (32, 32), (40, 56)),
    **RECENT_IMAGE_SIZES,
    **MLLAMA_IMAGE_SIZES,
}

def _check_family(family: str) -> None:
    if family not in FAMILIES + VARIANTS:
        raise ValueError(f"Unknown family {family!r}; expected one of {FAMILIES + VARIANTS}.")


def tiny_images(family: str, n: int = 1, seed: int = 0) -> list[Image.Image]:
    """``n`` deterministic RGB test images sized for ``family`` (cycling through the family's sizes, see the module
    docstring): non-square ones that tile into 2 or 4 tiles for llava_next, multiples of 28 px for Qwen."""
    _check_family(family)
    sizes = _IMAGE_SIZES[family]
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        # smooth two-colour gradient + a few solid rectangles + a little noise: structured, not pure noise
        c0, c1 = rng.integers(0, 256, size=(2, 3))
        t = np.linspace(0.0, 1.0, w)[None, :, None]
        arr = (1 - t) * c0 + t * c1
        arr = np.broadcast_to(arr, (h, w, 3)).copy()
        for _ in range(3):
            x0, y0 = int(rng.integers(0, max(1, w - 4))), int(rng.integers(0, max(1, h - 4)))
            x1, y1 = x0 + int(rng.integers(4, max(5, w // 2))), y0 + int(rng.integers(4, max(5, h // 2)))
            arr[y0:y1, x0:x1] = rng.integers(0, 256, size=3)
        arr += rng.normal(0.0, 8.0, size=arr.shape)
        images.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB"))
    return images


def tiny_video(family: str, n_frames: int = 3, fps: float = 2.0, seed: int = 0):
    """A :class:`~mmlens.Video` of ``n_frames`` different frames of ``family``'s first (non-square) image size."""
    from mmlens.model.video import Video

    size = _IMAGE_SIZES[family][0]
    return Video([img.resize(size) for img in tiny_images(family, n_frames, seed=seed)], fps=fps)


def tiny_prompt(
    family: str, processor: ProcessorMixin, n_images: int = 1, text: str = "what color is the cat ?"
) -> str:
    """A prompt string with ``n_images`` image placeholders in ``family``'s format (chat template with a generation
    prompt, or PaliGemma's ``"<image>" * n + text``), ready for ``processor(images=..., text=...)``."""
    _check_family(family)
    if family in ("paligemma", "paligemma2"):
        return processor.image_token * n_images + text
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


_PINPOINTS = [[32, 64], [64, 32], [64, 64]]  # (H, W) multiples of the 32 px tile


def _build_llava_like(image_processor_cls, processor_cls, config_cls, model_cls, **extra):
    """LLaVA-1.5 or LLaVA-NeXT: CLIP 32 px / patch 8 tower + tiny Llama; ``extra`` goes to the image
    processor and the config (LLaVA-NeXT's ``image_grid_pinpoints``)."""
    tok = tiny_tokenizer(("<image>",), {"image_token": "<image>"}, LLAVA_CHAT_TEMPLATE)
    image_processor = image_processor_cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, **extra)
    processor = processor_cls(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    config = config_cls(
        vision_config=clip_vision_config(),
        text_config=llama_config(tok),
        image_token_index=tok.image_token_id,
        image_seq_length=16,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        **extra,
    )
    return model_cls(config), processor


def _build_llava():
    return _build_llava_like(CLIPImageProcessorPil, LlavaProcessor, LlavaConfig, LlavaForConditionalGeneration)


def _build_llava_next():
    return _build_llava_like(LlavaNextImageProcessorPil, LlavaNextProcessor, LlavaNextConfig,
                             LlavaNextForConditionalGeneration, image_grid_pinpoints=_PINPOINTS)


def _build_qwen(family: str):
    named = {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    }
    tok = tiny_tokenizer(QWEN_SPECIALS, named, QWEN_CHAT_TEMPLATE)
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=28 * 28 * 16, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    head_dim = HIDDEN // HEADS
    text = {
        "vocab_size": len(tok),
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "max_position_embeddings": 512,
        "max_window_layers": LAYERS,
        # mrope_section (temporal, height, width) must sum to head_dim // 2
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        **special_ids(tok),
    }
    assert sum(text["rope_parameters"]["mrope_section"]) == head_dim // 2
    ids = {
        "image_token_id": tok.image_token_id,
        "video_token_id": tok.video_token_id,
        "vision_start_token_id": tok.vision_start_token_id,
        "vision_end_token_id": tok.vision_end_token_id,
    }
    if family == "qwen2_vl":
        processor = ImageOnlyQwen2VLProcessor(
            image_processor=image_processor, tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE
        )
        vision = {
            "depth": LAYERS,
            "embed_dim": HIDDEN,
            "hidden_size": HIDDEN,  # output (merger) size == text hidden size
            "mlp_ratio": 2,
            "num_heads": HEADS,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
        config = Qwen2VLConfig(vision_config=vision, text_config=text, **ids)
        model = Qwen2VLForConditionalGeneration(config)
    else:
        processor = ImageOnlyQwen2_5_VLProcessor(
            image_processor=image_processor, tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE
        )
        vision = {
            "depth": LAYERS,
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "out_hidden_size": HIDDEN,
            "num_heads": HEADS,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,  # in pixels: 56 / (14*2) = 2x2 merged tokens per window
            "fullatt_block_indexes": [LAYERS - 1],
        }
        config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids)
        model = Qwen2_5_VLForConditionalGeneration(config)
    return model, processor


def _build_paligemma(gemma2: bool = False):
    tok = tiny_tokenizer(("<image>",), {"image_token": "<image>"}, None)
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32}, image_seq_length=16)
    # PaliGemmaProcessor adds 1152 <loc>/<seg> tokens to the tokenizer: build it before sizing the vocab.
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    vocab = len(tok)
    vision = SiglipVisionConfig(**VISION, vision_use_head=False)
    text = (gemma2_config if gemma2 else gemma_config)(vocab, tok)
    config = PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.image_token_id,
        vocab_size=vocab,
        projection_dim=HIDDEN,
        hidden_size=HIDDEN,
    )
    model = PaliGemmaForConditionalGeneration(config)
    if gemma2:
        sharpen_attention(model.model.language_model.layers)
    return model, processor


_BUILDERS = {
    "llava": _build_llava,
    "llava_next": _build_llava_next,
    "qwen2_vl": lambda: _build_qwen("qwen2_vl"),
    "qwen2_5_vl": lambda: _build_qwen("qwen2_5_vl"),
    "paligemma": _build_paligemma,
    "paligemma2": lambda: _build_paligemma(gemma2=True),
    **RECENT_BUILDERS,
    **MLLAMA_BUILDERS,
}


def tiny_model_and_processor(family: str, seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build ``family``'s tiny random model (eval mode, float32) and its real processor.

    Weights depend only on ``seed`` (the global torch RNG state is saved and restored around the build).
    """
    _check_family(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = _BUILDERS[family]()
    tok = processor.tokenizer
    eos = [tok.eos_token_id]
    for end in ("<|im_end|>", "<|eot_id|>"):  # chat templates that end a turn with this token stop there
        if end in tok.get_vocab():
            eos.append(tok.convert_tokens_to_ids(end))
    return finish_model(model, tok, eos), processor
