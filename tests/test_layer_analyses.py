"""Logit lens, causal tracing and attention knockout on tiny subjects of every family."""

import math

import pytest
import torch

from mmlens import InputError
from mmlens.layer.attention_knockout import attention_knockout, position_groups
from mmlens.layer.causal_trace import causal_trace
from mmlens.layer.logit_lens import logit_lens
from mmlens.model.targets import resolve_targets
from mmlens.results.grid import GridResult


def _batch(subject, images):
    return subject.prepare(images, "what color is the cat?", answer="red cat")


def test_logit_lens_last_layer_is_the_model_output(subject, images):
    batch = _batch(subject, images)
    lens = logit_lens(subject, batch, top_k=3)
    assert lens.values.shape == (subject.n_layers, batch.seq_len)
    probs = subject.forward(batch)[0].float().softmax(-1)
    torch.testing.assert_close(lens.values[-1], probs[:, batch.answer_ids[0]], atol=1e-6, rtol=1e-5)
    # the top-1 word at the last layer is the model's own argmax, at every position
    top1 = [row[0][0] for row in lens.extras["topk"][-1]]
    assert top1 == subject.tokenizer.convert_ids_to_tokens(probs.argmax(-1).tolist())
    heat = lens.image_map(batch, image=0)
    assert heat.shape == (images[0].height, images[0].width)


def test_causal_trace_restoring_everything_recovers_clean(subject, images):
    batch = _batch(subject, images)
    everything = {"all": torch.arange(batch.seq_len)}
    grid = causal_trace(subject, batch, positions=everything, noise_scale=5.0)
    p_clean, p_corrupt = grid.meta["p_clean"], grid.meta["p_corrupt"]
    assert p_clean != pytest.approx(p_corrupt, rel=1e-4)  # the corruption did something
    restored = grid.values[:, 0] + p_corrupt
    torch.testing.assert_close(restored, torch.full_like(restored, p_clean), atol=1e-7, rtol=1e-4)
    # p_corrupt equals a plain forward with the same noise added by hand
    from mmlens.layer.causal_trace import _draw_noise

    target = resolve_targets(subject.tokenizer, batch, "answer")[0]
    img = batch.image_positions()
    with subject.trace() as tr:
        tr.capture("lm.blocks.0.resid_pre", reduce=lambda h: h[0, img])
        subject.forward(batch)
    noise = _draw_noise(tr["lm.blocks.0.resid_pre"], 5.0, 0)
    with torch.no_grad(), subject.trace() as tr:
        tr.edit("lm.blocks.0.resid_pre", lambda h: h.index_put((torch.tensor([0]), img), h[0, img] + noise))
        by_hand = float(target.value(subject.forward(batch), batch).exp())
    assert by_hand == pytest.approx(p_corrupt, rel=1e-4)


def test_causal_trace_forward_budget_and_batch_invariance(subject, images):
    batch = _batch(subject, images[:1])
    big = causal_trace(subject, batch, batch_size=64)
    small = causal_trace(subject, batch, batch_size=7)
    cells = subject.n_layers * batch.seq_len
    assert big.meta["forward_calls"] == 1 + math.ceil(cells / 64)
    assert small.meta["forward_calls"] == 1 + math.ceil(cells / 7)
    torch.testing.assert_close(big.values, small.values, atol=1e-6, rtol=1e-4)


def test_causal_trace_corrupting_with_another_image(subject, images):
    batch = _batch(subject, images[:1])
    other = images[0].transpose(0)  # mirrored: same size, different pixels
    grid = causal_trace(subject, batch, corrupt="image", corrupt_with=other, positions={"image": batch.image_positions()})
    assert grid.values.shape == (subject.n_layers, 1)
    with pytest.raises(InputError, match="unchanged"):
        causal_trace(subject, batch, corrupt="image", corrupt_with=images[0])


def test_knockout_batched_rows_equal_single_runs(subject, images):
    batch = _batch(subject, images[:1])
    grid = attention_knockout(subject, batch, window=1)
    target = resolve_targets(subject.tokenizer, batch, "answer")[0]
    groups = position_groups(batch, target)
    layer = subject.n_layers - 1
    with torch.no_grad(), subject.trace() as tr:
        tr.block_attention(f"lm.blocks.{layer}.attn.weights", groups["last"], groups["image"])
        single = float(target.value(subject.forward(batch), batch).exp())
    got = float(grid.values[layer, grid.col_labels.index("image -> last")]) + grid.meta["p_clean"]
    assert got == pytest.approx(single, rel=1e-4, abs=1e-9)


def test_grid_results_save_and_load(tmp_path, subject, images):
    grid = logit_lens(subject, _batch(subject, images[:1]))
    grid.save(tmp_path / "lens.json")
    grid.save(tmp_path / "lens.png")
    back = GridResult.load(tmp_path / "lens.json")
    torch.testing.assert_close(back.values, grid.values.float())
    assert back.col_labels == grid.col_labels
    assert (tmp_path / "lens.png").stat().st_size > 1000
    with pytest.raises(InputError, match="extensions"):
        grid.save(tmp_path / "lens.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lens.json", "lens.png"]


@pytest.mark.parametrize("family", ["llava"])
def test_bad_input(subject, images):
    batch = _batch(subject, images[:1])
    with pytest.raises(InputError, match="out of range"):
        logit_lens(subject, batch, layers=[subject.n_layers])
    with pytest.raises(InputError, match="empty"):
        causal_trace(subject, batch, positions={"nothing": []})
    with pytest.raises(InputError, match="unchanged"):
        causal_trace(subject, batch, noise_scale=0.0)
    with pytest.raises(InputError, match="unknown position group"):
        attention_knockout(subject, batch, pairs={"x": ("nowhere", "image")})
