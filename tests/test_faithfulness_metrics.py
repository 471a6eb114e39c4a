"""Model-based metrics (deletion / insertion, max-sensitivity), baselines and data files, on hand-made cases
with known answers (the randomisation check: test_randomisation.py)."""

import json

import numpy as np
import pytest
import torch
from conftest import lazy_metric, subject_for
from PIL import Image

import mmlens
from mmlens import InputError
from mmlens.attribution.perturbation_masks import (
    baseline_array,
    blend,
    cell_index_map,
    image_array,
)
from mmlens.data.shapes_vqa import ShapesVQA
from mmlens.demo import DEMO_MODEL_DIR
from mmlens.evaluation.baselines import (
    BASELINE_NAMES,
    baseline_explanation,
    centre_bias_map,
    random_map,
    uniform_map,
)
from mmlens.evaluation.data_file import read_data_file
from mmlens.testing import tiny_subject

PROMPT = "what color is the square ?"

curve_points, deletion, insertion, patch_order = (lazy_metric("deletion_insertion", f) for f in
                                                  ("curve_points", "deletion", "insertion", "patch_order"))
max_sensitivity, relative_change = (lazy_metric("max_sensitivity", f) for f in ("max_sensitivity", "relative_change"))
rank_correlation = lazy_metric("randomisation", "rank_correlation")


# -- a tiny LLaVA whose answer provably depends on one known patch ------------------------------------------
J, CELLS = 5, 4  # patch (row 1, col 1) of the 4 x 4 grid of 8 x 8 pixels = CLIP patch 5


@pytest.fixture(scope="module")
def isolated():
    """Tiny LLaVA (32 x 32 input, 8 px patches = the 4 x 4 metric grid) made so that only patch J reaches the
    language model: vision attention is switched off (each vision token sees only its own patch) and a hook
    on the projector copies image token J into every image position. The answer token is the one whose log-prob
    falls most when patch J is deleted, so deleting J lowers the answer's probability and nothing else changes it."""
    lm = tiny_subject("llava", seed=1)
    with torch.no_grad():
        for block in lm.adapter.parts().vision_blocks:
            block.self_attn.out_proj.weight.zero_()
            block.self_attn.out_proj.bias.zero_()
    lm.adapter.parts().projector.register_forward_hook(lambda m, i, o: o[:, J:J + 1].expand_as(o).clone())
    img = ShapesVQA(image_size=32, seed=0).sample(0).image
    idx = cell_index_map(img.size, CELLS)
    deleted = blend(image_array(img), baseline_array(img, "mean"), (idx != J).astype(np.float32))
    with torch.no_grad():
        logp = [lm.forward(lm.prepare(im, PROMPT))[0, -1].log_softmax(-1) for im in (img, deleted)]
    tok = int((logp[0] - logp[1]).argmax())
    p0, pd = float(logp[0][tok].exp()), float(logp[1][tok].exp())
    ex = baseline_explanation(lm, lm.prepare(img, PROMPT, answer=[tok]), "uniform")
    first = (idx == J).astype(np.float32)  # ranks patch J first, every other patch ties at 0
    return lm, ex, first, p0, pd


def test_map_ranking_the_evidence_first_deletes_faster(isolated):
    lm, ex, first, p0, pd = isolated
    assert p0 > pd * 1.05  # deleting patch J lowers the answer's probability
    good, bad = deletion(lm, ex, heat=first, cells=CELLS), deletion(lm, ex, heat=-first, cells=CELLS)
    n = CELLS * CELLS
    assert good.order[0] == J and bad.order[-1] == J
    # known curves: the probability changes exactly when patch J goes, never otherwise
    np.testing.assert_allclose(good.values, [p0] + [pd] * n, rtol=1e-4)
    np.testing.assert_allclose(bad.values, [p0] * n + [pd], rtol=1e-4)
    assert good.auc == pytest.approx((p0 + pd) / (2 * n) + pd * (n - 1) / n, rel=1e-4)
    assert bad.auc == pytest.approx(p0 * (n - 1) / n + (p0 + pd) / (2 * n), rel=1e-4)
    assert good.auc < bad.auc
    assert good.fractions == [k / n for k in range(n + 1)]


