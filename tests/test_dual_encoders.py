"""Dual encoders (CLIP, SigLIP, SigLIP 2) as subjects: the joint sequence reproduces the model's own
similarity, the geometry maps each patch token to its pixels, perturbation methods explain the similarity and
methods that read a language model's attention refuse in one line (gradient methods: test_dual_gradients.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmlens
from mmlens.errors import InputError
from mmlens.testing.tiny_dual import DUAL_FAMILIES, tiny_dual_subject
from mmlens.testing.tiny_models import tiny_images

CAPTION = "a red cat and a blue dog"


@pytest.fixture(scope="module", params=DUAL_FAMILIES)
def subject(request):
    return tiny_dual_subject(request.param)


def _image() -> Image.Image:
    return tiny_images("llava")[0]  # 48 x 32: CLIP crops it, SigLIP squeezes it, SigLIP 2 keeps its aspect


def test_joint_forward_is_the_models_similarity_and_tracing_changes_nothing(subject) -> None:
    batch = subject.prepare(_image(), CAPTION, answer="<match>")
    with torch.no_grad():
        plain = subject.forward(batch)
        with subject.trace() as tr:
            tr.capture("*blocks.*.resid_post")
            traced = subject.forward(batch)
        real = subject.processor(images=[_image()], text=[CAPTION], return_tensors="pt",
                                 **{"padding": True, **subject.adapter.processor_kwargs()})
        expected = subject.model(**real).logits_per_image[0, 0]
    assert torch.equal(plain, traced)
    assert len([n for n in tr.captured if n.startswith("text.")]) == 2  # both towers are traced
    assert torch.allclose(plain[0, batch.prompt_len - 1, 1], expected, atol=1e-5)
    assert int((plain != 0).sum()) <= 2  # only the readout position holds logits


def test_a_caption_has_one_text_embedding_on_every_path(subject) -> None:
    """The joint readout's caption, a zero-shot candidate and the embedding tools' plain texts embed a caption
    alike, as the model does with its tokenizer's ids and mask (SigLIP's plain texts went unmasked, 1.29 apart)."""
    a = subject.adapter
    batch = subject.prepare(_image(), CAPTION, answer="<match>")
    inputs = subject.model_inputs(batch)
    with torch.no_grad():
        plain = a.encode_texts([CAPTION])[0]
        other = "a blue circle"
        cand = a.with_candidates(dict(batch.inputs), other, [other, CAPTION])["candidate_embeds"][0, 0]
        enc = subject.processor.tokenizer([CAPTION], return_tensors="pt", **a.text_kwargs())
        hf = subject.model.get_text_features(**enc)
        hf = getattr(hf, "pooler_output", hf)[0]
        readout = subject.forward(batch)[0, batch.prompt_len - 1, 1]
        mine = a.similarity_logits(a.image_embeds(inputs), plain[None])[0]
    torch.testing.assert_close(plain, hf, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cand, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(readout, mine, atol=1e-5, rtol=1e-5)


def test_a_mark_in_one_patch_changes_only_that_patch_token(subject) -> None:
    image = _image()
    batch = subject.prepare(image, CAPTION)
    geom = batch.geometry[0]
    grid = geom.grids[0]
    r, c = grid.shape[0] // 2, grid.shape[1] // 2
    x0, y0, x1, y1 = grid.cell_box(r, c)
    arr = np.asarray(image).copy()
    ix, iy = max(1, round((x1 - x0) / 3)), max(1, round((y1 - y0) / 3))  # resampling blurs the mark's edges
    ys, xs = slice(int(np.ceil(y0)) + iy, int(y1) - iy), slice(int(np.ceil(x0)) + ix, int(x1) - ix)
    arr[ys, xs] = 255 - arr[ys, xs]
    marked = subject.prepare(Image.fromarray(arr), CAPTION)
    embeds = []
    for b in (batch, marked):
        with torch.no_grad(), subject.trace() as tr:
            tr.capture("vision.embed")
            subject.forward(b)
            embeds.append(tr["vision.embed"][0])
    changed = (embeds[0] - embeds[1]).abs().amax(-1) > 1e-6
    assert changed.nonzero().flatten().tolist() == [int(grid.positions[r, c])]


def test_perturbation_methods_explain_the_similarity(subject) -> None:
    ex = mmlens.explain(subject, _image(), CAPTION, method="occlusion")
    assert ex.labels == ["<match>"]
    assert ex.pixel_maps[0][0].shape == (32, 48) and np.abs(ex.pixel_maps[0][0]).max() > 0
    text = ex.tokens[ex.text_positions[0] : ex.text_positions[-1] + 1]
    assert "cat" in text and "<image>" not in text


def test_language_model_methods_and_bad_inputs_refuse_in_one_line(subject) -> None:
    for method, match in (("relevancy", "dual encoder has none"), ("attention", "dual encoder has none")):
        with pytest.raises(InputError, match=match) as err:
            mmlens.explain(subject, _image(), CAPTION, method=method)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="empty"):
        subject.prepare(_image(), "  ")
    with pytest.raises(InputError, match="one image"):
        subject.prepare([_image(), _image()], CAPTION)
    with pytest.raises(InputError, match="no answer 'red'"):
        subject.prepare(_image(), CAPTION, answer="red")


def test_demo_clip_loads_and_its_similarity_prefers_the_true_caption() -> None:
    from mmlens.data import ShapesVQA
    from mmlens.demo.clip_recipe import caption

    lm = mmlens.load("demo:clip")
    assert lm.family == "clip" and lm.hook_points("text.blocks.0")
    s = ShapesVQA(seed=2, min_objects=1, max_objects=1).sample(0)
    wrong = next(f"a {c} {sh}" for c in ("red", "blue") for sh in ("circle", "square")
                 if (c, sh) != (s.objects[0]["color"], s.objects[0]["shape"]))
    scores = [lm.score(lm.prepare(s.image, text, answer="<match>")).total for text in (caption(s), wrong)]
    assert scores[0] > scores[1] + 1.0, scores
