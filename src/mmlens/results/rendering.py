"""Drawing an :class:`~mmlens.results.explanation.Explanation`: matplotlib panels, PNG bytes, and the
self-contained HTML report (every string from a model or a user escaped).

>>> from mmlens.results.rendering import html_page                # doctest: +SKIP
>>> open("why.html", "w").write(html_page(ex))                    # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mmlens.errors import InputError

if TYPE_CHECKING:
    from mmlens.results.explanation import Explanation, TargetKey


def plot(ex: Explanation, new_figure: Callable[..., Any], target: TargetKey, ax: Any, image: int | None,
         alpha: float, cmap: str) -> Any:
    """Draw ``ex``'s heatmaps on new figure(s) from ``new_figure`` or into ``ax``; see ``Explanation.plot``."""
    from mmlens.viz.overlay import overlay

    targets = range(len(ex.labels)) if target is None else [ex._index(target)]
    if image is not None:
        images = [ex._image(image)]
    elif ex.is_video:  # at most the strip's frames, evenly spaced (a long video would make a huge figure)
        from mmlens.results.video_strip import shown_frames

        images = shown_frames(len(ex.images))
    else:
        images = range(len(ex.images))
    panels = [(t, i) for t in targets for i in images]
    if ax is not None:
        if len(panels) != 1:
            raise InputError(f"ax= takes one panel but this draws {len(panels)}: pass target=... "
                             "(and image=... when there are several images), or no ax")
        fig, axes = ax.figure, [ax]
    else:
        ncols = len(images) if len(images) > 1 else min(4, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        fig = new_figure(figsize=(3.4 * ncols, 3.2 * nrows), layout="constrained")
        axes = list(fig.subplots(nrows, ncols, squeeze=False).flatten())
    for a, (t, i) in zip(axes, panels):
        mappable = overlay(ex.images[i], ex.pixel_maps[t][i], a, alpha=alpha, cmap=cmap)
        fig.colorbar(mappable, ax=a, fraction=0.046, pad=0.04)
        which = "frame" if ex.is_video else "image"
        title = f"{ex.method}: {ex.labels[t]!r}" + (f" ({which} {i})" if len(ex.images) > 1 else "")
        a.set_title(_no_mathtext(title), fontsize=9)
    for a in axes[len(panels):]:
        a.axis("off")
    return fig



def png_bytes(ex: Explanation, target: TargetKey = None, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    ex.plot(target).savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()



def explanation_html(ex: Explanation) -> str:
    """Self-contained HTML: the plot as a base64 image and a table of prompt-token scores (all escaped)."""
    esc = html.escape
    img = base64.b64encode(ex._png_bytes()).decode("ascii")
    head = "".join(f"<th>{esc(label)}</th>" for label in ex.labels)
    rows = []
    for p in ex.text_positions:
        cells = "".join(f"<td>{float(ex.position_scores[t, p]):.4g}</td>" for t in range(len(ex.labels)))
        rows.append(f"<tr><td>{esc(ex.tokens[p])}</td>{cells}</tr>")
    model = esc(str(ex.metadata.get("model_id", "")))
    strips = ""
    if ex.is_video:
        from mmlens.results.video_strip import strip_png

        strips = "".join(f'<p>frames over time: {esc(label)}</p><img alt="{esc(ex.method)} frame strip" '
                         f'src="data:image/png;base64,{base64.b64encode(strip_png(ex, t)).decode("ascii")}"/>'
                         for t, label in enumerate(ex.labels))
    return (
        '<div class="mmlens-explanation">'
        f"<p><b>{esc(ex.method)}</b> on <code>{model}</code><br>"
        f"prompt: {esc(ex.prompt)}<br>answer: {esc(ex.answer)}</p>"
        f'<img alt="{esc(ex.method)} heatmaps" src="data:image/png;base64,{img}"/>'
        f"{strips}"
        f"<table><thead><tr><th>prompt token</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "</div>"
    )


def _no_mathtext(text: str) -> str:
    """Matplotlib treats ``$...$`` as math; model tokens may hold dollars."""
    return text.replace("$", r"\$")


def html_page(ex: Explanation) -> str:
    """A complete HTML document around :func:`explanation_html`."""
    title = html.escape(f"mmlens {ex.method}: {ex.prompt}")
    head = f'<head><meta charset="utf-8"><title>{title}</title></head>'
    return f"<!doctype html><html>{head}<body>{explanation_html(ex)}</body></html>"


