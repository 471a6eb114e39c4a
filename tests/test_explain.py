"""mmlens.explain and the Explanation result: every method on every family, save/load, HTML, bad input."""

import json

import numpy as np
import pytest
import torch
from conftest import subject_for

import mmlens
from mmlens import Explanation, InputError, count_hooks
from mmlens.testing.tiny_models import FAMILIES, tiny_images

PROMPT = "what color is the cat?"
#: the attention and gradient methods (perturbation methods are tested with their own module)
METHODS = {
    "attention": {},
    "rollout": {},
    "attention_x_gradient": {},
    "relevancy": {},
    "saliency": {},
    "input_x_gradient": {},
    "gradcam": {},
    "integrated_gradients": {"steps": 4},
    "smoothgrad": {"nt_samples": 2},
    "vision_gradcam": {},
    "vision_relevancy": {},
}


def images_for(family):
    # llava_next: the 80x24 image tiles into 1x2 high-res tiles (base grid + tiles); llava, qwen: two images
    return tiny_images(family, n=2 if family == "llava" or family.startswith("qwen") else 1)



@pytest.fixture(scope="module")
def example():
    subject = subject_for("llava")
    return mmlens.explain(subject, tiny_images("llava", n=2), PROMPT, method="saliency", answer="red cat")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_every_family(family, method):
    subject = subject_for(family)
    images = images_for(family)
    ex = mmlens.explain(subject, images, PROMPT, method=method, answer="red cat", **METHODS[method])
    assert ex.targets == ["red", "cat"]
    assert ex.position_scores.shape == (2, len(ex.tokens))
    for t in range(2):
        for i, img in enumerate(images):
            heat = ex.image_map(t, image=i)
            assert heat.shape == (img.height, img.width)
            assert np.isfinite(heat).all()
        assert len(ex.text_scores(t)) == len(ex.text_positions) > 0
    assert np.abs(ex.position_scores).max() > 0
    assert ex.metadata["method"] == method and ex.metadata["family"] == family
    assert count_hooks(subject.model) == 0
    if family == "llava_next":
        assert ex.grid_kinds[0] == ["base", "tiles"]


def test_maps_are_the_geometry_heatmaps_of_the_scores():
    subject = subject_for("llava_next")
    images = tiny_images("llava_next", n=1)
    ex = mmlens.explain(subject, images, PROMPT, method="attention", answer="red")
    batch = subject.prepare(images, PROMPT, answer="red")
    scores = torch.from_numpy(ex.position_scores[0])
    np.testing.assert_array_equal(ex.image_map("red"), batch.geometry[0].heatmap(scores))
    for g, grid in enumerate(batch.geometry[0].grids):
        np.testing.assert_array_equal(ex.grid_map("red", grid=g), scores[grid.positions].numpy())
    tokens = subject.tokenizer.convert_ids_to_tokens(batch.input_ids[0, batch.text_positions()].tolist())
    assert [tok for tok, _ in ex.text_scores()] == tokens
    assert [s for _, s in ex.text_scores()] == pytest.approx(scores[batch.text_positions()].tolist())


def test_explains_the_generated_answer_when_no_answer_is_given():
    subject = subject_for("llava")
    image = tiny_images("llava")[0]
    gen = subject.generate(image, PROMPT, max_new_tokens=3)
    ex = mmlens.explain(subject, image, PROMPT, method="attention", max_new_tokens=3)
    assert ex.answer_tokens == gen.tokens
    assert len(ex.targets) == len(gen.tokens)
    whole = mmlens.explain(subject, image, PROMPT, method="attention", target="answer", max_new_tokens=3)
    assert len(whole.targets) == 1


def test_metadata_reproduces_the_call(example):
    meta = example.metadata
    assert meta["model_id"] == "tiny-llava" and meta["seed"] == 0 and meta["answer"] == "red cat"
    assert set(meta["versions"]) >= {"mmlens", "torch", "transformers"}
    ex = mmlens.explain(subject_for("llava"), tiny_images("llava"), PROMPT, method="smoothgrad", answer="red",
                        seed=7, nt_samples=3)
    assert ex.metadata["options"] == {"nt_samples": 3} and ex.metadata["seed"] == 7
    again = mmlens.explain(subject_for("llava"), tiny_images("llava"), PROMPT, method="smoothgrad", answer="red",
                           seed=7, nt_samples=3)
    np.testing.assert_array_equal(ex.position_scores, again.position_scores)  # seeded: same noise


