"""Probes (mmlens.probing, mmlens.runs.probe_run, `mmlens probe`): scikit-learn equality on hand-checked cases,
splits by image, the control task, save / load, the randomised baseline and one line per bad input."""

import json

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

import mmlens
from mmlens.cli import app
from mmlens.errors import InputError
from mmlens.probing import ProbeResult, control_labels, fit_fixed, fit_probe, probe_point, split_by_image
from mmlens.runs.probe_run import run_probes

runner = CliRunner()


@pytest.fixture(scope="module")
def demo():
    return mmlens.load("demo")


def test_hand_checked_logistic_equals_sklearn():
    # x = -1 (class 0), +1 (class 1), C = 1: by symmetry b = 0, and the L2-penalised log-loss
    # w^2 / 2 + 2 log(1 + e^-w) is minimal where w (1 + e^w) = 2.
    x, y = np.array([[-1.0], [1.0]]), np.array([0, 1])
    w_hand = brentq(lambda w: w * (1 + np.exp(w)) - 2, 0.1, 2.0)
    assert abs(w_hand - 0.6749) < 1e-3
    ours = fit_fixed("logistic", 1.0, x, y)
    direct = LogisticRegression(C=1.0).fit(x, y)
    assert ours.estimator.coef_[0, 0] == pytest.approx(w_hand, abs=1e-4)
    assert direct.coef_[0, 0] == pytest.approx(w_hand, abs=1e-4)
    assert ours.estimator.intercept_[0] == pytest.approx(0.0, abs=1e-6)


def test_multiclass_probe_equals_sklearn_on_standardised_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 6)) * 2
    y = rng.integers(0, 3, 150)
    x = centres[y] + rng.normal(size=(150, 6)) * 2 + 5  # off-centre, so the standardisation matters
    probe = fit_probe(x[:90], y[:90], x[90:120], y[90:120], "logistic")
    z = (x - x[:90].mean(0)) / x[:90].std(0)
    direct = LogisticRegression(C=probe.param, max_iter=500).fit(z[:90], y[:90])
    np.testing.assert_allclose(probe.estimator.coef_, direct.coef_, atol=1e-6)
    np.testing.assert_array_equal(probe.predict(x[120:]), direct.predict(z[120:]))
    assert probe.sweep[probe.param] == max(probe.sweep.values()) and len(probe.sweep) > 3


def test_splits_are_by_image_and_seeded():
    index = np.repeat(np.arange(50), 4)
    parts = split_by_image(index, 3)
    assert sum(p.sum() for p in parts) == len(index)
    sets = [set(index[p]) for p in parts]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert len(sets[0]) == 30 and len(sets[2]) == 10
    assert all((a == b).all() for a, b in zip(parts, split_by_image(index, 3)))
    assert not (split_by_image(index, 4)[2] == parts[2]).all()


def test_control_task_gives_each_type_one_label_from_the_label_distribution():
    rng = np.random.default_rng(1)
    types = rng.choice([f"t{k}" for k in range(40)], 2000)
    labels = np.where(rng.random(2000) < 0.8, "common", "rare")
    ctl = control_labels(types, labels, seed=0)
    for t in np.unique(types):
        assert len(set(ctl[types == t])) == 1
    share = np.mean([ctl[types == t][0] == "common" for t in np.unique(types)])
    assert 0.6 < share <= 1.0  # drawn from the empirical distribution (80% common)
    assert (control_labels(types, labels, seed=0) == ctl).all()
    assert not (control_labels(types, labels, seed=1) == ctl).all()


