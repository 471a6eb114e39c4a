"""Inside / logit lens: layers x prompt positions (top word per cell, top-k on hover) and a word's image map."""

from __future__ import annotations

from typing import Any

import numpy as np

from mmlens.layer.logit_lens import logit_lens
from mmlens.web.render import grid_html, heatmap_html, message
from mmlens.web.session import Context, Session


def run(ctx: Context, s: Session, word: str) -> Any:
    """The lens tracking ``word`` (default: the first answer token) over every layer and position."""
    ctx.need_answer(s)
    word = (word or "").strip() or None
    return logit_lens(ctx.subject, s.batch, target=word, top_k=5)


def table_html(s: Session, lens: Any) -> str:
    """Text positions only (image tokens are shown as the image map); the cell text is the layer's top word."""
    positions = lens.extras["positions"]
    image = set() if s.batch.in_key_space else set(s.batch.image_positions().tolist())  # keys: not in the table
    cols = [j for j, p in enumerate(positions) if p not in image]
    values = lens.values.float().numpy()[:, cols]
    topk = lens.extras["topk"]
    cells = [[_word(topk[r][j][0][0]) for j in cols] for r in range(values.shape[0])]
    hovers = [[", ".join(f"{_word(w)} {p:.2f}" for w, p in topk[r][j]) for j in cols] for r in range(values.shape[0])]
    return grid_html(values, lens.row_labels, [lens.col_labels[j] for j in cols],
                     f"{lens.title} (colour); top word per cell, hover for the top 5", cells, hovers,
                     css_class="mm-grid mm-lens")


def summary_html(s: Session, lens: Any) -> str:
    """What the last layer predicts at the position that produces the first answer token."""
    positions = lens.extras["positions"]
    at = s.batch.prompt_len - 1
    j = positions.index(at)
    word, p = lens.extras["topk"][-1][j][0]
    layer = lens.row_labels[-1]
    return message(f"{layer} predicts {_word(word)!r} (p = {p:.2f}) at the last prompt position; tracked word: "
                   f"{lens.meta['target']!r}", "info").replace('class="mm-msg', 'id="lens-summary" class="mm-msg', 1)


def image_map_html(s: Session, lens: Any, layer: int) -> str:
    if s.batch.in_key_space:
        return message("this model's images enter through cross-attention keys, not the sequence: the lens has no "
                       "image rows to map", "info")
    n = lens.values.shape[0]
    layer = int(np.clip(layer, 0, n - 1))
    m = lens.image_map(s.batch, image=0, layer=layer)
    where = "the first frame's tokens" if s.video is not None else "the image tokens"
    title = f"logit lens: p({lens.meta['target']!r}) on {where}, {lens.row_labels[layer]}"
    return heatmap_html(s.image, m, title)


def _word(token: str) -> str:
    return str(token).replace("▁", " ").replace("Ġ", " ").strip() or str(token)



