"""`mmlens serve` in a real browser: Playwright drives Debian's chromium against the demo model on loopback.

One server and one browser per module; each test opens a fresh page (a fresh session).
"""

from __future__ import annotations

import base64
import io
import shutil
import socket
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import mmlens
from mmlens.cli import app
from mmlens.data import ShapesVQA

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"]
XSS = "<img src=x onerror=\"document.title='pwned'\">"
SAMPLE = 4              # "what shape is the blue object?" -> "circle"; its evidence is one object
TIMEOUT_MS = 30_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lm():
    return mmlens.load("demo")


@pytest.fixture(scope="module")
def server(lm):
    port = free_port()
    app_ = mmlens.serve(lm, port=port, block=False)
    app_.url_for_tests = f"http://127.0.0.1:{port}/"
    yield app_
    app_.close()


@pytest.fixture(scope="module")
def url(server):
    return server.url_for_tests


@pytest.fixture(scope="module")
def browser():
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian's chromium is not installed (the browser tests need it): run `make setup`, or "
                    "`apt-get install -y chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the `playwright` Python package is missing: run `make setup` (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, url):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg.set_default_timeout(TIMEOUT_MS)
    pg.outside = []  # requests that leave the server (the page must load nothing from elsewhere)
    pg.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else pg.outside.append(r.url))
    pg.goto(url)
    pg.wait_for_selector("#generate")
    yield pg
    pg.close()


# -- page helpers -------------------------------------------------------------------------------------------
def load_sample(pg, index: int) -> None:
    pg.locator("#samples .thumbnail-item").nth(index).click()
    pg.wait_for_function("document.querySelector('#ask-msg').innerText.includes('loaded ShapesVQA sample')")


def generate(pg, prompt: str | None = None, forced: str | None = None) -> None:
    if prompt is not None:
        pg.fill("#prompt textarea", prompt)
    if forced is not None:
        pg.get_by_text("teacher-force an answer (optional)").click()
        fill_settled(pg, "#forced textarea", forced)
    click_and_wait(pg, "#generate", "ask-msg")


def fill_settled(pg, selector: str, value: str, tries: int = 5) -> None:
    """Fill a textbox inside an accordion that has just opened. Gradio may mount the accordion's content again
    while it opens, which drops a value filled too early (CI saw the default used); refill until it holds."""
    for _ in range(tries):
        pg.fill(selector, value)
        pg.wait_for_timeout(250)
        if pg.input_value(selector) == value:
            return
    raise AssertionError(f"{selector} did not keep {value!r}")


def click_and_wait(pg, button: str, msg: str) -> None:
    """Click ``button`` and wait until the message area ``msg`` shows a new message."""
    now = f"(document.querySelector('#{msg} .mm-msg') || {{}}).innerText"
    pg.evaluate(f"window.__msg = {now}")
    pg.click(button)
    pg.wait_for_function(f"{now} !== undefined && {now} !== window.__msg")


def pick_method(pg, name: str) -> None:
    pg.click("#method input")
    pg.locator(f'#method li[role=option][aria-label^="{name}  ·"]').click()
    pg.wait_for_function(f"document.querySelector('#method-info').innerText.includes({name!r}) || "
                         f"document.querySelector('#method input').value.startsWith({name!r})")


def explain(pg) -> None:
    """Press Explain and wait until a new heatmap or a message arrives."""
    state = ("[(document.querySelector('#heatmap .mm-layer') || {}).src, "
             "(document.querySelector('#heatmap .mm-title') || {}).innerText, "
             "(document.querySelector('#explain-msg .mm-msg') || {}).innerText].join('|')")
    pg.evaluate(f"window.__before = {state}")
    pg.click("#explain")
    pg.wait_for_function(f"{state} !== window.__before")


def heat_layer(pg) -> np.ndarray:
    src = pg.get_attribute("#heatmap .mm-layer", "src")
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))


