"""Gradient-tier methods: IG completeness and Captum parity, autograd references, model state restored."""

import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
from conftest import subject_for

import mmlens
from mmlens import InputError, count_hooks
from mmlens.attribution.captum_gradients import (
    attributed_positions,
    baseline_embeddings,
    baseline_token_id,
    embedding_function,
    input_embeddings,
    integrated_gradients,
    smoothgrad,
)
from mmlens.attribution.gradient import gradcam, input_x_gradient, saliency
from mmlens.attribution.relevancy import attention_x_gradient, relevancy, relevancy_rows
from mmlens.model.targets import resolve_targets
from mmlens.testing.tiny_models import FAMILIES, tiny_images

PROMPT = "what color is the cat?"


def setup(family, answer="red cat", target=None, n_images=1):
    subject = subject_for(family)
    batch = subject.prepare(tiny_images(family, n=n_images), PROMPT, answer=answer)
    return subject, batch, resolve_targets(subject.tokenizer, batch, target)


def reference_input_grads(subject, batch, targets):
    """d target / d (LM input embeddings), by plain autograd on a captured, grad-retaining tensor."""
    out = []
    for target in targets:
        with subject.trace() as tr:
            tr.capture("lm.blocks.0.resid_pre", reduce=lambda t: (t.retain_grad(), t)[1], detach=False)
            logits = subject.forward(batch)
        x = tr["lm.blocks.0.resid_pre"]
        target.value(logits, batch).sum().backward()
        out.append((x.detach()[0], x.grad[0]))
    subject.model.zero_grad(set_to_none=True)
    return out


# -- Integrated Gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, baseline", [(f, ("black", "blur", "noise")[i % 3]) for i, f in enumerate(FAMILIES)]  # every baseline
)
def test_integrated_gradients_equals_direct_captum_call_and_is_complete(family, baseline):
    subject, batch, targets = setup(family)
    steps, ibs = 32, 32
    torch.manual_seed(0)  # the noise baseline draws from torch's generator
    out = integrated_gradients(subject, batch, targets, steps=steps, baseline=baseline, internal_batch_size=ibs)
    positions = attributed_positions(batch, "image")
    x = input_embeddings(subject, batch)[:, positions]
    torch.manual_seed(0)
    base = baseline_embeddings(subject, batch, positions, baseline)
    assert not torch.equal(base, x)
    others = torch.ones(batch.seq_len, dtype=torch.bool)
    others[positions] = False
    for t, target in enumerate(targets):
        f = embedding_function(subject, batch, target, positions)
        attr, delta = IntegratedGradients(f).attribute(x, baselines=base, n_steps=steps, internal_batch_size=ibs,
                                                       return_convergence_delta=True)
        torch.testing.assert_close(out.position_scores[t, positions], attr[0].sum(-1), atol=1e-5, rtol=0)
        assert out.extras["convergence_delta"][t] == pytest.approx(float(delta), abs=1e-5)
        # completeness: the scores sum to f(input) - f(baseline)
        with torch.no_grad():
            gap = float(f(x) - f(base))
        assert float(out.position_scores[t].sum()) == pytest.approx(gap, abs=1e-4 + 0.02 * abs(gap))
        assert out.position_scores[t, others].abs().max() == 0  # nothing outside the image positions


def test_integrated_gradients_without_the_convergence_delta_gives_the_same_scores():
    subject, batch, targets = setup("qwen2_vl")
    rows, outs = {}, {}
    for delta in (True, False):
        rows[delta] = []
        with subject.trace() as tr:  # the rows that run the LM's first block: the path's (8) and the delta's (2)
            tr.capture("lm.blocks.0.resid_post", reduce=lambda t, d=delta: rows[d].append(t.shape[0]) or t[:0])
            outs[delta] = integrated_gradients(subject, batch, targets, steps=8, convergence_delta=delta)
    assert rows == {True: [8, 2], False: [8]}
    full, fast = outs[True], outs[False]
    assert "convergence_delta" in full.extras and "convergence_delta" not in fast.extras
    torch.testing.assert_close(fast.position_scores, full.position_scores, atol=0, rtol=0)


