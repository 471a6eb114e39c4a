"""Pixel-level gradients: the differentiable processor copy against the real processors, and the methods.

Every family: the pipeline equals the processor's pixel_values within 1e-4 (non-square images that need a
resize, two images in one prompt), or refuses with one line; saliency equals autograd of the model fed by
the pipeline; IG is complete up to its reported delta and equals Captum's own IntegratedGradients.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import mmlens
from mmlens.errors import InputError
from mmlens.model.batch import Batch
from mmlens.model.pil_resize import resize
from mmlens.model.pixels import TOLERANCE, PixelPipeline, check_pixels, image_tensor
from mmlens.testing import tiny_subject
from mmlens.testing.tiny_dual import DUAL_FAMILIES, tiny_dual_subject
from mmlens.testing.tiny_models import FAMILIES

torch.set_num_threads(1)


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("filter_name,code", [("bicubic", 3), ("bilinear", 2), ("lanczos", 1), ("box", 4)])
def test_resize_is_pillow_bit_for_bit(filter_name: str, code: int) -> None:
    rng = np.random.default_rng(code)
    for _ in range(25):  # up- and down-scaling, either axis first (Pillow picks the order by size)
        h, w, oh, ow = (int(v) for v in rng.integers(2, 70, 4))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(img).resize((ow, oh), code)).astype(np.float64)
        ours = resize(torch.tensor(img, dtype=torch.float64).permute(2, 0, 1), (oh, ow), filter_name)
        assert np.array_equal(ours.permute(1, 2, 0).numpy(), want), (h, w, oh, ow)


def test_resize_backward_is_the_float_resize() -> None:
    x = torch.rand(3, 9, 13, dtype=torch.float64) * 255
    smooth = lambda t: resize(t, (5, 17), "bicubic", exact=False)
    assert torch.autograd.gradcheck(smooth, (x.clone().requires_grad_(True),))
    g = torch.randn(3, 5, 17, dtype=torch.float64)
    xe = x.clone().requires_grad_(True)
    (resize(xe, (5, 17), "bicubic") * g).sum().backward()  # straight-through: the same gradient
    xs = x.clone().requires_grad_(True)
    (smooth(xs) * g).sum().backward()
    assert torch.allclose(xe.grad, xs.grad)
    assert not torch.equal(resize(x, (5, 17)), smooth(x))  # but the forward is rounded to 8 bits


def _subject(family: str):
    return tiny_dual_subject(family) if family in DUAL_FAMILIES else tiny_subject(family)


@pytest.mark.parametrize("family", FAMILIES + DUAL_FAMILIES)
def test_pipeline_matches_processor(family: str) -> None:
    lm = _subject(family)
    pipe = PixelPipeline(lm)
    # non-square images that every processor resizes (and tiles / crops where it does), then a square one
    for i, (w, h) in enumerate([(53, 37), (30, 61), (48, 48)]):
        batch = lm.prepare(_noise_image(w, h, i), "what color is it ?")
        assert check_pixels(pipe, batch) <= TOLERANCE
        ours = pipe([image_tensor(img) for img in batch.images])
        assert ours.shape == batch.inputs["pixel_values"].shape
        # no 8-bit rounding (a pass rounds to 1/2 level): near, not equal
        smooth = pipe([image_tensor(img) for img in batch.images], exact=False)
        assert 0 < float((smooth - batch.inputs["pixel_values"]).abs().max()) < 0.05
    if not lm.adapter.dual_encoder:  # two images of different sizes in one prompt
        batch = lm.prepare([_noise_image(53, 37, 5), _noise_image(30, 61, 6)], "what color is it ?")
        assert check_pixels(pipe, batch) <= TOLERANCE


def test_the_demo_and_claimed_families_are_exact() -> None:
    from mmlens.adapters.base import ADAPTERS

    assert all(cls.pixel_layout is not None for cls in ADAPTERS.values())  # every family claims the pipeline
    demo = mmlens.load("demo")
    batch = demo.prepare(_noise_image(70, 50), "what color is the circle ?")
    assert check_pixels(PixelPipeline(demo), batch) <= TOLERANCE


def _logprob(lm, batch: Batch, pixels: torch.Tensor) -> torch.Tensor:
    inputs = {**batch.inputs, "pixel_values": pixels}
    logits = lm.model(**lm.model_inputs(inputs), use_cache=False).logits
    return lm.answer_log_probs(logits, batch).sum()


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_pixel_saliency_is_autograd_through_the_pipeline(family: str) -> None:
    lm = tiny_subject(family)
    image = _noise_image(53, 37)
    ex = mmlens.explain(lm, image, "what color is it ?", method="pixel_saliency", answer="red", target="answer")
    batch = lm.prepare(image, "what color is it ?", answer="red")
    x = image_tensor(image).requires_grad_(True)
    pixels = PixelPipeline(lm)([x])
    assert float((pixels.detach() - batch.inputs["pixel_values"]).abs().max()) <= TOLERANCE
    (grad,) = torch.autograd.grad(_logprob(lm, batch, pixels), x)
    want = grad.abs().sum(-1).numpy()
    got = ex.pixel_maps[0][0]
    assert got.shape == (37, 53) and float(want.max()) > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(want.max()))
    # per-token scores: the map's mean over each token's pixel box
    geom = batch.geometry[0]
    pos, boxes = next(iter(geom.position_boxes().items()))
    x0, y0 = (max(math.floor(v), 0) for v in boxes[0][:2])  # boxes clipped to the image, outward to whole pixels
    x1, y1 = math.ceil(boxes[0][2]), math.ceil(boxes[0][3])
    assert ex.position_scores[0][pos] == pytest.approx(float(want[y0:y1, x0:x1].mean()), rel=1e-4)


def test_pixel_ig_completeness_and_captum() -> None:
    from captum.attr import IntegratedGradients

    lm = tiny_subject("llava")
    image = _noise_image(40, 30, 3)
    batch = lm.prepare(image, "what color is it ?", answer="red")
    ex = mmlens.explain(lm, image, "what color is it ?", method="pixel_integrated_gradients", answer="red",
                        target="answer", steps=16, exact=False, baseline="black")
    pipe = PixelPipeline(lm)
    x = image_tensor(image)
    with torch.no_grad():
        f_x = _logprob(lm, batch, pipe([x], exact=False))
        f_b = _logprob(lm, batch, pipe([torch.zeros_like(x)], exact=False))
    total = float(ex.pixel_maps[0][0].astype(np.float64).sum())
    delta = ex.extras["convergence_delta"][0]
    assert total - float(f_x - f_b) == pytest.approx(delta, abs=1e-5)
    assert abs(delta) < 0.05 * abs(float(f_x - f_b)) + 1e-4

    def f(images: torch.Tensor) -> torch.Tensor:  # Captum's call on the same function, one row at a time
        return torch.stack([_logprob(lm, batch, pipe([img], exact=False)) for img in images])

    for p in lm.model.parameters():
        p.requires_grad_(False)
    attr = IntegratedGradients(f).attribute(x[None], baselines=torch.zeros_like(x)[None], n_steps=16,
                                            internal_batch_size=4)
    np.testing.assert_allclose(ex.pixel_maps[0][0], attr[0].sum(-1).numpy(), rtol=1e-3, atol=1e-6)


def test_pixel_smoothgrad_is_seeded_and_refusals_are_one_line(tmp_path) -> None:
    lm = tiny_subject("paligemma")
    image = _noise_image(44, 36)
    a = mmlens.explain(lm, image, "what color ?", method="pixel_smoothgrad", answer="red", nt_samples=3, seed=1)
    b = mmlens.explain(lm, image, "what color ?", method="pixel_smoothgrad", answer="red", nt_samples=3, seed=1)
    np.testing.assert_array_equal(a.pixel_maps[0][0], b.pixel_maps[0][0])
    loaded = mmlens.Explanation.load(a.save(tmp_path / "sg.safetensors"))  # full-resolution maps survive a save
    np.testing.assert_array_equal(loaded.pixel_maps[0][0], a.pixel_maps[0][0])
    assert "<" in a.save(tmp_path / "sg.html").read_text()[:200]
    assert a.pixel_maps[0][0].shape == (36, 44) and float(a.pixel_maps[0][0].min()) >= 0
    with pytest.raises(InputError, match="exact=") as err:
        mmlens.explain(lm, image, "what color ?", method="pixel_saliency", answer="red", exact="yes")
    assert "\n" not in str(err.value)
    # a processor output the pipeline does not reproduce is refused with the measured difference
    batch = lm.prepare(image, "what color ?", answer="red")
    batch.inputs["pixel_values"] = batch.inputs["pixel_values"] + 0.01
    with pytest.raises(InputError, match=r"differs from the processor by 0\.01") as err:
        check_pixels(PixelPipeline(lm), batch)
    assert "\n" not in str(err.value)
    frames = [_noise_image(56, 56, 1)] * 2  # videos: refused (frames go through the video processor)
    with pytest.raises(InputError, match="still images") as err:
        mmlens.explain(tiny_subject("qwen2_vl"), mmlens.Video(frames, fps=1.0), "what color ?",
                       method="pixel_saliency", answer="red")
    assert "\n" not in str(err.value)
    lm.adapter.pixel_layout = None  # a family that declares no pixel layout refuses before any forward
    with pytest.raises(InputError, match="token-level") as err:
        mmlens.explain(lm, image, "what color ?", method="pixel_saliency", answer="red")
    assert "\n" not in str(err.value)