def message(pg, where: str) -> str:
    return pg.inner_text(f"#{where} .mm-msg")


# -- the main flow ------------------------------------------------------------------------------------------
def test_two_methods_heatmap_peaks_in_evidence_box(page):
    sample = ShapesVQA(seed=0).sample(SAMPLE)
    load_sample(page, SAMPLE)
    assert page.input_value("#prompt textarea") == sample.question
    generate(page)
    chip = page.locator("#answer-tokens label").first
    assert chip.inner_text().strip() == sample.answer
    chip.click()
    page.wait_for_function(f"document.querySelector('#target textarea, #target input').value === {sample.answer!r}")
    x0, y0, x1, y1 = sample.box
    layers = []
    for method in ("attention", "integrated_gradients"):
        pick_method(page, method)
        explain(page)
        assert page.locator("#explain-msg .mm-msg").count() == 0
        assert page.inner_text("#heatmap .mm-title") == f"{method}: {sample.answer!r}"
        layer = heat_layer(page)
        assert layer.shape == (sample.image.height, sample.image.width, 4)
        y, x = np.unravel_index(int(np.argmax(layer[..., 3])), layer.shape[:2])  # most opaque = peak score
        assert x0 <= x < x1 and y0 <= y < y1, (method, (x, y), sample.box)
        assert page.locator("#prompt-scores .mm-tok").count() >= len(sample.question.split())
        layers.append(layer)
    assert np.abs(layers[0].astype(int) - layers[1].astype(int)).mean() > 5  # the map changed with the method
    page.fill("#target textarea", f"{sample.answer} - square")  # a contrast
    explain(page)
    assert page.inner_text("#heatmap .mm-title") == f"integrated_gradients: '{sample.answer} - square'"
    page.locator("#opacity input[type=range]").fill("0.2")  # the slider only restyles the layer
    page.wait_for_function("getComputedStyle(document.querySelector('#heatmap .mm-layer')).opacity === '0.2'")
    assert "leaf: data/input-output" in page.inner_text("#method-info")
    assert "access: gradient" in page.inner_text("#method-info")
    assert page.locator("#faithfulness").count() == 1  # demo benchmark figures shown
    assert page.outside == []


def test_logit_lens_shows_answer_word_at_last_layer(page, lm):
    sample = ShapesVQA(seed=0).sample(SAMPLE)
    load_sample(page, SAMPLE)
    generate(page)
    page.get_by_role("tab", name="Inside").click()
    page.click("#lens-run")
    page.wait_for_selector("#lens-summary")
    last = f"layer {lm.n_layers - 1}"
    assert f"{last} predicts {sample.answer!r}" in page.inner_text("#lens-summary")
    last_row = page.locator("#lens-table tr", has=page.locator("th.mm-row", has_text=last))
    cells = last_row.locator("td")
    n_answer = page.locator("#answer-tokens label").count()
    before_answer = cells.nth(cells.count() - n_answer - 1)  # the last prompt position predicts the answer
    assert before_answer.inner_text().strip() == sample.answer
    assert before_answer.get_attribute("title").startswith(f"{sample.answer} ")  # top-5 words on hover
    assert before_answer.get_attribute("title").count(",") == 4
    assert page.locator("#lens-map .mm-layer").count() == 1


def test_export_reads_back_equal_to_explain(page, lm, tmp_path, monkeypatch):
    sample = ShapesVQA(seed=0).sample(SAMPLE)
    load_sample(page, SAMPLE)
    generate(page)
    pick_method(page, "relevancy")
    explain(page)
    page.get_by_role("tab", name="Export").click()
    page.get_by_label("safetensors").check()
    page.click("#save")
    page.wait_for_selector("#download a")
    with page.expect_download() as info:
        page.locator("#download a").first.click()
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    got = mmlens.Explanation.load(path)
    want = mmlens.explain(lm, sample.image, sample.question, method="relevancy", target="answer")
    assert got.labels == want.labels and got.answer == want.answer and got.tokens == want.tokens
    np.testing.assert_array_equal(got.position_scores, want.position_scores)
    np.testing.assert_array_equal(got.image_map(0), want.image_map(0))
    snippet = page.locator("#snippet .cm-content").inner_text()
    assert "mmlens.explain(lm, image, 'what shape is the blue object?', method='relevancy'" in snippet
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet, scope)  # "copy as code" reproduces the view
    np.testing.assert_array_equal(scope["ex"].position_scores, want.position_scores)
    assert (tmp_path / "explanation.html").exists()


