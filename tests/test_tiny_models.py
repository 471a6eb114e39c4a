"""Tiny random-weight models + real processors for every supported family (offline, fast)."""

from __future__ import annotations

import functools

import pytest
import torch
from PIL import Image

from mmlens.adapters import adapter_for
from mmlens.adapters.qwen_processor import (
    ImageOnlyQwen2_5_VLProcessor,
    ImageOnlyQwen2VLProcessor,
)
from mmlens.testing.tiny_models import (
    FAMILIES,
    tiny_images,
    tiny_model_and_processor,
    tiny_prompt,
    tiny_prompt_words,
)

#: image placeholder tokens per image for tiny_images(family, 3) (documented in tiny_models' docstring)
EXPECTED_TOKENS_PER_IMAGE = {
    "llava": [16, 16, 16],
    "llava_next": [34, 56, 70],
    "llava_next_video": [34, 56, 70],
    "qwen2_vl": [6, 8, 4],
    "qwen2_5_vl": [6, 8, 4],
    "paligemma": [16, 16, 16],
    "llava_onevision": [34, 31, 60],
    "gemma3": [27, 36, 9],
    "idefics3": [27, 27, 45],
    "smolvlm": [27, 27, 45],
    "qwen3_vl": [6, 8, 4],
    "internvl": [12, 16, 20],
}

#: vision-tower inputs per image where it is not one (Gemma 3: the image + its pan & scan crops)
VISION_INPUTS_PER_IMAGE = {"gemma3": [3, 4, 1], "internvl": [3, 4, 5]}
#: families whose ``get_image_features`` returns one block per prompt (all its images and tiles)
FEATURES_PER_PROMPT = {"idefics3", "smolvlm"}


@functools.cache
def _built(family: str):
    return tiny_model_and_processor(family)


def _inputs(family: str, processor, n_images: int, text: str = "what color is the cat ?"):
    images = tiny_images(family, n_images)
    prompt = tiny_prompt(family, processor, n_images=n_images, text=text)
    model, _ = _built(family)
    extra = adapter_for(model)(model, processor).processor_kwargs()  # Gemma 3: its pan & scan settings
    inputs = processor(images=images, text=prompt, return_tensors="pt", **extra)
    inputs.pop("labels", None)  # PaliGemma's processor adds (all -100) labels; not a generate() kwarg
    return inputs


def _image_feature_rows(model, inputs, family: str, n_images: int) -> list[int]:
    """Rows of projected image features per image, from the model's own vision path (Gemma 3: the whole image
    and its pan & scan crops are separate vision inputs, summed per image here)."""
    kwargs = {k: inputs[k] for k in ("image_sizes", "image_grid_thw") if k in inputs}
    with torch.no_grad():
        pooled = model.get_image_features(pixel_values=inputs["pixel_values"], **kwargs).pooler_output
    if torch.is_tensor(pooled):  # (n_images, tokens, hidden)
        assert pooled.dim() == 3
        rows = [pooled.shape[1]] * pooled.shape[0]
    else:
        rows = [p.reshape(-1, p.shape[-1]).shape[0] for p in pooled]
    blocks = VISION_INPUTS_PER_IMAGE.get(family, [1] * 3)[:n_images]
    if family in FEATURES_PER_PROMPT:
        assert rows == [sum(EXPECTED_TOKENS_PER_IMAGE[family][:n_images])]
        return EXPECTED_TOKENS_PER_IMAGE[family][:n_images]  # per image: checked by the geometry tests
    assert len(rows) == sum(blocks)
    return [sum(part) for part in torch.tensor(rows).split(blocks) for part in [part.tolist()]]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_images", [1, 2])
def test_forward_logits_and_image_token_count(family, n_images):
    model, processor = _built(family)
    inputs = _inputs(family, processor, n_images)
    ids = inputs["input_ids"]
    image_token_id = model.config.image_token_id
    # the processor's or its tokenizer's image token (Gemma 3's processor.image_token_id is <start_of_image>,
    # InternVL's tokenizer calls it context_image_token_id)
    assert image_token_id in (processor.image_token_id, getattr(processor.tokenizer, "image_token_id", None))
    n_tokens = int((ids == image_token_id).sum())

    rows = _image_feature_rows(model, inputs, family, n_images)
    assert len(rows) == n_images
    assert rows == EXPECTED_TOKENS_PER_IMAGE[family][:n_images]
    assert n_tokens == sum(rows)

    with torch.no_grad():
        out = model(**inputs)
    vocab = model.config.get_text_config().vocab_size
    assert vocab == len(processor.tokenizer)
    assert out.logits.shape == (1, ids.shape[1], vocab)
    assert out.logits.dtype == torch.float32
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_image_content_reaches_logits(family):
    model, processor = _built(family)
    inputs = _inputs(family, processor, 1)
    with torch.no_grad():
        a = model(**inputs).logits[0, -1]
        inputs["pixel_values"] = torch.randn_like(inputs["pixel_values"])
        b = model(**inputs).logits[0, -1]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate(family):
    model, processor = _built(family)
    inputs = _inputs(family, processor, 1)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert out.shape[0] == 1
    assert prompt_len < out.shape[1] <= prompt_len + 3
    assert torch.equal(out[0, :prompt_len], inputs["input_ids"][0])


