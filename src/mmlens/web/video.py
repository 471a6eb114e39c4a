"""Video on the page: an upload (an animated GIF / PNG / WebP, or several frame files) becomes a
:class:`mmlens.Video` when the loaded family takes video; a video explanation shows as a strip of every frame's
heatmap (one colour scale, frame index and time under each) over the frame-importance curve.

The checks are the API's (frame limit, frames of one size, the families that take video), so the page says what
``mmlens.explain`` would say.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

import mmlens
from mmlens.web import _api
from mmlens.web.render import colour_bar, esc, heatmap_html
from mmlens.web.session import Context, Session


def frame_count(path: str) -> int:
    """Frames in an image file whose header was checked (1 for a still image)."""
    with Image.open(path) as im:
        return int(getattr(im, "n_frames", 1) or 1)


def require_video(ctx: Context, what: str) -> None:
    """The API's one-line refusal (it names the families with video), after ``what`` was uploaded."""
    try:
        ctx.subject.adapter.require_video()
    except mmlens.InputError as err:
        raise mmlens.InputError(f"{what}, but {err}") from None


def from_file(ctx: Context, path: str, name: str, n_frames: int, fps: float | None = None) -> Session:
    """Session holding the animated file at ``path`` as a video (at ``fps``, default its frame durations')."""
    require_video(ctx, f"the file {name!r} has {n_frames} frames (a video)")
    video = mmlens.Video.load(path)
    return _session(video.frames, video.fps, fps, name, f"mmlens.Video.load({_code_name(name)!r}")


def from_frames(ctx: Context, paths: Sequence[str], fps: float | None = None) -> Session:
    """Session holding several uploaded files as the frames of one video, in name order, at ``fps`` (default 1, as
    ``Video.load`` reads a folder)."""
    named = sorted((os.path.basename(p), p) for p in paths)
    names = [n for n, _ in named]
    listed = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    require_video(ctx, f"{len(names)} files at once ({listed}) are the frames of a video")
    return _session([p for _, p in named], 1.0, fps, f"{names[0]} … {names[-1]}", f"mmlens.Video({names!r}")


def with_fps(s: Session, fps: float | None) -> Session:
    """The session's video at another frame rate (None or 0: the upload's own); its answer and explanation are
    dropped. The same session when there is no video or the rate is the same."""
    fps = fps or None
    if s.video is None or float(s.video_fps if fps is None else fps) == float(s.video.fps):
        return s
    return _session(s.video.frames, s.video_fps, fps, s.image_name, s.video_code)


def _session(frames: Sequence[Any], native: float, fps: float | None, name: str, code: str) -> Session:
    rate = native if fps is None else fps
    # the API's checks: frame limit, pixels, fps, each frame an image, all of one size
    checked, _notes = _api.video_frames(mmlens.Video(list(frames), rate))
    return Session(image=checked[0], video=mmlens.Video(checked, float(rate)), video_fps=float(native),
                   video_code=code, image_name=name, image_code=f"{code}, fps={float(rate)!r})")


def _code_name(name: str) -> str:
    """A placeholder file name for the copy-as-code snippet, with the upload's animated-image suffix."""
    ext = os.path.splitext(name)[1].lower()
    return "your_video" + (ext if ext in (".gif", ".png", ".webp") else ".gif")


def describe(video: Any) -> str:
    """``"3 frames at 4 fps"``."""
    return f"{video.n_frames} frames at {float(video.fps):.3g} fps"


def strip_html(ex: Any, target: int, title: str, opacity: float = 0.6) -> str:
    """Every frame's heatmap on one colour scale (at most the API strip's frames, evenly spaced), frame index and
    time under each, then the frame-importance curve (``ex.frame_curve``: every frame)."""
    times = list(ex.metadata["video"]["frame_times"])
    n = len(ex.images)
    shown = _api.shown_frames(n)
    maps = [np.asarray(ex.pixel_maps[target][k], dtype=np.float64) for k in shown]
    finite = np.concatenate([m[np.isfinite(m)].ravel() for m in maps])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    frames = "".join(
        f'<div class="mm-frame" data-frame="{k}">'
        + heatmap_html(ex.images[k], m, "", opacity, scale=(lo, hi), caption=f"frame {k} · {times[k]:.2f} s")
        + "</div>" for k, m in zip(shown, maps))
    note = "" if len(shown) == n else \
        f'<div class="mm-sub">{len(shown)} of {n} frames shown, evenly spaced; the curve below has every frame</div>'
    return (f'<div class="mm-video"><div class="mm-title">{esc(title)}</div>{note}'
            f'<div class="mm-strip">{frames}</div>{colour_bar(lo, hi)}'
            f'{curve_html(ex.frame_curve(target), times, ex.labels[target])}</div>')


def curve_html(curve: np.ndarray, times: Sequence[float], label: str) -> str:
    """The frame curve as a small inline SVG plot (score against time, one dot per frame; hover a dot for its
    number), on the curve's own range like the API strip's plot: the axis labels say where it starts."""
    values = np.nan_to_num(np.asarray(curve, dtype=np.float64))
    n = len(values)
    lo, hi = float(values.min()), float(values.max())
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    lo, hi = lo - pad, hi + pad
    width, height, left, right, top, bottom = 640, 120, 56, 12, 8, 22

    def at(k: int, v: float) -> tuple[float, float]:
        x = left + (width - left - right) * (k / (n - 1) if n > 1 else 0.5)
        return x, top + (height - top - bottom) * (hi - v) / (hi - lo)

    points = [at(k, v) for k, v in enumerate(values)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    r = 3.0 if n <= 64 else 1.5
    dots = "".join(
        f'<circle class="mm-pt" data-frame="{k}" data-score="{v:.9g}" cx="{x:.1f}" cy="{y:.1f}" r="{r}">'
        f"<title>frame {k} · {times[k]:.2f} s: {v:.4g}</title></circle>"
        for k, (v, (x, y)) in enumerate(zip(values, points)))
    base = height - bottom
    axes = (f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}"/><line x1="{left}" y1="{base}" '
            f'x2="{width - right}" y2="{base}"/>'
            f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{hi - pad:.3g}</text>'
            f'<text x="{left - 4}" y="{base}" text-anchor="end">{lo + pad:.3g}</text>'
            f'<text x="{left}" y="{height - 6}">{times[0]:.2f} s</text>'
            f'<text x="{width - right}" y="{height - 6}" text-anchor="end">{times[-1]:.2f} s</text>')
    return (f'<div class="mm-curve"><div class="mm-sub">frame importance over time: the sum of the scores for '
            f"{esc(repr(label))} over each frame's tokens (hover a dot for its value)</div>"
            f'<svg class="mm-plot" viewBox="0 0 {width} {height}" role="img" aria-label="frame importance">{axes}'
            f'<polyline points="{line}"/>{dots}</svg></div>')


CSS = """
.mm-strip {display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start}
.mm-frame {flex: 1 1 90px; max-width: 160px}
.mm-frame .mm-heat {max-width: none}
.mm-caption {font-size: 12px; color: #444; text-align: center; margin-top: 2px; font-family: ui-monospace, monospace}
.mm-curve {margin-top: 8px}
.mm-plot {width: 100%; max-width: 640px; height: auto; font-size: 11px; fill: #555}
.mm-plot line {stroke: #999; stroke-width: 1}
.mm-plot polyline {fill: none; stroke: #4f46e5; stroke-width: 1.5}
.mm-plot .mm-pt {fill: #4f46e5}
"""
