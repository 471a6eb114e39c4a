"""The planted benchmark: ROAD imputation and metric, seeded bootstrap intervals, localisation against a sample's
``model_evidence`` (and the gap to the object), ``--suite planted`` files, rankings and one-line errors."""

import json

import numpy as np
import pytest
from conftest import subject_for
from PIL import Image
from typer.testing import CliRunner

from mmlens import InputError
from mmlens.cli import app
from mmlens.data.shapes_vqa import ShapesVQA
from mmlens.evaluation.benchmark import run_benchmark
from mmlens.evaluation.bootstrap import BootstrapMean, bootstrap_ci, sample_weights

runner = CliRunner()


# -- ROAD imputation ------------------------------------------------------------------------------------------
def test_road_imputation_equals_hand_computed_cases():
    from mmlens.evaluation.metrics.road import noisy_linear_impute

    # a row [0, ?, ?, 9]: x1 = (0 + x2) / 2, x2 = (x1 + 9) / 2 -> 3, 6 (only direct neighbours exist)
    row = noisy_linear_impute(np.array([[0.0, 5.0, 5.0, 9.0]]), np.array([[False, True, True, False]]), noise=0)
    assert row[0].tolist() == pytest.approx([0.0, 3.0, 6.0, 9.0])
    # 3 x 3, centre removed: 4 direct neighbours of 6 (weight 1/6), 4 corners of 0 or 12 (weight 1/12)
    img = np.zeros((3, 3))
    img[0, 1] = img[1, 0] = img[1, 2] = img[2, 1] = 6.0
    removed = np.zeros((3, 3), bool)
    removed[1, 1] = True
    assert noisy_linear_impute(img, removed, noise=0)[1, 1] == pytest.approx(4 * 6 / 6)
    img[0, 0] = img[2, 2] = 12.0
    assert noisy_linear_impute(img, removed, noise=0)[1, 1] == pytest.approx(4 + 2 * 12 / 12)
    # corner pixel removed: neighbours (0,1), (1,0) weight 1/6 each, (1,1) 1/12 -> weighted mean over 5/12
    corner = np.zeros((2, 2), bool)
    corner[0, 0] = True
    vals = np.array([[0.0, 3.0], [6.0, 12.0]])
    expect = (3 / 6 + 6 / 6 + 12 / 12) / (1 / 6 + 1 / 6 + 1 / 12)
    assert noisy_linear_impute(vals, corner, noise=0)[0, 0] == pytest.approx(expect)


def test_road_imputation_channels_noise_and_kept_pixels():
    from mmlens.evaluation.metrics.road import noisy_linear_impute

    rng = np.random.default_rng(0)
    arr = rng.uniform(0, 255, (12, 10, 3))
    removed = rng.random((12, 10)) < 0.4
    clean = noisy_linear_impute(arr, removed, noise=0)
    a, b = noisy_linear_impute(arr, removed, seed=3), noisy_linear_impute(arr, removed, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, noisy_linear_impute(arr, removed, seed=4))
    assert np.array_equal(a[~removed], arr[~removed]) and np.array_equal(clean[~removed], arr[~removed])
    assert 1.0 < np.std(a[removed] - clean[removed]) < 4.0  # noise 0.01 of the 0-255 range: std 2.55
    for c in range(3):  # each channel solved on its own: equals the single-channel solve
        assert np.allclose(clean[..., c], noisy_linear_impute(arr[..., c], removed, noise=0))
    # the imputation is a weighted mean of neighbours: within the kept values' range
    assert clean[removed].min() >= arr.min() - 1e-9 and clean[removed].max() <= arr.max() + 1e-9
    everything = noisy_linear_impute(arr, np.ones((12, 10), bool), noise=0)
    assert np.allclose(everything, arr.reshape(-1, 3).mean(0))


# -- bootstrap ------------------------------------------------------------------------------------------------
def test_bootstrap_intervals_are_reproducible_with_a_seed():
    values = np.random.default_rng(1).normal(0.5, 0.2, 40)
    a, b = bootstrap_ci(values, seed=7), bootstrap_ci(values, seed=7)
    assert a == b and bootstrap_ci(values, seed=8) != a
    assert a[0] < values.mean() < a[1]
    se = values.std(ddof=1) / np.sqrt(len(values))  # about 1.96 standard errors either side
    assert (a[1] - a[0]) == pytest.approx(2 * 1.96 * se, rel=0.2)
    # streamed in any order (an engine's shards) = the same interval
    acc = BootstrapMean()
    for i in reversed(range(len(values))):
        acc.add(values[i], sample_weights(7, i))
    assert acc.interval() == pytest.approx(a)
    wide = bootstrap_ci(values[:10], seed=7)
    assert wide[1] - wide[0] > a[1] - a[0]
    acc.add(float("nan"), sample_weights(7, 99))  # NaN scores are left out
    assert acc.interval() == pytest.approx(a)


