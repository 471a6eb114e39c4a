"""HTML fragments for the page. Every string that comes from the model or the user goes through :func:`esc`."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

#: jet-like colour stops (value, rgb) used by the heat layer, the colour bar and the token chips
_STOPS = [(0.0, (0, 0, 143)), (0.125, (0, 0, 255)), (0.375, (0, 255, 255)), (0.625, (255, 255, 0)),
          (0.875, (255, 0, 0)), (1.0, (128, 0, 0))]


def esc(text: object) -> str:
    """HTML-escape any value (quotes too, so it is safe inside attributes)."""
    return html.escape(str(text), quote=True)


def message(text: str, kind: str = "error") -> str:
    """One readable line for the page's message area."""
    icon = {"error": "⚠", "info": "ℹ", "ok": "✓"}.get(kind, "")
    return f'<div class="mm-msg mm-{esc(kind)}" role="status">{icon} {esc(text)}</div>'


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB (..., 3) on the jet-like scale."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    xs = [s[0] for s in _STOPS]
    return np.stack([np.interp(v, xs, [s[1][c] for s in _STOPS]) for c in range(3)], axis=-1).astype(np.uint8)


def _css_gradient() -> str:
    return ", ".join(f"rgb{c} {int(x * 100)}%" for x, c in _STOPS)


