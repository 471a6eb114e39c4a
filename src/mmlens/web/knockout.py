"""Inside / attention knockout: effect on the answer of blocking attention between position groups."""

from __future__ import annotations

from typing import Any

from mmlens.layer.attention_knockout import attention_knockout
from mmlens.web.session import Context, Session


def run(ctx: Context, s: Session, window: float | None) -> Any:
    ctx.need_answer(s)
    return attention_knockout(ctx.subject, s.batch, window=int(window) if window else None)


