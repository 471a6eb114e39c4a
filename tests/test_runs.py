"""Dataset runs (mmlens.runs): resumable Parquet shards, the same results on every engine, explain-dataset,
and one clear line for each kind of bad input."""

import json
import sys
import time

import numpy as np
import pytest
from conftest import subject_for
from PIL import Image
from typer.testing import CliRunner

import mmlens
from mmlens.cli import app
from mmlens.data.shapes_vqa import ShapesVQA
from mmlens.runs.engine import run_dataset
from mmlens.runs.explain_job import ExplainJob, explain_dataset, iter_explanations
from mmlens.runs.sources import open_source

runner = CliRunner()


@pytest.fixture(scope="module")
def demo():
    return mmlens.load("demo")


class Faulty(ExplainJob):
    """The same job (same config), crashing at sample ``crash_at``; counts the samples it processed."""

    def __init__(self, *args, crash_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_at, self.seen = crash_at, []

    def process(self, subject, state, index, sample, where):
        if index == self.crash_at:
            raise RuntimeError("injected fault")
        self.seen.append(index)
        return super().process(subject, state, index, sample, where)


def _rows(folder):
    from mmlens.runs.store import RunStore, _read_manifest

    store = RunStore(folder, _read_manifest(folder / "manifest.json"))
    return [{k: v for k, v in r.items() if k != "seconds"} for r in store.iter_rows()]


def test_a_crashed_run_resumes_from_its_last_complete_shard_with_identical_results(tmp_path, demo):
    source = open_source(None, n=10, seed=1, image_size=64)
    args = (demo.model_id, "attention", {}, "answer", "given", 1)
    whole = run_dataset(ExplainJob(*args), source, demo, tmp_path / "whole", shard_size=3, seed=1)
    crashing = Faulty(*args, crash_at=7)  # shards [0,3) and [3,6) complete, [6,9) dies half-way
    with pytest.raises(RuntimeError, match="injected fault"):
        run_dataset(crashing, source, demo, tmp_path / "resumed", shard_size=3, seed=1)
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert sorted(manifest["shards"], key=int) == ["0", "1"] and not manifest["complete"]
    again = Faulty(*args)
    run_dataset(again, source, demo, tmp_path / "resumed", shard_size=3, seed=1)
    assert again.seen == list(range(6, 10))  # only the unfinished shards ran
    resumed = _rows(tmp_path / "resumed")
    assert [r["index"] for r in resumed] == list(range(10))  # none twice, none missing
    assert resumed == _rows(whole.folder)
    for (i, a), (j, b) in zip(iter_explanations(whole.folder), iter_explanations(tmp_path / "resumed"), strict=True):
        assert i == j and a.answer == b.answer
        np.testing.assert_array_equal(a.image_map(0, 0), b.image_map(0, 0))


def test_the_ray_actor_runs_the_same_per_sample_loop_as_the_local_engine(tmp_path):
    """The Ray actor's code path, called in-process (the Ray run itself is the slow test below)."""
    from mmlens.evaluation.benchmark import run_benchmark
    from mmlens.evaluation.benchmark_job import BenchmarkJob, reduce_rows
    from mmlens.runs.engine import table_from_bytes
    from mmlens.runs.ray_engine import ShardWorker

    lm = subject_for("llava")
    metrics = ["pointing_game", "sparseness", "deletion"]
    local = run_benchmark(lm, methods="saliency,occlusion", n=4, sanity_n=0, metrics=metrics,
                          metric_options={"deletion": {"cells": 4}})
    job = BenchmarkJob(lm.model_id, ["saliency", "occlusion"], {"saliency": {}, "occlusion": {}}, metrics,
                       {"deletion": {"cells": 4}}, 0, 0)
    source = open_source(None, n=4, seed=0, image_size=32)
    worker = ShardWorker(lm, job, source, [(0, 2), (2, 4)], strict=False, threads=1)
    got = worker({"shard": np.array([1, 0])})  # shards in any order, as Ray may hand them out
    tables = dict(zip(got["shard"], got["table"]))
    rows = [r for k in (0, 1) for r in table_from_bytes(tables[k]).to_pylist()]
    stats, n_loc = reduce_rows(rows, job.methods())
    assert n_loc == local.meta["n_localisation"]
    for st, row in zip(stats, local.rows, strict=True):
        assert st.method == row["method"] and st.explained == row["n"] == 4
        for m in metrics:
            assert st.scores[m].mean == pytest.approx(row[m], abs=1e-12, nan_ok=True)


def test_explain_dataset_cli_writes_shards_index_sheet_and_lists_unreadable_rows(tmp_path):
    sample = ShapesVQA(image_size=64, seed=0).sample(0)
    sample.image.save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = [json.dumps({"image": "a.png", "question": sample.question, "answer": sample.answer}),
             "{not json",
             json.dumps({"image": "broken.png", "question": "what is it?"}),
             json.dumps({"file_name": "a.png", "prompt": "what color is the object?"})]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    args = ["explain-dataset", "--data", str(tmp_path / "data.jsonl"), "--method", "attention", "--out", str(out),
            "--shard-size", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [e["index"] for e in index] == [0, 3] and index[0]["answer"] == sample.answer
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["index"], f["where"].endswith(f"data.jsonl, line {f['index'] + 1}")) for f in failures] == \
        [(1, True), (2, True)]
    assert "not valid JSON" in failures[0]["error"] and "not readable" in failures[1]["error"]
    assert Image.open(out / "contact_sheet.png").size[0] > 100
    # the same command again: nothing left to do, same index
    before = (out / "index.jsonl").read_text()
    assert runner.invoke(app, args).exit_code == 0 and (out / "index.jsonl").read_text() == before
    # --strict: the first unreadable row stops the run, named by file and line
    strict = runner.invoke(app, [*args[:-4], "--out", str(tmp_path / "strict"), "--strict"])
    assert strict.exit_code == 2 and strict.output.count("\n") == 1, strict.output
    assert "data.jsonl, line 2: not valid JSON" in strict.output


