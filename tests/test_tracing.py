"""Parity and hook hygiene of the tracing core, on a tiny model of every family."""

import pytest
import torch

import mmlens
from mmlens import count_hooks


def test_traced_forward_is_bit_identical_and_leaves_no_hooks(subject, images):
    batch = subject.prepare(images, "what color is the cat?", answer="red")
    plain = subject.forward(batch)
    with subject.trace() as tr:
        names = tr.capture("*")  # every hook point, attention weights included
        traced = subject.forward(batch)
        assert count_hooks(subject.model) > 0
    assert torch.equal(plain, traced)
    assert count_hooks(subject.model) == 0
    n_layers = subject.n_layers
    assert len([n for n in names if n.startswith("lm.blocks.") and n.endswith(".resid_post")]) == n_layers
    # every point was reached, and the residual stream has the LM's width
    assert set(names) <= set(tr.captured)
    h = tr["lm.blocks.0.resid_post"]
    assert h.shape[:2] == batch.input_ids.shape


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_hooks_removed_after_exception_inside_hook(subject, images, error):
    batch = subject.prepare(images[:1], "what is this?")

    def boom(t):
        raise error("inside a hook")

    with pytest.raises(error):
        with subject.trace() as tr:
            tr.capture("lm.blocks.*.resid_post")
            tr.capture_attention("lm.blocks.0.attn.weights", rows=[batch.seq_len - 1])
            tr.edit("lm.blocks.1.mlp.out", boom)
            subject.forward(batch)
    assert count_hooks(subject.model) == 0
    # the model still runs plainly afterwards (attention configs restored)
    assert all(not hasattr(m, "_mmlens_tap") for m in subject.model.modules())
    subject.forward(batch)


def test_attention_capture_matches_eager_weights(subject, images):
    batch = subject.prepare(images[:1], "what is this?")
    rows = torch.tensor([batch.seq_len - 2, batch.seq_len - 1])
    with subject.trace() as tr:
        tr.capture_attention("lm.blocks.*.attn.weights", rows=rows)
        subject.forward(batch)
    impl = subject.model.config._attn_implementation
    subject.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = subject.model(**subject.model_inputs(batch), output_attentions=True, use_cache=False)
    finally:
        subject.model.set_attn_implementation(impl)
    for i, ref in enumerate(out.attentions):
        got = tr[f"lm.blocks.{i}.attn.weights"]
        assert got.shape == (1, ref.shape[1], 2, batch.seq_len)
        torch.testing.assert_close(got, ref[:, :, rows], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.sum(-1), torch.ones_like(got.sum(-1)))


def test_interventions(subject, images):
    batch = subject.prepare(images[:1], "what is this?", answer="red")
    plain = subject.forward(batch)
    with subject.trace() as tr:
        tr.capture("lm.blocks.0.resid_post")
        subject.forward(batch)
    clean = tr["lm.blocks.0.resid_post"]
    # patching a run with its own activations changes nothing; adding a zero vector neither
    with subject.trace() as tr:
        tr.patch("lm.blocks.0.resid_post", clean, positions=batch.image_positions())
        tr.add("lm.blocks.1.resid_pre", torch.zeros(clean.shape[-1]))
        same = subject.forward(batch)
    assert torch.equal(same, plain)
    # zero-ablating the image positions after block 0 changes the answer distribution
    with subject.trace() as tr:
        tr.ablate("lm.blocks.0.resid_post", positions=batch.image_positions())
        ablated = subject.forward(batch)
    assert (ablated[0, -1] - plain[0, -1]).abs().max() > 1e-4
    # blocking every edge into the last position from the image changes it too; blocking nothing-> no change
    with subject.trace() as tr:
        tr.block_attention("lm.blocks.*.attn.weights", [batch.seq_len - 1], batch.image_positions())
        knocked = subject.forward(batch)
    assert (knocked[0, -1] - plain[0, -1]).abs().max() > 1e-4
    torch.testing.assert_close(knocked[0, :-1], plain[0, :-1], atol=1e-5, rtol=1e-5)
    assert count_hooks(subject.model) == 0


def test_unknown_hook_point_is_an_input_error(subject):
    with subject.trace() as tr, pytest.raises(mmlens.InputError, match="unknown hook point"):
        tr.capture("lm.blocks.99.resid_post")
