"""The hostile-input corpus: bad images, prompts, options, output paths, model folders, data files and API calls.

Every case must end in exactly one ``error:`` line and exit code 2 (CLI), or one :class:`mmlens.InputError` line
(Python API): no traceback, and no file or temporary file left in the output folder. Cases marked ``hole N`` /
``msg`` are the holes and misleading messages of issue 10 (each failed on the code before the fix).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import mmlens
from mmlens.cli import app
from mmlens.demo import DEMO_MODEL_DIR
from mmlens.errors import InputError
from mmlens.evaluation.benchmark import run_benchmark
from mmlens.model.images import to_rgb
from mmlens.util import limits

runner = CliRunner()
Q = "what color is the circle?"


# -- the workspace: hostile files, made once -------------------------------------------------------------------
def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_header(width: int, height: int) -> bytes:
    """A PNG that only declares its size (what a decompression bomb looks like before decoding)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


def _model_copy(root: Path, name: str, edit) -> Path:
    folder = root / name
    shutil.copytree(DEMO_MODEL_DIR, folder)
    edit(folder)
    return folder


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hostile")
    Image.new("RGB", (64, 64), (220, 30, 30)).save(root / "img.png")
    good = (root / "img.png").read_bytes()
    files = {
        "bomb.png": png_header(100_000, 100_000),
        "big.png": png_header(12_000, 9_000),  # 108 M pixels: over mmlens' limit, under PIL's bomb error
        "text.png": b"this is not an image\n",
        "empty.png": b"",
        "truncated.png": good[: len(good) // 2],
        "garbage.jpg": os.urandom(2048),
        "bad.jsonl": b"{not json\n",
        "empty.jsonl": b"",
        "binary.jsonl": os.urandom(512),
        "nofields.jsonl": b'{"image": "img.png"}\n',
        "noimage.jsonl": json.dumps({"image": "nope.png", "question": Q, "answer": "red", "box": [0, 0, 4, 4]}).encode() + b"\n",
        "afile": b"x",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "adir").mkdir()
    (root / "dangling.png").symlink_to(root / "gone.png")
    models = root / "models"
    models.mkdir()
    (models / "empty").mkdir()
    for name, text in (("badjson", "{oops"), ("bert", '{"model_type": "bert"}'), ("notype", "{}")):
        (models / name).mkdir()
        (models / name / "config.json").write_text(text)
    st = "model.safetensors"
    truncate = lambda f: (f / st).write_bytes((f / st).read_bytes()[:100_000])  # noqa: E731
    garble = lambda f: (f / st).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage json}" + os.urandom(64))  # noqa: E731
    _model_copy(models, "truncated", truncate)
    _model_copy(models, "garbled", garble)
    _model_copy(models, "noweights", lambda f: (f / st).unlink())
    _model_copy(models, "badtokenizer", lambda f: (f / "tokenizer.json").write_text("{nope"))

    def pickle_only(f: Path) -> None:
        (f / st).unlink()
        (f / "pytorch_model.bin").write_bytes(b"\x80\x04this is not a pickle" + os.urandom(64))

    _model_copy(models, "badpickle", pickle_only)
    paths = {k.split(".")[0]: str(root / k) for k in files if not k.endswith(".jsonl")}
    paths.update(root=str(root), img=str(root / "img.png"), adir=str(root / "adir"), dangling=str(root / "dangling.png"),
                 models=str(models), bomb=str(root / "bomb.png"), big=str(root / "big.png"))
    paths.update({f"ext_jsonl_{k.split('.')[0]}": str(root / k) for k in files if k.endswith(".jsonl")})
    return paths


def _writable(folder: str) -> bool:
    """A probe, not os.access: root may write into chmod-read-only folders, not into /sys."""
    try:
        probe = Path(folder) / ".probe"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