def test_parquet_and_datasets_folders_are_inputs(tmp_path, demo):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = list(ShapesVQA(image_size=64, seed=2).samples(3))
    images = []
    for s in samples:
        buf = io.BytesIO()
        s.image.save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
    table = pa.table({"image": images, "question": [s.question for s in samples],
                      "answer": [[s.answer] for s in samples]})
    pq.write_table(table, tmp_path / "train.parquet")
    (tmp_path / "hf").mkdir()
    arrow = tmp_path / "hf" / "data-00000-of-00001.arrow"  # datasets' save_to_disk format: an Arrow stream
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    for data in (tmp_path / "train.parquet", tmp_path / "hf"):
        src = open_source(data)
        assert len(src) == 3 and [src.sample(i).answer for i in range(3)] == [s.answer for s in samples]
        assert src.where(1).endswith("row 1")
    run = explain_dataset(demo, tmp_path / "hf", "attention", tmp_path / "out", sheet=0)
    assert [e for e, _ in iter_explanations(run.folder)] == [0, 1, 2]


@pytest.mark.parametrize("args, message", [
    (["--data", "MISSING"], "does not exist"),
    (["--engine", "ray", "--address", "ray://127.0.0.1:1"], "cannot be reached"),
    (["--replicas", "2"], "are Ray options: add --engine ray"),
    (["--engine", "ray", "--address", "nowhere"], "pass auto, ray://HOST:PORT"),
])
def test_bad_input_is_one_line_and_leaves_no_folder(tmp_path, args, message):
    args = [str(tmp_path / "missing.jsonl") if a == "MISSING" else a for a in args]
    out = tmp_path / "out"
    start = time.perf_counter()
    result = runner.invoke(app, ["explain-dataset", "--method", "attention", "--n", "2", "--out", str(out), *args])
    assert time.perf_counter() - start < 20  # an unreachable address fails fast, no hang
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0] or "pip install 'mmlens[ray]'" in lines[0], lines[0]
    assert not out.exists()


def test_without_ray_the_engine_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray sees on import
    result = runner.invoke(app, ["benchmark", "--engine", "ray", "--n", "2", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and result.output.strip() == \
        "error: --engine ray needs Ray, which is not installed: pip install 'mmlens[ray]'"


def test_a_folder_holding_another_run_is_refused(tmp_path):
    out = tmp_path / "run"
    base = ["explain-dataset", "--method", "attention", "--n", "2", "--sheet", "0", "--out", str(out)]
    assert runner.invoke(app, base).exit_code == 0
    result = runner.invoke(app, [*base[:2], "saliency", *base[3:]])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"--out '{out}' holds a different run (method \"attention\" there, \"saliency\" now)" in lines[0]


@pytest.mark.slow
def test_benchmark_on_ray_with_two_replicas_equals_the_local_table(tmp_path):
    """Local Ray (2 CPUs, no cluster), 20 ShapesVQA samples, 2 replicas: every metric equal to 1e-6."""
    ray = pytest.importorskip("ray")
    from mmlens.evaluation.benchmark import run_benchmark
    from mmlens.testing.tiny_models import tiny_model_and_processor

    model, processor = tiny_model_and_processor("llava")
    model.save_pretrained(tmp_path / "tiny")
    processor.save_pretrained(tmp_path / "tiny")
    kwargs = {"methods": "saliency,gradcam,occlusion", "n": 20, "sanity_n": 2, "shard_size": 5,
              "metric_options": {"deletion": {"cells": 4}, "insertion": {"cells": 4}}}
    local = run_benchmark(str(tmp_path / "tiny"), **kwargs)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        far = run_benchmark(str(tmp_path / "tiny"), engine="ray", replicas=2, **kwargs)
    finally:
        ray.shutdown()
    assert [r["method"] for r in far.rows] == [r["method"] for r in local.rows]
    for a, b in zip(local.rows, far.rows):
        for key, value in a.items():
            if key == "seconds_per_explanation":
                continue
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=1e-6, nan_ok=True), (a["method"], key)
            else:
                assert b[key] == value, (a["method"], key)
    for method, curves in local.curves.items():
        for mode, values in curves.items():
            np.testing.assert_allclose(far.curves[method][mode], values, atol=1e-6)