def test_xss_payload_is_text_not_markup(page):
    title = page.title()
    load_sample(page, 0)
    generate(page, prompt=XSS)                       # payload as the prompt
    assert XSS in message(page, "ask-msg")
    explain(page)
    generate(page, prompt=XSS, forced=XSS)           # and as the teacher-forced answer
    assert message(page, "ask-msg").count(XSS) == 2
    explain(page)
    assert page.locator("#heatmap .mm-title").count() == 1
    page.get_by_role("tab", name="Export").click()
    page.click("#save")                              # the HTML report (escaping is the API's)
    page.wait_for_selector("#download a")
    page.get_by_role("tab", name="Ask / Explain").click()
    page.wait_for_timeout(300)
    assert page.title() == title != "pwned"
    assert page.locator("img[src='x']").count() == 0


def test_bad_inputs_give_one_message_and_server_keeps_serving(page, lm, server, tmp_path):
    def upload(name: str, data: bytes) -> str:
        f = tmp_path / name
        f.write_bytes(data)
        now = "(document.querySelector('#ask-msg .mm-msg') || {}).innerText"
        page.evaluate(f"window.__msg = {now}")
        page.set_input_files("#upload input[type=file]", str(f))
        page.wait_for_function(f"{now} !== undefined && {now} !== window.__msg")
        return message(page, "ask-msg")

    text = upload("notes.png", b"these are notes, not pixels\n" * 10)
    assert "notes.png" in text and "Traceback" not in text and "\n" not in text.strip()
    assert "empty" in upload("empty.png", b"")
    assert "bomb" in upload("bomb.png", _png_header(100_000, 100_000))
    from pathlib import Path
    kept = {p.name for p in Path(server.mmlens_tmp).rglob("*.png")}
    assert {"notes.png", "bomb.png"} <= kept  # uploads land in the server's own temp folder

    load_sample(page, SAMPLE)
    page.fill("#prompt textarea", "   ")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#ask-msg').innerText.includes('prompt is empty')")

    generate(page, prompt=ShapesVQA(seed=0).sample(SAMPLE).question)
    page.fill("#target textarea", "purple")          # not in the answer "circle"
    explain(page)
    assert "'purple' is not in the answer" in message(page, "explain-msg")

    page.fill("#target textarea", "answer")
    page.get_by_text("options", exact=True).click()
    fill_settled(page, "#opt-attention-aggregate textarea", "bogus")
    explain(page)
    assert "bogus" in message(page, "explain-msg")
    assert mmlens.count_hooks(lm.model) == 0

    page.fill("#opt-attention-aggregate textarea", "mean")
    explain(page)
    first = heat_layer(page)
    page.reload()
    page.wait_for_selector("#generate")
    load_sample(page, SAMPLE)
    generate(page)
    explain(page)
    np.testing.assert_array_equal(heat_layer(page), first)  # after the failures: the same result, bit for bit


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG that declares ``width x height`` pixels (a decompression bomb: refused before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


# -- the command line and the Python entry point (no browser) -----------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--port", "0"], "not a port number"),
    (["--port", "70000"], "not a port number"),
    (["--host", "no such host!"], "not a host name"),
    (["--host", "nonexistent.invalid"], "does not resolve"),
])
def test_serve_bad_host_or_port_exits_2(args, words):
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0]


