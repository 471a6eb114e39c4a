"""Dual encoders' towers as their adapters describe them (EmbeddingParts): the embedding methods read only that."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmlens.embedding import decompose, tower
from mmlens.errors import InputError
from mmlens.testing import tiny_subject
from mmlens.testing.tiny_dual import DUAL_FAMILIES, tiny_dual_model_and_processor, tiny_dual_subject
from mmlens.testing.tiny_models import tiny_images

torch.set_num_threads(1)


@pytest.mark.parametrize("family", DUAL_FAMILIES)
def test_parts_embed_as_the_model_does(family):
    s = tiny_dual_subject(family)
    parts = s.adapter.embedding_parts()
    t = tower(s)
    images = tiny_images("llava", n=2)
    inputs = t.pixel_inputs(images)
    with torch.no_grad():
        direct = s.model.get_image_features(**inputs).pooler_output
        assert torch.allclose(parts.encode_image(inputs), direct, atol=1e-6)
        assert torch.allclose(t.encode_images(images), direct, atol=1e-6)
    assert parts.embed_dim == direct.shape[-1] and t.embed_dim == direct.shape[-1]
    assert (parts.pooling, parts.cls_tokens) == (("cls", 1) if parts.attention_pool is None else ("attention", 0))
    assert t.encode_texts(["a red circle", "blue"]).shape == (2, parts.embed_dim)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_decomposition_reads_only_the_description(family):
    """A tower described with an extra biased projection (as another dual encoder might have) decomposes exactly."""
    t = tower(tiny_dual_model_and_processor(family))
    torch.manual_seed(0)
    proj = torch.nn.Linear(t.parts.embed_dim, 8, bias=True)
    first = t.parts.projection
    chained = proj if first is None else torch.nn.Sequential(first, proj)
    base = t.parts.encode_image
    t.parts = dataclasses.replace(t.parts, projection=_Linear(chained), embed_dim=8,
                                  encode_image=lambda inputs: proj(base(inputs) if first is None else base(inputs)))
    d = decompose(t, tiny_images("llava", n=3), per_token=True)
    assert d.embedding.shape == (3, 8) and d.error() < 1e-4
    assert torch.allclose(d.tokens[:, 0, 0].sum(1), d.contributions[:, d.head(0, 0)], atol=1e-5)


class _Linear(torch.nn.Linear):
    """One ``nn.Linear`` equal to a chain of linear maps (the decomposition reads ``weight`` and ``bias``)."""

    def __init__(self, chain: torch.nn.Module) -> None:
        layers = list(chain) if isinstance(chain, torch.nn.Sequential) else [chain]
        w, b = torch.eye(layers[0].in_features), torch.zeros(layers[0].in_features)
        for layer in layers:
            w, b = layer.weight @ w, layer.weight @ b + (layer.bias if layer.bias is not None else 0)
        super().__init__(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.weight.copy_(w)
            self.bias.copy_(b)


def test_a_pooling_tower_without_its_head_is_one_line():
    model, processor = tiny_dual_model_and_processor("siglip")
    model.vision_model.head = None
    with pytest.raises(InputError, match="no pooling head") as err:
        tower(model, processor)
    assert "\n" not in str(err.value)


def test_a_bare_mllm_model_or_a_non_model_is_one_line():
    s = tiny_subject("llava")
    for call, match in ((lambda: tower(s.model, s.processor), "not an image-text dual encoder"),
                        (lambda: tower(torch.nn.Linear(2, 2), object()), "not an image-text dual encoder"),
                        (lambda: tower(object()), "not a model or subject")):
        with pytest.raises(InputError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
