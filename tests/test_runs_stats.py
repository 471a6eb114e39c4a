"""Dataset statistics as dataset runs: the same numbers as the in-memory functions, resumable, Ray-ready."""

import json

import numpy as np
import pytest
import torch
from conftest import subject_for

import mmlens
from mmlens import InputError
from mmlens.evaluation.benchmark import shapes_image_size
from mmlens.layer.heads import dataset_head_stats
from mmlens.neuron.dataset import TopPatches, neuron_specificity, top_activating_patches
from mmlens.runs.engine import run_dataset
from mmlens.runs.sources import open_source
from mmlens.runs.stats_run import RESULT, StatJob, reduce_run
from mmlens.token.pruning import dataset_pruning_curve


@pytest.fixture(scope="module")
def lm():
    return subject_for("llava")


def _data(lm, n=5, seed=3):
    source = open_source(None, n=n, seed=seed, image_size=shapes_image_size(lm))
    return source, [source.sample(i) for i in range(n)]


def _same_hits(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x.sample, x.position, x.image) == (y.sample, y.position, y.image)
        assert x.activation == pytest.approx(y.activation, abs=1e-6)
        assert x.box == pytest.approx(y.box, abs=1e-6)


def test_neuron_stats_run_equals_the_in_memory_functions(lm, tmp_path):
    source, samples = _data(lm)
    hits = mmlens.run_neuron_stats(lm, tmp_path / "top", "top_patches", layer=1, neuron=3, k=6, data=source,
                                   shard_size=2)
    _same_hits(hits, top_activating_patches(lm, samples, layer=1, neuron=3, k=6))
    assert len({h.sample for h in hits}) > 1  # the top-k spans samples (the merge across shards is exercised)
    saved = json.loads((tmp_path / "top" / RESULT).read_text())
    assert [h["position"] for h in saved["result"]] == [h.position for h in hits]
    spec = mmlens.run_neuron_stats(lm, tmp_path / "spec", "specificity", layer=0, data=source, shard_size=2)
    ref = neuron_specificity(lm, samples, layer=0)
    assert spec.tokens == ref.tokens and spec.tokens["image"] > 0
    torch.testing.assert_close(spec.activation_prob, ref.activation_prob, atol=1e-6, rtol=0)
    torch.testing.assert_close(spec.entropy, ref.entropy, atol=1e-6, rtol=0)


def test_head_stats_and_pruning_runs_equal_the_in_memory_functions(lm, tmp_path):
    source, samples = _data(lm, 4)
    grids = mmlens.run_head_stats(lm, tmp_path / "heads", layers=[0, 1], data=source, shard_size=3)
    ref = dataset_head_stats(lm, samples, layers=[0, 1])
    for name in ("image_share", "ablation"):
        assert grids[name].values.shape == (2, lm.n_heads) and grids[name].meta["samples"] == 4
        torch.testing.assert_close(grids[name].values, ref[name].values, atol=1e-6, rtol=0)
    assert float(grids["ablation"].values.abs().max()) > 0  # ablating heads moves the answer
    curve = mmlens.run_pruning_curve(lm, tmp_path / "prune", (0.0, 0.5, 1.0), after_layer=1, data=source,
                                     shard_size=3)
    expected = dataset_pruning_curve(lm, samples, (0.0, 0.5, 1.0), after_layer=1)
    assert curve.meta["samples"] == expected.meta["samples"] > 0
    np.testing.assert_allclose(curve.prob, expected.prob, atol=1e-6)
    np.testing.assert_allclose(curve.agreement, expected.agreement, atol=1e-6)


class Faulty(StatJob):
    """The same job (same config), crashing at sample ``crash_at``; records the samples it processed."""

    def __init__(self, *args, crash_at=None):
        super().__init__(*args)
        self.crash_at, self.seen = crash_at, []

    def process(self, subject, state, index, sample, where):
        if index == self.crash_at:
            raise RuntimeError("injected fault")
        self.seen.append(index)
        return super().process(subject, state, index, sample, where)


