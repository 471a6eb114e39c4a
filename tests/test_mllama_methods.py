"""Mllama's attribution methods and internals over the cross-attention keys, against references computed with plain
transformers and autograd (eager attentions, ``cross_attention_states=`` inputs), or their one-line refusals."""

import base64
import io

import numpy as np
import pytest
import torch
from conftest import subject_for
from PIL import Image
from test_mllama import KEYS_PER_TILE, MAX_TILES, PROMPT, _eager, _states

import mmlens
from mmlens import InputError
from mmlens.attribution.attention import attention
from mmlens.attribution.gradient import gradcam, input_x_gradient, saliency
from mmlens.attribution.perturbation_masks import pool_to_positions
from mmlens.attribution.relevancy import attention_x_gradient, relevancy
from mmlens.hooks.tracing import count_hooks
from mmlens.layer.attention_knockout import attention_knockout
from mmlens.layer.causal_trace import causal_trace
from mmlens.layer.heads import head_ablation, head_image_share
from mmlens.layer.logit_lens import logit_lens
from mmlens.model.targets import resolve_targets
from mmlens.testing.tiny_models import tiny_images

REFUSED = {"rollout"}  # a product of self-attention over the sequence only
CHEAP = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"nt_samples": 2}, "rise": {"n_masks": 16},
         "kernel_shap": {"n_samples": 16}, "lime": {"n_samples": 16}, "mm_shap": {"n_samples": 16},
         "pixel_integrated_gradients": {"steps": 4}, "pixel_smoothgrad": {"nt_samples": 2}}
PIXEL_MAPS = ("occlusion", "rise", "kernel_shap", "lime", "mm_shap", "pixel_saliency", "pixel_integrated_gradients",
              "pixel_smoothgrad")  # methods whose maps are on pixels, pooled onto the keys


@pytest.fixture(scope="module")
def lm():
    return subject_for("mllama")


def test_attention_method_is_the_eager_cross_attention_to_the_keys(lm):
    batch = lm.prepare(tiny_images("mllama", n=2), PROMPT, answer="red cat")
    targets = resolve_targets(lm.tokenizer, batch, None)
    out = attention(lm, batch, targets)
    cross = _eager(lm, batch).attentions[1][0].float().mean(0)  # (queries, keys), heads averaged
    for t, target in enumerate(targets):
        torch.testing.assert_close(out.key_scores[t], cross[target.query_positions(batch)].mean(0), atol=1e-5, rtol=0)
    assert out.extras["layers"] == [1]
    with pytest.raises(InputError, match="pick layers from \\[1\\]"):
        attention(lm, batch, targets, layers=[0, 2])