# -- CLI cases: (id, argv, expected text of the one error line) ----------------------------------------------
LONG = "a " * 50_000  # 100,000 characters: fine as text, far over the demo's 256 positions
CLI_CASES = [
    # images
    ("hole1-bomb-png", ["explain", "{bomb}", Q], "decompression bomb"),
    ("bomb-under-pil-limit", ["explain", "{big}", Q], "pixel limit"),
    ("bomb-corrupt-image", ["trace", "{img}", Q, "--corrupt-image", "{bomb}"], "decompression bomb"),
    ("bomb-lens", ["lens", "{bomb}", Q], "decompression bomb"),
    ("missing-image", ["explain", "{root}/missing.png", Q], "not found"),
    ("msg-dir-as-image", ["explain", "{adir}", Q], "is a directory"),
    ("msg-dir-as-image-lens", ["lens", "{adir}", Q], "is a directory"),
    ("msg-http-url", ["explain", "http://example.com/cat.png", Q], "URLs are not fetched"),
    ("msg-https-url", ["lens", "https://example.com/cat.png", Q], "URLs are not fetched"),
    ("text-as-png", ["explain", "{text}", Q], "not a readable image"),
    ("empty-png", ["explain", "{empty}", Q], "not a readable image"),
    ("truncated-png", ["knockout", "{truncated}", Q], "not a readable image"),
    ("garbage-jpg", ["explain", "{garbage}", Q], "not a readable image"),
    ("dangling-symlink", ["explain", "{dangling}", Q], "not found"),
    ("empty-image-path", ["explain", "", Q], "path is empty"),
    ("model-file-as-image", ["lens", "{afile}", Q], "not a readable image"),
    # prompts and answers
    ("hole6-answer-placeholder", ["lens", "{img}", Q, "--answer", "<image>"], "image placeholder"),
    ("answer-placeholder-explain", ["explain", "{img}", Q, "--answer", "red <image>"], "image placeholder"),
    ("prompt-placeholder", ["explain", "{img}", "<image> " + Q], "image placeholder"),
    ("prompt-empty", ["lens", "{img}", "", "--answer", "red"], "prompt is empty"),
    ("prompt-blank", ["explain", "{img}", "   \n\t"], "prompt is empty"),
    ("answer-empty", ["lens", "{img}", Q, "--answer", ""], "answer is empty"),
    ("msg-100k-prompt-context", ["lens", "{img}", LONG, "--answer", "red"], "context length of 256"),
    ("prompt-over-char-limit", ["explain", "{img}", "b" * (limits.MAX_PROMPT_CHARS + 1)], "characters, over"),
    ("prompt-300-words", ["trace", "{img}", "what " * 300, "--answer", "red"], "context length"),
    ("answer-too-long", ["lens", "{img}", Q, "--answer", "red " * 300], "context length"),
    ("target-not-in-answer", ["explain", "{img}", Q, "--answer", "red", "--target", "zebra"], "not in the answer"),
    # options
    ("hole7-steps-1e9", ["explain", "{img}", Q, "--method", "integrated_gradients", "-O", "steps=1000000000"],
     "steps=1000000000 is out of range: pass an integer from 1 to 1024"),
    ("msg-steps-abc", ["explain", "{img}", Q, "--method", "integrated_gradients", "-O", "steps=abc"], "not an integer"),
    ("steps-zero", ["explain", "{img}", Q, "--method", "integrated_gradients", "-O", "steps=0"], "out of range"),
    ("steps-negative", ["explain", "{img}", Q, "--method", "integrated_gradients", "-O", "steps=-1"], "out of range"),
    ("steps-float", ["explain", "{img}", Q, "--method", "integrated_gradients", "-O", "steps=1.5"], "not an integer"),
    ("ibs-huge", ["explain", "{img}", Q, "--method", "integrated_gradients", "-O", "internal_batch_size=99999"],
     "out of range"),
    ("nt-samples-huge", ["explain", "{img}", Q, "--method", "smoothgrad", "-O", "nt_samples=100000000"], "out of range"),
    ("n-masks-huge", ["explain", "{img}", Q, "--method", "rise", "-O", "n_masks=1000000000"], "out of range"),
    ("n-samples-huge", ["explain", "{img}", Q, "--method", "kernel_shap", "-O", "n_samples=1000000000"], "out of range"),
    ("unknown-option", ["explain", "{img}", Q, "--method", "integrated_gradients", "-O", "n_steps=3"], "has no option"),
    ("option-no-key", ["explain", "{img}", Q, "-O", "=3"], "key=value"),
    ("option-no-equals", ["explain", "{img}", Q, "-O", "steps"], "key=value"),
    ("unknown-method", ["explain", "{img}", Q, "--method", "nosuch"], "nosuch"),
    ("msg-analysis-grammar", ["explain", "{img}", Q, "--method", "logit_lens"], "is an analysis method"),
    ("trace-batch-zero", ["trace", "{img}", Q, "--batch-size", "0"], "out of range"),
    ("trace-batch-huge", ["trace", "{img}", Q, "--batch-size", "1000000"], "out of range"),
    ("knockout-window-zero", ["knockout", "{img}", Q, "--window", "0"], "out of range"),
    ("layers-not-ints", ["lens", "{img}", Q, "--layers", "a,b"], "comma-separated"),
    ("layers-out-of-range", ["lens", "{img}", Q, "--answer", "red", "--layers", "99"], "out of range"),
    ("msg-bench-n-huge", ["benchmark", "--n", "1000000000000"], "from 1 to 1000000"),
    ("bench-n-zero", ["benchmark", "--n", "0"], "out of range"),
    ("bench-n-text", ["benchmark", "--n", "abc"], "--n"),
    ("bench-sanity-negative", ["benchmark", "--sanity-n", "-1"], "out of range"),
    ("bench-unknown-method", ["benchmark", "--methods", "nosuch"], "nosuch"),
    ("bench-analysis-method", ["benchmark", "--methods", "logit_lens"], "is an analysis method"),
    ("bench-unknown-metric", ["benchmark", "--metrics", "nosuch"], "nosuch"),
    ("bench-cells-zero", ["benchmark", "--cells", "0"], "out of range"),
    ("unknown-flag", ["explain", "{img}", Q, "--bogus"], "No such option"),
    ("missing-prompt", ["lens", "{img}"], "Missing argument"),
    ("unknown-command", ["explode"], "No such command"),
    # output paths ({out} is this case's empty output folder)
    ("hole2-out-dir-png", ["explain", "{img}", Q, "--out", "{out}/x.png"], "is a directory"),
    ("hole2-out-dir-html", ["explain", "{img}", Q, "--out", "{out}/x.html"], "is a directory"),
    ("hole2-lens-out-dir", ["lens", "{img}", Q, "--out", "{out}/x.png"], "is a directory"),
    ("lens-json-is-dir", ["lens", "{img}", Q, "--out", "{out}/y.png"], "is a directory"),
    ("hole4-out-under-file", ["explain", "{img}", Q, "--out", "{afile}/x.png"], "is a file, not a folder"),
    ("hole4-lens-under-file", ["lens", "{img}", Q, "--out", "{afile}/lens.png"], "is a file, not a folder"),
    ("out-deep-under-file", ["trace", "{img}", Q, "--out", "{afile}/a/b/t.png"], "is a file, not a folder"),
    ("out-missing-folder", ["explain", "{img}", Q, "--out", "{out}/nowhere/x.png"], "does not exist"),
    ("out-bad-extension", ["explain", "{img}", Q, "--out", "{out}/x.txt"], "one of the extensions"),
    ("out-no-extension", ["explain", "{img}", Q, "--out", "{out}/x"], "one of the extensions"),
    ("lens-out-txt", ["lens", "{img}", Q, "--out", "{out}/x.txt"], "pass a .png path"),
    ("hole3-out-sys", ["explain", "{img}", Q, "--out", "/sys/x.png"], "cannot write in folder"),
    ("hole3-lens-out-sys", ["lens", "{img}", Q, "--out", "/sys/lens.png"], "cannot write in folder"),
    ("hole3-out-readonly", ["explain", "{img}", Q, "--out", "{out}/ro/x.png"], "cannot write in folder"),
    ("hole3-lens-readonly", ["lens", "{img}", Q, "--out", "{out}/ro/lens.png"], "cannot write in folder"),
    ("bench-out-file", ["benchmark", "--out", "{afile}"], "is a file"),
    ("bench-out-under-file", ["benchmark", "--out", "{afile}/sub"], "is a file"),
    ("bench-out-sys", ["benchmark", "--out", "/sys/bench"], "cannot write in folder"),
    # model folders
    ("model-no-config", ["lens", "{img}", Q, "--model", "{models}/empty"], "without config.json"),
    ("model-bad-config", ["lens", "{img}", Q, "--model", "{models}/badjson"], "cannot load model"),
    ("model-unsupported", ["lens", "{img}", Q, "--model", "{models}/bert"], "bert"),
    ("model-no-type", ["lens", "{img}", Q, "--model", "{models}/notype"], "cannot load model"),
    ("hole5-truncated-safetensors", ["lens", "{img}", Q, "--model", "{models}/truncated"], "corrupt"),
    ("hole5-garbled-safetensors", ["explain", "{img}", Q, "--model", "{models}/garbled"], "corrupt"),
    ("model-no-weights", ["lens", "{img}", Q, "--model", "{models}/noweights"], "cannot load weights"),
    ("model-pickle-refused", ["lens", "{img}", Q, "--model", "{models}/badpickle"], "allow_pickle"),
    ("model-bad-tokenizer", ["lens", "{img}", Q, "--model", "{models}/badtokenizer"], "processor"),
    ("model-offline-hub-id", ["lens", "{img}", Q, "--model", "nobody/no-such-model-xyz"], "cannot load model"),
    ("model-file", ["lens", "{img}", Q, "--model", "{afile}"], "without config.json"),
    # data files
    ("data-missing", ["benchmark", "--data", "{root}/missing.jsonl"], "not found"),
    ("msg-data-directory", ["benchmark", "--data", "{adir}"], "is a directory"),
    ("data-empty", ["benchmark", "--data", "{ext_jsonl_empty}"], "empty"),
    ("data-bad-json", ["benchmark", "--data", "{ext_jsonl_bad}"], "line 1"),
    ("data-binary", ["benchmark", "--data", "{ext_jsonl_binary}"], "binary"),
    ("data-no-fields", ["benchmark", "--data", "{ext_jsonl_nofields}"], "line 1"),
    ("data-image-missing", ["benchmark", "--data", "{ext_jsonl_noimage}"], "not found"),
]


