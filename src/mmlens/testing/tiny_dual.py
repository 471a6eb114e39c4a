"""Tiny random dual encoders (CLIP, SigLIP, SigLIP 2) of the real transformers classes with real processors.

Not in ``tiny_models.FAMILIES``: they have no language model, so the family-parametrized MLLM suite does not
apply; ``tests/test_dual_encoders.py`` covers them. Towers: hidden 32, 2 layers, 2 heads, 8 px patches;
CLIP / SigLIP see 32 x 32 inputs (a 4 x 4 grid; CLIP adds a CLS token), SigLIP 2 up to 16 patches in a grid
that keeps the image's aspect ratio.

>>> tiny_dual_subject("siglip").family
'siglip'
"""

from __future__ import annotations

import torch
from tokenizers import processors
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    Siglip2Config,
    Siglip2ImageProcessorPil,
    Siglip2Model,
    Siglip2Processor,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipProcessor,
)

from mmlens.model.subject import Subject
from mmlens.testing.tiny_configs import HEADS, HIDDEN, LAYERS, WORDS
from mmlens.testing.word_tokenizer import build_word_tokenizer

DUAL_FAMILIES = ("clip", "siglip", "siglip2")
_TOWER = {"hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": LAYERS,
          "num_attention_heads": HEADS, "patch_size": 8}


def _tokenizer(wrap: bool):
    tok = build_word_tokenizer(WORDS, chat_template=None, model_max_length=32)
    tok.padding_side = "right"
    if wrap:  # CLIP: <s> caption </s>, pooled at </s>
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", tok.bos_token_id), ("</s>", tok.eos_token_id)])
    return tok


def _text(tok) -> dict:
    return {**_TOWER, "vocab_size": len(tok), "max_position_embeddings": 32, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}


def tiny_dual_model_and_processor(family: str, seed: int = 0):
    """``family``'s tiny random dual encoder (eval, float32) and its real processor; weights depend on ``seed``."""
    if family not in DUAL_FAMILIES:
        raise ValueError(f"unknown tiny dual encoder {family!r}: use one of {', '.join(DUAL_FAMILIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "clip":
            tok = _tokenizer(wrap=True)
            config = CLIPConfig(text_config=_text(tok), vision_config={**_TOWER, "image_size": 32}, projection_dim=HIDDEN)
            model = CLIPModel(config)
            images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
            processor = CLIPProcessor(image_processor=images, tokenizer=tok)
        elif family == "siglip":
            tok = _tokenizer(wrap=False)
            model = SiglipModel(SiglipConfig(text_config=_text(tok), vision_config={**_TOWER, "image_size": 32}))
            images = SiglipImageProcessorPil(size={"height": 32, "width": 32})
            processor = SiglipProcessor(image_processor=images, tokenizer=tok)
        else:
            tok = _tokenizer(wrap=False)
            model = Siglip2Model(Siglip2Config(text_config=_text(tok), vision_config={**_TOWER, "num_patches": 16}))
            images = Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16)
            processor = Siglip2Processor(image_processor=images, tokenizer=tok)
    return model.eval(), processor


def tiny_dual_subject(family: str, seed: int = 0) -> Subject:
    """A :class:`~mmlens.Subject` around :func:`tiny_dual_model_and_processor`."""
    return Subject(*tiny_dual_model_and_processor(family, seed), model_id=f"tiny-{family}")
