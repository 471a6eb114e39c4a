"""mmlens.load: local folders (safetensors only by default), loaded pairs, family detection, errors."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import mmlens
from mmlens import InputError, UnsupportedModelError
from mmlens.testing.tiny_models import FAMILIES, tiny_images, tiny_model_and_processor


@pytest.mark.parametrize("family", FAMILIES)
def test_load_from_saved_folder_matches_the_original(tmp_path, family):
    model, processor = tiny_model_and_processor(family)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    loaded = mmlens.load(str(tmp_path))
    assert loaded.family == family
    assert loaded.model_id == str(tmp_path)
    original = mmlens.load(model, processor)
    img = tiny_images(family)
    b1, b2 = original.prepare(img, "what is this?"), loaded.prepare(img, "what is this?")
    assert torch.equal(b1.input_ids, b2.input_ids)
    torch.testing.assert_close(original.forward(b1), loaded.forward(b2))


def test_dtype_and_pair_forms():
    model, processor = tiny_model_and_processor("llava")
    subject = mmlens.load((model, processor), dtype="bfloat16")
    assert next(subject.model.parameters()).dtype == torch.bfloat16
    batch = subject.prepare(tiny_images("llava"), "what is this?", answer="red")
    assert torch.isfinite(subject.score(batch).log_probs).all()
    with pytest.raises(InputError, match="unknown dtype"):
        mmlens.load((model, processor), dtype="float8")
    with pytest.raises(InputError, match="needs its processor"):
        mmlens.load(model)


def test_pickle_weights_need_opt_in(tmp_path):
    model, processor = tiny_model_and_processor("llava")
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    model.config.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with pytest.raises(InputError, match="allow_pickle=True"):
        mmlens.load(str(tmp_path))
    subject = mmlens.load(str(tmp_path), allow_pickle=True)
    torch.testing.assert_close(next(subject.model.parameters()), next(model.parameters()))


def test_unknown_family_lists_supported(tmp_path):
    LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, vocab_size=50)).save_pretrained(tmp_path)
    from mmlens.testing.tiny_dual import DUAL_FAMILIES

    with pytest.raises(UnsupportedModelError, match=", ".join(sorted({*FAMILIES, *DUAL_FAMILIES}))):
        mmlens.load(str(tmp_path))


def test_missing_model_is_one_line_error(tmp_path):
    with pytest.raises(InputError) as info:
        mmlens.load(str(tmp_path / "nowhere" / "model"))
    assert "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="config.json"):
        mmlens.load(str(tmp_path / "empty"))


def test_access_tiers_limit_methods():
    model, processor = tiny_model_and_processor("llava")
    subject = mmlens.load((model, processor), access="black-box")
    img = tiny_images("llava")
    with pytest.raises(InputError, match="needs 'gradient' access") as info:
        mmlens.explain(subject, img, "what is this?", method="saliency", answer="red")
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="needs 'activations' access"):
        subject.trace()
    ex = mmlens.explain(subject, img, "what is this?", method="occlusion", answer="red")  # black-box still works
    assert ex.image_map().shape == (img[0].height, img[0].width)
    with pytest.raises(InputError, match="unknown access tier"):
        mmlens.load((model, processor), access="root")


def test_demo_loads_offline_through_the_llava_adapter(monkeypatch):
    from mmlens.adapters.llava import LlavaAdapter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    demo = mmlens.load("demo")
    assert type(demo.adapter) is LlavaAdapter and demo.family == "llava"
    assert demo.model_id == "demo" and type(demo.model).__name__ == "LlavaForConditionalGeneration"


def test_demo_variants_resolve_by_name_and_unknown_ones_list_the_valid_names() -> None:
    from mmlens.demo import DEMO_VARIANTS, demo_dir

    assert demo_dir("demo") == demo_dir("demo:demo") == DEMO_VARIANTS["demo"]
    with pytest.raises(InputError, match=r"unknown demo model 'demo:nope': use one of 'demo'"):
        mmlens.load("demo:nope")