@pytest.mark.parametrize("case_id, argv, expected", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_case(w, tmp_path, case_id, argv, expected):
    out = tmp_path / "out"
    out.mkdir()
    if case_id.startswith("hole2") or case_id == "lens-json-is-dir":
        (out / ("y.json" if case_id == "lens-json-is-dir" else Path(argv[-1]).name)).mkdir()
    if "readonly" in case_id:
        (out / "ro").mkdir()
        os.chmod(out / "ro", 0o555)
        if _writable(str(out / "ro")):
            pytest.skip("running as root: a chmod-read-only folder is still writable (the /sys cases cover this)")
    if "/sys/" in " ".join(argv) and (not Path("/sys").is_dir() or _writable("/sys")):
        pytest.skip("/sys is missing or writable here")
    args = [a.format(out=out, **w) for a in argv]
    if args[0] in ("explain", "lens", "trace", "knockout") and "--out" not in args:
        args += ["--out", str(out / ("x.json" if args[0] == "explain" else "x.png"))]
    if args[0] == "benchmark" and "--out" not in args:
        args += ["--out", str(out / "bench")]
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    result = runner.invoke(app, args)
    assert_one_error_line(result, expected, code=2)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # no partial output, no temp file
    assert not list(Path(w["root"]).glob(".*.png.*")) and not list(Path(w["root"]).glob(".mmlens-probe*"))
    if "readonly" in case_id:
        os.chmod(out / "ro", 0o755)


def assert_one_error_line(result, expected: str, code: int) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, lines
    assert all(line.startswith(("error:", "answer:", "note:")) for line in lines), lines
    assert expected in errors[0], errors[0]


# -- Python API cases ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    return mmlens.load("demo")


@pytest.fixture(scope="module")
def saved(demo, tmp_path_factory):
    """A real explanation saved as .json and .safetensors, and broken variants of both."""
    from safetensors.numpy import load_file, save_file

    root = tmp_path_factory.mktemp("saved")
    img = Image.new("RGB", (64, 64), (220, 30, 30))
    ex = mmlens.explain(demo, img, Q, method="attention", answer="red")
    ex.save(root / "ex.json")
    ex.save(root / "ex.safetensors")
    data = json.loads((root / "ex.json").read_text())
    for field in ("targets", "images", "tokens", "method"):
        (root / f"no_{field}.json").write_text(json.dumps({k: v for k, v in data.items() if k != field}))
    (root / "list.json").write_text("[1, 2, 3]")
    bad_shapes = dict(data, tokens=data["tokens"][:3])
    (root / "bad_shapes.json").write_text(json.dumps(bad_shapes))
    arrays = load_file(str(root / "ex.safetensors"))
    save_file(arrays, str(root / "badheader.safetensors"), metadata={"mmlens": "{not json"})
    save_file({k: v for k, v in arrays.items() if k != "position_scores"}, str(root / "noarray.safetensors"),
              metadata={"mmlens": json.dumps({k: v for k, v in data.items() if k not in ("targets",)} | {"targets": data["targets"]})})
    (root / "truncated.safetensors").write_bytes((root / "ex.safetensors").read_bytes()[:200])
    (root / "afile").write_bytes(b"x")
    (root / "adir.json").mkdir()
    return root, ex


def closed_image() -> Image.Image:
    img = Image.new("RGB", (8, 8))
    img.close()
    return img


API_CASES = [
    ("hole8-answer-id-too-big", lambda d, s, w: d.prepare(w["img"], Q, answer=[999999]), "not in the vocabulary"),
    ("hole8-answer-id-negative", lambda d, s, w: d.prepare(w["img"], Q, answer=[-5]), "not in the vocabulary"),
    ("answer-id-float", lambda d, s, w: d.prepare(w["img"], Q, answer=[1.5]), "not in the vocabulary"),
    ("answer-id-placeholder", lambda d, s, w: d.prepare(w["img"], Q, answer=[d.adapter.image_token_id]),
     "image placeholder"),
    ("answer-not-iterable", lambda d, s, w: d.prepare(w["img"], Q, answer=3.5), "pass text or a list"),
    ("answer-placeholder-text", lambda d, s, w: mmlens.explain(d, w["img"], Q, method="attention", answer="<image>"),
     "image placeholder"),
    ("msg-prompt-int", lambda d, s, w: d.prepare(w["img"], 123), "prompt must be a string"),
    ("prompt-none", lambda d, s, w: d.prepare(w["img"], None), "prompt must be a string"),
    ("prompt-bytes", lambda d, s, w: d.prepare(w["img"], b"what?"), "prompt must be a string"),
    ("prompt-empty", lambda d, s, w: d.prepare(w["img"], ""), "prompt is empty"),
    ("msg-prompt-100k-context", lambda d, s, w: d.prepare(w["img"], LONG), "context length of 256"),
    ("prompt-placeholder", lambda d, s, w: d.generate(w["img"], "<image><image> " + Q), "image placeholder"),
    ("msg-image-directory", lambda d, s, w: d.prepare(w["adir"], Q), "is a directory"),
    ("msg-image-url", lambda d, s, w: d.prepare("https://example.com/a.png", Q), "URLs are not fetched"),
    ("msg-closed-pil-image", lambda d, s, w: d.prepare(closed_image(), Q), "closed"),
    ("image-bomb-api", lambda d, s, w: d.prepare(Path(w["bomb"]), Q), "decompression bomb"),
    ("image-array-shape", lambda d, s, w: d.prepare(np.zeros((4, 4, 5), np.uint8), Q), "shape"),
    ("image-int", lambda d, s, w: d.prepare(7, Q), "has type int"),
    ("image-list-empty", lambda d, s, w: d.prepare([], Q), "no image"),
    ("msg-analysis-grammar-api", lambda d, s, w: mmlens.explain(d, w["img"], Q, method="causal_trace"),
     "is an analysis method"),
    ("steps-abc-api", lambda d, s, w: mmlens.explain(d, w["img"], Q, method="integrated_gradients", answer="red",
                                                     steps="abc"), "not an integer"),
    ("steps-huge-api", lambda d, s, w: mmlens.explain(d, w["img"], Q, method="integrated_gradients", answer="red",
                                                      steps=10**9), "out of range"),
    ("max-new-tokens-zero", lambda d, s, w: mmlens.explain(d, w["img"], Q, method="attention", max_new_tokens=0),
     "out of range"),
    ("max-new-tokens-huge", lambda d, s, w: d.generate(w["img"], Q, max_new_tokens=10**9), "out of range"),
    ("msg-bench-n-huge-api", lambda d, s, w: run_benchmark(d, n=10**12), "from 1 to 1000000"),
    ("bench-seed-text-api", lambda d, s, w: run_benchmark(d, seed="x"), "not an integer"),
    ("hole8-bad-device", lambda d, s, w: mmlens.load("demo", device="nonsense-device"), "unknown device"),
    ("device-type", lambda d, s, w: mmlens.load("demo", device=["cpu"]), "device has type list"),
    ("hole8-malformed-pickle", lambda d, s, w: mmlens.load(f"{w['models']}/badpickle", allow_pickle=True), "corrupt"),
    ("truncated-safetensors-api", lambda d, s, w: mmlens.load(f"{w['models']}/truncated"), "corrupt"),
    ("hole8-load-missing-field", lambda d, s, w: mmlens.Explanation.load(s[0] / "no_targets.json"), "'targets'"),
    ("load-missing-images", lambda d, s, w: mmlens.Explanation.load(s[0] / "no_images.json"), "'images'"),
    ("load-missing-tokens", lambda d, s, w: mmlens.Explanation.load(s[0] / "no_tokens.json"), "'tokens'"),
    ("load-missing-method", lambda d, s, w: mmlens.Explanation.load(s[0] / "no_method.json"), "'method'"),
    ("load-bad-shapes", lambda d, s, w: mmlens.Explanation.load(s[0] / "bad_shapes.json"), "malformed"),
    ("load-json-list", lambda d, s, w: mmlens.Explanation.load(s[0] / "list.json"), "no mmlens explanation"),
    ("hole8-header-not-json", lambda d, s, w: mmlens.Explanation.load(s[0] / "badheader.safetensors"),
     "malformed mmlens header"),
    ("load-missing-array", lambda d, s, w: mmlens.Explanation.load(s[0] / "noarray.safetensors"), "position_scores"),
    ("load-truncated-safetensors", lambda d, s, w: mmlens.Explanation.load(s[0] / "truncated.safetensors"),
     "not a readable safetensors"),
    ("load-directory", lambda d, s, w: mmlens.Explanation.load(s[0] / "adir.json"), "not found"),
    ("save-into-directory", lambda d, s, w: s[1].save(s[0] / "adir.json"), "is a directory"),
    ("save-under-file", lambda d, s, w: s[1].save(s[0] / "afile" / "x.json"), "is a file, not a folder"),
    ("save-bad-suffix", lambda d, s, w: s[1].save(s[0] / "x.txt"), "one of the extensions"),
]


@pytest.mark.parametrize("case_id, call, expected", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_case(demo, saved, w, case_id, call, expected):
    before = sorted(saved[0].iterdir())
    with pytest.raises(InputError) as info:
        call(demo, saved, w)
    message = str(info.value)
    assert "\n" not in message and expected in message, message
    assert sorted(saved[0].iterdir()) == before
    assert mmlens.count_hooks(demo.model) == 0


def test_corpus_has_at_least_80_cases():
    assert len(CLI_CASES) + len(API_CASES) >= 80


# -- behaviour that is not an error ----------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_hole9_saved_files_follow_the_umask(saved, tmp_path, umask):
    old = os.umask(umask)
    try:
        paths = [saved[1].save(tmp_path / f"ex{s}") for s in (".json", ".png", ".safetensors", ".html")]
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in paths} == {oct(0o666 & ~umask)}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temp file left


def test_huge_image_is_downscaled_with_a_note():
    img = Image.new("RGB", (5000, 4000), (10, 200, 10))  # 20 M pixels, over the soft limit
    rgb, note = to_rgb(img)
    assert rgb.width * rgb.height <= limits.SOFT_IMAGE_PIXELS
    assert abs(rgb.width / rgb.height - 1.25) < 0.01
    assert note == f"downscaled 5000x4000 -> {rgb.width}x{rgb.height} (over {limits.SOFT_IMAGE_PIXELS:,} pixels)"


def test_downscale_note_reaches_the_explanation(demo):
    ex = mmlens.explain(demo, Image.new("RGB", (4200, 4100), (200, 0, 0)), Q, method="attention", answer="red")
    assert ex.metadata["image_notes"][0].startswith("image 0: downscaled 4200x4100 -> ")
    assert ex.images[0].width * ex.images[0].height <= limits.SOFT_IMAGE_PIXELS


def test_image_under_the_soft_limit_is_untouched():
    img = Image.new("RGB", (4096, 4096))
    rgb, note = to_rgb(img)
    assert rgb.size == (4096, 4096) and note is None


def test_unexpected_error_is_one_line_with_a_saved_traceback(w, tmp_path, monkeypatch):
    import mmlens.catalog as registry

    def broken(name):  # an injected bug, not a model mock
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(registry, "get_method", broken)
    args = ["explain", w["img"], Q, "--out", str(tmp_path / "x.png")]
    result = runner.invoke(app, args)
    assert_one_error_line(result, "unexpected ZeroDivisionError: injected", code=1)
    saved = result.stderr.split("full traceback in ")[1].split(" ")[0]
    assert Path(saved).parent == Path(__import__("tempfile").gettempdir())
    assert "ZeroDivisionError: injected" in Path(saved).read_text() and "Traceback" in Path(saved).read_text()
    Path(saved).unlink()
    debug = runner.invoke(app, ["--debug", *args])
    assert debug.exit_code == 1 and "Traceback" in debug.stderr and "ZeroDivisionError" in debug.stderr
    Path(debug.stderr.split("full traceback in ")[1].split(" ")[0]).unlink()
    assert list(tmp_path.iterdir()) == []


def test_cli_still_writes_outputs(w, tmp_path):
    out = tmp_path / "lens.png"
    result = runner.invoke(app, ["lens", w["img"], Q, "--answer", "red", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert out.stat().st_size > 1000 and json.loads(out.with_suffix(".json").read_text())["kind"] == "logit_lens"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lens.json", "lens.png"]


def test_animated_image_uses_the_first_frame_with_a_note(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    rgb, note = to_rgb(str(tmp_path / "anim.gif"))
    assert note is not None and note.startswith("used the first of 3 frames")
    assert rgb.getpixel((8, 8)) == (255, 0, 0)


def test_failed_png_removes_the_json_written_before_it(w, tmp_path, monkeypatch):
    from mmlens.results.grid import GridResult

    def broken_plot(self, *args, **kwargs):  # an injected failure after the .json was written
        raise RuntimeError("plot failed")

    monkeypatch.setattr(GridResult, "plot", broken_plot)
    result = runner.invoke(app, ["lens", w["img"], Q, "--answer", "red", "--out", str(tmp_path / "lens.png")])
    assert_one_error_line(result, "unexpected RuntimeError: plot failed", code=1)
    Path(result.stderr.split("full traceback in ")[1].split(" ")[0]).unlink()
    assert list(tmp_path.iterdir()) == []


def test_generate_stops_at_the_context_length(demo, w):
    """A prompt that leaves k positions free generates at most k tokens (no transformers error or warning)."""
    limit = demo.model.config.get_text_config().max_position_embeddings
    base = demo.prepare(w["img"], Q).prompt_len
    prompt = Q + " red" * (limit - base - 3)
    prompt_len = demo.prepare(w["img"], prompt).prompt_len
    assert limit - prompt_len == 3
    never_stop = sorted(demo._stop_ids())  # a real logits processor keeps the model from stopping early
    out = demo.generate(w["img"], prompt, max_new_tokens=32, suppress_tokens=never_stop)
    assert len(out.token_ids) == 3
    full = prompt + " red" * 3
    with pytest.raises(mmlens.InputError, match="fills the model's context length"):
        demo.generate(w["img"], full)