def png_data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def normalise(m: np.ndarray, scale: tuple[float, float] | None = None) -> tuple[np.ndarray, float, float]:
    """Min-max to [0, 1] (a constant map becomes zeros), or onto a given ``(lo, hi)`` ``scale`` shared by several
    maps (clipped); returns (normalised, lo, hi)."""
    m = np.nan_to_num(np.asarray(m, dtype=np.float64))
    lo, hi = (float(m.min()), float(m.max())) if scale is None else (float(scale[0]), float(scale[1]))
    return (np.clip((m - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(m)), lo, hi


def heat_layer(m: np.ndarray, scale: tuple[float, float] | None = None) -> Image.Image:
    """RGBA layer: colour and alpha both grow with the score, so the peak is the most opaque pixel."""
    v, _, _ = normalise(m, scale)
    rgba = np.concatenate([colormap(v), np.round(255 * (0.25 + 0.75 * v))[..., None].astype(np.uint8)], axis=-1)
    return Image.fromarray(rgba, "RGBA")


def heatmap_html(image: Image.Image, m: np.ndarray, title: str, opacity: float = 0.6,
                 scale: tuple[float, float] | None = None, caption: str = "") -> str:
    """The original image, the heat layer on top (CSS opacity, set by the slider), the title and a colour bar.

    With a ``scale`` shared by several maps (a video's frames) the colour bar is left to the caller, and
    ``caption`` (if any) goes under the image.
    """
    if m.shape != (image.height, image.width):
        m = np.asarray(Image.fromarray(np.asarray(m, dtype=np.float32)).resize(image.size, Image.Resampling.BILINEAR))
    _, lo, hi = normalise(m, scale)
    peak_y, peak_x = np.unravel_index(int(np.argmax(np.nan_to_num(m))), m.shape)
    head = f'<figcaption class="mm-title">{esc(title)}</figcaption>' if title else ""
    foot = colour_bar(lo, hi) if scale is None else ""
    foot += f'<figcaption class="mm-caption">{esc(caption)}</figcaption>' if caption else ""
    return (
        f'<figure class="mm-heat" data-peak-x="{peak_x}" data-peak-y="{peak_y}">{head}'
        f'<div class="mm-stack" style="aspect-ratio:{image.width}/{image.height}">'
        f'<img class="mm-base" alt="input image" src="{png_data_url(image.convert("RGB"))}"/>'
        f'<img class="mm-layer" alt="heatmap" style="opacity:var(--mm-opacity,{opacity})" '
        f'src="{png_data_url(heat_layer(m, scale))}"/></div>{foot}</figure>'
    )


def colour_bar(lo: float, hi: float) -> str:
    """The colour scale from ``lo`` to ``hi`` as a gradient bar."""
    return (f'<div class="mm-bar"><span>{lo:.3g}</span><div class="mm-grad" style="background:linear-gradient(90deg,'
            f'{_css_gradient()})"></div><span>{hi:.3g}</span></div>')


def token_scores_html(pairs: Sequence[tuple[str, float]], title: str) -> str:
    """Prompt tokens as chips coloured by score (hover shows the number)."""
    if not pairs:
        return ""
    v, _, _ = normalise(np.array([s for _, s in pairs]))
    chips = []
    for (tok, score), x in zip(pairs, v):
        r, g, b = (int(c) for c in colormap(np.array(x)))
        ink = "#fff" if x < 0.3 or x > 0.8 else "#111"
        chips.append(f'<span class="mm-tok" title="{score:.4g}" style="background:rgb({r},{g},{b});color:{ink}">'
                     f"{esc(tok)}</span>")
    return f'<div class="mm-tokens"><div class="mm-sub">{esc(title)}</div>{"".join(chips)}</div>'


def result_grid_html(grid: Any) -> str:
    """A :class:`~mmlens.results.grid.GridResult` (tracing, knockout, head shares) as an HTML table."""
    return grid_html(grid.values.float().numpy(), grid.row_labels, grid.col_labels, grid.title)


def grid_html(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str,
              cells: Sequence[Sequence[str]] | None = None, hovers: Sequence[Sequence[str]] | None = None,
              css_class: str = "mm-grid") -> str:
    """A layers x positions table coloured by value; optional cell text and hover text (both escaped)."""
    vals = np.nan_to_num(np.asarray(values, dtype=np.float64))
    lim = float(np.abs(vals).max()) or 1.0
    signed = bool((vals < 0).any())
    head = "".join(f'<th><div class="mm-col">{esc(c)}</div></th>' for c in cols)
    body = []
    for r, name in enumerate(rows):
        tds = []
        for c in range(len(cols)):
            x = vals[r, c] / lim
            if signed:
                col = (255, int(255 * (1 - x)), int(255 * (1 - x))) if x >= 0 else \
                    (int(255 * (1 + x)), int(255 * (1 + x)), 255)
            else:
                col = tuple(int(k) for k in colormap(np.array(0.15 + 0.7 * x)))
            text = esc(cells[r][c]) if cells is not None else ""
            hover = esc(hovers[r][c]) if hovers is not None else f"{vals[r, c]:.4g}"
            ink = "#111" if signed or 0.3 < 0.15 + 0.7 * x < 0.8 else "#fff"
            tds.append(f'<td title="{hover}" style="background:rgb{col};color:{ink}">{text}</td>')
        body.append(f'<tr><th class="mm-row">{esc(name)}</th>{"".join(tds)}</tr>')
    return (f'<div class="{esc(css_class)}"><div class="mm-sub">{esc(title)}</div><div class="mm-scroll"><table>'
            f'<thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div></div>')


CSS = """
.mm-msg {padding: 8px 12px; border-radius: 8px; margin: 4px 0; font-size: 14px}
.mm-error {background: #fdecea; color: #8a1c13; border: 1px solid #f5c2bd}
.mm-info {background: #eef4ff; color: #1c3d8a; border: 1px solid #c9d8fb}
.mm-ok {background: #ecf8ef; color: #1b5e2b; border: 1px solid #bfe5c8}
.mm-heat {margin: 0; max-width: 440px}
.mm-title {font-weight: 600; margin-bottom: 6px; font-size: 15px}
.mm-stack {position: relative; width: 100%}
.mm-stack img {position: absolute; inset: 0; width: 100%; height: 100%; image-rendering: pixelated;
  border-radius: 6px}
.mm-bar {display: flex; align-items: center; gap: 8px; margin-top: 6px; font-size: 12px; color: #555}
.mm-grad {flex: 1; height: 10px; border-radius: 5px}
.mm-tokens {line-height: 2.1}
.mm-sub {font-size: 13px; color: #555; margin: 4px 0}
.mm-tok {padding: 2px 6px; margin: 1px; border-radius: 6px; font-family: ui-monospace, monospace; font-size: 13px}
.mm-scroll {overflow-x: auto}
.mm-grid table {border-collapse: collapse; font-size: 11px}
.mm-grid td {min-width: 30px; height: 22px; text-align: center; padding: 0 2px; border: 1px solid #fff;
  font-family: ui-monospace, monospace; white-space: nowrap}
.mm-grid th.mm-row {text-align: right; padding-right: 6px; white-space: nowrap; font-weight: 500}
.mm-col {writing-mode: vertical-rl; transform: rotate(180deg); max-height: 90px; overflow: hidden;
  font-weight: 400; font-family: ui-monospace, monospace}
.mm-method {font-size: 13px; color: #333}
.mm-badge {display: inline-block; padding: 1px 8px; border-radius: 10px; background: #eef; margin-right: 4px;
  font-size: 12px}
.mm-fig {font-size: 12px; border-collapse: collapse; margin-top: 4px}
.mm-fig td, .mm-fig th {padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right}
#answer-tokens label {border-radius: 14px !important; font-family: ui-monospace, monospace}
"""
