"""`mmlens embed ...` on a tiny random CLIP (the loader is pointed at it): PNG + JSON, bad input exit 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import mmlens.cli_embed as cli_embed
from mmlens.cli import app
from mmlens.embedding import tower
from mmlens.testing.tiny_dual import tiny_dual_model_and_processor


@pytest.fixture
def tiny(monkeypatch):
    t = tower(tiny_dual_model_and_processor("clip"))
    monkeypatch.setattr(cli_embed, "_tower", lambda model: t)


@pytest.mark.parametrize("cmd", [["decompose", "--shapes", "3"], ["splice", "--shapes", "4", "--l1", "0.005"],
                                 ["textspan", "--shapes", "5", "--texts", "shapes"]])
def test_embed_commands_write_png_and_json(tiny, tmp_path, cmd):
    out = tmp_path / "x.png"
    res = CliRunner().invoke(app, ["embed", *cmd, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 1000 and json.loads(out.with_suffix(".json").read_text())
    if cmd[0] == "decompose":
        assert json.loads(out.with_suffix(".json").read_text())["reconstruction_error"] < 1e-4


@pytest.mark.parametrize("cmd,msg", [(["splice", "--shapes", "3", "--l1", "-1"], "l1="),
                                     (["splice", "--shapes", "3", "--vocab", "nope.txt"], "--vocab"),
                                     (["cbm", "--task", "size"], "--task")])
def test_embed_bad_input_is_one_line_exit_2(tiny, tmp_path, cmd, msg):
    res = CliRunner().invoke(app, ["embed", *cmd, "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and msg in res.output and len(res.output.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