def test_serve_port_in_use_exits_2():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: --port") and "not available" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_loopback_is_the_default_and_others_are_flagged():
    import inspect

    from mmlens.web.server import is_loopback

    assert inspect.signature(mmlens.web.serve).parameters["host"].default == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and not is_loopback("0.0.0.0")


def test_import_mmlens_does_not_import_gradio():
    code = "import sys, mmlens; print('gradio' in sys.modules, callable(mmlens.serve))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]  # mmlens.serve exists; Gradio loads only when it is called


# -- every panel on every supported family (tiny random models of the real HF classes; no browser) ----------
def test_panels_work_for_every_family(subject, family, tmp_path):
    from mmlens.testing.tiny_models import tiny_images
    from mmlens.web import ask, export, heads, knockout, lens, trace
    from mmlens.web import explain as explain_panel
    from mmlens.web.render import result_grid_html
    from mmlens.web.session import Context, Session

    ctx = Context(subject, f"tiny-{family}", str(tmp_path))
    image = tiny_images(family)[0]
    s = ask.generate(ctx, Session(image=image, image_code="image"), "what color is the cat?", "red cat")
    assert s.answer_tokens and ask.span_target(s, [0]) == s.answer_tokens[0]
    s, heat, toks = explain_panel.run(ctx, s, "attention", "answer", {}, 0.6)
    layer = np.asarray(Image.open(io.BytesIO(base64.b64decode(heat.split('class="mm-layer"')[1]
                                                               .split("base64,")[1].split('"')[0]))))
    assert layer.shape == (image.height, image.width, 4)  # the heat layer covers the original image
    assert toks.count('class="mm-tok"') == len(s.explanation.text_scores(0))
    result = lens.run(ctx, s, "")
    assert f"layer {subject.n_layers - 1} predicts" in lens.summary_html(s, result)
    assert lens.table_html(s, result).count("<tr>") == subject.n_layers + 1
    assert 'class="mm-layer"' in lens.image_map_html(s, result, 0)
    for grid in (trace.run(ctx, s, "resid", 3.0), knockout.run(ctx, s, 0), heads.run(ctx, s)):
        grid_html = result_grid_html(grid)
        assert grid_html.count("<td ") > 0
    got = mmlens.Explanation.load(export.save(ctx, s, "safetensors"))
    np.testing.assert_array_equal(got.position_scores, s.explanation.position_scores)
    assert "answer='red cat'" in export.code(ctx, s)
    assert mmlens.count_hooks(subject.model) == 0


def test_faithfulness_figures_say_when_the_table_is_stale(tmp_path, monkeypatch):
    """The method panel's figures come with a caveat when the benchmark table's header marks it stale."""
    from mmlens.web import faithfulness

    table = ("| method | energy in mask ↑ | n |\n|---|---:|---:|\n| saliency | 0.300 | 200 |\n"
             "| baseline:random | 0.040 | 200 |\n")
    for name, head, stale in (("fresh.md", "# demo\n\n", False), ("stale.md", "# demo\n\n> **Stale since x**\n\n", True)):
        path = tmp_path / name
        path.write_text(head + table, encoding="utf-8")
        monkeypatch.setattr(faithfulness, "table_path", lambda p=path: p)
        page = faithfulness.figures_html("saliency", is_demo=True)
        assert "0.300" in page and ("faithfulness-stale" in page) is stale


def test_chip_of_a_repeated_token_targets_that_token():
    """Clicking the second "red" explains the second one: the chip's target names it by index."""
    from mmlens.web.ask import span_target
    from mmlens.web.session import Session

    s = Session(answer_tokens=["red", "cat", "red", ""])
    assert span_target(s, [0]) == "red" and span_target(s, [0, 1]) == "red cat"
    assert span_target(s, [2]) == "#2" and span_target(s, [1, 2]) == "cat red"
    assert span_target(s, [3]) == "#3"  # a token that decodes to nothing
