"""Video on the page: a tiny Qwen2-VL (a real HF video family, random weights) served on loopback and driven by
Playwright + Debian's chromium; an animated GIF becomes a video, the Explain panel shows every frame's map and the
frame-importance curve, and bad videos get one line while the server keeps serving.

One server and one browser for the module; two page loads.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pytest
from conftest import subject_for
from PIL import Image, ImageDraw
from test_web import browser, click_and_wait, explain, fill_settled, free_port, message  # noqa: F401 (fixture)

import mmlens
from mmlens.testing.tiny_models import tiny_video
from mmlens.web.render import heat_layer

FAMILY = "qwen2_vl"     # temporal patch 2: frames (0, 1) share tokens, frame 2 has its own
FORCED = "red cat"
XSS = "<img src=x onerror=\"document.title='pwned'\">"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def lm():
    return subject_for(FAMILY)


@pytest.fixture(scope="module")
def url(lm):
    port = free_port()
    app_ = mmlens.serve(lm, port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    app_.close()


@pytest.fixture
def page(browser, url):  # noqa: F811 (the imported fixture)
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(TIMEOUT_MS)
    pg.outside = []
    pg.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else pg.outside.append(r.url))
    pg.goto(url)
    pg.wait_for_selector("#generate")
    yield pg
    pg.close()


def save_gif(frames: list[Image.Image], path, ms: int = 250):
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms, loop=0)
    return path


def upload(pg, *paths) -> str:
    now = "(document.querySelector('#ask-msg .mm-msg') || {}).innerText"
    pg.evaluate(f"window.__msg = {now}")
    pg.set_input_files("#upload input[type=file]", [str(p) for p in paths])
    pg.wait_for_function(f"{now} !== undefined && {now} !== window.__msg")
    return message(pg, "ask-msg")


def ask(pg, prompt: str) -> None:
    pg.fill("#prompt textarea", prompt)
    if not pg.locator("#forced textarea").is_visible():
        pg.get_by_text("teacher-force an answer (optional)").click()
    fill_settled(pg, "#forced textarea", FORCED)
    click_and_wait(pg, "#generate", "ask-msg")
    assert "teacher-forced answer" in message(pg, "ask-msg")


def frame_layers(pg) -> list[np.ndarray]:
    """Each frame's heat layer (RGBA) in strip order."""
    out = []
    for src in pg.eval_on_selector_all("#heatmap .mm-frame .mm-layer", "els => els.map(e => e.src)"):
        assert src.startswith("data:image/png;base64,")
        out.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))))
    return out


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def test_a_gif_is_explained_frame_by_frame_and_a_marked_frame_moves_its_own_map(page, lm, tmp_path):
    frames = list(tiny_video(FAMILY, 3).frames)
    gif = save_gif(frames, tmp_path / "clip.gif")
    video = mmlens.Video.load(gif)  # what the page reads (GIF palette and all)
    assert video.n_frames == 3 and video.fps == pytest.approx(4.0)
    text = upload(page, gif)
    assert "clip.gif" in text and "3 frames at 4 fps" in text
    assert "3 frames at 4 fps" in page.inner_text("#preview")
    w, h = video.frames[0].size
    page.wait_for_function(f"(e => e && e.naturalWidth === {w} && e.naturalHeight === {h})"
                           "(document.querySelector('#preview img'))")  # the first frame, at its own size

    ask(page, "what is this?")
    explain(page)
    assert page.locator("#explain-msg .mm-msg").count() == 0
    assert page.locator("#heatmap .mm-frame").count() == video.n_frames == 3
    captions = page.locator("#heatmap .mm-caption").all_inner_texts()
    assert captions == [f"frame {k} · {t:.2f} s" for k, t in enumerate(video.times())]
    want = mmlens.explain(lm, video, "what is this?", method="attention", target="answer", answer=FORCED)
    maps = [want.image_map(image=k) for k in range(3)]
    layers = frame_layers(page)
    assert [a.shape for a in layers] == [(h, w, 4)] * 3
    scale = (min(float(m.min()) for m in maps), max(float(m.max()) for m in maps))  # one scale for the strip
    for k in range(3):  # the layer of frame k is the API's map of frame k on that scale
        np.testing.assert_array_equal(layers[k], np.asarray(heat_layer(maps[k], scale)))
    assert np.array_equal(layers[0], layers[1]) and not np.array_equal(layers[1], layers[2])  # frames 0, 1 share tokens
    scores = [float(x) for x in page.eval_on_selector_all("#heatmap .mm-pt", "els => els.map(e => e.dataset.score)")]
    np.testing.assert_allclose(scores, want.frame_curve(), rtol=1e-5)
    assert scores[0] == scores[1]  # frames 0 and 1 share their tokens

    marked = list(video.frames)
    marked[2] = marked[2].copy()
    ImageDraw.Draw(marked[2]).rectangle([0, 0, w // 2, h // 2], fill=(255, 0, 255))
    upload(page, save_gif(marked, tmp_path / "marked.gif"))
    ask(page, "what is this?")
    explain(page)
    after = frame_layers(page)
    moved = [1 - corr(a[..., 3], b[..., 3]) for a, b in zip(layers, after)]
    assert int(np.argmax(moved)) == 2 and moved[2] > 5 * max(moved[0], moved[1]), moved
    assert mmlens.count_hooks(lm.model) == 0
    assert page.outside == []


def test_bad_videos_get_one_line_and_the_server_keeps_serving(page, lm, tmp_path):
    from mmlens.util import limits

    n = limits.MAX_VIDEO_FRAMES + 1
    long = save_gif([Image.new("RGB", (8, 8), (k % 256, 255 - k % 256, 0)) for k in range(n)], tmp_path / "long.gif")
    with Image.open(long) as im:
        assert im.n_frames == n
    text = upload(page, long)
    assert f"{n} frames, over the {limits.MAX_VIDEO_FRAMES}-frame limit" in text and "\n" not in text.strip()
    a, b = tiny_video(FAMILY, 2).frames
    a.save(tmp_path / "a.png")
    b.resize((56, 56)).save(tmp_path / "b.png")
    text = upload(page, tmp_path / "a.png", tmp_path / "b.png")
    assert "frames of one size" in text and "\n" not in text.strip()
    assert mmlens.count_hooks(lm.model) == 0

    b.save(tmp_path / "b.png")  # two frames of one size: a video of 2 frames at 1 fps, in name order
    assert "a.png … b.png (a video of 2 frames at 1 fps)" in upload(page, tmp_path / "b.png", tmp_path / "a.png")
    for rate, words in (("-1", "fps=-1: pass the frame rate as a number in (0, 1000]"), ("2.5", "2 frames at 2.5 fps")):
        now = "(document.querySelector('#ask-msg .mm-msg') || {}).innerText"
        page.evaluate(f"window.__msg = {now}")
        page.fill("#fps input", rate)
        page.press("#fps input", "Enter")
        page.wait_for_function(f"{now} !== window.__msg")
        assert words in message(page, "ask-msg")
    assert "2 frames at 2.5 fps" in page.inner_text("#preview")
    text = upload(page, tmp_path / "a.png")  # a still image on a video model: one heatmap, as before
    assert "an image" in text and page.inner_text("#preview").strip().startswith("image")
    ask(page, "what is this?")
    explain(page)
    assert page.locator("#heatmap .mm-frame").count() == 0 and page.locator("#heatmap .mm-heat").count() == 1


def test_video_panels_without_a_browser(lm, tmp_path, monkeypatch):
    """An image-only family refuses a GIF with the API's own line; the Export tab's report carries the strip."""
    from mmlens.web import ask as ask_panel
    from mmlens.web import explain as explain_panel
    from mmlens.web import export
    from mmlens.web.session import Context, Session

    gif = save_gif(list(tiny_video(FAMILY, 3).frames), tmp_path / "clip.gif")
    image_only = subject_for("llava")
    with pytest.raises(mmlens.InputError) as api:
        image_only.prepare(mmlens.Video.load(gif), "what is this?")
    frames = [tmp_path / f"f{i}.png" for i in range(2)]
    for i, f in enumerate(frames):
        tiny_video(FAMILY, 2).frames[i].save(f)
    with pytest.raises(mmlens.InputError) as page_err:  # several files are a video: refused as the API does
        ask_panel.load_upload(Context(image_only, "tiny-llava", str(tmp_path)), Session(), [str(f) for f in frames])
    assert str(api.value) in str(page_err.value) and "f0.png" in str(page_err.value)
    assert FAMILY in str(page_err.value) and "\n" not in str(page_err.value)
    first = ask_panel.load_upload(Context(image_only, "tiny-llava", str(tmp_path)), Session(), [str(gif)])
    assert first.video is None and "first frame of 3" in ask_panel.loaded_note(first)  # as the API reads a GIF
    np.testing.assert_array_equal(np.asarray(first.image), np.asarray(mmlens.Video.load(gif).frames[0]))

    ctx = Context(lm, "tiny", str(tmp_path))
    loaded = ask_panel.load_upload(ctx, Session(), [str(gif)])
    s = ask_panel.generate(ctx, loaded, XSS, XSS)  # the answer (the strip's title and the curve's label) is text
    s, heat, _ = explain_panel.run(ctx, s, "attention", "answer", {}, 0.6)
    label = s.explanation.labels[0]  # the tiny tokenizer reads the payload as "<unk> ...": markup all the same
    assert "<" in label and label not in heat and html.escape(label) in heat and "<img src=x" not in heat
    s = ask_panel.generate(ctx, loaded, "what is this?", FORCED)
    s, heat, _ = explain_panel.run(ctx, s, "saliency", "answer", {}, 0.6)
    assert heat.count('class="mm-frame"') == heat.count('class="mm-pt"') == 3
    report = Path(export.save(ctx, s, "HTML report")).read_text(encoding="utf-8")
    assert report.count("data:image/png;base64") == 2  # the heatmaps + the frame strip
    code = export.code(ctx, s)
    assert "mmlens.Video.load('your_video.gif', fps=4.0)" in code and "ex.save_strip(" in code
    assert mmlens.count_hooks(lm.model) == 0

    from mmlens.util import limits  # an animated file's declared pixels over all frames are refused before decoding

    w, h = loaded.video.frames[0].size
    monkeypatch.setattr(limits, "MAX_VIDEO_PIXELS", 3 * w * h - 1)
    with pytest.raises(mmlens.InputError, match=f"declares 3 frames of {w}x{h}"):
        ask_panel.load_upload(ctx, Session(), [str(gif)])
    frames = [str(tmp_path / f"f{k}.png") for k in range(4)]  # frame files: decided from frame 0, in one line
    for f, frame in zip(frames, loaded.video.frames * 2):
        frame.save(f)
    with pytest.raises(mmlens.InputError, match=f"4 frames of {w}x{h} .* over the {3 * w * h - 1:,}-pixel limit"):
        ask_panel.load_upload(ctx, Session(), frames)
