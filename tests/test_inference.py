"""Inference methods: grounding signals (every family), VCD vs a hand-written step, PAI's exact re-weighting,
steering at scale 0, hooks removed (also after errors), the tuned lens beating the logit lens, bad input."""

import math

import pytest
import torch
from conftest import subject_for
from typer.testing import CliRunner

import mmlens
from mmlens.cli import app
from mmlens.errors import InputError
from mmlens.hooks.tracing import count_hooks
from mmlens.inference.distort import distorted_all
from mmlens.inference.steering import SteeringVector
from mmlens.testing.tiny_models import tiny_images

PROMPT = "what color is the cat ?"


def test_signals_every_family_generation_equals_teacher_forcing(family):
    s = subject_for(family)
    img = tiny_images(family, 1)[0]
    gen = mmlens.generate_explained(s, img, PROMPT, max_new_tokens=3)
    assert count_hooks(s.model) == 0
    assert gen.answer == s.generate(img, PROMPT, max_new_tokens=3).text
    n = len(gen.tokens)
    assert n > 0 and all(len(v) == n for v in gen.signals.values())
    assert all(math.isfinite(x) for v in gen.signals.values() for x in v)
    assert all(0.0 < x <= 1.0 + 1e-5 for x in gen.signals["image_attention"])
    # the cached generation path and one batched teacher-forced forward give the same signals
    tf = mmlens.generate_explained(s, img, PROMPT, answer=gen.token_ids)
    for name in gen.signals:
        assert gen.signals[name] == pytest.approx(tf.signals[name], abs=2e-4), name


def test_visual_reliance_and_attention_share_by_hand():
    s = subject_for("llava")
    img = tiny_images("llava", 1)[0]
    r = mmlens.generate_explained(s, img, PROMPT, answer="red cat", distortion="blur")
    batch = s.prepare(img, PROMPT, answer="red cat")
    bad = s.prepare(distorted_all(batch.images, "blur")[0], PROMPT, answer="red cat")
    want = s.score(batch).log_probs - s.score(bad).log_probs
    assert r.signals["visual_reliance"] == pytest.approx(want.tolist(), abs=1e-4)
    with s.trace() as tr:
        tr.capture_attention("lm.blocks.*.attn.weights")
        s.forward(batch)
    img_pos, rows = batch.image_positions(), batch.answer_positions - 1
    share = torch.stack([tr[f"lm.blocks.{i}.attn.weights"][0][:, rows][..., img_pos].sum(-1).mean(0)
                         for i in range(s.n_layers)]).mean(0)
    assert r.signals["image_attention"] == pytest.approx(share.tolist(), abs=1e-5)


def test_vcd_equals_a_hand_written_step():
    s = subject_for("llava")
    img = tiny_images("llava", 1)[0]
    alpha, beta = 0.7, 0.2
    out = mmlens.generate_with(s, img, PROMPT, max_new_tokens=3, vcd=mmlens.VCD(alpha, beta))
    assert count_hooks(s.model) == 0
    bad = distorted_all([img], "noise", 0)[0]
    chosen = []
    for step, logits in enumerate(out.step_logits[: len(out.token_ids)]):
        prefix = {"answer": chosen} if chosen else {}
        l_img = s.forward(s.prepare(img, PROMPT, **prefix))[0, -1].float()
        l_bad = s.forward(s.prepare(bad, PROMPT, **prefix))[0, -1].float()
        p = l_img.softmax(-1)
        ref = torch.where(p >= beta * p.max(), (1 + alpha) * l_img - alpha * l_bad, torch.tensor(float("-inf")))
        assert torch.equal(torch.isinf(ref), torch.isinf(logits))
        finite = ~torch.isinf(ref)
        assert torch.allclose(ref[finite], logits[finite], atol=1e-4)
        assert int(ref.argmax()) == int(out.token_ids[step])
        chosen.append(int(ref.argmax()))
    assert len(chosen) == len(out.token_ids) > 0


