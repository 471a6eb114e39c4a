"""The randomisation sanity check (Adebayo et al.): the cascade follows what the model reads, correlations are
computed exactly, seeds and weights are restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import lazy_metric, subject_for

import mmlens
import mmlens.catalog as registry
from mmlens.data.shapes_vqa import ShapesVQA
from mmlens.demo import DEMO_MODEL_DIR
from mmlens.evaluation.baselines import (
    baseline_explanation,
    reexplain,
)
from mmlens.testing import tiny_subject
from mmlens.testing.tiny_dual import DUAL_FAMILIES, tiny_dual_subject
from mmlens.testing.tiny_models import FAMILIES, tiny_images
from mmlens.evaluation.metrics.randomisation import randomise_block, restored_weights

PROMPT = "what color is the square ?"

cascade_blocks, randomisation = (lazy_metric("randomisation", f) for f in ("cascade_blocks", "randomisation"))




def _snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _same(model, snap):
    return all(torch.equal(p, snap[name]) for name, p in model.named_parameters())


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "paligemma"])
def test_randomisation_cascade_follows_what_the_model_reads(family):
    """Every cascade step changes the model's output (no step randomises something the LM never reads), the
    vision block left out is provably unread (randomising it changes nothing), and the embeddings and the
    unembedding are steps (one step when tied, as in PaliGemma)."""
    from mmlens.evaluation.metrics.randomisation import (
        randomise_block,
        restored_weights,
        unread_vision_blocks,
    )

    lm = tiny_subject(family)
    batch = lm.prepare(ShapesVQA(image_size=32, seed=0).sample(1).image, PROMPT, answer="red")
    blocks = cascade_blocks(lm)
    names = [name for name, _ in blocks]
    vision = [f"vision.blocks.{i}" for i in range(len(lm.adapter.parts().vision_blocks))]
    unread = ["vision.blocks.1"] if family == "llava" else []  # tiny LLaVA: vision_feature_layer=-2 of 2 blocks
    assert unread_vision_blocks(lm) == unread
    top = "lm.unembed+embed" if family == "paligemma" else "lm.unembed"
    embed = [] if family == "paligemma" else ["lm.embed"]
    assert names == [top, "lm.blocks.1", "lm.blocks.0", *embed, "projector",
                     *[v for v in reversed(vision) if v not in unread], "vision.embed"]
    snap = _snapshot(lm.model)
    with torch.no_grad():
        before = lm.forward(batch)
        with restored_weights(lm.model) as saved:
            for name in unread:
                randomise_block(lm.adapter.parts().vision_blocks[int(name.split(".")[-1])], saved, 7)
            assert torch.equal(lm.forward(batch), before)  # unread: no effect at all
        with restored_weights(lm.model) as saved:
            for step, (name, block) in enumerate(blocks):
                randomise_block(block, saved, step)
                after = lm.forward(batch)
                assert (after - before).abs().max() > 1e-4, name  # each step changes what the model computes
                before = after
    assert _same(lm.model, snap)


def _tiny(family):
    return tiny_dual_subject(family) if family in DUAL_FAMILIES else subject_for(family)


@pytest.mark.parametrize("family", [*FAMILIES, *DUAL_FAMILIES])
def test_the_vision_embed_step_resets_every_weight_the_first_vision_block_reads(family):
    """Perturb each weight that is in no cascade step: the first vision block's input must not move (Mllama's
    patch / class / positional embeddings before ``layernorm_pre``, CLIP's ``pre_layrnorm`` after its
    embeddings, Qwen3-VL's learned position embedding were such weights)."""
    lm = _tiny(family)
    images = tiny_images(family if family in FAMILIES else "llava", n=1)
    batch = lm.prepare(images, PROMPT)
    in_steps = {id(p) for _, block in cascade_blocks(lm) for p in block.parameters()}
    parts = lm.adapter.parts()

    def block0_input() -> torch.Tensor:
        got = []

        def keep(module, args, kwargs):
            got.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

        handle = parts.vision_blocks[0].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            with torch.no_grad():
                lm.forward(batch)
        finally:
            handle.remove()
        return torch.cat([g.flatten() for g in got])

    clean = block0_input()
    moved = []
    for name, p in lm.model.named_parameters():
        if id(p) in in_steps or not p.is_floating_point():
            continue
        with torch.no_grad():
            saved = p.detach().clone()
            p.add_(torch.randn_like(p) * (p.std() if p.numel() > 1 else 1.0) + 0.5)
            try:
                if not torch.equal(block0_input(), clean):
                    moved.append(name)
            finally:
                p.copy_(saved)
    assert moved == [], f"{family}: weights before vision block 0 that no randomisation step resets: {moved}"
    assert parts.vision_blocks is not None


@pytest.mark.parametrize("family", DUAL_FAMILIES)
def test_dual_encoder_cascade_covers_every_weight_once_and_each_step_moves_the_similarity(family):
    lm = tiny_dual_subject(family)
    batch = lm.prepare(tiny_images("llava")[0], "a red square", answer="<match>")
    blocks = cascade_blocks(lm)
    assert [n for n, _ in blocks] == ["heads", "vision.blocks.1+text.blocks.1", "vision.blocks.0+text.blocks.0",
                                      "vision.embed+text.embed"]
    ids = [id(p) for _, b in blocks for p in b.parameters()]
    assert sorted(ids) == sorted(id(p) for p in lm.model.parameters())  # every weight, each in one step
    snap = _snapshot(lm.model)
    with torch.no_grad(), restored_weights(lm.model) as saved:
        before = lm.forward(batch)
        for step, (name, block) in enumerate(blocks):
            randomise_block(block, saved, step)
            after = lm.forward(batch)
            assert (after - before).abs().max() > 1e-4, name
            before = after
    assert _same(lm.model, snap)
    ex = mmlens.explain(lm, tiny_images("llava")[0], "a red square", method="saliency")
    score = randomisation(lm, ex)
    assert len(score.correlations) == 4 and all(np.isfinite(score.correlations)) and _same(lm.model, snap)


