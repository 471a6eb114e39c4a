"""Many targets from one batched backward equal the per-target loop (every gradient method, every family),
chunks follow ``target_batch``, and IG / SmoothGrad run the vision tower once."""

import math

import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
from conftest import subject_for

import mmlens
from mmlens import InputError
from mmlens.attribution.captum_gradients import (
    attributed_positions,
    baseline_embeddings,
    embedding_function,
    input_embeddings,
    integrated_gradients,
    smoothgrad,
)
from mmlens.attribution.gradient import INPUT, gradcam, input_x_gradient, saliency
from mmlens.attribution.relevancy import attention_x_gradient, relevancy
from mmlens.model.targets import resolve_targets
from mmlens.testing.tiny_models import FAMILIES, tiny_images

PROMPT = "what color is the cat ?"
ANSWER = "red cat blue"


def setup(family, contrast="cat - blue dog"):
    """Every answer token, the whole answer (several query rows) and a contrast, as one target list."""
    subject = subject_for(family)
    batch = subject.prepare(tiny_images(family), PROMPT, answer=ANSWER)
    targets = resolve_targets(subject.tokenizer, batch, None) + resolve_targets(subject.tokenizer, batch, "answer")
    return subject, batch, targets + resolve_targets(subject.tokenizer, batch, contrast)


def autograd_input_grads(subject, batch, target, objective):
    """(x, d target / d x) at the LM input, by a plain forward and ``.backward()`` of this target alone."""
    with torch.enable_grad(), subject.trace() as tr:
        tr.capture(INPUT, reduce=lambda t: (t.retain_grad(), t)[1], detach=False)
        logits = subject.forward(batch)
    x = tr[INPUT]
    target.value(logits, batch, objective).sum().backward()
    subject.model.zero_grad(set_to_none=True)
    return x.detach()[0].float(), x.grad[0].float()


