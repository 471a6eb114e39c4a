"""``run_benchmark`` and ``mmlens benchmark``: every method and baseline in the table, files written whole or
not at all, reproducible numbers, user data files, one-line errors."""

import csv
import json

import numpy as np
import pytest
import torch
from conftest import subject_for
from PIL import Image
from typer.testing import CliRunner

import mmlens
from mmlens import InputError
from mmlens.cli import app
from mmlens.data.shapes_vqa import ShapesVQA
from mmlens.evaluation.baselines import BASELINE_NAMES
from mmlens.evaluation.benchmark import run_benchmark, shapes_image_size
from mmlens.evaluation.benchmark_result import OUTPUT_FILES
from mmlens.testing.tiny_models import tiny_model_and_processor

runner = CliRunner()
FAST = ["saliency", "gradcam", "occlusion"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llava_bench")
    model, processor = tiny_model_and_processor("llava")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


#: One method per way an attribution map is made: the default suite benchmarks these, `--methods all` (every
#: method, about 5x the time) runs in the slow suite.
ONE_PER_KIND = {
    "saliency": "gradient of the LM's input embeddings",
    "occlusion": "black box: perturbed images scored in batches",
    "pixel_saliency": "gradient of the original pixels through the image processor",
    "attention": "attention weights, no gradient",
    "gradcam": "attention x gradient inside the LM",
    "vision_gradcam": "the vision tower's own patch rows",
}


def test_the_default_benchmark_methods_cover_every_kind_of_method():
    every = mmlens.methods(kind="attribution")
    chosen = [m for m in every if m.name in ONE_PER_KIND]
    assert len(chosen) == len(ONE_PER_KIND) and set(FAST) <= set(ONE_PER_KIND)
    assert {m.tier for m in chosen} == {m.tier for m in every}  # gradient, black-box, attention
    assert {m.leaf for m in chosen} == {m.leaf for m in every}
    # maps read off the vision tower's patches / the original pixels, not the LM's image tokens
    assert {m.name.split("_")[0] for m in every} & {"vision", "pixel"} <= {m.name.split("_")[0] for m in chosen}


@pytest.mark.parametrize("methods, n", [pytest.param(",".join(ONE_PER_KIND), 8, id="one-per-kind"),
                                        pytest.param("all", 20, id="all-n20", marks=pytest.mark.slow)])
def test_cli_benchmark_writes_every_method_and_baseline(tmp_path, tiny_dir, methods, n):
    out = tmp_path / "bench"
    result = runner.invoke(app, ["benchmark", "--model", str(tiny_dir), "--methods", methods, "--n", str(n),
                                 "--sanity-n", "1", "--cells", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    every = [m.name for m in mmlens.methods(kind="attribution")]
    assert len(every) >= 14 and set(FAST) <= set(every)
    chosen = every if methods == "all" else methods.split(",")
    assert [r["method"] for r in rows] == chosen + list(BASELINE_NAMES)
    for r in rows:
        assert r["n"] == str(n) and int(r["n_localisation"]) < n and r["n_sanity"] == "1" and r["failures"] == "0"
        for key in ("pointing_game", "energy_in_mask", "topk_iou", "sparseness", "deletion", "insertion",
                    "randomisation", "max_sensitivity", "seconds_per_explanation"):
            assert r[key] != "" and np.isfinite(float(r[key])), (r["method"], key)
        assert r["sanity"] in ("pass", "fail")
    assert all(r["sanity"] == "fail" for r in rows if r["kind"] == "baseline")  # a baseline ignores the model
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["n"] == n and set(data["curves"]) == set(chosen) | set(BASELINE_NAMES)
    assert len(data["curves"]["gradcam"]["deletion"]) == len(data["fractions"]["deletion"]) == 17
    md = (out / "results.md").read_text()
    assert "deletion AUC ↓" in md and "insertion AUC ↑" in md and "pointing game ↑" in md
    assert "lower is better" in md and "Sanity check: pass" in md and "| fail |" in md
    assert "whose evidence is one object" in md and "mmlens benchmark --model" in md and "--cells 4" in md
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "baseline:random" in result.output  # the table is printed


def test_benchmark_is_reproducible_and_localises_only_object_samples():
    lm = subject_for("llava")
    kwargs = {"methods": ["saliency"], "n": 6, "seed": 3, "sanity_n": 1,
              "metric_options": {"deletion": {"cells": 4}, "insertion": {"cells": 4}}}
    a, b = run_benchmark(lm, **kwargs), run_benchmark(lm, **kwargs)
    strip = [{k: v for k, v in r.items() if k != "seconds_per_explanation"} for r in a.rows]
    assert strip == [{k: v for k, v in r.items() if k != "seconds_per_explanation"} for r in b.rows]
    assert a.curves == b.curves and a.randomisation == b.randomisation
    objects = sum(s.evidence == "object" for s in ShapesVQA(image_size=32, seed=3).samples(6))
    assert a.meta["n_localisation"] == objects < 6
    assert a.fractions["deletion"] == [k / 16 for k in range(17)]
    assert shapes_image_size(lm) == 32
    # streaming: one mean curve per (method, metric), whatever n
    assert {len(v["deletion"]) for v in a.curves.values()} == {17}


def test_benchmark_on_a_user_data_file(tmp_path):
    lm = subject_for("llava")
    sample = ShapesVQA(image_size=40, seed=0).sample(0)
    sample.image.save(tmp_path / "img.png")
    Image.fromarray(sample.mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    rows = [{"image": "img.png", "question": "what color is the square ?", "answer": "red", "mask": "mask.png"},
            {"image": "img.png", "question": "what color is the cat ?", "answer": "blue", "box": [0, 0, 20, 20]}]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    res = run_benchmark(lm, methods="gradcam", n=200, data=tmp_path / "data.jsonl", sanity_n=0,
                        metrics=["pointing_game", "energy_in_mask", "deletion"], out=tmp_path / "out")
    assert res.meta["n"] == 2 and res.meta["n_localisation"] == 2
    assert [r["method"] for r in res.rows] == ["gradcam", *BASELINE_NAMES]
    assert all(r["n"] == 2 and r["failures"] == 0 for r in res.rows)
    assert "randomisation" not in res.rows[0] and "sanity" not in res.rows[0]
    uniform = res.rows[-1]
    assert uniform["energy_in_mask"] == pytest.approx(np.mean([sample.mask.mean(), 400 / 1600]))
    assert (tmp_path / "out" / "results.csv").is_file()


def test_unknown_metric_or_method_fails_before_any_work(tmp_path):
    lm = subject_for("llava")
    with pytest.raises(InputError, match="unknown metric 'faithfulnes'"):
        run_benchmark(lm, methods="saliency", n=2, metrics=["faithfulnes"], out=tmp_path / "a")
    with pytest.raises(InputError, match="unknown method 'salency'"):
        run_benchmark(lm, methods="salency", n=2, out=tmp_path / "a")
    with pytest.raises(InputError, match="not an attribution method"):
        run_benchmark(lm, methods="logit_lens", n=2, out=tmp_path / "a")
    with pytest.raises(InputError, match="has no option 'cellz'"):
        run_benchmark(lm, methods="saliency", n=2, metric_options={"deletion": {"cellz": 2}})
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("args, message", [
    (["--metrics", "pointing_game,nope"], "unknown metric 'nope'"),
    (["--methods", "saliency,nope"], "unknown method 'nope'"),
    (["--data", "DATA"], "line 1: missing field(s) answer"),
    (["--cells", "0"], "cells=0 is out of range"),
    (["--methods", "occlusion:regions=slic:stride"], "option 'stride' is not key=value"),
    (["--methods", "occlusion:strde=2"], "has no option 'strde'"),
    (["--methods", "occlusion:regions=voronoi"], "method 'occlusion:regions=voronoi': regions='voronoi'"),
])
def test_cli_bad_input_exits_2_with_one_line_and_no_files(tmp_path, tiny_dir, args, message):
    (tmp_path / "data.jsonl").write_text(json.dumps({"image": "x.png", "question": "q", "box": [0, 0, 1, 1]}) + "\n")
    args = [str(tmp_path / "data.jsonl") if a == "DATA" else a for a in args]
    out = tmp_path / "out"
    result = runner.invoke(app, ["benchmark", "--model", str(tiny_dir), "--n", "2", "--out", str(out), *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not out.exists()


def test_method_specs_are_rows_of_their_own_with_their_options():
    lm = subject_for("llava")
    res = run_benchmark(lm, methods="occlusion,all,occlusion:regions=slic:n_segments=12", n=2, sanity_n=0,
                        metrics=["energy_in_mask", "sparseness"], baselines=False)
    names = [r["method"] for r in res.rows]
    assert names[0] == "occlusion" and names[-1] == "occlusion:regions=slic:n_segments=12"
    assert names.count("occlusion") == 1 and "lime" in names and len(names) == len(set(names))
    rows = {r["method"]: r for r in res.rows}
    windows, superpixels = rows["occlusion"], rows["occlusion:regions=slic:n_segments=12"]
    assert windows["n"] == superpixels["n"] == 2 and superpixels["failures"] == 0
    assert windows["sparseness"] != superpixels["sparseness"]  # the options reached the method
    ex = mmlens.explain(lm, ShapesVQA(image_size=32, seed=0).sample(0).image, "what is it ?", method="occlusion",
                        answer="red", regions="slic", n_segments=12)
    assert ex.metadata["options"]["regions"] == "slic"


def test_a_failing_method_is_counted_and_reported():
    import mmlens.catalog as registry
    from mmlens.attribution.output import MethodOutput

    @registry.register_method("_test_fails_on_odd_samples", "data/input-output", "black-box", "test only")
    def _odd(subject, batch, targets):
        if "square" in batch.prompt:
            raise RuntimeError("no squares")
        import torch as t

        return MethodOutput(t.rand(len(targets), batch.seq_len))

    try:
        res = run_benchmark(subject_for("llava"), methods="_test_fails_on_odd_samples", n=6, sanity_n=0,
                            metrics=["pointing_game"], baselines=False)
    finally:
        registry._REGISTRY.pop("_test_fails_on_odd_samples", None)
    squares = sum("square" in s.question for s in ShapesVQA(image_size=32, seed=0).samples(6))
    row = res.rows[0]
    assert 0 < squares < 6 and row["n"] == 6 - squares and row["failures"] == squares
    assert "RuntimeError: no squares" in res.failures()[0] and "Failures" in res.to_markdown()


def test_nan_scores_are_counted_and_degenerate_maps_declared(tmp_path):
    """An all-zero map on the "square" samples: max-sensitivity is undefined there (declared "nan"): those
    samples are counted in the NaN column and left out of the mean, while pointing game scores chance (the
    mask's area share) and sparseness 0, as declared."""
    import mmlens.catalog as registry
    from mmlens.attribution.output import MethodOutput
    from mmlens.evaluation.registry import get_metric

    @registry.register_method("_test_zero_on_squares", "data/input-output", "black-box", "test only")
    def _zero(subject, batch, targets):
        gen = torch.Generator().manual_seed(len(batch.prompt))
        scores = torch.rand(len(targets), batch.seq_len, generator=gen)
        return MethodOutput(scores * (0.0 if "square" in batch.prompt else 1.0))

    n = 6
    samples = ShapesVQA(image_size=32, seed=0).samples(n)
    squares = [("square" in s.question) for s in samples]
    try:
        res = run_benchmark(subject_for("llava"), methods="_test_zero_on_squares", n=n, sanity_n=n,
                            metrics=["pointing_game", "sparseness", "max_sensitivity"], baselines=False,
                            metric_options={"max_sensitivity": {"n": 1}}, out=tmp_path / "out")
    finally:
        registry._REGISTRY.pop("_test_zero_on_squares", None)
    assert 0 < sum(squares) < n
    row = res.rows[0]
    assert row["n"] == n and row["failures"] == 0
    assert row["nan_counts"] == {"pointing_game": 0, "sparseness": 0, "max_sensitivity": sum(squares)}
    assert row["scored"]["max_sensitivity"] == n - sum(squares) and np.isfinite(row["max_sensitivity"])
    # declared treatments, in the metadata and the Markdown notes
    declared = {m["name"]: m["degenerate"] for m in res.metrics}
    assert declared == {"pointing_game": "chance", "sparseness": "zero", "max_sensitivity": "nan"}
    assert get_metric("max_sensitivity").degenerate == "nan"
    md = (tmp_path / "out" / "results.md").read_text()
    assert "NaN scores (left out)" in md and f"max-sensitivity {sum(squares)}/{n}" in md
    assert "Degenerate (all-zero / constant) map: nan" in md and "Departures from the reference definitions" in md
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["rows"][0]["nan_counts"]["max_sensitivity"] == sum(squares)
    with open(tmp_path / "out" / "results.csv") as f:
        assert next(csv.DictReader(f))["max_sensitivity_nan"] == str(sum(squares))


def test_every_metric_declares_its_degenerate_map_treatment():
    """Each registered metric scores an all-zero and a constant map as its declaration says."""
    from mmlens.evaluation.registry import metrics

    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:6] = True
    for m in metrics():
        assert m.degenerate in ("chance", "zero", "fixed", "nan") and m.degenerate_note, m.name
        if m.needs_model:
            continue
        for heat in (np.zeros((8, 8)), np.full((8, 8), 3.0)):
            got = m.fn(heat, mask)
            want = {"zero": 0.0}.get(m.degenerate)
            if m.degenerate == "chance" and m.name != "topk_iou":
                want = mask.mean()
            if want is not None:
                assert got == pytest.approx(want), (m.name, heat[0, 0])