def test_gradient_methods_are_autograd_over_the_cross_attention_states(lm):
    """Reference: the model called with ``cross_attention_states=`` (no pixels, no mmlens hooks) and autograd."""
    batch = lm.prepare(tiny_images("mllama", n=2), PROMPT, answer="red cat")
    targets = resolve_targets(lm.tokenizer, batch, None)
    x = _states(lm, batch)
    inputs = {k: v for k, v in lm.model_inputs(batch).items() if k not in ("pixel_values", "aspect_ratio_ids",
                                                                             "aspect_ratio_mask")}
    outs = [fn(lm, batch, targets).key_scores for fn in (saliency, input_x_gradient, gradcam)]
    for t, target in enumerate(targets):
        leaf = x[None].clone().requires_grad_(True)
        value = target.value(lm.model(**inputs, cross_attention_states=leaf, use_cache=False).logits, batch)
        (g,) = torch.autograd.grad(value.sum(), leaf)
        g = g[0]
        assert g.abs().max() > 0
        torch.testing.assert_close(outs[0][t], g.norm(dim=-1), atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(outs[1][t], (g * x).sum(-1), atol=1e-6, rtol=1e-4)
        for geo in batch.geometry:
            pos = geo.positions
            torch.testing.assert_close(outs[2][t, pos], torch.relu(x[pos] @ g[pos].mean(0)), atol=1e-6, rtol=1e-4)


def test_contrast_gradient_is_the_gradient_of_the_difference(lm):
    """A multi-token foil runs its own forward with the same cross-attention states: input x gradient of "red cat -
    blue dog" is that of the difference of the two sequences' values, both computed from one states leaf."""
    from mmlens.model.targets import foil_batch

    batch = lm.prepare(tiny_images("mllama", n=2), PROMPT, answer="red cat")
    (target,) = resolve_targets(lm.tokenizer, batch, "red cat - blue dog")
    assert target.needs_foil_forward
    got = input_x_gradient(lm, batch, [target]).key_scores[0]
    x = _states(lm, batch)
    leaf = x[None].clone().requires_grad_(True)

    def logits(b):
        inputs = {k: v for k, v in lm.model_inputs(b).items() if k not in ("pixel_values", "aspect_ratio_ids",
                                                                             "aspect_ratio_mask")}
        return lm.model(**inputs, cross_attention_states=leaf, use_cache=False).logits

    value = target.value(logits(batch), batch, "log_prob", logits(foil_batch(lm, batch, target)))
    (g,) = torch.autograd.grad(value.sum(), leaf)
    assert g.abs().max() > 0
    torch.testing.assert_close(got, (g[0] * x).sum(-1), atol=1e-6, rtol=1e-4)


def test_attention_x_gradient_is_autograd_of_the_eager_cross_attention(lm):
    batch = lm.prepare(tiny_images("mllama", n=2), PROMPT, answer="red cat")
    targets = resolve_targets(lm.tokenizer, batch, None)
    got = attention_x_gradient(lm, batch, targets, target_batch=2).key_scores
    impl = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        for t, target in enumerate(targets):
            out = lm.model(**lm.model_inputs(batch), output_attentions=True, use_cache=False)
            a = out.attentions[1]  # the cross-attention layer: (1, heads, queries, keys)
            (g,) = torch.autograd.grad(target.value(out.logits, batch).sum(), a)
            q = target.query_positions(batch)
            want = (a[0][:, q] * g[0][:, q]).clamp_min(0).mean(0).mean(0)
            assert want.abs().max() > 0
            torch.testing.assert_close(got[t], want.detach(), atol=1e-7, rtol=1e-4)
    finally:
        lm.model.set_attn_implementation(impl)
    assert count_hooks(lm.model) == 0


def test_relevancy_follows_chefers_bimodal_rules_on_the_full_matrices(lm):
    """Reference: every layer's eager attention and its autograd gradient, the full ``N x N`` / ``N x K`` recursion
    in float64 (self-attention: ``R <- R + B R``; cross-attention: ``R_ti += norm(R_tt)^T B``)."""
    batch = lm.prepare(tiny_images("mllama", n=2), PROMPT, answer="red cat")
    targets = resolve_targets(lm.tokenizer, batch, None)
    got = relevancy(lm, batch, targets, target_batch=2)
    impl = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        for t, target in enumerate(targets):
            out = lm.model(**lm.model_inputs(batch), output_attentions=True, use_cache=False)
            grads = torch.autograd.grad(target.value(out.logits, batch, "logit").sum(), out.attentions)
            n = batch.seq_len
            r_tt, r_ti = torch.eye(n, dtype=torch.float64), torch.zeros(n, 136, dtype=torch.float64)
            for a, g in zip(out.attentions, grads):
                b = (a[0] * g[0]).clamp_min(0).mean(0).double()
                if b.shape[-1] == n:
                    r_tt, r_ti = r_tt + b @ r_tt, r_ti + b @ r_ti
                else:
                    hat = r_tt - torch.eye(n, dtype=torch.float64)
                    total = hat.sum(-1, keepdim=True)
                    norm = hat / torch.where(total > 0, total, torch.ones_like(total)) + torch.eye(n, dtype=torch.float64)
                    r_ti = r_ti + norm.T @ b
            q = target.query_positions(batch)
            assert r_ti[q].abs().max() > 0
            torch.testing.assert_close(got.key_scores[t].double(), r_ti[q].mean(0), atol=1e-7, rtol=1e-4)
            want_text = (r_tt - torch.eye(n, dtype=torch.float64))[q].mean(0)
            torch.testing.assert_close(got.position_scores[t].double(), want_text, atol=1e-7, rtol=1e-4)
    finally:
        lm.model.set_attn_implementation(impl)
    assert count_hooks(lm.model) == 0


def test_integrated_gradients_over_the_keys_is_complete(lm):
    ex = mmlens.explain(lm, tiny_images("mllama", n=1), PROMPT, method="integrated_gradients", answer="red cat",
                        steps=32, target="answer")
    keys = np.asarray(ex.extras["key_scores"])
    # the key attributions sum to f(image) - f(black image): Captum's convergence delta is 1% of that sum at most
    assert abs(keys.sum()) > 1e-4 and abs(ex.extras["convergence_delta"][0]) < 0.01 * abs(keys.sum())
    with pytest.raises(InputError, match="modality='image'"):
        mmlens.explain(lm, tiny_images("mllama", n=1), PROMPT, method="integrated_gradients", answer="red cat",
                       modality="both", steps=2)


@pytest.mark.parametrize("method", [m.name for m in mmlens.methods(kind="attribution")])
def test_every_method_maps_the_keys_or_refuses_in_one_line(lm, method):
    images = tiny_images("mllama", n=2)
    if method in REFUSED:
        with pytest.raises(InputError, match="cross-attention keys") as err:
            mmlens.explain(lm, images, PROMPT, method=method, answer="red cat")
        assert "\n" not in str(err.value)
        assert count_hooks(lm.model) == 0
        return
    ex = mmlens.explain(lm, images, PROMPT, method=method, answer="red cat", **CHEAP.get(method, {}))
    keys = torch.tensor(ex.extras["key_scores"])
    assert keys.shape == (2, 2 * MAX_TILES * KEYS_PER_TILE) and keys.abs().max() > 0 and torch.isfinite(keys).all()
    batch = lm.prepare(images, PROMPT, answer="red cat")
    for t in range(2):
        for i, (img, geo) in enumerate(zip(images, batch.geometry)):
            heat = ex.image_map(t, image=i)
            assert heat.shape == (img.height, img.width) and np.isfinite(heat).all()
            if ex.metadata["method"] in PIXEL_MAPS:  # pooled pixel maps
                want = torch.zeros(keys.shape[1])
                pool_to_positions(geo, heat, want)
                torch.testing.assert_close(keys[t, geo.grid_positions()], want[geo.grid_positions()])
            else:
                np.testing.assert_allclose(heat, geo.heatmap(keys[t]), atol=1e-6)
            grid_map = ex.grid_maps[t][i][0]
            np.testing.assert_allclose(grid_map, keys[t, geo.grids[0].positions].numpy(), atol=1e-6)
    assert len(ex.text_scores(0)) == batch.prompt_len
    assert count_hooks(lm.model) == 0


def test_internals_work_or_refuse_in_one_line(lm):
    images = tiny_images("mllama", n=1)
    batch = lm.prepare(images, PROMPT, answer="red cat")
    probs = lm.forward(batch)[0].float().softmax(-1)
    lens = logit_lens(lm, batch, target="red")
    torch.testing.assert_close(lens.values[-1], probs[:, batch.answer_ids[0]], atol=1e-6, rtol=1e-5)
    with pytest.raises(InputError, match="cross-attention keys"):
        lens.image_map(batch)
    # causal tracing: noise on the cross-attention states; restoring the last layer everywhere gives p_clean back
    last = lm.n_layers - 1
    grid = causal_trace(lm, batch, positions={"all": torch.arange(batch.seq_len)}, layers=[last], noise_scale=5.0)
    assert grid.meta["p_clean"] != pytest.approx(grid.meta["p_corrupt"], rel=1e-4)
    assert float(grid.values[0, 0]) + grid.meta["p_corrupt"] == pytest.approx(grid.meta["p_clean"], rel=1e-4)
    from mmlens.neuron.scores import neuron_scores
    from mmlens.token.pruning import pruning_curve

    neurons = neuron_scores(lm, batch)  # MLP neurons of every block, cross-attention blocks included
    assert neurons.scores.shape[0] == lm.n_layers and neurons.scores[1].abs().max() > 0
    heads = head_ablation(lm, batch)  # layer 1: its cross-attention heads
    assert heads.values.shape == (lm.n_layers, lm.n_heads) and heads.values[1].abs().max() > 0
    for refuse in (lambda: head_image_share(lm, batch), lambda: pruning_curve(lm, batch),
                   lambda: mmlens.explain(lm, images, PROMPT, method="rollout", answer="red cat")):
        with pytest.raises(InputError) as err:
            refuse()
        assert "\n" not in str(err.value)
    from mmlens.embedding.tower import Tower
    from mmlens.inference.decoding import PAI, VCD, generate_with

    with pytest.raises(InputError, match="cross-attention layers"):
        Tower(lm.model, lm.processor, lm)
    with pytest.raises(InputError, match="use vcd or steering"):
        generate_with(lm, images, PROMPT, max_new_tokens=2, pai=PAI(alpha=0.5))
    plain = lm.generate(images, PROMPT, max_new_tokens=3).token_ids  # VCD with alpha 0: the plain greedy answer
    assert torch.equal(generate_with(lm, images, PROMPT, max_new_tokens=3, vcd=VCD(alpha=0.0)).token_ids, plain)
    assert count_hooks(lm.model) == 0


def test_knockout_of_image_keys_cuts_the_cross_attention_at_those_queries(lm):
    """Reference: plain transformers with a forward hook that zeroes the cross-attention output at the last rows."""
    batch = lm.prepare(tiny_images("mllama", n=2), PROMPT, answer="red cat")
    grid = attention_knockout(lm, batch, target="red")
    target = resolve_targets(lm.tokenizer, batch, "red")[0]
    q = target.query_positions(batch)
    cross = lm.model.model.language_model.layers[1].cross_attn

    def cut(module, args, out):
        out[0][:, q] = 0
        return out

    handle = cross.register_forward_hook(cut)
    try:
        with torch.no_grad():
            p_cut = float(target.value(lm.forward(batch), batch).exp())
    finally:
        handle.remove()
    effect = grid.values[0, grid.col_labels.index("image -> last")]
    assert abs(effect) > 1e-7  # float32 noise on p ~ 0.01 is ~1e-9
    assert float(effect) == pytest.approx(p_cut - grid.meta["p_clean"], rel=1e-4, abs=1e-8)
    assert torch.equal(torch.tensor(grid.extras["pairs"]["image -> last"][1]), batch.key_positions())
    assert count_hooks(lm.model) == 0


@pytest.mark.parametrize("suffix", [".safetensors", ".json"])
def test_explanation_with_key_scores_saves_loads_and_renders(lm, tmp_path, suffix):
    ex = mmlens.explain(lm, tiny_images("mllama", n=2), PROMPT, method="attention", answer="red cat")
    got = mmlens.Explanation.load(ex.save(tmp_path / f"ex{suffix}"))
    assert got.extras["key_scores"] == ex.extras["key_scores"]
    for t in range(2):
        for i in range(2):
            np.testing.assert_allclose(got.image_map(t, image=i), ex.image_map(t, image=i), atol=1e-6)
    assert "<img" in ex.save(tmp_path / "ex.html").read_text()


def test_web_panels_work_or_refuse_in_one_line(lm, tmp_path):
    from mmlens.web import ask, heads, knockout, lens, trace
    from mmlens.web import explain as explain_panel
    from mmlens.web.render import result_grid_html
    from mmlens.web.session import Context, Session

    ctx = Context(lm, "tiny-mllama", str(tmp_path))
    image = tiny_images("mllama")[0]
    s = ask.generate(ctx, Session(image=image, image_code="image"), PROMPT, "red cat")
    s, heat, _ = explain_panel.run(ctx, s, "attention", "answer", {}, 0.6)
    layer = np.asarray(Image.open(io.BytesIO(base64.b64decode(heat.split('class="mm-layer"')[1]
                                                               .split("base64,")[1].split('"')[0]))))
    assert layer.shape == (image.height, image.width, 4)
    result = lens.run(ctx, s, "")
    assert lens.table_html(s, result).count("<tr>") == lm.n_layers + 1
    assert "cross-attention keys" in lens.image_map_html(s, result, 0)
    for grid in (trace.run(ctx, s, "resid", 3.0), knockout.run(ctx, s, 0)):
        assert result_grid_html(grid).count("<td ") > 0
    with pytest.raises(InputError, match="cross-attention keys"):
        heads.run(ctx, s)
    assert count_hooks(lm.model) == 0