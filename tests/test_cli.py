"""The command line: outputs, one-line errors with exit code 2, no partial files."""

import json

import pytest
from typer.testing import CliRunner

from mmlens.cli import app
from mmlens.testing.tiny_models import tiny_images, tiny_model_and_processor

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llava")
    model, processor = tiny_model_and_processor("llava")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    image = folder / "image.png"
    tiny_images("llava")[0].save(image)
    return folder


@pytest.mark.parametrize("command", ["lens", "trace", "knockout"])
def test_commands_write_png_and_json(tmp_path, tiny_dir, command):
    out = tmp_path / f"{command}.png"
    result = runner.invoke(app, [command, str(tiny_dir / "image.png"), "what color is the cat?", "--model",
                                 str(tiny_dir), "--answer", "red", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["kind"] in {"logit_lens", "causal_trace", "attention_knockout"}
    assert len(data["values"]) >= 1


def test_methods_lists_the_tree():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    for name in ("logit_lens", "causal_trace", "attention_knockout", "model", "layer"):
        assert name in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["lens", "missing.png", "what?"], "not found"),
        (["lens", "{image}", "what?", "--layers", "99"], "out of range"),
        (["lens", "{image}", "what?", "--layers", "a,b"], "comma-separated"),
        (["trace", "{image}", "what?", "--noise-scale", "0"], "unchanged"),
        (["lens", "{image}", "what?", "--out", "{tmp}/nowhere/x.png"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, tiny_dir, args, message):
    args = [a.format(image=tiny_dir / "image.png", tmp=tmp_path) for a in args]
    args += ["--model", str(tiny_dir), "--answer", "red"]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out.png")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.json"))


def test_explain_writes_the_requested_format(tmp_path, tiny_dir):
    for name in ("ex.png", "ex.json", "ex.html"):
        out = tmp_path / name
        result = runner.invoke(app, ["explain", str(tiny_dir / "image.png"), "what color is the cat?", "--model",
                                     str(tiny_dir), "--answer", "red cat", "--method", "integrated_gradients",
                                     "-O", "steps=4", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 500
    data = json.loads((tmp_path / "ex.json").read_text())
    assert data["metadata"]["method"] == "integrated_gradients" and data["metadata"]["options"]["steps"] == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "magic"], "unknown method"),
        (["--target", "dog"], "not in the answer"),
        (["--method", "integrated_gradients", "-O", "steps=0"], "steps=0"),
        (["-O", "nonsense"], "key=value"),
        (["--out", "{tmp}/x.txt"], "ending in"),
    ],
)
def test_explain_bad_input(tmp_path, tiny_dir, extra, message):
    extra = [e.format(tmp=tmp_path) for e in extra]
    if "--out" not in extra:
        extra += ["--out", str(tmp_path / "ex.png")]
    result = runner.invoke(app, ["explain", str(tiny_dir / "image.png"), "what color is the cat?", "--model",
                                 str(tiny_dir), "--answer", "red cat", *extra])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], result.output
    assert list(tmp_path.iterdir()) == []
