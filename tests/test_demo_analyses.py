"""Inside the trained demo model: causal tracing, attention knockout and neuron ablation behave as they
should on ShapesVQA, where the evidence object of every answer is known (held-out seed 3)."""

import numpy as np
import pytest
import torch

import mmlens
from mmlens.data import ShapesVQA
from mmlens.layer.attention_knockout import position_groups
from mmlens.layer.causal_trace import causal_trace
from mmlens.model.targets import resolve_targets
from mmlens.neuron.scores import ablate_neurons, mlp_width, neuron_scores

SEED = 3


@pytest.fixture(scope="module")
def demo():
    return mmlens.load("demo")


def object_samples(n: int):
    out, i = [], 0
    ds = ShapesVQA(image_size=64, seed=SEED)
    while len(out) < n:
        s = ds.sample(i)
        i += 1
        if s.evidence == "object":
            out.append(s)
    return out


def evidence_positions(batch, mask: np.ndarray, min_cover: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Image positions whose cell is mostly evidence, and those that touch no evidence pixel."""
    grid = batch.geometry[0].grids[0]
    rows, cols = grid.shape
    ev, other = [], []
    for r in range(rows):
        for c in range(cols):
            x0, y0, x1, y1 = (round(v) for v in grid.cell_box(r, c))
            cover = mask[y0:y1, x0:x1].mean()
            (ev if cover >= min_cover else other if cover == 0 else []).append(int(grid.positions[r, c]))
    return torch.tensor(ev), torch.tensor(other)


def test_restoring_the_evidence_object_recovers_more_than_other_patches(demo):
    rng = np.random.default_rng(0)
    gains = []
    for s in object_samples(56):
        batch = demo.prepare(s.image, s.question, answer=s.answer)
        ev, other = evidence_positions(batch, s.mask)
        if ev.numel() == 0 or other.numel() < ev.numel():
            continue
        same_size = torch.tensor(rng.choice(other.numpy(), size=ev.numel(), replace=False))
        grid = causal_trace(demo, batch, layers=[0], positions={"evidence": ev, "other": same_size}, noise_scale=3.0)
        recovered = grid.values[0] / max(grid.meta["p_clean"] - grid.meta["p_corrupt"], 1e-6)
        gains.append(recovered.tolist())
    gains = np.array(gains)
    assert len(gains) >= 50
    evidence, other = gains[:, 0].mean(), gains[:, 1].mean()
    print(f"share of p recovered at layer 0: evidence {evidence:.3f}, other {other:.3f} ({len(gains)} samples)")
    assert evidence > other + 0.2


def test_knocking_out_image_to_last_attention_drops_accuracy_to_chance(demo):
    samples = list(ShapesVQA(image_size=64, seed=SEED).samples(120))
    clean, knocked = [], []
    for s in samples:
        batch = demo.prepare(s.image, s.question, answer=s.answer)
        target = resolve_targets(demo.tokenizer, batch, "answer")[0]
        groups = position_groups(batch, target)
        q = int(groups["last"][0])
        with torch.no_grad():
            clean.append(int(demo.forward(batch)[0, q].argmax()) == int(batch.answer_ids[0]))
            with demo.trace() as tr:
                tr.block_attention("lm.blocks.*.attn.weights", groups["last"], groups["image"])
                knocked.append(int(demo.forward(batch)[0, q].argmax()) == int(batch.answer_ids[0]))
    types = [s.question_type for s in samples]
    chance = np.mean([{"color": 1 / 5, "shape": 1 / 3, "exists": 1 / 2}[t] for t in types])
    print(f"accuracy clean {np.mean(clean):.3f}, image->last knocked out {np.mean(knocked):.3f}, chance {chance:.3f}")
    assert np.mean(clean) > 0.9
    assert np.mean(knocked) < chance + 0.15


def test_ablating_top_scored_neurons_hurts_more_than_random_ones(demo):
    rng = np.random.default_rng(0)
    width, layers = mlp_width(demo), demo.n_layers
    top_drop, random_drop = [], []
    for s in object_samples(20):
        batch = demo.prepare(s.image, s.question, answer=s.answer)
        top = [(layer, index) for layer, index, _ in neuron_scores(demo, batch).top(10)]
        rand = [(int(rng.integers(layers)), int(rng.integers(width))) for _ in range(10)]
        top_drop.append(-ablate_neurons(demo, batch, top)["delta"])
        random_drop.append(-ablate_neurons(demo, batch, rand)["delta"])
    print(f"p drop: top-10 neurons {np.mean(top_drop):.3f}, random 10 {np.mean(random_drop):.3f}")
    assert np.mean(top_drop) > 3 * max(np.mean(random_drop), 1e-3)
