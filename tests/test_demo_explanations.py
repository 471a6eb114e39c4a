"""On the trained demo model, explanation peaks fall on the evidence object (keeps issue #4 from regressing;
`mmlens benchmark` measures this fully)."""

import numpy as np
import pytest

import mmlens
from mmlens.data import ShapesVQA
from mmlens.evaluation.metrics.pointing_game import pointing_game

METHODS = ("relevancy", "attention", "saliency", "input_x_gradient", "gradcam", "attention_x_gradient")


@pytest.fixture(scope="module")
def hits():
    """Pointing-game hits per method over 100 held-out samples whose evidence is one object."""
    demo = mmlens.load("demo")
    ds = ShapesVQA(image_size=64, seed=5)
    samples = [s for s in ds.samples(200) if s.evidence == "object"][:100]
    out = {m: [] for m in METHODS}
    for s in samples:
        for m in METHODS:
            ex = mmlens.explain(demo, s.image, s.question, method=m, answer=s.answer, target="answer")
            out[m].append(pointing_game(ex.image_map(), s.mask, tolerance=2))
    return {m: float(np.mean(v)) for m, v in out.items()}, len(samples)


def test_relevancy_and_two_more_methods_point_at_the_evidence(hits):
    rates, n = hits
    print({m: round(r, 3) for m, r in rates.items()}, n)
    assert n == 100
    assert rates["relevancy"] >= 0.8
    assert sum(rates[m] >= 0.8 for m in METHODS if m != "relevancy") >= 2


def test_superpixel_occlusion_puts_most_of_its_mass_on_the_evidence():
    """Issue #5's bar (pointing >= 0.9 and energy in mask >= 0.6) on held-out samples: superpixels follow the
    objects' outlines, which token-resolution maps cannot (`python -m benchmarks.energy_ceiling`)."""
    from mmlens.evaluation.metrics.energy_pointing_game import energy_in_mask

    demo = mmlens.load("demo")
    samples = [s for s in ShapesVQA(image_size=64, seed=5).samples(100) if s.evidence == "object"][:40]
    energy, point = [], []
    for s in samples:
        ex = mmlens.explain(demo, s.image, s.question, method="occlusion", regions="slic", answer=s.answer,
                            target="answer")
        energy.append(energy_in_mask(ex.image_map(), s.mask))
        point.append(pointing_game(ex.image_map(), s.mask))
    print("energy", round(float(np.mean(energy)), 3), "pointing", round(float(np.mean(point)), 3))
    assert len(samples) == 40
    assert np.mean(point) >= 0.9 and np.mean(energy) >= 0.6
