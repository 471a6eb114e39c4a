"""Inside / causal tracing: indirect effect of restoring each (layer, position group) in a noised run."""

from __future__ import annotations

from typing import Any

from mmlens.layer.causal_trace import causal_trace
from mmlens.web.session import Context, Session


def run(ctx: Context, s: Session, component: str, noise_scale: float) -> Any:
    ctx.need_answer(s)
    return causal_trace(ctx.subject, s.batch, component=component, noise_scale=float(noise_scale))


