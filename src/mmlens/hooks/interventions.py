"""Interventions on named hook points: ablate, patch, add (steering) and attention-edge knockout. A mixin of
:class:`~mmlens.hooks.tracing.Tracer`, which supplies the hook machinery (``resolve``, ``edit``, ``_hook``,
``_tap``, ``points``); each method registers edits that the trace removes on close.

>>> with s.trace() as tr:                                       # doctest: +SKIP
...     tr.ablate("lm.blocks.3.mlp.act", units=[17]); s.forward(batch)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mmlens.errors import InputError

Edit = Callable[[torch.Tensor], torch.Tensor]


def _select(positions: torch.Tensor | list[int] | None, t: torch.Tensor) -> Any:
    """Index of the sequence axis (-2) of a hidden tensor."""
    if positions is None:
        return (Ellipsis,)
    return (Ellipsis, torch.as_tensor(positions, device=t.device), slice(None))


class Interventions:
    """The editing half of :class:`~mmlens.hooks.tracing.Tracer`."""

    points: dict[str, Any]  # with resolve / edit / _hook / _tap: the Tracer's

    def ablate(
        self,
        pattern: str,
        positions: torch.Tensor | list[int] | None = None,
        units: torch.Tensor | list[int] | None = None,
        value: float | torch.Tensor = 0.0,
    ) -> list[str]:
        """Set ``positions`` x ``units`` of matching points to ``value`` (0 = zero ablation; pass a mean
        activation for mean ablation)."""

        def fn(t: torch.Tensor) -> torch.Tensor:
            t = t.clone()
            idx = _select(positions, t)
            sub = t[idx]
            if units is None:
                sub = torch.as_tensor(value, dtype=t.dtype, device=t.device).expand_as(sub)
            else:
                u = torch.as_tensor(units, device=t.device)
                v = torch.as_tensor(value, dtype=t.dtype, device=t.device)
                sub = sub.clone()
                sub[..., u] = v if v.ndim == 0 else v[..., u]
            t[idx] = sub
            return t

        return self.edit(pattern, fn)

    def patch(self, pattern: str, source: torch.Tensor | dict[str, torch.Tensor], positions=None) -> list[str]:
        """Replace ``positions`` of matching points with the same positions of ``source`` (a tensor, or a
        dict name -> tensor as captured from another run)."""

        def make(name: str) -> Edit:
            def fn(t: torch.Tensor) -> torch.Tensor:
                src = source[name] if isinstance(source, dict) else source
                t = t.clone()
                idx = _select(positions, t)
                t[idx] = src.to(t.device, t.dtype)[idx]
                return t

            return fn

        names = self.resolve(pattern)
        for name in names:
            self._hook(name, make(name))
        return names

    def add(self, pattern: str, vector: torch.Tensor, positions=None, scale: float = 1.0) -> list[str]:
        """Add ``scale * vector`` at ``positions`` (all if None) of matching points: steering."""

        def fn(t: torch.Tensor) -> torch.Tensor:
            t = t.clone()
            idx = _select(positions, t)
            t[idx] = t[idx] + scale * vector.to(t.device, t.dtype)
            return t

        return self.edit(pattern, fn)

    def block_attention(self, pattern: str, queries, keys, rows: list[int] | None = None,
                        bias: float | None = None) -> list[str]:
        """Knock out attention edges ``queries -> keys`` (absolute position lists) at matching
        ``*.attn.weights`` points, in batch ``rows`` only (all rows if None); the softmax renormalises over
        the edges left. ``bias``: instead of blocking, add ``bias`` to these edges' attention logits (their
        weight times ``exp(bias)`` before renormalising: re-weighting). Decode steps of ``generate`` (KV
        cache) edit the same absolute edges."""
        names = [n for n in self.resolve(pattern) if self.points[n].kind == "attn_weights"]
        if not names:
            raise InputError(f"{pattern!r} matches no attention-weights point (names end in '.attn.weights')")
        chunked = [n for n in names if self.points[n].chunked or self.points[n].rows is not None]
        if chunked:
            raise InputError(f"block_attention cannot edit {chunked[0]!r}: that tower attends in chunks (one call per "
                             "image / window); block edges at '.attn.weights' points of the language model")
        q, k = (torch.as_tensor(x, dtype=torch.long).flatten() for x in (queries, keys))
        if q.numel() == 0 or k.numel() == 0:
            raise InputError("block_attention needs non-empty query and key position groups")
        if int(q.min()) < 0 or int(k.min()) < 0:
            raise InputError("block_attention positions are absolute token indices: pass values >= 0")

        which, weight = None if rows is None else torch.as_tensor(rows, dtype=torch.long), bias and float(bias)

        def edit(q_pos: torch.Tensor, k_pos: torch.Tensor):
            q_hit, k_hit = torch.isin(q_pos, q.to(q_pos.device)), torch.isin(k_pos, k.to(k_pos.device))
            if not (q_hit.any() and k_hit.any()):
                return None
            return which, q_hit[:, None] & k_hit[None, :], weight

        for name in names:
            self._tap(name).mask_edits.append(edit)
        return names
