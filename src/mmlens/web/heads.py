"""Inside / heads: each attention head's share of attention on the image tokens, from the answer positions."""

from __future__ import annotations

from typing import Any

from mmlens.layer.heads import head_image_share
from mmlens.web.session import Context, Session


def run(ctx: Context, s: Session) -> Any:
    ctx.need_answer(s)
    return head_image_share(ctx.subject, s.batch)