def test_map_ranking_the_evidence_first_inserts_faster(isolated):
    lm, ex, first, p0, pd = isolated
    good, bad = insertion(lm, ex, heat=first, cells=CELLS), insertion(lm, ex, heat=-first, cells=CELLS)
    n = CELLS * CELLS
    np.testing.assert_allclose(good.values, [pd] + [p0] * n, rtol=1e-4)
    np.testing.assert_allclose(bad.values, [pd] * n + [p0], rtol=1e-4)
    assert good.auc > bad.auc
    # steps: fewer curve points, same end points
    coarse = insertion(lm, ex, heat=first, cells=CELLS, steps=4)
    assert coarse.fractions == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert coarse.values[0] == pytest.approx(pd, rel=1e-4) and coarse.values[-1] == pytest.approx(p0, rel=1e-4)


def _count_forwards(model):
    """A forward hook on the top-level model counting its calls; returns (counter, handle)."""
    calls = {"n": 0}

    def hook(*_):
        calls["n"] += 1

    return calls, model.register_forward_hook(hook)


def test_deletion_is_one_batched_forward_and_equals_unbatched_runs(isolated):
    """17 curve points (16 patches + none removed) go through the model in ceil(17 / batch_size) forwards,
    counted with a forward hook, and the batched values equal one-image-per-forward runs."""
    lm, ex, first, p0, pd = isolated
    results = {}
    for batch_size, forwards in ((64, 1), (5, 4), (1, 17)):
        calls, handle = _count_forwards(lm.model)
        try:
            results[batch_size] = deletion(lm, ex, heat=first, cells=CELLS, batch_size=batch_size)
        finally:
            handle.remove()
        assert calls["n"] == forwards, (batch_size, calls["n"])
    np.testing.assert_allclose(results[64].values, results[1].values, rtol=1e-5)
    np.testing.assert_allclose(results[5].values, results[1].values, rtol=1e-5)
    # and one point recomputed by hand: patch J removed, one plain forward of that image
    img = ex.images[0]
    idx = cell_index_map(img.size, CELLS)
    deleted = blend(image_array(img), baseline_array(img, "mean"), (idx != J).astype(np.float32))
    with torch.no_grad():
        logp = lm.forward(lm.prepare(deleted, PROMPT, answer=ex.metadata["answer"]))[0, -2].log_softmax(-1)
    assert results[1].values[1] == pytest.approx(float(logp[ex.metadata["answer"][0]].exp()), rel=1e-4)


def test_pixel_order_follows_petsiuk_and_matches_a_direct_computation(isolated):
    """order="pixel" ranks single pixels (Petsiuk et al.): each curve point equals a forward of the image with
    the top-k pixels of the map set to the baseline (black for deletion, blur for insertion), built here with
    numpy alone."""
    lm, ex, *_ = isolated
    img = ex.images[0]
    heat = np.random.default_rng(5).random((img.height, img.width))  # no ties
    top_first = np.argsort(-heat.ravel())
    tok = ex.metadata["answer"][0]
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    for mode, base_name in (("deletion", "black"), ("insertion", "blur")):
        got = (deletion if mode == "deletion" else insertion)(lm, ex, heat=heat, order="pixel", steps=4,
                                                              baseline=base_name)
        n = heat.size
        assert got.unit == "pixel" and got.fractions == [0.0, 0.25, 0.5, 0.75, 1.0]
        base = np.zeros_like(arr) if base_name == "black" else baseline_array(img, "blur")
        want = []
        for frac in got.fractions:
            top = np.zeros(n, bool)
            top[top_first[: round(frac * n)]] = True
            top = top.reshape(heat.shape)[..., None]
            shown = np.where(top, base, arr) if mode == "deletion" else np.where(top, arr, base)
            image = Image.fromarray(np.clip(np.rint(shown), 0, 255).astype(np.uint8))
            with torch.no_grad():
                logp = lm.forward(lm.prepare(image, PROMPT, answer=[tok]))[0, -2].log_softmax(-1)
            want.append(float(logp[tok].exp()))
        np.testing.assert_allclose(got.values, want, rtol=1e-4)
        assert got.auc == pytest.approx(np.trapezoid(want, got.fractions), rel=1e-4)
    with pytest.raises(InputError, match="order"):
        deletion(lm, ex, heat=heat, order="zigzag")


def test_patch_order_and_curve_points():
    heat = np.zeros((8, 8))
    heat[4:, :4] = 2.0
    heat[:4, 4:] = 1.0
    assert patch_order(heat, 2)[:2].tolist() == [2, 1]
    # ties are broken by a seeded random order, not reading order
    flat = np.ones((8, 8))
    orders = {tuple(patch_order(flat, 4, seed=s)) for s in range(5)}
    assert len(orders) == 5 and patch_order(flat, 4, seed=3).tolist() == patch_order(flat, 4, seed=3).tolist()
    assert curve_points(64, None) == list(range(65)) and curve_points(64, 8)[:3] == [0, 8, 16]
    with pytest.raises(InputError, match="NaN"):
        patch_order(np.full((4, 4), np.nan), 2)