# -- the suite on a user data file (tiny model) ---------------------------------------------------------------
def _data(tmp_path, n=3, with_model=True):
    ds = ShapesVQA(image_size=32, seed=2)
    rows, i = [], 0
    while len(rows) < n:
        s = ds.sample(i)
        i += 1
        if s.evidence != "object":
            continue
        k = len(rows)
        s.image.save(tmp_path / f"{k}.png")
        Image.fromarray(s.mask.astype(np.uint8) * 255).save(tmp_path / f"{k}_m.png")
        row = {"image": f"{k}.png", "question": s.question, "answer": s.answer, "mask": f"{k}_m.png"}
        if with_model:
            row["model_evidence"] = [0, 0, 6, 6]  # a corner "trigger"
        rows.append((row, s.mask))
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r, _ in rows) + "\n")
    return tmp_path / "data.jsonl", [m for _, m in rows]


def test_planted_suite_scores_the_model_evidence_and_writes_the_leaderboard(tmp_path):
    lm = subject_for("llava")
    path, masks = _data(tmp_path)
    res = run_benchmark(lm, suite="planted", methods="saliency", data=path, n=3, sanity_n=1,
                        metrics="pointing_game,energy_in_mask,road", out=tmp_path / "out", command="cmd")
    run = res.variants["data"]
    assert run.meta["n_model_evidence"] == 3 and run.meta["n_conflict"] == 3
    uniform = next(r for r in run.rows if r["method"] == "baseline:uniform")
    trigger = 36 / 1024
    object_share = np.mean([m.mean() for m in masks])
    # a flat map scores each mask's area share: the gap is the area difference, by hand
    assert uniform["pointing_game@model"] == pytest.approx(trigger)
    assert uniform["pointing_game@gap"] == pytest.approx(trigger - object_share)
    saliency = run.rows[0]
    for key in ("pointing_game", "pointing_game@model", "pointing_game@gap", "energy_in_mask@model", "road",
                "road:drop", "road:random_drop"):
        lo, hi = saliency[f"{key}_ci"]
        assert lo <= saliency[key] + 1e-12 and saliency[key] <= hi + 1e-12, key
    assert saliency["road"] == pytest.approx(saliency["road:drop"] - saliency["road:random_drop"])
    assert res.verdicts(run)["baseline:random"] == "(chance)"
    out = tmp_path / "out"
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (out / "leaderboard.svg").read_bytes()[:400]
    md = (out / "planted.md").read_text()
    assert "pointing game gap (model - object)" in md and "map follows" in md and "cmd" in md
    assert "data,tiny-llava" in (out / "planted.csv").read_text().replace(str(lm.model_id), "tiny-llava")
    assert (out / "data" / "results.md").is_file()


def test_rankings_spearman_and_verdicts():
    from mmlens.evaluation.planted import PlantedResult, _rho

    class Run:
        def __init__(self, rows):
            self.rows, self.metrics = rows, [{"name": "pointing_game", "category": "localisation"}]
            self.meta = {"n_conflict": 3}

    def row(name, obj, model, gap_ci):
        return {"method": name, "kind": "method", "pointing_game": obj, "pointing_game@model": model,
                "pointing_game@gap": model - obj, "pointing_game@gap_ci": gap_ci}

    a = Run([row("a", 0.9, 0.1, [-0.9, -0.7]), row("b", 0.5, 0.5, [-0.2, 0.3]), row("c", 0.1, 0.9, [0.6, 0.9]),
             {"method": "baseline:random", "kind": "baseline", "pointing_game": 0.5, "pointing_game@model": 0.5}])
    assert _rho(a, "pointing_game", a, "pointing_game@model") == pytest.approx(-1.0)
    result = PlantedResult(a, {"v": a}, {})
    assert result.spearman() == [{"variant": "v", "metric": "pointing_game", "rho_reference": pytest.approx(-1.0),
                                  "rho_same_samples": pytest.approx(-1.0)}]
    assert _rho(a, "pointing_game", a, "pointing_game") == pytest.approx(1.0)
    a.meta["n_conflict"] = 0  # the masks agree on every sample: the same-samples ranking is not a comparison
    assert np.isnan(result.spearman()[0]["rho_same_samples"])
    assert result.verdicts(a) == {"a": "the object", "b": "unclear", "c": "model's evidence",
                                  "baseline:random": "(chance)"}