@pytest.mark.parametrize("baseline, steps", [("black", 32), ("zero", 128)])
def test_integrated_gradients_over_text_and_both_modalities(baseline, steps):
    subject, batch, targets = setup("llava", answer="red")
    opts = {"steps": steps, "internal_batch_size": steps, "baseline": baseline}
    text = integrated_gradients(subject, batch, targets, modality="text", **opts).position_scores[0]
    both = integrated_gradients(subject, batch, targets, modality="both", **opts).position_scores[0]
    assert text[batch.image_positions()].abs().max() == 0 and text[batch.text_positions()].abs().max() > 0
    assert both[batch.image_positions()].abs().max() > 0 and both[batch.text_positions()].abs().max() > 0
    for scores, modality in ((text, "text"), (both, "both")):
        positions = attributed_positions(batch, modality)
        f = embedding_function(subject, batch, targets[0], positions)
        x = input_embeddings(subject, batch)[:, positions]
        with torch.no_grad():
            gap = float(f(x) - f(baseline_embeddings(subject, batch, positions, baseline)))
        assert float(scores.sum()) == pytest.approx(gap, abs=1e-4 + 0.02 * abs(gap))


def test_black_baseline_is_the_embedding_of_a_black_image():
    from PIL import Image

    subject, batch, _ = setup("llava")
    positions = batch.image_positions()
    base = baseline_embeddings(subject, batch, positions, "black")
    black = subject.prepare([Image.new("RGB", im.size) for im in batch.images], PROMPT)
    torch.testing.assert_close(base, input_embeddings(subject, black)[:, positions])
    assert base.abs().max() > 0
    # text positions: the unk token's embedding (as the model embeds it), not zeros (pad's row is zero here)
    text = batch.text_positions()
    assert baseline_token_id(subject) == subject.tokenizer.unk_token_id
    unk = baseline_embeddings(subject, batch, text, "black")[0]
    emb = subject.model.get_input_embeddings().weight[subject.tokenizer.unk_token_id]
    torch.testing.assert_close(unk, emb.detach().expand_as(unk))
    assert unk.abs().max() > 0
    assert baseline_embeddings(subject, batch, text, "zero").abs().max() == 0


