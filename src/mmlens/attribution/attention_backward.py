"""The backward that attention-gradient methods share: one forward, batched backwards, ``grad * A`` reduced inside.

:func:`attention_gradients` runs the model once with each selected layer's attention probabilities ``A`` in the
autograd graph, then one batched backward per ``target_batch`` targets (:mod:`mmlens.attribution.batched`);
a per-target :class:`AttentionCarry` folds each layer's ``(A, dtarget/dA)`` into its state as backward reaches
the layer, so no ``layers x heads x N x N`` gradient stack is ever kept.

Memory: eager attention keeps every layer's ``heads x N x N`` probabilities for backward. Where one layer's
probabilities exceed :data:`ATTENTION_CHUNK_BYTES` (long sequences: LLaVA-NeXT's 2,880 image tokens) the
selected layers instead run :mod:`mmlens.hooks.attention_chunks`: attention in chunks of
``attention_chunk`` query rows that keep nothing for backward, whose backward recomputes each chunk's
probabilities and hands ``(A, grad)`` of those rows to the carry (``rows x N`` per layer at a time; the rest
of the model keeps its sdpa attention). Shorter sequences keep the eager path, where the hooks see whole
layers and the batched backward holds each layer's attention gradient once per target of a chunk.

>>> attention_chunk_rows(64, None, None)  # explicit: 64 query rows per recomputed chunk
64
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mmlens.attribution.batched import Carry, carried_backward, chunks, resolve_target_batch
from mmlens.attribution.gradient import gradient_mode, input_point
from mmlens.errors import InputError
from mmlens.hooks.attention import graph_tensor
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.model.targets import Target, check_objective, targets_tail
from mmlens.util.options import check_int


class AttentionCarry(Carry):
    """Per-target state of an attention-gradient method (see :class:`~mmlens.attribution.batched.Carry`):
    ``layer(l, A, grad)`` is called as backward reaches layer ``l`` (``A``, ``grad``: ``(heads, N, N)``, grad
    as this target sees it)."""

    def layer(self, layer: int, a: torch.Tensor, grad: torch.Tensor) -> None:
        raise NotImplementedError

    def rows(self, layer: int, start: int, a: torch.Tensor, grad: torch.Tensor) -> None:
        """Query rows ``start ..`` of layer ``l`` (``(heads, rows, N)``) when attention runs in row chunks
        (``attention_chunk``); :meth:`done` follows the layer's last chunk. By default the chunks are joined
        and handed to :meth:`layer`; subclasses reduce them one at a time."""
        self._chunks = getattr(self, "_chunks", {})
        self._chunks.setdefault(layer, []).append((a, grad))

    def done(self, layer: int) -> None:
        parts = self._chunks.pop(layer)
        self.layer(layer, torch.cat([a for a, _ in parts], 1), torch.cat([g for _, g in parts], 1))


#: float32 bytes of one ``heads x rows x positions`` block (per target of a batched backward) in the row-chunked
#: attention backward; several such blocks are alive at once. A layer whose probabilities fit is not chunked.
ATTENTION_CHUNK_BYTES = 32 * 2**20


def attention_chunk_rows(value: int | None, subject: Subject, batch: Batch, targets_per_backward: int = 1) -> int | None:
    """Query rows per chunk of the row-chunked attention (:mod:`mmlens.hooks.attention_chunks`): ``value``
    (an int >= 1), or for ``None`` as many as fit :data:`ATTENTION_CHUNK_BYTES`, and ``None`` (eager attention,
    which keeps every layer's ``heads x N x N`` probabilities for backward) when a whole layer fits.

    >>> attention_chunk_rows(64, None, None)
    64
    """
    if value is not None:
        return check_int("attention_chunk", value, why=" (query rows per recomputed attention chunk)")
    per_row = targets_per_backward * subject.n_heads * batch.seq_len * 4
    rows = max(1, ATTENTION_CHUNK_BYTES // per_row)
    return None if rows >= batch.seq_len else rows


def attention_gradients(subject: Subject, batch: Batch, targets: list[Target], layers: Sequence[int],
                        carry: AttentionCarry, seeds: torch.Tensor, objective: str = "log_prob",
                        target_batch: int | None = None, kind: str = "attn",
                        emit_at: str | None = None, attention_chunk: int | None = None) -> torch.Tensor:
    """Forward once; then one batched backward per ``target_batch`` targets, in which ``carry`` gets
    ``start(seeds[t])`` and ``layer(l, A, grad)`` for each selected layer (last first) as target ``t``'s
    backward reaches it, or with row chunks (:func:`attention_chunk_rows`; self-attention only)
    ``rows(l, start, A[:, rows], grad[:, rows])`` per chunk and ``done(l)``. Returns each target's
    ``carry.finish()``, ``(T, *carry.shape)``. ``kind="xattn"``: the layers' cross-attention probabilities
    (queries x image keys) instead of their self-attention; ``"any"``: whichever each layer has. ``emit_at``: the
    hook point whose gradient comes last (default the input point), where the carried state leaves the backward."""
    check_objective(objective)
    size = resolve_target_batch(target_batch, subject, batch)
    chunk = attention_chunk_rows(attention_chunk, subject, batch, size) if kind == "attn" else None
    for target in targets:
        if target.needs_foil_forward:
            raise InputError(f"contrast {target.label!r} has a foil of {len(target.contrast_ids or ())} tokens, which "
                             "attention-gradient methods cannot explain (they read one forward's attention): pass a "
                             "one-token foil, or use saliency, integrated_gradients or occlusion")
    reached: list[int] = []

    def capture(layer: int) -> Callable[[torch.Tensor], None]:
        def reduce(w: torch.Tensor) -> None:
            used = graph_tensor(w)
            if not used.requires_grad:
                raise RuntimeError(f"layer {layer}'s attention probabilities are not in the autograd graph")
            a = w.detach()[0]

            def on_backward(g: torch.Tensor) -> None:
                reached.append(layer)
                carry.layer(layer, a, g[0].float())

            used.register_hook(on_backward)

        return reduce

    def read_rows(layer: int) -> tuple[Callable[[int, torch.Tensor, torch.Tensor], None], Callable[[], None]]:
        def on_chunk(start: int, p: torch.Tensor, g: torch.Tensor) -> None:
            carry.rows(layer, start, p[0], g[0])

        def on_done() -> None:
            reached.append(layer)
            carry.done(layer)

        return on_chunk, on_done

    out = []
    # chunked layers recompute their own probabilities: the rest of the model keeps its sdpa / eager attention
    impl = subject.model.config.get_text_config()._attn_implementation
    with gradient_mode(subject, eager=chunk is None or impl not in ("eager", "sdpa")):
        emitted: list[torch.Tensor] = []

        def emit(t: torch.Tensor) -> torch.Tensor:
            x, z = carry.emit(t.detach().requires_grad_(True), torch.float32)
            emitted.append(z)
            return x

        with subject.trace() as tr:
            tr.edit(emit_at or input_point(subject), emit)
            for layer in layers:
                name = f"lm.blocks.{layer}.{kind}.weights"
                if kind == "any":
                    name = f"lm.blocks.{layer}.attn.weights"
                    name = name if name in subject.hook_point_map() else f"lm.blocks.{layer}.xattn.weights"
                if chunk is None:
                    tr.capture_attention(name, rows=None, reduce=capture(layer), detach=False)
                else:
                    tr.recompute_attention(name, chunk, *read_rows(layer))
            logits = subject.forward(batch, tail=targets_tail(targets, batch))
        parts = list(chunks(len(targets), size))
        for c, part in enumerate(parts):
            reached.clear()
            values = torch.stack([targets[t].value(logits, batch, objective).sum() for t in part])
            out.append(carried_backward(values, emitted[0], carry, seeds[list(part)], retain_graph=c < len(parts) - 1))
            if sorted(reached) != sorted(layers):  # e.g. probabilities recomputed beside the forward, not used by it
                raise RuntimeError(f"attention gradients reached layers {sorted(reached)} of {sorted(layers)}")
    return torch.cat(out).cpu()


def row_seeds(targets: list[Target], batch: Batch) -> tuple[torch.Tensor, list[int]]:
    """Per target, the one-hot rows of its query positions ``(T, R, N)`` (``R`` = the most query positions
    of any target; a shorter target's extra rows are zero), and each target's number of rows."""
    rows = [t.query_positions(batch) for t in targets]
    seeds = torch.zeros(len(targets), max(len(r) for r in rows), batch.seq_len)
    for t, r in enumerate(rows):
        seeds[t, torch.arange(len(r)), r] = 1.0
    return seeds, [len(r) for r in rows]