def test_a_crashed_stats_run_resumes_to_the_same_result(lm, tmp_path):
    source, _ = _data(lm, 7)
    stat = TopPatches(1, 5, k=8)
    stat.check(lm)
    whole = mmlens.run_stat(stat, lm, tmp_path / "whole", data=source, shard_size=2)
    with pytest.raises(RuntimeError, match="injected fault"):
        run_dataset(Faulty(lm.model_id, stat, crash_at=5), source, lm, tmp_path / "resumed", shard_size=2, seed=0)
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert sorted(manifest["shards"], key=int) == ["0", "1"] and not manifest["complete"]
    again = Faulty(lm.model_id, stat)
    run = run_dataset(again, source, lm, tmp_path / "resumed", shard_size=2, seed=0)
    assert again.seen == [4, 5, 6]  # only the unfinished shards ran
    assert [r["index"] for r in run.iter_rows(["index"])] == list(range(7))  # none twice, none missing
    _same_hits(reduce_run(run.store, stat, lm), whole)
    # run_stat on the resumed folder: same config, nothing left to do, same result
    _same_hits(mmlens.run_stat(stat, lm, tmp_path / "resumed", data=source, shard_size=2), whole)


def test_the_ray_actor_path_gives_the_same_statistic(lm, tmp_path):
    """The Ray actor's code path, in-process: shards in any order, written by the driver, reduced in order."""
    from mmlens.layer.heads import HeadStats
    from mmlens.runs.engine import table_from_bytes
    from mmlens.runs.ray_engine import ShardWorker
    from mmlens.runs.store import RunStore

    source, samples = _data(lm, 4)
    stat = HeadStats(["image_share"], [1])
    stat.check(lm)
    job = StatJob(lm.model_id, stat)
    store = RunStore.open(tmp_path / "ray", {"job": job.name, **job.config()}, 4, 2, 0)
    got = ShardWorker(lm, job, source, store.ranges, strict=False, threads=1)({"shard": np.array([1, 0])})
    for k, table, tensors in zip(got["shard"], got["table"], got["tensors"]):
        store.write_shard(int(k), table_from_bytes(table), tensors)
    grids = reduce_run(store, stat, lm)
    ref = dataset_head_stats(lm, samples, ["image_share"], layers=[1])
    torch.testing.assert_close(grids["image_share"].values, ref["image_share"].values, atol=1e-6, rtol=0)


def test_ce_recovered_run_equals_the_in_memory_metric(lm, tmp_path):
    from mmlens.neuron.sae.metrics import ce_recovered

    source, samples = _data(lm, 3)
    width = lm.model.get_input_embeddings().embedding_dim
    sae = mmlens.SparseAutoencoder(width, 16, k=4, seed=0)
    got = mmlens.run_ce_recovered(lm, sae, "lm.blocks.0.resid_post", tmp_path / "ce", data=source)
    ref = ce_recovered(lm, sae, samples, "lm.blocks.0.resid_post")
    assert got["samples"] == ref["samples"] == 3
    for key in ("ce_clean", "ce_sae", "ce_zero", "ce_recovered"):
        assert got[key] == pytest.approx(ref[key], abs=1e-6)
    other = mmlens.SparseAutoencoder(width, 16, k=4, seed=1)  # another SAE never resumes into this folder
    with pytest.raises(InputError, match="different run"):
        mmlens.run_ce_recovered(lm, other, "lm.blocks.0.resid_post", tmp_path / "ce", data=source)


def test_bad_options_fail_in_one_line_before_any_folder(lm, tmp_path):
    with pytest.raises(InputError, match="beyond the MLP width"):
        mmlens.run_neuron_stats(lm, tmp_path / "a", "top_patches", layer=0, neuron=10**6, n=2)
    with pytest.raises(InputError, match="needs a neuron"):
        mmlens.run_neuron_stats(lm, tmp_path / "b", "top_patches", layer=0, n=2)
    with pytest.raises(InputError, match="head statistic"):
        mmlens.run_head_stats(lm, tmp_path / "c", "share", n=2)
    with pytest.raises(InputError, match="after_layer"):
        mmlens.run_pruning_curve(lm, tmp_path / "d", after_layer=99, n=2)
    assert not any(tmp_path.iterdir())


def test_dataset_stats_cli_writes_the_in_memory_numbers(tmp_path):
    from typer.testing import CliRunner

    from mmlens.cli import app

    out = tmp_path / "heads"
    res = CliRunner().invoke(app, ["dataset-stats", "heads", "--n", "3", "--layers", "0", "--stats", "image_share",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / RESULT).read_text())["result"]["image_share"]
    demo = mmlens.load("demo")
    _, samples = _data(demo, 3, seed=0)  # the CLI's default --seed
    ref = dataset_head_stats(demo, samples, ["image_share"], layers=[0])["image_share"].values
    np.testing.assert_allclose(saved["values"], ref.numpy(), atol=1e-6)
    assert (out / "heads_image_share.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["dataset-stats", "pruning", "--ratios", "0,x", "--out", str(tmp_path / "p")])
    assert bad.exit_code == 2 and "--ratios" in bad.output and not (tmp_path / "p").exists()