def test_pai_reweights_image_attention_exactly():
    s = subject_for("llava")
    batch = s.prepare(tiny_images("llava", 1)[0], PROMPT, answer="red")
    img, q, a = batch.image_positions(), batch.seq_len - 1, 0.5
    rows = {}
    for bias in (None, math.log1p(a)):
        with s.trace() as tr:
            if bias is not None:
                tr.block_attention("lm.blocks.1.attn.weights", [q], img, bias=bias)
            tr.capture_attention("lm.blocks.1.attn.weights", rows=[q])
            s.forward(batch)
        rows[bias] = tr["lm.blocks.1.attn.weights"][0, :, 0]
    p = rows[None]
    want = p.clone()
    want[:, img] *= 1 + a
    want /= want.sum(-1, keepdim=True)
    assert torch.allclose(rows[math.log1p(a)], want, atol=1e-6)
    assert count_hooks(s.model) == 0


def test_steering_scale_zero_is_bit_identical_and_hooks_go_after_errors():
    s = subject_for("qwen2_vl")
    img = tiny_images("qwen2_vl", 1)[0]
    v = SteeringVector(torch.randn(s.model.config.get_text_config().hidden_size), 1, s.model_id,
                       s.model.config.get_text_config().hidden_size, s.n_layers)
    plain = s.generate(img, PROMPT, max_new_tokens=4)
    zero = mmlens.generate_with(s, img, PROMPT, max_new_tokens=4, steering=mmlens.Steering(v, 0.0))
    assert torch.equal(zero.token_ids, plain.token_ids)
    with s.trace() as tr:
        tr.add("lm.blocks.1.resid_post", v.vector, scale=0.0)
        steered = s.forward(plain.batch)
    assert torch.equal(steered, s.forward(plain.batch))
    with s.trace() as tr:
        tr.add("lm.blocks.1.resid_post", v.vector, scale=50.0)
        assert not torch.allclose(s.forward(plain.batch), steered)
    calls = {"n": 0}

    def boom(module, args, output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("stop mid-generation")

    handle = s.adapter.parts().lm_blocks[0].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="mid-generation"):
            mmlens.generate_with(s, img, PROMPT, max_new_tokens=4, vcd=mmlens.VCD(), pai=mmlens.PAI(0.5),
                                 steering=mmlens.Steering(v, 1.0))
        assert count_hooks(s.model) == 0
        calls["n"] = 0
        with pytest.raises(RuntimeError, match="mid-generation"):
            mmlens.generate_explained(s, img, PROMPT, max_new_tokens=4)
    finally:
        handle.remove()
    assert count_hooks(s.model) == 0
    assert torch.equal(s.generate(img, PROMPT, max_new_tokens=4).token_ids, plain.token_ids)


@pytest.mark.parametrize("make, words", [
    (lambda v: mmlens.VCD(alpha=-0.5), "alpha=-0.5"),
    (lambda v: mmlens.VCD(beta=0.0), "beta=0.0"),
    (lambda v: mmlens.VCD(beta=1.5), "beta=1.5"),
    (lambda v: mmlens.PAI(alpha=-1), "alpha=-1"),
    (lambda v: mmlens.Steering(SteeringVector(torch.zeros(7), 0, "x", 7, 2), 1.0), "hidden size"),
    (lambda v: mmlens.Steering(SteeringVector(v, 99, "x", v.numel(), 2), 1.0), "steering layer 99"),
])
def test_bad_decoding_options_one_line_nothing_generated(make, words):
    s = subject_for("llava")
    v = torch.zeros(s.model.config.get_text_config().hidden_size)
    calls = []
    handle = s.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InputError) as err:
            option = make(v)
            kind = {"VCD": "vcd", "PAI": "pai", "Steering": "steering"}[type(option).__name__]
            mmlens.generate_with(s, tiny_images("llava", 1)[0], PROMPT, **{kind: option})
    finally:
        handle.remove()
    assert words in str(err.value) and "\n" not in str(err.value)
    assert calls == [] and count_hooks(s.model) == 0


