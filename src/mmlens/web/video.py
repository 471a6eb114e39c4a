"""Video on the page: an upload (an animated GIF / PNG / WebP, or several frame files) becomes a
:class:`mmlens.Video` when the loaded family takes video; a video explanation shows as a strip of every frame's
heatmap (one colour scale, frame index and time under each) over the frame-importance bars.

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
    """The API's one-line refusal (it names the families with video), prefixed with what was uploaded."""
    try:
        ctx.subject.adapter.require_video()
    except mmlens.InputError as err:
        raise mmlens.InputError(f"{what} is a video, but {err}") from None


def from_file(ctx: Context, path: str, name: str, n_frames: int) -> Session:
    """Session holding the animated file at ``path`` as a video (fps from its frame durations)."""
    require_video(ctx, f"the file {name!r} ({n_frames} frames)")
    return _session(ctx, mmlens.Video.load(path), name, f"mmlens.Video.load({_code_name(name)!r})")


def from_frames(ctx: Context, paths: Sequence[str]) -> Session:
    """Session holding several uploaded files as the frames of one video, in name order, at 1 fps (as
    ``Video.load`` reads a folder)."""
    named = sorted((os.path.basename(p), p) for p in paths)
    names = [n for n, _ in named]
    require_video(ctx, f"a set of {len(names)} files ({', '.join(names[:3])}{', …' if len(names) > 3 else ''})")
    return _session(ctx, mmlens.Video([p for _, p in named], fps=1.0), f"{names[0]} … {names[-1]}",
                    f"mmlens.Video({names!r}, fps=1.0)")


def _session(ctx: Context, video: Any, name: str, code: str) -> Session:
    frames, _notes = _api.video_frames(video)  # the API's checks: frame limit, fps, each frame an image, one size
    video = mmlens.Video(frames, float(video.fps))
    return Session(image=frames[0], video=video, image_name=name, image_code=code)


def _code_name(name: str) -> str:
    """A placeholder file name for the copy-as-code snippet, with the upload's animated-image suffix."""
    ext = os.path.splitext(name)[1].lower()
    return "your_video" + (ext if ext in (".gif", ".png", ".webp") else ".gif")


def describe(video: Any) -> str:
    """``"3 frames at 4 fps"``."""
    return f"{video.n_frames} frames at {float(video.fps):.3g} fps"


def strip_html(ex: Any, target: int, title: str, opacity: float = 0.6) -> str:
    """Every frame's heatmap on one colour scale (at most the API strip's frames, evenly spaced), frame index and
    time under each, then the frame-importance bars (``ex.frame_curve``: every frame)."""
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
        f'<div class="mm-sub">{len(shown)} of {n} frames shown, evenly spaced; the bars below have every frame</div>'
    return (f'<div class="mm-video"><div class="mm-title">{esc(title)}</div>{note}'
            f'<div class="mm-strip">{frames}</div>{colour_bar(lo, hi)}'
            f'{curve_html(ex.frame_curve(target), times, ex.labels[target])}</div>')


def curve_html(curve: np.ndarray, times: Sequence[float], label: str) -> str:
    """One bar per frame, height = |score| / max |score| (negative scores in blue); hover for the number."""
    values = np.nan_to_num(np.asarray(curve, dtype=np.float64))
    top = float(np.abs(values).max()) or 1.0
    bars = "".join(
        f'<div class="mm-fbar" data-frame="{k}" data-score="{v:.6g}" title="frame {k} · {times[k]:.2f} s: {v:.4g}">'
        f'<div class="{"mm-neg" if v < 0 else "mm-pos"}" style="height:{100 * abs(v) / top:.1f}%"></div>'
        f"<span>{k}</span></div>" for k, v in enumerate(values))
    return (f'<div class="mm-curve"><div class="mm-sub">frame importance: the sum of {esc(repr(label))}\'s scores '
            f"over each frame's tokens (hover a bar for its value)</div><div class=\"mm-bars\">{bars}</div></div>")


CSS = """
.mm-strip {display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start}
.mm-frame {flex: 1 1 90px; max-width: 160px}
.mm-frame .mm-heat {max-width: none}
.mm-caption {font-size: 12px; color: #444; text-align: center; margin-top: 2px; font-family: ui-monospace, monospace}
.mm-curve {margin-top: 8px}
.mm-bars {display: flex; align-items: flex-end; gap: 2px; height: 80px; border-bottom: 1px solid #999;
  padding-bottom: 14px; position: relative}
.mm-fbar {flex: 1 1 0; height: 100%; display: flex; flex-direction: column; justify-content: flex-end;
  position: relative; min-width: 2px; max-width: 40px}
.mm-fbar > div {width: 100%; border-radius: 2px 2px 0 0}
.mm-pos {background: #4f46e5}
.mm-neg {background: #38bdf8}
.mm-fbar span {position: absolute; bottom: -14px; width: 100%; text-align: center; font-size: 10px; color: #555}
"""
