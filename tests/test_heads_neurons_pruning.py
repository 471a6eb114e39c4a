"""Heads, neurons, token pruning and dataset runs on tiny subjects."""

import copy

import numpy as np
import pytest
import torch

import mmlens
from mmlens import InputError
from mmlens.layer.heads import head_ablation, head_image_share
from mmlens.model.targets import resolve_targets
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


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_dla_is_the_derivative_along_the_neurons_direct_write(subject, images):
    """DLA of neuron (layer, i) = d target / d lambda when lambda x (its write act_i x W_down[:, i], at the
    target's query positions) is added to the last block's output, i.e. the direct path that skips the later
    layers. Checked by a central finite difference of real forwards, for the top and the bottom neuron."""
    batch = _batch(subject, images[:1])
    dla = neuron_scores(subject, batch, method="dla")
    target = resolve_targets(subject.tokenizer, batch, "answer")[0]
    q = target.query_positions(batch)
    last, parts = subject.n_layers - 1, subject.adapter.parts()
    with torch.no_grad(), subject.trace() as tr:
        tr.capture("lm.blocks.*.mlp.act")
        subject.forward(batch)
    flat = dla.scores.flatten()
    width = dla.scores.shape[1]
    picks = [int(flat.argmax()), int(flat.argmin())]
    for pick in picks:
        layer, index = dla.layers[pick // width], pick % width
        act = tr[f"lm.blocks.{layer}.mlp.act"][0, q, index]  # (k,)
        down = getattr(parts.lm_blocks[layer], parts.lm_mlp).down_proj.weight[:, index].detach()  # (d,)
        write = act[:, None] * down[None, :]  # what the neuron adds to the residual stream at q

        def value(lam, write=write):
            def add(h):
                h = h.clone()
                h[0, q] += lam * write.to(h.dtype)
                return h

            with torch.no_grad(), subject.trace() as edit:
                edit.edit(f"lm.blocks.{last}.resid_post", add)
                return float(target.value(subject.forward(batch), batch).double())

        eps = 1e-2
        derivative = (value(eps) - value(-eps)) / (2 * eps)
        score = float(dla.scores.flatten()[pick])
        assert score == pytest.approx(derivative, rel=2e-2, abs=1e-4), (layer, index)
    assert float(flat.max()) > 0 > float(flat.min())


def _deep_llava(n_layers: int = 4):
    """The tiny LLaVA with a ``n_layers``-block language model (so pruning after layer 1 has later layers)."""
    from transformers import LlavaForConditionalGeneration

    from mmlens.model.subject import Subject
    from mmlens.testing.tiny_models import tiny_model_and_processor

    model, processor = tiny_model_and_processor("llava")
    config = copy.deepcopy(model.config)
    config.text_config.num_hidden_layers = n_layers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        deep = LlavaForConditionalGeneration(config).float().eval()
    return Subject(deep, processor, model_id=f"tiny-llava-{n_layers}-layers")


@torch.no_grad()
def _dropped_tokens_prob(subject, batch, after_layer: int, pruned: torch.Tensor) -> float:
    """FastV done literally: run the layers below ``after_layer`` on the full sequence, drop the pruned tokens
    from the hidden states, run the remaining layers (transformers' own LlamaModel, original position ids) on
    the shorter sequence, and score the answer."""
    model = subject.model
    lm = model.model.language_model
    hidden = model(**subject.model_inputs(batch), output_hidden_states=True, use_cache=False).hidden_states
    keep = torch.tensor([p for p in range(batch.seq_len) if p not in set(pruned.tolist())])
    layers = lm.layers
    try:
        lm.layers = torch.nn.ModuleList(list(layers)[after_layer:])
        # an explicit mask: without one, transformers reads gaps in position_ids as packed-sequence boundaries
        out = lm(inputs_embeds=hidden[after_layer][:, keep], position_ids=keep[None],
                 attention_mask=torch.ones(1, keep.numel(), dtype=torch.long), use_cache=False)
    finally:
        lm.layers = layers
    logp = model.lm_head(out.last_hidden_state)[0].log_softmax(-1)
    where = {int(p): i for i, p in enumerate(keep)}
    total = sum(float(logp[where[int(a) - 1], int(t)]) for a, t in zip(batch.answer_positions, batch.answer_ids))
    return float(np.exp(total))


def test_pruning_curve_equals_dropping_the_tokens_fastv_style():
    subject = _deep_llava(4)
    batch = _batch(subject, tiny_images("llava")[:1])
    image = batch.image_positions()
    scores = torch.zeros(batch.seq_len)
    scores[image] = torch.from_numpy(np.random.default_rng(0).permutation(image.numel())).float()
    order = image[scores[image].argsort()]  # least important first
    ratios = (0.0, 0.25, 0.5, 0.75, 1.0)
    checked = 0
    for after_layer in (1, 2, 3):  # 1 and 2 run the later-layer blocking (layers 2-3, 3)
        curve = pruning_curve(subject, batch, ratios=ratios, scores=scores, after_layer=after_layer)
        want = [_dropped_tokens_prob(subject, batch, after_layer, order[: round(r * image.numel())])
                for r in ratios]
        np.testing.assert_allclose(curve.prob, want, rtol=1e-4)
        checked += len(set(np.round(want, 6)))
    assert checked > 6  # the curves move: dropping tokens changes the answer's probability
    # every ratio in one batched forward (plus one for the FastV ranking), counted with a forward hook
    calls = []
    handle = subject.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        pruning_curve(subject, batch, ratios=ratios, scores=scores, after_layer=1)
        given = len(calls)
        fastv = pruning_curve(subject, batch, ratios=ratios, after_layer=1)
    finally:
        handle.remove()
    assert (given, len(calls) - given) == (1, 2) and fastv.meta["forward_calls"] == 2
    # nothing pruned = the plain model
    target = resolve_targets(subject.tokenizer, batch, "answer")[0]
    with torch.no_grad():
        assert curve.prob[0] == pytest.approx(float(target.value(subject.forward(batch), batch).exp()), rel=1e-4)


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
