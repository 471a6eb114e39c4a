"""Training checkpoints (demo train --save-every), probes / logit lens across them, and TracIn."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmlens.data.shapes_vqa import ShapesVQA
from mmlens.demo.checkpoints import TrainingSet, read_manifest, wrong_color
from mmlens.demo.train import TrainConfig, main, train
from mmlens.errors import InputError
from mmlens.runs.checkpoint_probe import check_same_model, probe_checkpoints
from mmlens.training.tracin import tracin, training_samples


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short fine-tune of the demo model on 48 samples (2 planted), checkpoints every 4 of 8 steps."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("ckpts")
    cfg = TrainConfig(init="demo", vision_steps=0, steps=8, lr=3e-4, aux_weight=0.0, batch_size=12, save_every=4,
                      checkpoint_dir=str(folder), train_size=48, plant=2, log_every=8)
    train(cfg)
    return folder


def test_checkpoints_and_manifest(run):
    m = read_manifest(run)
    assert [c["name"] for c in m["checkpoints"]] == ["llava-step-000004", "llava-step-000008"]
    assert (run / "llava-step-000004" / "model.safetensors").is_file()
    assert (run / "llava-step-000004" / "tokenizer.json").is_file()
    assert m["steps"]["1"]["samples"] == list(range(12)) and m["steps"]["5"]["samples"] == list(range(12))  # cycled
    assert len(m["planted"]) == 2 and m["checkpoints"][0]["lr"] > m["checkpoints"][1]["lr"] > 0
    index, samples = training_samples(run)
    assert index == list(range(48))
    clean = ShapesVQA(seed=m["data_seed"])
    for i, s in zip(index, samples):
        assert (s.answer != clean.sample(i).answer) == (i in m["planted"])


def test_planting_is_a_wrong_colour():
    data = TrainingSet(ShapesVQA(seed=1000), size=60, plant=3)
    for i in data.planted:
        truth = ShapesVQA(seed=1000).sample(i)
        assert truth.question_type == "color" and data.sample(i).answer == wrong_color(truth.answer) != truth.answer
        assert data.sample(i + 60).answer == data.sample(i).answer  # cycled


def test_tracin_finds_planted_samples(run, tmp_path):
    m = read_manifest(run)
    clean = ShapesVQA(seed=m["data_seed"])
    pool = [s for s in ShapesVQA(seed=0).samples(200) if s.question_type == "color"]
    tests, owner = [], []
    for p in m["planted"]:
        match = [s for s in pool if s.question == clean.sample(p).question and s.answer == clean.sample(p).answer]
        tests += match[:2]
        owner += [p] * len(match[:2])
    assert len(tests) >= 2
    r = tracin(run, tests, show_progress=False)
    assert r.influence.shape == (len(tests), 48) and np.isfinite(r.influence).all()
    hits = [owner[i] in [r.train_index[j] for j in r.top(i, 10)] for i in range(len(tests))]
    assert np.mean(hits) >= 0.8  # 10 of 48 by chance: ~21%
    # an opponent: the planted sample pushes against the true answer
    assert all(r.influence[i, r.train_index.index(owner[i])] < 0 for i in range(len(tests)) if hits[i])
    r.save(tmp_path / "t.png")
    data = json.loads(r.save(tmp_path / "t.json").read_text())
    assert len(data["tests"][0]["top"]) == 10
    with pytest.raises(InputError, match="match no parameter"):
        tracin(run, tests[:1], params="nothing.*")


def test_probe_checkpoints(run, tmp_path):
    r = probe_checkpoints(run, "lm.blocks.*.resid_post", "object", "color", n=40, out=tmp_path, seeds=1, lens_n=4,
                          show_progress=False)
    acc, lens = np.asarray(r["accuracy"]), np.asarray(r["lens_p_answer"])
    assert acc.shape == (3, 2) and lens.shape == (3, 2)
    assert acc.min() > 0.5 and lens[-1].min() > lens[0].max()  # the answer is readable at the last layer
    assert (tmp_path / "checkpoints.png").stat().st_size > 1000


def test_bad_checkpoint_folders(tmp_path, run):
    with pytest.raises(InputError, match="no manifest.json"):
        probe_checkpoints(tmp_path, out=tmp_path / "o")
    with pytest.raises(InputError, match="does not exist"):
        tracin(tmp_path / "missing", [ShapesVQA().sample(0)])
    other = json.loads((run / "llava-step-000008" / "config.json").read_text())
    bad = tmp_path / "mixed"
    for name in ("a", "b"):
        (bad / name).mkdir(parents=True)
    (bad / "a" / "config.json").write_text(json.dumps(other))
    other["text_config"]["num_hidden_layers"] = 7
    (bad / "b" / "config.json").write_text(json.dumps(other))
    with pytest.raises(InputError, match="another model"):
        check_same_model(bad, ["a", "b"])


@pytest.mark.parametrize("argv,message", [
    (["--save-every", "0", "--checkpoint-dir", "x"], "--save-every 0: pass a number of steps >= 1"),
    (["--save-every", "-2"], "--save-every -2"),
    (["--save-every", "3"], "needs --checkpoint-dir"),
])
def test_bad_save_every(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--init", "demo", "--vision-steps", "0", "--steps", "1", "--out", "unused", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
