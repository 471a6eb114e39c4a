"""Attention-gradient methods on a model loaded in bfloat16 (how large MLLMs are usually run).

Eager attention computes its probabilities in float32 and casts them to the model's dtype; the maps read the
exact float32 values, and their gradient is that of the cast weights the forward used (a tensor derived from
them would get no gradient: the methods used to fail with "gradient never arrived")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmlens
from mmlens.testing import tiny_subject
from mmlens.testing.tiny_models import tiny_images

CASES = [("llava", "relevancy", {}), ("llava", "attention_x_gradient", {}), ("llava", "vision_relevancy", {}),
         ("qwen2_vl", "relevancy", {}), ("qwen2_vl", "vision_relevancy", {}),
         ("llava", "relevancy", {"attention_chunk": 3}), ("gemma3", "attention_x_gradient", {})]


@pytest.mark.parametrize(("family", "method", "options"), CASES)
def test_bfloat16_maps_match_float32(family, method, options):
    subject = tiny_subject(family)
    image = tiny_images(family, 1)[0]
    maps = []
    for dtype in (torch.float32, torch.bfloat16):
        subject.model.to(dtype)
        ex = mmlens.explain(subject, image, "what color?", method=method, answer="red", **options)
        maps.append(np.asarray(ex.position_scores, dtype=np.float64).ravel())
    subject.model.to(torch.float32)
    full, half = maps
    assert np.abs(full).max() > 0
    assert np.abs(full - half).max() <= 0.05 * np.abs(full).max()
    assert np.corrcoef(full, half)[0, 1] > 0.995