@pytest.mark.parametrize("contrast, fact, foil", [(("red", "blue"), "red cat", "blue cat"),
                                                  ("red cat - blue dog", "red cat", "blue dog")])
def test_contrast_target(contrast, fact, foil):
    """A contrast's input x gradient at the prompt positions (shared by both sequences) is the answer's minus
    the foil's, each explained as a whole answer of its own teacher-forced batch (the map is linear in the
    gradient); the label names both sides."""
    subject, images = subject_for("llava"), tiny_images("llava")

    def ixg(answer, target):
        return mmlens.explain(subject, images, PROMPT, method="input_x_gradient", answer=answer, target=target)

    ex = ixg("red cat", contrast)
    assert ex.targets == [contrast if isinstance(contrast, str) else " - ".join(contrast)]
    n = len(ex.position_scores[0]) - 2  # the prompt; "red cat" is 2 tokens
    n_fact = 1 if isinstance(contrast, tuple) else 2
    want = ixg(fact, fact.split()[0] if n_fact == 1 else "answer").position_scores[0, :n] \
        - ixg(foil, foil.split()[0] if n_fact == 1 else "answer").position_scores[0, :n]
    assert np.abs(want).max() > 1e-4
    np.testing.assert_allclose(ex.position_scores[0, :n], want, rtol=1e-4, atol=1e-7)


# -- Explanation: access, save / load, plots ------------------------------------------------------------


def test_image_map_target_selection(example):
    np.testing.assert_array_equal(example.image_map(), example.image_map("red"))
    np.testing.assert_array_equal(example.image_map(1), example.image_map("cat"))
    np.testing.assert_array_equal(example.image_map(-1, image=1), example.pixel_maps[1][1])
    with pytest.raises(InputError, match="was not explained"):
        example.image_map("dog")
    with pytest.raises(InputError, match="out of range"):
        example.image_map(5)
    with pytest.raises(InputError, match="image 3"):
        example.image_map(0, image=3)


def assert_same(a: Explanation, b: Explanation):
    assert a.to_dict() == b.to_dict()
    np.testing.assert_array_equal(a.position_scores, b.position_scores)
    for img_a, img_b in zip(a.images, b.images):
        np.testing.assert_array_equal(np.asarray(img_a), np.asarray(img_b))


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_save_load_round_trip(example, tmp_path, suffix):
    path = example.save(tmp_path / f"ex{suffix}")
    loaded = Explanation.load(path)
    assert_same(example, loaded)
    assert loaded.targets == example.targets and loaded.metadata == example.metadata
    assert loaded.plot() is not None  # the images came back: it can plot
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ex{suffix}"]  # no temp file left


def test_json_is_plain_json(example, tmp_path):
    data = json.loads(example.save(tmp_path / "ex.json").read_text())
    assert data["format"] == "mmlens.explanation" and data["targets"][0]["label"] == "red"
    assert len(data["targets"][0]["images"][0]["pixel_map"]) == example.images[0].height


