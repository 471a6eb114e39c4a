"""The pieces the tiny models are built from: sizes, the word vocabulary and tokenizers, chat templates, and the
text / vision configs of each tower (the families themselves are in :mod:`mmlens.testing.tiny_models`).

>>> "red" in tiny_prompt_words()
True
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    Gemma2Config,
    GemmaConfig,
    LlamaConfig,
    PreTrainedModel,
)

from mmlens.testing.word_tokenizer import build_word_tokenizer

HIDDEN = 32  # hidden size of every tower
LAYERS = 2  # layers in every tower
HEADS = 2  # attention heads (head_dim 16)

WORDS = (
    # chat roles / template words
    "user assistant system : . , ? !".split()
    # task words (PaliGemma style prefixes too)
    + "what is in the image picture photo this that describe caption answer en de fr".split()
    + "color colour shape where how many which left right top bottom of and or a an there are".split()
    + "red green blue yellow black white orange purple gray brown".split()
    + "cat dog car tree house sky sun ball square circle triangle stripe".split()
    + "compare two images first second both same different yes no one three four".split()
)


#: Qwen2-VL style chat template (content items rendered in order; no default system message).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def tiny_prompt_words() -> list[str]:
    """The (lower-case) word vocabulary of the tiny tokenizers (special tokens not included)."""
    return list(dict.fromkeys(WORDS))



def tiny_tokenizer(extra_special: tuple[str, ...], named: dict[str, str], chat_template: str | None):
    """Word tokenizer with ``extra_special`` tokens; ``named`` tokens (e.g. ``image_token``) become tokenizer
    attributes (``tok.image_token`` / ``tok.image_token_id``), the transformers-5 "model specific special tokens"
    mechanism that real multimodal tokenizers use (saved in tokenizer_config.json)."""
    return build_word_tokenizer(WORDS, extra_special_tokens=extra_special, chat_template=chat_template,
                                named_tokens=named)


def special_ids(tok) -> dict[str, int]:
    return {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}


def finish_model(model: PreTrainedModel, tok, eos_ids: list[int] | None = None) -> PreTrainedModel:
    model = model.to(torch.float32).eval()
    gc = model.generation_config
    gc.pad_token_id = tok.pad_token_id
    gc.bos_token_id = tok.bos_token_id
    gc.eos_token_id = eos_ids if eos_ids is not None else tok.eos_token_id
    gc.do_sample = False
    return model


#: The vision tower of every tiny family: 32 px images in 8 px patches (a 4 x 4 grid).
VISION = {"hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": LAYERS,
          "num_attention_heads": HEADS, "image_size": 32, "patch_size": 8}


def clip_vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(**VISION, projection_dim=HIDDEN)


def llama_config(tok) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=512,
        **special_ids(tok),
    )



def gemma_config(vocab: int, tok) -> GemmaConfig:
    return GemmaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=1,
        head_dim=HIDDEN // HEADS,
        max_position_embeddings=512,
        **special_ids(tok),
    )


def gemma2_config(vocab: int, tok) -> Gemma2Config:
    """Gemma 2 as in PaliGemma 2: soft-capped attention logits (50) and final logits (30), layer 0 a
    sliding-window layer (window 8 < the 20+ token prompts), 4 query heads over 2 key/value heads,
    eager attention (what transformers picks for Gemma 2: sdpa cannot soft-cap)."""
    return Gemma2Config(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HIDDEN // HEADS,
        query_pre_attn_scalar=HIDDEN // HEADS,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=512,
        **special_ids(tok),
    )


def sharpen_attention(layers, gain: float = 30.0) -> None:
    """Scale query / key projections so attention logits reach the soft-cap, where ``50 * tanh(s / 50)``
    differs visibly from ``s`` (probabilities without the cap are off by up to 0.12 on the tiny prompts)."""
    with torch.no_grad():
        for layer in layers:
            layer.self_attn.q_proj.weight.mul_(gain)
            layer.self_attn.k_proj.weight.mul_(gain)
