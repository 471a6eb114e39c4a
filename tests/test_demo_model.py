"""The shipped demo model: loads offline with plain transformers, is small, and answers ShapesVQA."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

from mmlens.data import QUESTION_TYPES, ShapesVQA
from mmlens.demo import DEMO_MODEL_DIR
from mmlens.demo.build import chat_prompt
from mmlens.demo.train import TRAIN_SEED_BASE, evaluate

MAX_BYTES = 10 * 1024 * 1024


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def loaded() -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model = LlavaForConditionalGeneration.from_pretrained(DEMO_MODEL_DIR)
        processor = AutoProcessor.from_pretrained(DEMO_MODEL_DIR)
    return model.eval(), processor


def test_folder_is_small_safetensors() -> None:
    files = [p for p in DEMO_MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES
    names = {p.name for p in files}
    assert "model.safetensors" in names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)


def test_loads_as_real_llava(loaded: tuple[LlavaForConditionalGeneration, LlavaProcessor]) -> None:
    model, processor = loaded
    assert isinstance(processor, LlavaProcessor)
    assert processor.tokenizer.padding_side == "left"  # batched generation
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    prompt = chat_prompt(processor, "what color is the circle?")
    assert prompt == "USER: <image>\nwhat color is the circle? ASSISTANT:"
    sample = ShapesVQA(seed=0).sample(0)
    inputs = processor(images=[sample.image], text=[prompt], return_tensors="pt")
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2


def test_eager_attention_matches_sdpa(loaded: tuple[LlavaForConditionalGeneration, LlavaProcessor]) -> None:
    model, processor = loaded
    eager = LlavaForConditionalGeneration.from_pretrained(DEMO_MODEL_DIR, attn_implementation="eager").eval()
    sample = ShapesVQA(seed=1).sample(0)
    inputs = processor(images=[sample.image], text=[chat_prompt(processor, sample.question)], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, eager(**inputs).logits, atol=1e-4)


def test_accuracy_on_held_out_seeds(loaded: tuple[LlavaForConditionalGeneration, LlavaProcessor]) -> None:
    model, processor = loaded
    seeds = (7, 8)
    assert max(seeds) < TRAIN_SEED_BASE  # never seen in training
    result = evaluate(model, processor, n=200, seed=seeds)
    assert result["n"] == 200
    assert result["overall"] >= 0.90, result
    for question_type in QUESTION_TYPES:
        assert result[question_type] >= 0.90, result