def test_selectivity_separates_a_readable_property_from_memorisation():
    # 12 types (object kinds), the property = type // 4 (3 classes) is a linear function of one feature;
    # the type itself sits in the other features only weakly, so the control task is hard for a regularised probe
    rng = np.random.default_rng(0)
    index = np.repeat(np.arange(120), 2)
    types = rng.integers(0, 12, len(index))
    y = np.asarray([f"c{t // 4}" for t in types])
    x = np.c_[types // 4 + rng.normal(0, 0.1, len(index)), rng.normal(size=(len(index), 8)) + 0.05 * types[:, None]]
    rows, weights, classes = probe_point(x, y, index, types.astype(str), kinds=("logistic", "mlp"), seeds=(0, 1))
    logistic = rows[0]
    assert min(logistic["accuracy"]) > 0.95
    assert np.mean(logistic["accuracy"]) - np.mean(logistic["control"]) > 0.3
    noise = rng.normal(size=x.shape)
    rows, _, _ = probe_point(noise, y, index, types.astype(str), kinds=("logistic",), seeds=(0,))
    assert rows[0]["accuracy"][0] < 0.5  # 3 balanced classes: chance is 1/3
    assert "trained||logistic|0|coef" in weights and classes["trained||logistic|0"] == ["c0", "c1", "c2"]


def test_run_save_load_randomised_and_weights_restored(demo, tmp_path):
    batch = demo.prepare(mmlens.data.ShapesVQA(image_size=64).sample(0).image, "what color is the circle?")
    before = demo.forward(batch)
    labels = tmp_path / "labels.csv"
    sample = mmlens.data.ShapesVQA(image_size=64, seed=0)
    labels.write_text("index,label\n" + "".join(f"{i},{sample.sample(i).question_type}\n" for i in range(40)))
    result = run_probes(demo, "lm.blocks.1.resid_post", "object", "color", n=40, out=tmp_path / "p", kinds="logistic",
                        seeds=2, randomised=True, show_progress=False)
    torch.testing.assert_close(demo.forward(batch), before)  # the randomised weights were restored
    summary = {r["model"]: r for r in result.summary()}
    assert summary["trained"]["accuracy"] > 0.9 and summary["trained"]["selectivity"] > 0
    assert summary["randomised"]["transfer"] < 0.5  # the trained probe on randomised weights: near chance
    loaded = ProbeResult.load(tmp_path / "p")
    assert loaded.summary() == result.summary() and (tmp_path / "p" / "layer_curve.png").stat().st_size > 1000
    x, meta = mmlens.ActivationReader(tmp_path / "p" / "activations").load("lm.blocks.1.resid_post")
    pred = loaded.predict(x, "lm.blocks.1.resid_post", "logistic", seed=0)
    assert np.mean(pred == meta["object_color"]) > 0.9
    data = json.loads((tmp_path / "p" / "probes.json").read_text())
    assert data["info"]["images"] <= 40 and data["chance"] < 0.5
    by_file = run_probes(demo, "lm.blocks.1.resid_post", "answer", "qtype", n=40, out=tmp_path / "f", labels=labels,
                         kinds="ridge", seeds=1, control=False, show_progress=False)
    by_meta = run_probes(demo, "lm.blocks.1.resid_post", "answer", "question_type", n=40, out=tmp_path / "m",
                         kinds="ridge", seeds=1, control=False, show_progress=False)
    assert by_file.property == "qtype (labels file)"
    assert by_file.rows[0]["accuracy"] == by_meta.rows[0]["accuracy"] and by_file.classes == by_meta.classes


def test_bad_input_is_one_line(demo, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("index,label\n0,red\n999,blue\n")
    with pytest.raises(InputError, match=r"1 of 2 rows name samples the dataset does not have \(index 999"):
        run_probes(demo, n=10, out=tmp_path / "a", labels=labels)
    with pytest.raises(InputError, match="at least 2 classes"):
        run_probes(demo, "lm.blocks.0.resid_post", "object", "present", n=12, out=tmp_path / "b", kinds="logistic",
                   seeds=1, show_progress=False)
    with pytest.raises(InputError, match="probe kind"):
        run_probes(demo, n=10, out=tmp_path / "c", kinds="svm")
    for args, text in ((["--point", "lm.blocks.9.mlp.out"], "does not exist: use one of projector.out"),
                       (["--labels", str(labels)], "rows name samples the dataset does not have")):
        res = runner.invoke(app, ["probe", "--n", "10", "--out", str(tmp_path / "cli"), *args])
        assert res.exit_code == 2, res.output
        line = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(line) == 1 and text in line[0]
        assert not (tmp_path / "cli" / "probes.json").exists()


def test_selective_rule_keeps_accuracy_and_picks_the_most_selective_setting():
    from mmlens.probing.train import probe_point

    rng = np.random.default_rng(0)
    index = np.repeat(np.arange(90), 3)
    y = np.array(["a", "b", "c"])[index % 3]
    types = np.char.add(y, np.array(["x", "y", "z", "w"])[(index // 3) % 4])
    x = rng.normal(size=(len(y), 40)) + (y == "a")[:, None] * 2.0
    x[:, :8] += rng.normal(size=(16, 8))[np.unique(types, return_inverse=True)[1]] * 3  # type codes: memorisable
    plain, _, _ = probe_point(x, y, index, types, seeds=(0, 1))
    rows, _, _ = probe_point(x, y, index, types, seeds=(0, 1), select="selectivity", floor=0.9)
    for sweep, sel, param in zip(rows[0]["sweep"], rows[0]["selectivity_sweep"], rows[0]["param"]):
        ok = {k: v for k, v in sel.items() if sweep[k] >= 0.9}
        if ok:
            assert sel[f"{param:g}"] == max(ok.values())
    gain = np.mean(rows[0]["accuracy"]) - np.mean(rows[0]["control"])
    assert gain >= np.mean(plain[0]["accuracy"]) - np.mean(plain[0]["control"]) - 0.05
