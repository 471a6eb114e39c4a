"""A video explanation as one strip: every frame with its heatmap (one colour scale), and under it the
per-frame importance curve over time.

>>> from mmlens.results.video_strip import strip_png                # doctest: +SKIP
>>> open("strip.png", "wb").write(strip_png(ex))                    # doctest: +SKIP
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

from mmlens.errors import InputError

if TYPE_CHECKING:
    from mmlens.results.explanation import Explanation, TargetKey

#: frames drawn at most (evenly picked when there are more); the curve always shows every frame
MAX_STRIP_FRAMES = 16


def frame_curve(ex: Explanation, target: TargetKey = None) -> np.ndarray:
    """Sum of ``target``'s position scores over each frame's (image's) token positions, in frame order; a
    token shared by several frames (Qwen2-VL: two per token) counts for each of them. A video's separator tokens
    (LLaVA-OneVision's closing newline) belong to no frame and are left out."""
    row = ex.position_scores[ex._index(target)]
    groups = (ex.metadata.get("video") or {}).get("frame_positions") or ex.image_positions
    return np.array([float(row[list(p)].sum()) if len(p) else 0.0 for p in groups], dtype=np.float64)


def shown_frames(n: int) -> list[int]:
    """The frames a strip (or a video's plot) draws: all of them, or :data:`MAX_STRIP_FRAMES` evenly spaced.

    >>> shown_frames(3), shown_frames(31)[:4], len(shown_frames(200))
    ([0, 1, 2], [0, 2, 4, 6], 16)
    """
    return sorted({round(float(i)) for i in np.linspace(0, n - 1, min(n, MAX_STRIP_FRAMES))})


def strip_png(ex: Explanation, target: TargetKey = None, dpi: int = 100, cmap: str = "jet") -> bytes:
    """PNG bytes of the strip for ``target`` (None = the first)."""
    from matplotlib.figure import Figure

    from mmlens.results.rendering import _no_mathtext
    from mmlens.viz.overlay import overlay

    video = ex.metadata.get("video")
    if not video:
        raise InputError("this explanation is of images, not a video: use plot() / save('x.png')")
    t = ex._index(target)
    times = list(video["frame_times"])
    shown = shown_frames(len(ex.images))
    maps = [ex.pixel_maps[t][k] for k in shown]
    finite = np.concatenate([m[np.isfinite(m)].ravel() for m in maps])
    scale = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig = Figure(figsize=(max(6.0, 1.9 * len(shown)), 4.2), layout="constrained")
    grid = fig.add_gridspec(2, len(shown), height_ratios=[2.0, 1.0])
    for col, k in enumerate(shown):
        ax = fig.add_subplot(grid[0, col])
        overlay(ex.images[k], ex.pixel_maps[t][k], ax, alpha=0.5, cmap=cmap, scale=scale)
        ax.set_title(f"frame {k}\n{times[k]:.2f} s", fontsize=8)
    curve_ax = fig.add_subplot(grid[1, :])
    curve = frame_curve(ex, t)
    curve_ax.plot(times, curve, marker="o")
    curve_ax.set_xlabel("time (s)")
    curve_ax.set_ylabel("frame score (sum)")
    curve_ax.grid(alpha=0.3)
    fig.suptitle(_no_mathtext(f"{ex.method}: {ex.labels[t]!r}"), fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