def eager_cams(subject, batch, target, objective):
    """Per layer ``mean_heads(relu(dtarget/dA * A))`` ``(N, N)``, from a plain eager forward and backward."""
    impl = subject.model.config._attn_implementation
    subject.model.set_attn_implementation("eager")
    try:
        with torch.enable_grad():
            out = subject.model(**subject.model_inputs(batch), output_attentions=True, use_cache=False)
            grads = torch.autograd.grad(target.value(out.logits, batch, objective).sum(), out.attentions)
    finally:
        subject.model.set_attn_implementation(impl)
    return [(g[0].float() * a.detach()[0].float()).clamp_min(0).mean(0) for a, g in zip(out.attentions, grads)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("objective", ["log_prob", "prob"])
def test_batched_input_gradient_methods_equal_the_per_target_loop(family, objective):
    subject, batch, targets = setup(family)
    assert len(targets) == 5 and targets[-1].needs_foil_forward
    outs = {fn: fn(subject, batch, targets, objective=objective, target_batch=3).position_scores
            for fn in (saliency, input_x_gradient, gradcam)}
    for t, target in enumerate(targets):
        if target.needs_foil_forward:  # its own foil forward: the reference is that target alone
            for fn, out in outs.items():
                alone = fn(subject, batch, [target], objective=objective, target_batch=1).position_scores[0]
                torch.testing.assert_close(out[t], alone, atol=1e-5, rtol=0)
            continue
        x, g = autograd_input_grads(subject, batch, target, objective)
        assert g.abs().max() > 0
        torch.testing.assert_close(outs[saliency][t], g.norm(dim=-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(outs[input_x_gradient][t], (g * x).sum(-1), atol=1e-5, rtol=0)
        for geom in batch.geometry:
            pos = geom.positions
            cam = torch.relu(x[pos] @ g[pos].mean(0))
            torch.testing.assert_close(outs[gradcam][t, pos], cam, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_attention_gradient_methods_equal_the_per_target_loop(family):
    subject, batch, targets = setup(family, contrast="cat - blue")  # a one-token foil: no forward of its own
    n = batch.seq_len
    for objective in ("logit", "log_prob"):
        axg = attention_x_gradient(subject, batch, targets, objective=objective, target_batch=2).position_scores
        rel = relevancy(subject, batch, targets, objective=objective, target_batch=3).position_scores
        for t, target in enumerate(targets):
            q = target.query_positions(batch)
            cams = eager_cams(subject, batch, target, objective)
            expected = torch.stack([c[q] for c in cams]).mean(0).mean(0)
            torch.testing.assert_close(axg[t], expected, atol=1e-5, rtol=0)
            r = torch.eye(n)
            for c in cams:
                r = r + c @ r
            torch.testing.assert_close(rel[t], (r - torch.eye(n))[q].mean(0), atol=1e-5, rtol=0)
            assert rel[t].abs().max() > 0 and axg[t].abs().max() > 0


class BackwardCounter:
    """Counts backward passes through LM block 0 (a tensor hook on its output, installed at each forward)."""

    def __init__(self, subject):
        self.block, self.count = subject.adapter.parts().lm_blocks[0], 0

    def __enter__(self):
        def on_forward(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            if out.requires_grad:
                out.register_hook(self.tick)

        self.handle = self.block.register_forward_hook(on_forward)
        return self

    def tick(self, grad):
        self.count += 1

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "attention_x_gradient", "relevancy"])
@pytest.mark.parametrize("target_batch, backwards", [(None, 1), (1, 4), (3, 2)])
def test_one_backward_per_chunk_of_targets(method, target_batch, backwards):
    subject = subject_for("llava")
    images = tiny_images("llava")
    with BackwardCounter(subject) as counter:
        ex = mmlens.explain(subject, images, PROMPT, method=method, answer="red cat blue green", target_batch=target_batch)
    assert len(ex.targets) == 4
    assert counter.count == backwards  # the per-target loop ran 4


def test_integrated_gradients_and_smoothgrad_share_forwards_between_targets():
    subject, batch, targets = setup("llava")  # 5 targets, one with a foil forward
    with BackwardCounter(subject) as counter:
        integrated_gradients(subject, batch, targets, steps=8, internal_batch_size=4, target_batch=3)
    # path batches x (target chunks + the foil's own forward); a Captum call per target: 2 x (5 + 1)
    assert counter.count == 2 * (math.ceil(5 / 3) + 1)
    with BackwardCounter(subject) as counter:
        smoothgrad(subject, batch, targets, nt_samples=6, internal_batch_size=4)
    assert counter.count == 2 * (1 + 1)


class VisionCounter:
    def __init__(self, subject):
        self.module, self.count = subject.adapter.parts().vision_embed, 0

    def __enter__(self):
        self.handle = self.module.register_forward_hook(lambda *a: setattr(self, "count", self.count + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_vision_integrated_gradients_equal_captum_on_the_full_model(family):
    """IG with the vision tower run once == Captum IG per target on a function that runs the whole model
    (vision tower included) at every step; the tower runs twice in all (the image and the black baseline
    image), not once per path batch and target."""
    subject, batch, targets = setup(family)
    steps, ibs = 8, 3
    with VisionCounter(subject) as vision:
        out = integrated_gradients(subject, batch, targets, steps=steps, internal_batch_size=ibs)
    assert vision.count == 2  # a Captum call per target: 23; the first batched version: 4
    positions = attributed_positions(batch, "image")
    x = input_embeddings(subject, batch)[:, positions]
    base = baseline_embeddings(subject, batch, positions, "black")
    for t, target in enumerate(targets):
        f = embedding_function(subject, batch, target, positions)
        attr, delta = IntegratedGradients(f).attribute(x, baselines=base, n_steps=steps, internal_batch_size=ibs,
                                                       return_convergence_delta=True)
        assert attr.abs().max() > 0
        torch.testing.assert_close(out.position_scores[t, positions], attr[0].sum(-1), atol=1e-5, rtol=0)
        assert out.extras["convergence_delta"][t] == pytest.approx(float(delta), abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_vision_smoothgrad_equals_noise_tunnel_on_the_full_model(family):
    subject, batch, targets = setup(family)
    positions = attributed_positions(batch, "image")
    torch.manual_seed(5)
    out = smoothgrad(subject, batch, targets, nt_samples=5, stdevs=0.2, internal_batch_size=2, target_batch=2)
    x = input_embeddings(subject, batch)[:, positions]
    for t, target in enumerate(targets):  # every target sees the same noise draws: Captum's, from the same seed
        torch.manual_seed(5)
        nt = NoiseTunnel(Saliency(embedding_function(subject, batch, target, positions)))
        attr = nt.attribute(x, nt_type="smoothgrad", nt_samples=5, nt_samples_batch_size=2, stdevs=0.2 * float(x.std()))
        torch.testing.assert_close(out.position_scores[t, positions], attr[0].norm(dim=-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["saliency", "gradcam", "relevancy", "attention_x_gradient", "integrated_gradients",
                                    "smoothgrad"])
@pytest.mark.parametrize("value", [0, -2, 1.5, "8"])
def test_bad_target_batch_is_a_one_line_input_error(method, value):
    subject = subject_for("llava")
    with pytest.raises(InputError, match=f"target_batch={value!r}") as info:
        mmlens.explain(subject, tiny_images("llava"), PROMPT, method=method, answer="red", target_batch=value)
    assert "\n" not in str(info.value)


def test_default_target_batch_batches_small_backwards_on_cpu_only():
    from mmlens.attribution.batched import MAX_TARGET_BATCH, resolve_target_batch

    subject, batch, _ = setup("llava")
    assert subject.device.type == "cpu"
    assert resolve_target_batch(None, subject, batch) == MAX_TARGET_BATCH  # tiny: one target's backward is small
    assert resolve_target_batch(None, subject, batch, rows=10_000) == 1  # a large backward: the per-target loop
    assert resolve_target_batch(3, subject, batch, rows=10_000) == 3


def test_feature_cache_reuses_only_the_same_pixels_and_is_removed_also_on_errors():
    from mmlens import count_hooks
    from mmlens.model.feature_cache import cached_image_features

    subject = subject_for("llava")
    a = subject.prepare(tiny_images("llava", seed=0), PROMPT)
    b = subject.prepare(tiny_images("llava", seed=1), PROMPT)
    with torch.no_grad():
        plain = subject.forward(b)
        with pytest.raises(RuntimeError, match="boom"), cached_image_features(subject) as counts:
            first = subject.forward(a)
            torch.testing.assert_close(subject.forward(a), first, atol=0, rtol=0)
            torch.testing.assert_close(subject.forward(b), plain, atol=0, rtol=0)  # other pixels: computed
            assert counts == {"computed": 2, "reused": 1}
            assert count_hooks(subject.model) == 1
            raise RuntimeError("boom")
    assert count_hooks(subject.model) == 0
    assert "get_image_features" not in subject.adapter.parts().image_features.__dict__


@pytest.mark.parametrize("family", FAMILIES)
def test_input_embeddings_stop_at_the_input_point(family):
    """The embeddings the gradient methods start from: the forward stops where they are made (the language model
    does not run), bit-identical to a full traced forward's capture, and no hook is left."""
    from mmlens.attribution.gradient import input_point
    from mmlens.hooks.tracing import count_hooks

    subject = subject_for(family)
    batch = subject.prepare(tiny_images(family, 1)[0], "what color?", answer="red")
    with torch.no_grad(), subject.trace() as tr:
        tr.capture(input_point(subject))
        subject.forward(batch)
    assert torch.equal(input_embeddings(subject, batch), tr[input_point(subject)])
    assert count_hooks(subject.model) == 0