@pytest.mark.parametrize("family", FAMILIES)
def test_build_is_deterministic(family):
    m1, _ = tiny_model_and_processor(family, seed=0)
    m2, _ = tiny_model_and_processor(family, seed=0)
    m3, _ = tiny_model_and_processor(family, seed=1)
    first = next(iter(m1.state_dict()))
    assert torch.equal(m1.state_dict()[first], m2.state_dict()[first])
    assert torch.equal(m1.get_input_embeddings().weight, m2.get_input_embeddings().weight)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(m1.get_input_embeddings().weight, m3.get_input_embeddings().weight)
    assert not m1.training and m1.dtype == torch.float32
    assert sum(p.numel() for p in m1.parameters()) < 500_000


def test_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_model_and_processor("llava", seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_images(family):
    images = tiny_images(family, 3, seed=0)
    assert len(images) == 3 and all(isinstance(im, Image.Image) and im.mode == "RGB" for im in images)
    again = tiny_images(family, 3, seed=0)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(images, again))
    assert tiny_images(family, 1, seed=1)[0].tobytes() != images[0].tobytes()


def test_prompt_words_are_in_vocab():
    words = tiny_prompt_words()
    assert words and all(w == w.lower() for w in words)
    _, processor = _built("llava")
    tok = processor.tokenizer
    assert tok.unk_token_id not in tok.convert_tokens_to_ids(words)


def test_llava_next_tiles_and_newlines():
    model, processor = _built("llava_next")
    inputs = _inputs("llava_next", processor, 3)
    # base + 2 tiles (80x24, 40x80) and base + 4 tiles (72x56), zero-padded to 5 in the batch
    assert inputs["pixel_values"].shape == (3, 5, 3, 32, 32)
    assert inputs["image_sizes"].tolist() == [[24, 80], [80, 40], [56, 72]]
    # image 0: 16 base + unpadded 2x8 grid + 2 newline tokens
    with torch.no_grad():
        pooled = model.get_image_features(
            pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]
        ).pooler_output
    newline = model.model.image_newline
    first = pooled[0]
    is_newline = torch.isclose(first, newline.expand_as(first)).all(-1)
    assert is_newline.nonzero().flatten().tolist() == [16 + 8, 16 + 17]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_multi_image_prompt(family):
    model, processor = _built(family)
    expected_cls = ImageOnlyQwen2VLProcessor if family == "qwen2_vl" else ImageOnlyQwen2_5_VLProcessor
    assert type(processor) is expected_cls
    assert type(processor).get_attributes() == ["image_processor", "tokenizer"]
    inputs = _inputs(family, processor, 2)
    thw = inputs["image_grid_thw"]
    assert thw.tolist() == [[1, 4, 6], [1, 8, 4]]
    assert inputs["pixel_values"].shape == (int(thw.prod(-1).sum()), 3 * 2 * 14 * 14)
    ids = inputs["input_ids"][0].tolist()
    tok = processor.tokenizer
    assert ids.count(tok.convert_tokens_to_ids("<|vision_start|>")) == 2
    assert ids.count(tok.convert_tokens_to_ids("<|vision_end|>")) == 2
    mm = inputs["mm_token_type_ids"][0]
    assert torch.equal(mm == 1, inputs["input_ids"][0] == model.config.image_token_id)
    assert int((mm == 1).sum()) == int((thw.prod(-1) // 4).sum()) == 14
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape[:2] == inputs["input_ids"].shape


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_image_only_processor_roundtrip(family, tmp_path):
    _, processor = _built(family)
    processor.save_pretrained(tmp_path)
    loaded = adapter_for(_built(family)[0]).load_processor(str(tmp_path))
    assert type(loaded) is type(processor) and loaded._mmlens_notes
    assert loaded.chat_template == processor.chat_template
    images = tiny_images(family, 2)
    a = processor(images=images, text=tiny_prompt(family, processor, 2), return_tensors="pt")
    b = loaded(images=images, text=tiny_prompt(family, loaded, 2), return_tensors="pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # options other than where to load from go to the image processor
    small = adapter_for(_built(family)[0]).load_processor(str(tmp_path), size={"shortest_edge": 28 * 28 * 4,
                                                                               "longest_edge": 28 * 28 * 4})
    c = small(images=images[:1], text=tiny_prompt(family, small, 1), return_tensors="pt")
    assert c["image_grid_thw"].prod(-1).item() // 4 <= 4


def test_qwen_image_only_processor_rejects_videos():
    _, processor = _built("qwen2_vl")
    with pytest.raises(ValueError, match="image-only"):
        processor(text="<|video_pad|>", videos=[tiny_images("qwen2_vl", 2)], return_tensors="pt")


def test_every_registered_family_has_a_tiny_model():
    """Tests parametrize over FAMILIES: a family registered without a tiny model would go untested."""
    from mmlens.adapters import supported_families
    from mmlens.testing.tiny_dual import DUAL_FAMILIES  # dual encoders: tests/test_dual_encoders.py

    assert sorted([*FAMILIES, *DUAL_FAMILIES]) == supported_families()