def test_tuned_lens_beats_logit_lens_on_held_out_demo_samples(tmp_path):
    from mmlens.data import ShapesVQA

    lm = mmlens.load("demo")
    lens = mmlens.train_tuned_lens(lm, list(ShapesVQA(seed=1000).samples(40)), lr=1e-2, show=False)
    held = [ShapesVQA(seed=s).sample(0) for s in range(10)]
    plain, tuned = mmlens.lens_kl(lm, held), mmlens.lens_kl(lm, held, lens)
    assert (tuned[:-1] < plain[:-1]).all(), (plain, tuned)
    assert tuned[-1] == pytest.approx(plain[-1], abs=1e-6) and plain[-1] < 1e-5
    path = lens.save(tmp_path / "demo.safetensors")
    again = mmlens.TunedLens.load(path, lm)
    assert torch.equal(again.weight, lens.weight)
    batch = lm.prepare(held[0].image, held[0].question, answer=held[0].answer)
    from mmlens.layer.logit_lens import logit_lens

    g = logit_lens(lm, batch, tuned=again)
    assert g.meta["tuned"] and g.values.shape[0] == lm.n_layers
    with pytest.raises(InputError, match="trained for model 'demo'") as err:
        mmlens.TunedLens.load(path, subject_for("llava"))
    assert "\n" not in str(err.value)
    held[0].image.save(tmp_path / "s.png")
    runner, args = CliRunner(), ["lens", str(tmp_path / "s.png"), held[0].question, "--model", "demo", "--out"]
    ok = runner.invoke(app, [*args, str(tmp_path / "lens.png"), "--tuned", str(path)])
    assert ok.exit_code == 0, ok.output
    other = mmlens.TunedLens.identity(subject_for("llava")).save(tmp_path / "other.safetensors")
    refused = runner.invoke(app, [*args, str(tmp_path / "l2.png"), "--tuned", str(other)])
    assert refused.exit_code == 2 and "trained for model 'tiny-llava'" in refused.output
    assert not (tmp_path / "l2.png").exists() and not (tmp_path / "l2.json").exists()


def test_result_save_load_html_escaped_and_cli(tmp_path):
    s = subject_for("llava")
    r = mmlens.generate_explained(s, tiny_images("llava", 1)[0], "is the <b>cat</b> & dog ?", max_new_tokens=3)
    back = mmlens.GroundingResult.load(r.save(tmp_path / "r.json"))
    assert back.signals == r.signals and back.tokens == r.tokens
    page = r.save(tmp_path / "r.html", signal="image_attention").read_text()
    assert "&lt;b&gt;cat&lt;/b&gt; &amp; dog" in page and "<b>cat</b>" not in page
    assert len(r.rich_text("lens_entropy").plain.split()) == len(r.tokens)
    with pytest.raises(InputError, match="signal="):
        r.html("nope")
    from mmlens.data import ShapesVQA

    sample = ShapesVQA(seed=0).sample(0)
    sample.image.save(tmp_path / "s.png")
    runner = CliRunner()
    ok = runner.invoke(app, ["generate", str(tmp_path / "s.png"), sample.question, "--out",
                                        str(tmp_path / "g.html")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "g.html").read_text().count("<span") >= 1
    bad = runner.invoke(app, ["generate", str(tmp_path / "s.png"), sample.question, "--vcd-beta", "0",
                                         "--vcd-alpha", "1", "--out", str(tmp_path / "h.html")])
    assert bad.exit_code == 2 and "beta=0.0" in bad.output and not (tmp_path / "h.html").exists()


def test_lens_features_match_the_logit_lens():
    from mmlens.layer.logit_lens import logit_lens

    s = subject_for("llava_next")
    img = tiny_images("llava_next", 1)[0]
    r = mmlens.generate_explained(s, img, PROMPT, max_new_tokens=3)
    batch = s.prepare(img, PROMPT, answer=r.token_ids)
    rows = (batch.answer_positions - 1).tolist()
    lens = logit_lens(s, batch, positions=rows, top_k=1)
    for j, token in enumerate(r.tokens):
        top1 = [lens.extras["topk"][layer][j][0][0] == token for layer in range(s.n_layers)]
        assert r.signals["lens_first_top1"][j] == (top1.index(True) if any(top1) else s.n_layers)
