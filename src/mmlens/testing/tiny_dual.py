"""Tiny random dual encoders (real ``CLIPModel`` / ``SiglipModel`` classes and processors), built offline.

>>> model, processor = tiny_dual_encoder("clip")
>>> type(model).__name__, model.config.projection_dim
('CLIPModel', 24)
"""

from __future__ import annotations

from typing import Any

import torch

from mmlens.data.shapes_vqa import COLORS, SHAPES, VOCAB

DUAL_KINDS = ("clip", "siglip")
_WORDS = (*VOCAB, "and", "photo", "of", "an", "image", "with", "on", "left", "right", "big", "small")
_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def tiny_dual_encoder(kind: str = "clip", seed: int = 0) -> tuple[Any, Any]:
    """A tiny random ``CLIPModel`` (``kind="clip"``) or ``SiglipModel`` (``"siglip"``) with its processor.

    Towers: width 32, 2 layers, 4 heads, 32 x 32 images in 8-pixel patches; a word-level tokenizer over the
    ShapesVQA words."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, SiglipConfig, SiglipModel, SiglipProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    from mmlens.testing.word_tokenizer import build_word_tokenizer

    if kind not in DUAL_KINDS:
        raise ValueError(f"unknown dual encoder {kind!r}; expected one of {DUAL_KINDS}")
    tok = build_word_tokenizer(sorted(set(_WORDS) | set(COLORS) | set(SHAPES)), chat_template=None, model_max_length=16)
    text = dict(_TOWER, vocab_size=len(tok), max_position_embeddings=16)
    vision = dict(_TOWER, image_size=32, patch_size=8)
    torch.manual_seed(seed)
    if kind == "clip":
        text.update(eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
        ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor = CLIPProcessor(image_processor=ip, tokenizer=tok)
    else:
        text.update(eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        processor = SiglipProcessor(image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tok)
    return model.eval(), processor


__all__ = ["DUAL_KINDS", "tiny_dual_encoder"]
