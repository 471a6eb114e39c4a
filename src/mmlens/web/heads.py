"""Inside / heads: each attention head's share of attention on the image tokens, from the answer positions."""

from __future__ import annotations

from typing import Any

from mmlens.layer.heads import head_image_share
from mmlens.web.render import grid_html
from mmlens.web.session import Context, Session


def run(ctx: Context, s: Session) -> Any:
    ctx.need_answer(s)
    return head_image_share(ctx.subject, s.batch)


def html(grid: Any) -> str:
    return grid_html(grid.values.float().numpy(), grid.row_labels, grid.col_labels, grid.title)
