"""The embedding methods on tiny random CLIP / SigLIP models and on every MLLM family's vision tower."""

from __future__ import annotations

import pytest
import torch

from mmlens.embedding import (
    Decomposition,
    TextBank,
    ablation_curves,
    categorize,
    check_vocabulary,
    class_embeddings,
    decompose,
    group_drop,
    head_maps,
    modality_gap,
    splice,
    text_bank,
    text_spans,
    tower,
    train_cbm,
)
from mmlens.embedding.solvers import nonneg_lasso
from mmlens.errors import InputError
from mmlens.testing import tiny_subject
from mmlens.testing.tiny_dual import tiny_dual_model_and_processor
from mmlens.testing.tiny_models import FAMILIES, tiny_images

torch.set_num_threads(1)


@pytest.fixture(scope="module", params=["clip", "siglip"])
def dual(request):
    return tiny_dual_model_and_processor(request.param)


@pytest.fixture(scope="module")
def images():
    return tiny_images("llava", n=4)


def test_decomposition_is_exact_with_per_token_heads(dual, images):
    d = decompose(dual, images, per_token=True, batch_size=3)
    assert d.error() < 1e-4 and d.embedding.abs().max() > 0.1
    assert d.contributions.shape[:2] == (4, len(d.names)) and f"L1.H{d.n_heads - 1}" in d.names and "L0.mlp" in d.names
    # every head's per-token terms add up to the head's contribution
    for layer in range(d.n_layers):
        for h in range(d.n_heads):
            assert torch.allclose(d.tokens[:, layer, h].sum(1), d.contributions[:, d.head(layer, h)], atol=1e-5)
    maps = head_maps(d, d.embedding[0], [(1, 0), (1, d.n_heads - 1)])
    assert maps.shape == (4, 2, 4, 4)
    direct = (d.tokens[:, 1, 0, d.cls:] @ (d.embedding[0] / d.embedding[0].norm())).reshape(4, 4, 4)
    assert torch.allclose(maps[:, 0], direct, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_mllm_vision_tower_decomposition_is_exact(family):
    s = tiny_subject(family)
    d = decompose(s, tiny_images(family, n=1))
    assert d.error() < 1e-4 and d.embedding.abs().max() > 0
    assert d.names[0] == "embed" and any(n.endswith(".mlp") for n in d.names) and d.notes
    with pytest.raises(InputError, match="no text encoder|has none"):
        splice(s, tiny_images(family, n=2), ["red", "blue"])


def test_text_methods_refuse_on_mllm_in_one_line():
    s = tiny_subject("llava")
    for call in (lambda: text_bank(s, ["red", "blue"]), lambda: class_embeddings(s, ["red", "blue"])):
        with pytest.raises(InputError) as err:
            call()
        assert "\n" not in str(err.value) and "decompose" in str(err.value)


def _planted(n: int = 60, seed: int = 0) -> tuple[Decomposition, torch.Tensor, list[int]]:
    """Head L0.H0 carries the class (along axis 0 / 1), head L0.H1 only noise along axis 2."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    c = torch.zeros(n, 4, 4)
    c[:, 0] = torch.tensor([0.0, 0.0, 0.0, 1.0])  # embed: constant
    c[:, 1, 0] = labels.float() * 2 - 1
    c[:, 1, 1] = 1 - 2 * labels.float()
    c[:, 2, 2] = torch.randn(n, generator=g) * 3
    c[:, 3, 3] = 0.1
    dec = Decomposition(["embed", "L0.H0", "L0.H1", "L0.mlp"], c, c.sum(1), 1, 2)
    classes = torch.tensor([[-1.0, 1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0]])
    return dec, classes / classes.norm(dim=-1, keepdim=True), labels.tolist()


def test_mean_ablation_finds_the_head_that_carries_the_class():
    dec, classes, labels = _planted()
    out = ablation_curves(dec, classes, labels)
    assert out["accuracy"] == 1.0
    assert out["head_drop"][0][0] > 0.3 and out["head_drop"][0][1] == 0.0
    assert out["curves"]["attn"][0] == 1.0 and out["curves"]["attn"][1] < 0.7 and out["curves"]["mlp"][1] == 1.0
    assert group_drop(dec, [(0, 0)], classes, labels)["drop"] > 0.3


def test_text_spans_pick_the_planted_directions_then_categorize():
    dec, _, _ = _planted()
    bank = TextBank(["red thing", "blue thing", "circle", "square"], torch.eye(4))
    spans = text_spans(dec, bank, n_texts=2)
    first = {(s.layer, s.head): s.texts[0][0] for s in spans}
    assert first[(0, 0)] in ("red thing", "blue thing") and first[(0, 1)] == "circle"
    assert abs(sum(v for _, v in spans[1].texts) - 1.0) < 1e-6  # one direction explains all of H1's variance
    labels = categorize(spans, {"color": ["red", "blue"], "shape": ["circle", "square"]}, top=1)
    assert labels == {(0, 0): "color", (0, 1): "shape"}


def test_text_spans_on_a_real_tiny_model(dual, images):
    d = decompose(dual, images)
    bank = text_bank(dual, iter(["red", "blue", "green circle", "a square", "triangle"]), chunk=2)
    assert bank.embeddings.shape[0] == 5 and torch.allclose(bank.embeddings.norm(dim=-1), torch.ones(5), atol=1e-5)
    spans = text_spans(d, bank, n_texts=3, heads=[(1, 0)])
    assert len(spans[0].texts) == 3 and len({t for t, _ in spans[0].texts}) == 3
    assert 0.0 <= sum(v for _, v in spans[0].texts) <= 1.0 + 1e-6


def test_text_bank_over_the_memory_limit_is_one_clear_line(dual):
    for texts in (["red"] * 50, (w for w in ["red"] * 50)):
        with pytest.raises(InputError, match="over the .* MB limit") as err:
            text_bank(dual, texts, chunk=8, max_mb=0.001)
        assert "\n" not in str(err.value)


def test_nonneg_lasso_recovers_a_planted_sparse_code():
    g = torch.Generator().manual_seed(1)
    atoms = torch.randn(12, 64, generator=g)
    atoms = atoms / atoms.norm(dim=-1, keepdim=True)
    w = torch.zeros(2, 12)
    w[0, [1, 5]] = torch.tensor([1.0, 0.5])
    w[1, [7]] = 2.0
    got = nonneg_lasso(atoms, w @ atoms, l1=1e-4, steps=3000)
    assert (got >= 0).all() and torch.allclose(got, w, atol=0.03)


def test_splice_weights_sparsity_and_cosine(dual, images):
    vocab = ["red", "blue", "green", "circle", "square", "triangle"]
    dense = splice(dual, images, vocab, l1=1e-4)
    sparse = splice(dual, images, vocab, l1=0.05)
    assert all(w > 0 for r in dense for _, w in r.concepts)
    assert sum(len(r.concepts) for r in sparse) < sum(len(r.concepts) for r in dense)
    assert all(-1 <= r.cosine <= 1 for r in dense) and min(r.cosine for r in dense) > max(r.cosine for r in sparse) - 1


def test_modality_gap_and_shift_curve(dual, images):
    t = tower(dual)
    img, txt = t.encode_images(images), t.encode_texts(["red circle", "blue square", "green triangle", "red square"])
    classes = class_embeddings(t, [["red circle", "red square"], ["blue square"]])
    out = modality_gap(img, txt, classes, [0, 1, 0, 1], shifts=[0.0, 1.0])
    n = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    assert abs(out["gap_norm"] - float((n(img).mean(0) - n(txt).mean(0)).norm())) < 1e-6
    assert len(out["accuracy"]) == 2 and all(0 <= a <= 1 for a in out["accuracy"])


def test_concept_bottleneck_is_sparse_and_explains_with_the_right_concept():
    g = torch.Generator().manual_seed(0)
    concepts = torch.eye(6, 8)
    labels = torch.randint(0, 3, (150,), generator=g)
    emb = torch.randn(150, 8, generator=g) * 0.3 + concepts[labels] * 2  # class k lies along concept k
    cbm = train_cbm(emb, labels.tolist(), ["a", "b", "c"], [f"c{i}" for i in range(6)], concepts, l1=0.05)
    assert (cbm.predict(emb) == labels).float().mean() > 0.95
    assert cbm.sparsity()["nonzero_total"] < 18
    top = cbm.explain(emb[:10], top=1)
    assert all(e["concepts"][0]["concept"] == f"c{'abc'.index(e['prediction'])}" for e in top)


@pytest.mark.parametrize("bad,match", [([], "0 distinct"), (["red"], "1 distinct"), (["red", " red "], "1 distinct"),
                                       ("red blue", "must be a list"), (["red", ""], "non-empty")])
def test_bad_vocabularies(bad, match):
    with pytest.raises(InputError, match=match):
        check_vocabulary(bad)


@pytest.mark.parametrize("l1", [0, -0.1])
def test_bad_l1(dual, images, l1):
    with pytest.raises(InputError, match="l1="):
        splice(dual, images, ["red", "blue"], l1=l1)
    with pytest.raises(InputError, match="l1="):
        train_cbm(torch.randn(4, 3), [0, 1, 0, 1], ["a", "b"], ["x", "y"], torch.eye(2, 3), l1=l1)