def test_deletion_bad_options(isolated):
    lm, ex, first, *_ = isolated
    with pytest.raises(InputError, match="baseline"):
        deletion(lm, ex, heat=first, cells=CELLS, baseline="pink")
    with pytest.raises(InputError, match="map shape"):
        deletion(lm, ex, heat=np.zeros((3, 3)))


@pytest.mark.skipif(not (DEMO_MODEL_DIR / "config.json").is_file(),
                    reason="the trained demo model is not in src/mmlens/demo/model yet (python -m mmlens.demo.train)")
def test_demo_mask_map_deletes_faster_than_reverse():
    lm = mmlens.load("demo")
    size = lm.processor.image_processor.crop_size["height"]
    samples = [s for s in ShapesVQA(image_size=size, seed=7).samples(12) if s.evidence == "object"][:4]
    good_d, bad_d, good_i, bad_i = [], [], [], []
    for s in samples:  # the ground-truth mask as the map, against its reverse
        ex = baseline_explanation(lm, lm.prepare(s.image, s.question, answer=s.answer), "uniform")
        heat = s.mask.astype(np.float32)
        good_d.append(deletion(lm, ex, heat=heat, steps=16).auc)
        bad_d.append(deletion(lm, ex, heat=-heat, steps=16).auc)
        good_i.append(insertion(lm, ex, heat=heat, steps=16).auc)
        bad_i.append(insertion(lm, ex, heat=-heat, steps=16).auc)
    # measured on the shipped model: 0.07 vs 0.96 (deletion) and 0.96 vs 0.06 (insertion)
    assert np.mean(good_d) + 0.3 < np.mean(bad_d)
    assert np.mean(good_i) > np.mean(bad_i) + 0.3


# -- randomisation -------------------------------------------------------------------------------------------
def test_rank_correlation_cases():
    x = np.arange(16.0).reshape(4, 4)
    assert rank_correlation(x, x) == 1.0
    assert rank_correlation(x, -x, absolute=False) == -1.0
    assert rank_correlation(x, -x) == 1.0  # absolute values: same magnitudes, same ranks
    assert rank_correlation(np.ones((4, 4)), np.ones((4, 4))) == 1.0
    assert rank_correlation(np.ones((4, 4)), x) == 0.0
    assert np.isnan(rank_correlation(np.full((4, 4), np.nan), x))


# -- max-sensitivity -------------------------------------------------------------------------------------------
def test_max_sensitivity_known_cases():
    lm = subject_for("llava")
    s = ShapesVQA(image_size=32, seed=0).sample(3)
    batch = lm.prepare(s.image, s.question, answer="red")
    # a map that ignores the input does not move at all
    assert max_sensitivity(lm, baseline_explanation(lm, batch, "random", seed=1)).score == 0.0
    assert max_sensitivity(lm, baseline_explanation(lm, batch, "uniform")).score == 0.0
    ex = mmlens.explain(lm, s.image, s.question, method="saliency", target="answer", answer="red")
    out = max_sensitivity(lm, ex, n=3, radius=6.0, seed=2)
    # the Monte Carlo maximum, recomputed: the same three draws from the L-inf ball, explained and compared here
    rng = np.random.default_rng(2)
    arr = np.asarray(s.image.convert("RGB"), dtype=np.float64)
    ref = ex.image_map()
    want = []
    for _ in range(3):
        noisy = np.clip(np.rint(arr + rng.uniform(-6.0, 6.0, arr.shape)), 0, 255).astype(np.uint8)
        new = mmlens.explain(lm, Image.fromarray(noisy), s.question, method="saliency", target="answer",
                             answer=ex.metadata["answer"]).image_map()
        want.append(np.linalg.norm(new - ref) / np.linalg.norm(ref))
    np.testing.assert_allclose(out.ratios, want, rtol=1e-5)
    assert out.score == pytest.approx(max(want), rel=1e-5) and out.score > 0
    assert relative_change(np.array([3.0, 4.0]), np.array([0.0, 5.0])) == pytest.approx(np.sqrt(10) / 5)
    assert np.isnan(relative_change(np.ones(4), np.zeros(4)))  # an all-zero map: declared NaN
    with pytest.raises(InputError, match="radius"):
        max_sensitivity(lm, ex, radius=0)


