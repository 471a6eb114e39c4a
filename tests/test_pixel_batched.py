"""Pixel-level IG and SmoothGrad with ``internal_batch_size`` path points / noisy copies per forward give the
numbers of one point per forward (maps, completeness delta), with every target (answer tokens, the whole
answer, a contrast whose foil needs its own forward) sharing each forward: LLaVA-NeXT with two images (tiles
padded to the most tiles), Qwen2-VL (merged patch rows) and the demo model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import subject_for

import mmlens
from mmlens import InputError
from mmlens.attribution.pixel_gradients import pixel_integrated_gradients, pixel_smoothgrad
from mmlens.data.shapes_vqa import ShapesVQA
from mmlens.model.targets import resolve_targets
from mmlens.testing.tiny_models import tiny_images

torch.set_num_threads(1)


def _setup(family: str):
    if family == "demo":
        subject = mmlens.load("demo")
        sample = next(iter(ShapesVQA(seed=0).samples(1)))
        batch = subject.prepare(sample.image, sample.question, answer=sample.answer)
        return subject, batch, resolve_targets(subject.tokenizer, batch, None)
    subject = subject_for(family)
    images = tiny_images(family, 2 if family == "llava_next" else 1)
    batch = subject.prepare(images, "what color is the cat ?", answer="red cat blue")
    tok = subject.tokenizer
    targets = resolve_targets(tok, batch, None) + resolve_targets(tok, batch, "answer")
    targets += resolve_targets(tok, batch, "cat - blue dog")
    assert targets[-1].needs_foil_forward  # a foil with its own forward, batched with the path rows
    return subject, batch, targets


def _close(got: np.ndarray, want: np.ndarray) -> None:
    scale = float(np.abs(want).max())
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl", "demo"])
def test_batched_path_equals_one_point_per_forward(family: str) -> None:
    subject, batch, targets = _setup(family)
    ig = {ibs: pixel_integrated_gradients(subject, batch, targets, steps=7, internal_batch_size=ibs)
          for ibs in (1, 3)}  # 7 points: chunks of 3, 3 and 1
    for t in range(len(targets)):
        for one, batched in zip(ig[1].pixel_maps[t], ig[3].pixel_maps[t]):
            _close(batched, one)
    d1, d3 = (np.array(ig[k].extras["convergence_delta"]) for k in (1, 3))
    np.testing.assert_allclose(d3, d1, rtol=1e-5, atol=1e-5)
    sums = np.array([sum(float(m.astype(np.float64).sum()) for m in maps) for maps in ig[3].pixel_maps])
    assert np.abs(sums).max() > 1e-3  # the maps carry the target's change, not zeros
    sg = {}
    for ibs in (1, 2):
        torch.manual_seed(3)
        sg[ibs] = pixel_smoothgrad(subject, batch, targets, nt_samples=3, internal_batch_size=ibs)
    for t in range(len(targets)):
        for one, batched in zip(sg[1].pixel_maps[t], sg[2].pixel_maps[t]):
            _close(batched, one)


def test_internal_batch_size_is_checked() -> None:
    subject, image = subject_for("llava"), tiny_images("llava")[0]
    for method in ("pixel_integrated_gradients", "pixel_smoothgrad"):
        with pytest.raises(InputError, match="internal_batch_size=0") as err:
            mmlens.explain(subject, image, "what color ?", method=method, answer="red", internal_batch_size=0)
        assert "\n" not in str(err.value)
