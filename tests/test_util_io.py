"""``util.io.read_json``: the one reader of saved JSON files; every way a file can be wrong is one InputError line
that names the file and ends in the caller's fix, and the callers keep their own words."""

import json

import pytest

from mmlens.errors import InputError
from mmlens.util.io import read_json

FIX = "pass a file written by save()"
CASES = [
    ("missing", None, "demo result '{path}' not found: " + FIX),
    ("folder", "DIR", "demo result '{path}' not found: " + FIX),
    ("not-json", b"{oops", "'{path}' is not a readable demo result (JSONDecodeError): " + FIX),
    ("not-utf8", b"\xff\xfe\x00{", "'{path}' is not a readable demo result (UnicodeDecodeError): " + FIX),
    ("too-deep", b"[" * 100_000 + b"]" * 100_000, "'{path}' is not a readable demo result (RecursionError): " + FIX),
    ("list", b"[1, 2]", "'{path}' holds no demo result (a JSON list, not an object): " + FIX),
    ("null", b"null", "'{path}' holds no demo result (a JSON null, not an object): " + FIX),
    ("number", b"3.5", "'{path}' holds no demo result (a JSON number, not an object): " + FIX),
    ("other-format", b'{"format": "x", "format_version": 1}',
     "'{path}' holds no demo result (format 'x', not 'mmlens.demo'): choose another file"),
    ("no-format", b'{"format_version": 1}',
     "'{path}' holds no demo result (format None, not 'mmlens.demo'): choose another file"),
    ("newer", b'{"format": "mmlens.demo", "format_version": 2}',
     "'{path}' holds demo result format version 2; this mmlens reads version 1: choose another file"),
]


@pytest.mark.parametrize("case, content, message", CASES, ids=[c[0] for c in CASES])
def test_each_bad_file_is_one_line_naming_the_file_and_the_fix(tmp_path, case, content, message):
    path = tmp_path / f"{case}.json"
    if content == "DIR":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as err:
        read_json(path, "demo result", FIX, format="mmlens.demo", version=1, format_fix="choose another file")
    assert str(err.value) == message.format(path=path)
    assert "\n" not in str(err.value)


def test_a_good_file_comes_back_whole_and_checks_are_optional(tmp_path):
    path = tmp_path / "r.json"
    data = {"format": "mmlens.demo", "format_version": 1, "rows": [1, 2.5, None], "name": "é"}
    path.write_text(json.dumps(data), encoding="utf-8")
    assert read_json(path, "demo result", FIX, format="mmlens.demo", version=1) == data
    path.write_text('{"x": 1}')
    assert read_json(path, "demo result", FIX) == {"x": 1}  # no format / version asked: none checked
    with pytest.raises(InputError, match=r"format None, not 'mmlens.demo'\): pass a file written by save\(\)$"):
        read_json(path, "demo result", FIX, format="mmlens.demo")  # without format_fix: the fix


def test_callers_keep_their_words(tmp_path):
    from mmlens.neuron.sae.io import _read_cfg
    from mmlens.probing.result import ProbeResult
    from mmlens.runs.store import RunStore

    (tmp_path / "manifest.json").write_text('{"format": "someone.else"}')
    with pytest.raises(InputError, match="holds no mmlens run manifest .*: choose another output folder$"):
        RunStore.open(tmp_path, {"job": "x"}, n=2, shard_size=1, seed=0)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(InputError, match="not a readable mmlens run manifest .*delete the folder to start again"):
        RunStore.open(tmp_path, {"job": "x"}, n=2, shard_size=1, seed=0)
    (tmp_path / "probes.json").write_text('{"format": "mmlens.run"}')
    with pytest.raises(InputError, match="holds no mmlens probe result .*: pass the folder `mmlens probe` wrote"):
        ProbeResult.load(tmp_path)
    (tmp_path / "cfg.json").write_text("[]")
    with pytest.raises(InputError, match="holds no SAE config .*: pass a folder written by save_sae or SAELens"):
        _read_cfg(tmp_path)
