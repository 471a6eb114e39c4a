"""POPE object probing: metrics equal a hand count, negatives follow their definition, runs on models and files."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import mmlens
from mmlens.cli import app
from mmlens.errors import InputError
from mmlens.evaluation.pope import POPE_TEMPLATE, object_probes, parse_yes_no, pope_metrics, run_pope, shapes_probes
from mmlens.testing.tiny_models import tiny_images

runner = CliRunner()


def test_metrics_equal_a_hand_count() -> None:
    truths = ["yes", "yes", "yes", "no", "no", "no", "no"]
    answers = ["yes", "yes", "no", "yes", "no", "no", "no"]  # tp 2, fn 1, fp 1, tn 3
    m = pope_metrics(truths, answers)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["yes_ratio"] == pytest.approx(3 / 7) and m["n"] == 7
    always_no = pope_metrics(truths, ["no"] * 7)
    assert always_no["precision"] == 0 and always_no["f1"] == 0 and always_no["accuracy"] == pytest.approx(4 / 7)
    with pytest.raises(InputError):
        pope_metrics(["yes"], [])


def test_answers_are_read_as_pope_does() -> None:
    assert [parse_yes_no(t) for t in ["yes", "No.", "there is not a cat", "yes. no.", "", "red"]] == \
        ["yes", "no", "no", "yes", "yes", "yes"]


def test_negatives_follow_their_definition() -> None:
    objects = [["red circle", "blue square"]] * 3 + [["red circle", "green circle", "green circle"]]
    for setting in ("random", "popular", "adversarial"):
        probes = shapes_probes(objects, setting, per_image=2)
        for i, present in enumerate(objects):
            mine = [p for p in probes if p.image_index == i]
            yes = [p.object for p in mine if p.truth == "yes"]
            no = [p.object for p in mine if p.truth == "no"]
            assert len(yes) == len(no) == 2 and set(yes) == set(present) and not set(no) & set(present)
    last = [p.object for p in shapes_probes(objects, "adversarial", per_image=2) if p.image_index == 3]
    assert last[2] == "blue square"  # co-occurs with red circle in 3 images
    popular = [p.object for p in shapes_probes(objects, "popular", per_image=2) if p.image_index == 3]
    assert popular[2] == "blue square"  # the most frequent object absent from image 3
    first = [p.object for p in shapes_probes(objects, "popular", per_image=2) if p.image_index == 0]
    assert first[2:] == ["green circle", "blue circle"]  # green circle (1 image), then ties by name


def test_pope_on_the_demo_model_and_its_files(tmp_path) -> None:
    result = run_pope(mmlens.load("demo"), n=6, negatives="random,adversarial", out=tmp_path)
    assert [r["setting"] for r in result.rows] == ["random", "adversarial"]
    for r in result.rows:  # the demo model is ~99.8% accurate: it barely hallucinates
        assert r["accuracy"] >= 0.9 and 0.4 <= r["yes_ratio"] <= 0.6
    saved = json.loads((tmp_path / "pope.json").read_text())
    assert saved["rows"] == result.rows and (tmp_path / "pope.png").stat().st_size > 1000
    assert "| adversarial |" in (tmp_path / "pope.md").read_text()


def test_pope_on_a_tiny_model_with_a_data_file(tmp_path) -> None:
    from conftest import subject_for

    subject = subject_for("llava")
    image = tmp_path / "a.png"
    tiny_images("llava")[0].save(image)
    rows = [{"image": "a.png", "question": "is there a cat?", "answer": a} for a in ("yes", "no", "No")]
    (tmp_path / "pope.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = run_pope(subject, n=10, data=tmp_path / "pope.jsonl")
    row = result.rows[0]
    said = [parse_yes_no(a["text"]) for a in result.answers]  # one answer per row (each row is an image)
    truths = ["yes", "no", "no"]
    assert row["setting"] == "file" and row["n"] == 3 and len(said) == 3
    assert row["yes_ratio"] == pytest.approx(said.count("yes") / 3)
    assert row["accuracy"] == pytest.approx(sum(a == t for a, t in zip(said, truths)) / 3)
    rows.append({"image": "a.png", "question": "what is it?", "answer": "a cat"})
    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(InputError, match="line 4: answer 'a cat' is not yes or no"):
        run_pope(subject, data=tmp_path / "bad.jsonl")


def test_pope_on_an_object_file_builds_the_probes(tmp_path) -> None:
    from conftest import subject_for

    from mmlens.data import ShapesVQA

    samples = list(ShapesVQA(seed=2).samples(4))
    for s in samples:
        s.image.save(tmp_path / f"{s.index}.png")
    rows = [{"image": f"{s.index}.png", "objects": [f"{o['color']} {o['shape']}" for o in s.objects]} for s in samples]
    (tmp_path / "objects.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = run_pope(subject_for("llava"), n=3, data=tmp_path / "objects.jsonl", negatives="popular,adversarial",
                      per_image=2)
    assert [r["setting"] for r in result.rows] == ["popular", "adversarial"]
    assert all(a["question"].endswith(" in the image?") and a["image"] < 3 for a in result.answers)
    assert all(r["n"] == 2 * sum(min(2, len(set(row["objects"]))) for row in rows[:3]) for r in result.rows)
    said = {(a["image"], a["question"]): parse_yes_no(a["text"]) for a in result.answers}
    for row in result.rows:  # the table is POPE's metrics of the recorded answers to the documented probes
        probes = object_probes([r["objects"] for r in rows[:3]], row["setting"], per_image=2, template=POPE_TEMPLATE)
        expected = pope_metrics([p.truth for p in probes], [said[p.image_index, p.question] for p in probes])
        assert {k: row[k] for k in expected} == expected
    rows[1] = {"image": "1.png", "objects": []}
    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(InputError, match="line 2: each row needs"):
        run_pope("demo", data=tmp_path / "bad.jsonl")


@pytest.mark.parametrize("args, message", [
    (["--negatives", "hard"], "choose one of 'random', 'popular', 'adversarial'"),
    (["--split", "trap"], "unknown ShapesVQA split 'trap'"),
    (["--n", "0"], "out of range"),
])
def test_cli_bad_input_one_line_no_files(tmp_path, args, message) -> None:
    result = runner.invoke(app, ["pope", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], result.output
    assert not (tmp_path / "out").exists()


def test_cli_unknown_variant_lists_the_valid_ones(tmp_path) -> None:
    result = runner.invoke(app, ["pope", "--model", "demo:nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "'demo:cooccur'" in result.output and "'demo:prior'" in result.output