def test_randomisation_correlations_equal_an_independent_computation():
    """A test method whose map is ``x`` while vision block 0 is intact and a fixed permutation of ``x`` once
    it is randomised: the correlation is exactly 1 before that step and Spearman(map(x), map(perm)) from it
    on, computed here with scipy on the pixel maps; the check passes because that value is below 0.5."""
    from scipy.stats import spearmanr

    lm = tiny_subject("llava")
    probe = lm.adapter.parts().vision_blocks[0].mlp.fc1.weight
    original = probe.detach().clone()
    perm = torch.from_numpy(np.random.default_rng(0).permutation(64)).float() + 1

    @registry.register_method("_test_weight_probe", "data/input-output", "black-box", "test only")
    def _probe(subject, batch, targets):
        scores = torch.zeros(len(targets), batch.seq_len)
        image = batch.image_positions()
        values = torch.arange(1.0, image.numel() + 1) if torch.equal(probe, original) else perm[: image.numel()]
        scores[:, image] = values
        return mmlens.attribution.output.MethodOutput(scores)

    try:
        img = ShapesVQA(image_size=32, seed=0).sample(2).image
        ex = mmlens.explain(lm, img, PROMPT, method="_test_weight_probe", target="answer", answer="red")
        out = randomisation(lm, ex)
        # the map the method gives once the probe block is random, built without the cascade
        with torch.no_grad():
            probe.add_(1.0)
            random_map = mmlens.explain(lm, img, PROMPT, method="_test_weight_probe", target="answer",
                                        answer="red").image_map()
            probe.copy_(original)
    finally:
        registry._REGISTRY.pop("_test_weight_probe", None)
    rho = float(spearmanr(np.abs(ex.image_map()).ravel(), np.abs(random_map).ravel()).statistic)
    k = out.steps.index("vision.blocks.0")
    np.testing.assert_allclose(out.correlations, [1.0] * k + [rho] * (len(out.steps) - k), atol=1e-12)
    assert abs(rho) < 0.5 and out.passed and out.final == pytest.approx(rho)


def test_randomisation_is_seeded_and_restores_the_map():
    lm = tiny_subject("llava")
    img = ShapesVQA(image_size=32, seed=0).sample(1).image
    ex = mmlens.explain(lm, img, PROMPT, method="gradcam", target="answer", answer="red")
    snap = _snapshot(lm.model)
    out = randomisation(lm, ex, max_steps=3)
    assert _same(lm.model, snap) and out.steps == ["lm.unembed", "lm.blocks.1", "lm.blocks.0"]
    # the same call gives the same numbers (seeded re-initialisation) and the map is unchanged afterwards
    assert randomisation(lm, ex, max_steps=3).correlations == out.correlations
    np.testing.assert_array_equal(reexplain(lm, ex).image_map(), ex.image_map())


def test_randomisation_restores_weights_when_the_method_raises():
    lm = tiny_subject("llava")
    calls = {"n": 0}

    @registry.register_method("_test_raises_on_second_call", "data/input-output", "black-box", "test only")
    def _raises(subject, batch, targets):
        calls["n"] += 1
        if calls["n"] > 2:  # the original explanation, one randomised step, then a failure mid-cascade
            raise RuntimeError("boom")
        return mmlens.attribution.output.MethodOutput(torch.rand(len(targets), batch.seq_len))

    try:
        img = ShapesVQA(image_size=32, seed=0).sample(2).image
        ex = mmlens.explain(lm, img, PROMPT, method="_test_raises_on_second_call", target="answer", answer="red")
        snap = _snapshot(lm.model)
        with pytest.raises(RuntimeError, match="boom"):
            randomisation(lm, ex)
        assert calls["n"] == 3
        assert _same(lm.model, snap)
    finally:
        registry._REGISTRY.pop("_test_raises_on_second_call", None)


def test_baseline_maps_fail_the_sanity_check():
    lm = subject_for("llava")
    batch = lm.prepare(ShapesVQA(image_size=32, seed=0).sample(0).image, PROMPT, answer="red")
    out = randomisation(lm, baseline_explanation(lm, batch, "random", seed=3), max_steps=2)
    assert out.correlations == [1.0, 1.0] and not out.passed


@pytest.mark.skipif(not (DEMO_MODEL_DIR / "config.json").is_file(),
                    reason="the trained demo model is not in src/mmlens/demo/model yet (python -m mmlens.demo.train)")
def test_demo_gradient_maps_decorrelate_under_randomisation():
    lm = mmlens.load("demo")
    s = ShapesVQA(image_size=64, seed=0).sample(0)
    snap = _snapshot(lm.model)
    for method in ("input_x_gradient", "integrated_gradients"):
        ex = mmlens.explain(lm, s.image, s.question, method=method, target="answer", answer=s.answer)
        out = randomisation(lm, ex)
        # measured on the shipped model: final correlation -0.09 (input x gradient) and 0.16 (IG)
        assert out.passed and out.final < 0.4, (method, out.correlations)
    assert _same(lm.model, snap)
