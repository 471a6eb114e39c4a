"""Heads, neurons, token pruning and dataset runs on tiny subjects."""

import pytest
import torch

import mmlens
from mmlens import InputError
from mmlens.core.targets import resolve_targets
from mmlens.layer.heads import head_ablation, head_image_share
from mmlens.neuron.dataset import neuron_specificity, top_activating_patches
from mmlens.neuron.scores import ablate_neurons, mlp_width, neuron_scores
from mmlens.testing.tiny_models import tiny_images
from mmlens.token.pruning import dataset_pruning_curve, pruning_curve


def _batch(subject, images):
    return subject.prepare(images, "what color is the cat?", answer="red cat")


def test_head_image_share_matches_captured_weights(subject, images):
    batch = _batch(subject, images)
    grid = head_image_share(subject, batch)
    target = resolve_targets(subject.tokenizer, batch, "answer")[0]
    rows = target.query_positions(batch)
    with subject.trace() as tr:
        tr.capture_attention("lm.blocks.0.attn.weights", rows=rows)
        subject.forward(batch)
    ref = tr["lm.blocks.0.attn.weights"][0][:, :, batch.image_positions()].sum(-1).mean(-1)
    torch.testing.assert_close(grid.values[0], ref)
    assert ((grid.values >= 0) & (grid.values <= 1 + 1e-6)).all()


def test_head_ablation_rows_equal_single_ablations(subject, images):
    batch = _batch(subject, images[:1])
    grid = head_ablation(subject, batch)
    n_heads = grid.values.shape[1]
    target = resolve_targets(subject.tokenizer, batch, "answer")[0]
    head = n_heads - 1

    def zero_last(h):
        h = h.clone()
        width = h.shape[-1] // n_heads
        h[..., head * width :] = 0
        return h

    with torch.no_grad(), subject.trace() as tr:
        tr.edit("lm.blocks.0.attn.heads", zero_last)
        single = float(target.value(subject.forward(batch), batch).exp())
    assert grid.values[0, head] + grid.meta["p_clean"] == pytest.approx(single, rel=1e-4, abs=1e-10)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_neuron_scores_first_order_and_ablation(subject, images):
    batch = _batch(subject, images[:1])
    ns = neuron_scores(subject, batch)
    assert ns.scores.shape == (subject.n_layers, mlp_width(subject))
    # act x grad predicts the first-order change of log p when a neuron is zeroed
    layer, index, score = ns.top(1)[0]
    target = resolve_targets(subject.tokenizer, batch, "answer")[0]
    with torch.no_grad():
        lp = float(target.value(subject.forward(batch), batch))
    with torch.no_grad(), subject.trace() as tr:
        tr.ablate(f"lm.blocks.{layer}.mlp.act", units=[index])
        lp_ablated = float(target.value(subject.forward(batch), batch))
    assert lp - lp_ablated == pytest.approx(score, rel=0.2, abs=1e-5)
    out = ablate_neurons(subject, batch, [(layer, index)])
    assert out["delta"] < 0
    assert mmlens.count_hooks(subject.model) == 0
    dla = neuron_scores(subject, batch, method="dla")
    assert torch.isfinite(dla.scores).all()


def test_pruning_curve_end_points(subject, images):
    batch = _batch(subject, images[:1])
    curve = pruning_curve(subject, batch, ratios=(0.0, 0.5, 1.0), after_layer=1)
    target = resolve_targets(subject.tokenizer, batch, "answer")[0]
    with torch.no_grad():
        p = float(target.value(subject.forward(batch), batch).exp())
    assert curve.prob[0] == pytest.approx(p, rel=1e-4)  # nothing pruned = the plain model
    image = batch.image_positions()
    with torch.no_grad(), subject.trace() as tr:
        tr.block_attention("lm.blocks.1.attn.weights", torch.arange(batch.seq_len), image)
        p_all = float(target.value(subject.forward(batch), batch).exp())
    assert curve.prob[-1] == pytest.approx(p_all, rel=1e-4)


def test_dataset_runs_stream(tmp_path):
    subject = mmlens.testing.tiny_subject("llava")
    samples = [(im, "what color is the cat?", "red") for im in tiny_images("llava", 4)]
    hits = top_activating_patches(subject, samples, layer=1, neuron=3, k=5)
    assert len(hits) == 5 and all(a.activation >= b.activation for a, b in zip(hits, hits[1:]))
    spec = neuron_specificity(subject, samples, layer=0)
    assert spec.tokens["image"] == 4 * 16
    assert ((spec.entropy >= 0) & (spec.entropy <= torch.log(torch.tensor(2.0)) + 1e-6)).all()
    curve = dataset_pruning_curve(subject, samples, ratios=(0.0, 1.0), after_layer=1)
    assert curve.meta["samples"] == 4 and len(curve.prob) == 2
    curve.save(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_bad_input():
    subject = mmlens.testing.tiny_subject("llava")
    batch = _batch(subject, tiny_images("llava"))
    width = mlp_width(subject)
    with pytest.raises(InputError, match="beyond the MLP width"):
        ablate_neurons(subject, batch, [(0, width)])
    with pytest.raises(InputError, match="out of range"):
        head_ablation(subject, batch, layers=[5])
    with pytest.raises(InputError, match="ratios"):
        pruning_curve(subject, batch, ratios=(1.5,), after_layer=1)