def test_bad_suite_variant_and_rows_without_model_evidence(tmp_path):
    lm = subject_for("llava")
    with pytest.raises(InputError, match="unknown suite 'plant': choose one of default, planted"):
        run_benchmark(lm, suite="plant", n=2)
    with pytest.raises(InputError, match="unknown planted variant 'trojan': choose from trigger, shortcut"):
        run_benchmark(lm, suite="planted", variants="trojan", n=2)
    path, _ = _data(tmp_path, n=2, with_model=False)
    out = tmp_path / "out"
    result = runner.invoke(app, ["benchmark", "--suite", "planted", "--model", "demo", "--data", str(path),
                                 "--n", "2", "--out", str(out)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"{path}, line 1: no model_evidence" in lines[0], result.output
    assert not out.exists()
    result = runner.invoke(app, ["benchmark", "--suite", "nope", "--n", "2", "--out", str(out)])
    assert result.exit_code == 2 and "choose one of default, planted" in result.output
    result = runner.invoke(app, ["benchmark", "--variants", "trigger", "--n", "2", "--out", str(out)])
    assert result.exit_code == 2 and "--suite planted" in result.output


def test_road_removing_the_evidence_drops_the_answer_more_than_random_pixels():
    import mmlens
    from mmlens.evaluation.baselines import baseline_explanation
    from mmlens.evaluation.metrics.road import road

    lm = mmlens.load("demo")
    ds = ShapesVQA(image_size=64, seed=4, question_types=("color",))
    gaps, flats = [], []
    unique = [s for s in ds.samples(8) if sum(o["color"] == s.answer for o in s.objects) == 1]
    for i, s in enumerate(unique[:3]):  # the answer's colour is on one object only (no redundant evidence)
        ex = baseline_explanation(lm, lm.prepare(s.image, s.question, answer=s.answer), "uniform", seed=i)
        out = road(lm, ex, heat=s.mask.astype(float), seed=i)
        assert out.score == pytest.approx(np.mean(np.subtract(out.drops, out.random_drops)))
        gaps.append(out.score)
        flats.append(road(lm, ex, seed=i).score)  # the flat map: ties in a random order, chance
    assert min(gaps) > 0.3, gaps  # imputing the object's pixels removes its colour; random pixels do not
    assert max(abs(f) for f in flats) < 0.1, flats


def test_two_part_model_evidence_scores_the_weakest_part(tmp_path):
    lm = subject_for("llava")
    s = ShapesVQA(image_size=32, seed=0).sample(0)
    s.image.save(tmp_path / "img.png")
    both = np.zeros((32, 32), bool)
    both[0:4, 0:4] = True  # 16 px
    both[20:30, 20:30] = True  # 100 px
    Image.fromarray(both.astype(np.uint8) * 255).save(tmp_path / "both.png")
    row = {"image": "img.png", "question": "what color is the square ?", "answer": "red", "box": [0, 0, 32, 16],
           "model_evidence": "both.png"}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    res = run_benchmark(lm, methods="saliency", data=tmp_path / "d.jsonl", n=1, sanity_n=0,
                        metrics="pointing_game,energy_in_mask", require_model_evidence=True)
    uniform = next(r for r in res.rows if r["method"] == "baseline:uniform")
    assert uniform["energy_in_mask@model"] == pytest.approx(116 / 1024)
    assert uniform["energy_in_mask@weakest"] == pytest.approx(16 / 1024)  # the smaller part's area share
    assert "pointing_game@weakest" not in uniform  # one peak cannot be in two parts
    assert res.meta["n_conflict"] == 1  # the larger part lies outside the object's box


def test_planted_splits_run_through_the_benchmark_and_every_variant_is_shipped():
    from mmlens.evaluation.planted import resolve_variants

    assert [v.name for v in resolve_variants(None)][:3] == ["trigger", "shortcut", "twoobject"]
    lm = subject_for("llava")
    res = run_benchmark(lm, methods="saliency", split="trigger-flip", n=2, sanity_n=0, metrics="pointing_game")
    assert res.meta["n_model_evidence"] == 2 and res.meta["n_conflict"] == 2
    ds = ShapesVQA(image_size=32, split="trigger-flip")
    share = np.mean([ds.sample(i).model_evidence.mean() for i in range(2)])
    uniform = next(r for r in res.rows if r["method"] == "baseline:uniform")
    assert uniform["pointing_game@model"] == pytest.approx(share)


def test_a_saved_suite_loads_back_with_the_same_tables(tmp_path):
    from mmlens.evaluation.planted import PlantedResult

    lm = subject_for("llava")
    path, _ = _data(tmp_path, n=2)
    res = run_benchmark(lm, suite="planted", methods="gradcam", data=path, n=2, sanity_n=0,
                        metrics="pointing_game,energy_in_mask", out=tmp_path / "out")
    back = PlantedResult.load(tmp_path / "out")
    assert back.to_markdown() == res.to_markdown() and back.to_csv() == res.to_csv()
    with pytest.raises(InputError, match="planted.json' not found: pass the --out folder"):
        PlantedResult.load(tmp_path)