def test_max_sensitivity_samples_uniformly_in_the_linf_ball():
    """Yeh et al. draw the perturbed input uniformly from the L-inf ball of radius r: no pixel moves by more
    than r, and after rounding each offset -3..3 of r = 3.5 is equally likely (1/7); Gaussian noise of std r
    moves about 32 % of the values by more than r."""
    from mmlens.evaluation.metrics.max_sensitivity import noisy_image

    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    diffs = np.concatenate([
        (np.asarray(noisy_image(grey, 3.5, np.random.default_rng(i)), np.int64) - 128).ravel() for i in range(5)])
    assert np.abs(diffs).max() <= 3
    freq = np.bincount(diffs + 3, minlength=7) / diffs.size
    np.testing.assert_allclose(freq, np.full(7, 1 / 7), atol=0.01)


# -- baselines -------------------------------------------------------------------------------------------------
def test_baseline_maps():
    c = centre_bias_map((9, 7))
    assert np.unravel_index(c.argmax(), c.shape) == (3, 4) and c.shape == (7, 9)
    assert np.array_equal(random_map((5, 4), 2), random_map((5, 4), 2)) and not np.array_equal(
        random_map((5, 4), 2), random_map((5, 4), 3))
    assert uniform_map((3, 2)).tolist() == [[1, 1, 1], [1, 1, 1]]
    lm = subject_for("llava")
    batch = lm.prepare(ShapesVQA(image_size=32, seed=0).sample(0).image, PROMPT, answer="red")
    for name in BASELINE_NAMES:
        ex = baseline_explanation(lm, batch, name, seed=4)
        assert ex.method == name and ex.image_map().shape == (32, 32) and ex.targets == ["red"]
    centre = baseline_explanation(lm, batch, "centre").grid_map()
    assert centre[1:3, 1:3].min() > centre[0].max()  # pooled onto the 4 x 4 token grid
    with pytest.raises(InputError, match="unknown baseline"):
        baseline_explanation(lm, batch, "zebra")


# -- user data files -------------------------------------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path):
    Image.new("RGB", (40, 30), (200, 200, 200)).save(tmp_path / "a.png")
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 10:20] = 255
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    Image.fromarray(np.zeros((10, 10), np.uint8) + 255).save(tmp_path / "small_mask.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    return tmp_path


def _write(folder, rows):
    path = folder / "data.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {"image": "a.png", "question": "what color is the square?", "answer": "red", "box": [10, 5, 20, 15]}


def test_data_file_reads_masks_and_boxes(data_dir):
    rows = [GOOD, "", {"image": "a.png", "question": "q?", "answer": "blue", "mask": "a_mask.png"}]
    data = read_data_file(_write(data_dir, rows))
    assert len(data) == 2
    a, b = list(data)
    assert a.image.size == (40, 30) and a.mask.sum() == 100 and a.box == (10, 5, 20, 15)
    assert b.line == 3 and b.mask.sum() == 100 and b.box == (10, 5, 20, 15) and b.evidence == "object"


@pytest.mark.parametrize("bad, message", [
    ({"image": "a.png", "answer": "red", "box": [0, 0, 4, 4]}, "missing field.*question"),
    ({"image": "a.png", "question": "q?", "answer": "red"}, "missing field.*mask or box"),
    ({**GOOD, "image": "nope.png"}, "not found"),
    ({**GOOD, "image": "broken.png"}, "not a readable image"),
    ({"image": "a.png", "question": "q?", "answer": "red", "mask": "small_mask.png"}, "10x10 but its image is 40x30"),
    ({"image": "a.png", "question": "q?", "answer": "red", "mask": "broken.png"}, "not a readable image"),
    ({**GOOD, "box": [10, 5, 45, 15]}, "outside the 40x30 image"),
    ({**GOOD, "box": [-1, 5, 20, 15]}, "outside"),
    ({**GOOD, "box": [10, 5]}, "not \\[x0, y0, x1, y1\\]"),
    ({**GOOD, "answer": ""}, "'answer' must be a non-empty string"),
    ("{not json", "not valid JSON"),
])
def test_bad_data_file_names_file_and_line(data_dir, bad, message):
    path = _write(data_dir, [GOOD, bad])
    with pytest.raises(InputError, match=message) as err:
        read_data_file(path)
    text = str(err.value)
    assert text.startswith(f"{path}, line 2: ") and "\n" not in text


def test_empty_or_missing_data_file(data_dir):
    with pytest.raises(InputError, match="no rows"):
        read_data_file(_write(data_dir, [""]))
    with pytest.raises(InputError, match="not found"):
        read_data_file(data_dir / "missing.jsonl")