# -- saliency family ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_saliency_input_x_gradient_gradcam_match_autograd(family):
    subject, batch, targets = setup(family)
    sal = saliency(subject, batch, targets).position_scores
    ixg = input_x_gradient(subject, batch, targets).position_scores
    cam = gradcam(subject, batch, targets).position_scores
    for t, (x, g) in enumerate(reference_input_grads(subject, batch, targets)):
        torch.testing.assert_close(sal[t], g.norm(dim=-1), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(ixg[t], (g * x).sum(-1), atol=1e-6, rtol=1e-5)
        pos = batch.geometry[0].positions
        torch.testing.assert_close(cam[t, pos], torch.relu(x[pos] @ g[pos].mean(0)), atol=1e-6, rtol=1e-5)
        assert cam[t, batch.text_positions()].abs().max() == 0


def test_smoothgrad_equals_direct_noise_tunnel_call():
    subject, batch, targets = setup("llava", answer="red")
    torch.manual_seed(3)
    out = smoothgrad(subject, batch, targets, nt_samples=4, stdevs=0.2, internal_batch_size=2)
    positions = attributed_positions(batch, "image")
    x = input_embeddings(subject, batch)[:, positions]
    torch.manual_seed(3)
    nt = NoiseTunnel(Saliency(embedding_function(subject, batch, targets[0], positions)))
    attr = nt.attribute(x, nt_type="smoothgrad", nt_samples=4, nt_samples_batch_size=2, stdevs=0.2 * float(x.std()))
    torch.testing.assert_close(out.position_scores[0, positions], attr[0].norm(dim=-1), atol=1e-6, rtol=1e-5)


# -- attention x gradient, relevancy ----------------------------------------------------------------------------


def eager_attention_grads(subject, batch, target):
    """Every layer's (heads, N, N) attention and d target / d attention, from a plain eager forward."""
    impl = subject.model.config._attn_implementation
    subject.model.set_attn_implementation("eager")
    try:
        out = subject.model(**subject.model_inputs(batch), output_attentions=True, use_cache=False)
        grads = torch.autograd.grad(target.value(out.logits, batch).sum(), out.attentions)
    finally:
        subject.model.set_attn_implementation(impl)
    return [a.detach()[0] for a in out.attentions], [g[0] for g in grads]


def test_relevancy_rows_equal_full_matrix_recursion():
    g = torch.Generator().manual_seed(1)
    n = 6
    stack = [torch.rand(n, n, generator=g) * 0.3 for _ in range(3)]
    r = torch.eye(n)
    for b in stack:
        r = r + b @ r
    rows = [5, 1]
    torch.testing.assert_close(relevancy_rows(stack, rows), r[rows], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ["llava", "paligemma", "qwen2_vl"])
def test_attention_x_gradient_and_relevancy_match_eager_reference(family):
    subject, batch, targets = setup(family)
    axg = attention_x_gradient(subject, batch, targets).position_scores
    rel = relevancy(subject, batch, targets, objective="log_prob").position_scores  # the reference's target
    n = batch.seq_len
    for t, target in enumerate(targets):
        q = target.query_positions(batch)
        attns, grads = eager_attention_grads(subject, batch, target)
        cams = [(g * a).clamp_min(0).mean(0) for a, g in zip(attns, grads)]  # (N, N) per layer
        torch.testing.assert_close(axg[t], torch.stack([c[q] for c in cams]).mean(0).mean(0), atol=1e-6, rtol=1e-4)
        r = torch.eye(n)
        for c in cams:
            r = r + c @ r
        expected = (r - torch.eye(n))[q].mean(0)
        torch.testing.assert_close(rel[t], expected, atol=1e-6, rtol=1e-4)
        assert rel[t].abs().max() > 0


def test_gradient_methods_restore_the_model():
    subject, batch, targets = setup("llava")
    impl = subject.model.config._attn_implementation
    before = [p.requires_grad for p in subject.model.parameters()]
    for fn in (relevancy, attention_x_gradient, saliency):
        fn(subject, batch, targets)
    integrated_gradients(subject, batch, targets, steps=2)
    assert subject.model.config._attn_implementation == impl
    assert subject.model.config.text_config._attn_implementation == impl
    assert subject.model.config.vision_config._attn_implementation == impl
    assert [p.requires_grad for p in subject.model.parameters()] == before
    assert all(p.grad is None for p in subject.model.parameters())
    assert count_hooks(subject.model) == 0


@pytest.mark.parametrize(
    "method, options, match",
    [
        ("integrated_gradients", {"steps": 0}, "steps=0 is out of range"),
        ("integrated_gradients", {"steps": -3}, "steps=-3"),
        ("integrated_gradients", {"baseline": "gray"}, "baseline='gray'"),
        ("integrated_gradients", {"modality": "audio"}, "modality='audio'"),
        ("integrated_gradients", {"internal_batch_size": 0}, "internal_batch_size=0"),
        ("smoothgrad", {"nt_samples": 0}, "nt_samples=0"),
        ("smoothgrad", {"stdevs": -1.0}, "stdevs=-1.0"),
        ("attention_x_gradient", {"layers": [9]}, "layers="),
    ],
)
def test_bad_gradient_options_are_one_line_input_errors(method, options, match):
    subject = subject_for("llava")
    with pytest.raises(InputError, match=match) as info:
        mmlens.explain(subject, tiny_images("llava"), PROMPT, method=method, answer="red", **options)
    assert "\n" not in str(info.value)