def test_png_and_html_are_written(example, tmp_path):
    png = example.save(tmp_path / "ex.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    page = example.save(tmp_path / "ex.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page


def test_plot_panels_titles_and_ax(example):
    from matplotlib.figure import Figure

    fig = example.plot()  # 2 targets x 2 images
    panels = [a for a in fig.axes if a.get_title()]
    assert len(panels) == 4 and "'red'" in panels[0].get_title() and "'cat'" in panels[2].get_title()
    ax = Figure().subplots()
    assert example.plot("cat", ax=ax, image=1) is ax.figure and "'cat'" in ax.get_title()
    with pytest.raises(InputError, match="one panel"):
        example.plot(ax=ax)


def test_repr_html_escapes_user_and_model_strings():
    subject = subject_for("llava")
    prompt = 'what is <script>alert("x")</script> this?'
    ex = mmlens.explain(subject, tiny_images("llava"), prompt, method="attention", answer="red")
    ex.tokens[ex.text_positions[0]] = "<b>tok</b>"  # a model token that looks like markup
    page = ex._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>tok</b>" not in page and "&lt;b&gt;tok&lt;/b&gt;" in page
    assert page.count("<img ") == 1 and "data:image/png;base64," in page


@pytest.mark.parametrize("suffix", [".json", ".safetensors", ".png"])
def test_failed_save_leaves_no_file(example, tmp_path, monkeypatch, suffix):
    import safetensors.numpy

    def half_then_fail(*args, **kwargs):
        path = kwargs.get("filename") or args[1]
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", half_then_fail)
    monkeypatch.setattr(Explanation, "to_dict", lambda self: {"bad": object()})  # json.dumps fails midway
    monkeypatch.setattr(Explanation, "_png_bytes", lambda self, *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    target = tmp_path / f"ex{suffix}"
    with pytest.raises((OSError, TypeError, RuntimeError)):
        example.save(target)
    assert list(tmp_path.iterdir()) == []
    # an existing file is left untouched by a failed save
    target.write_bytes(b"old")
    with pytest.raises((OSError, TypeError, RuntimeError)):
        example.save(target)
    assert target.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_save_and_load_input_errors(example, tmp_path):
    with pytest.raises(InputError, match=r"\.safetensors"):
        example.save(tmp_path / "ex.txt")
    with pytest.raises(InputError, match="does not exist"):
        example.save(tmp_path / "missing" / "ex.json")
    with pytest.raises(InputError, match="not found"):
        Explanation.load(tmp_path / "nothing.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(InputError, match="no mmlens explanation"):
        Explanation.load(tmp_path / "other.json")


# -- bad input --------------------------------------------------------------------------------------------


def one_line(info):
    assert "\n" not in str(info.value)


def test_unknown_method_lists_the_methods():
    with pytest.raises(InputError, match="unknown method 'lime2'") as info:
        mmlens.explain(subject_for("llava"), tiny_images("llava"), PROMPT, method="lime2", answer="red")
    for name in METHODS:
        assert name in str(info.value)
    one_line(info)


def test_unknown_option_lists_the_options():
    with pytest.raises(InputError, match="has no option 'n_steps'; its options: steps") as info:
        mmlens.explain(subject_for("llava"), tiny_images("llava"), PROMPT, method="integrated_gradients",
                       answer="red", n_steps=3)
    one_line(info)


def test_target_not_in_answer_lists_the_answer_tokens():
    with pytest.raises(InputError, match=r"target 'dog' is not in the answer; answer tokens: \['red', 'cat'\]") as info:
        mmlens.explain(subject_for("llava"), tiny_images("llava"), PROMPT, method="attention", answer="red cat",
                       target="dog")
    one_line(info)


@pytest.mark.parametrize("steps", [0, -1])
def test_steps_out_of_range(steps):
    with pytest.raises(InputError, match=f"steps={steps} is out of range") as info:
        mmlens.explain(subject_for("llava"), tiny_images("llava"), PROMPT, method="integrated_gradients",
                       answer="red", steps=steps)
    one_line(info)


def test_methods_catalog_lists_every_method_with_leaf_and_tier():
    names = {m.name for m in mmlens.methods()}
    assert set(METHODS) <= names
    assert {"logit_lens", "causal_trace", "attention_knockout", "neuron_scores", "token_pruning"} <= names
    pixel = {"pixel_saliency", "pixel_integrated_gradients", "pixel_smoothgrad"}  # tests/test_pixel_gradients.py
    assert {m.name for m in mmlens.methods(kind="attribution")} == set(METHODS) | {"occlusion", "rise", "kernel_shap", "mm_shap", "lime"} | pixel
    tiers = {m.name: m.tier for m in mmlens.methods()}
    assert tiers["attention"] == tiers["rollout"] == "attention" and tiers["relevancy"] == "gradient"
