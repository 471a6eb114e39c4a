"""Named hook points, identical for every family, with captures and interventions that always clean up.

Hook-point names (``i`` = block index) and what their tensors hold, the same in every family::

    vision.embed                    patch embeddings entering the vision blocks
    vision.blocks.{i}.resid_post    output of vision block i
    vision.blocks.{i}.attn          output of vision block i's self-attention
    vision.blocks.{i}.attn.weights  its attention probabilities (computed on demand, see hooks.attention)
    projector.out                   the LM's image-token embeddings: (n_image_tokens, d), row k = the token at
                                    the k-th image placeholder of the batch (``batch.image_positions()[k]`` for
                                    one row), separators included (LLaVA-NeXT newlines, CLS if kept)
    lm.blocks.{i}.resid_pre         residual stream entering LM block i
    lm.blocks.{i}.resid_post        residual stream leaving LM block i
    lm.blocks.{i}.attn.out          output of LM block i's self-attention (after o_proj)
    lm.blocks.{i}.attn.weights      attention probabilities of LM block i
    lm.blocks.{i}.attn.heads        per-head attention outputs, concatenated (input of o_proj)
    lm.blocks.{i}.mlp.act           MLP hidden activation (input of the down projection): the neurons
    lm.blocks.{i}.mlp.out           MLP output
    lm.norm.out                     final norm output (what the unembedding reads)
    lm.logits                       unembedding output
    text.embed, text.blocks.{i}.*   dual encoders (no lm.*): the text tower's embeddings and blocks (resid_pre /
                                    resid_post / attn / attn.weights); *.blocks.{i}.attn.heads / .mlp.out: both towers
    joint.embed                     both towers' input embeddings in one tensor (rows: patches, caption, answer
                                    slot; adapters.joint_embedding): what gradient methods differentiate
    xattn.states                    cross-attention families (Mllama, images never in the sequence): the vision
                                    features every cross-attention block attends to, (batch, keys, d)
    lm.blocks.{i}.xattn.out / .weights / .heads   block i's cross-attention (no attn.* there): output, probabilities
                                    (batch, heads, queries, keys) and per-head outputs; keys = xattn.states rows

Positions (``positions=`` of ablate / patch / add) index the second-to-last axis: the LM sequence for ``lm.*``
(the joint sequence for ``joint.embed``), the image-token rows for ``projector.out``, the patch rows for ``vision.*``,
the cross-attention keys for ``xattn.states``.

``projector.out`` is read where the model hands its image features to the LM (the output of
``get_image_features``: LLaVA-NeXT's tiles already stitched, unpadded and joined by newline rows;
Qwen2.5-VL's merger output already put back from window order), so it means the same in every family.
The ``vision.*`` points are the tower's own tensors, rows = input patches in the processor's order:
LLaVA / LLaVA-NeXT / PaliGemma ``(images or tiles, patches, d)`` (CLIP: CLS row first); Qwen ``(patches of all images, d)``, the
rows of ``pixel_values`` (2x2 merge units of 4 consecutive rows). Qwen2.5-VL's tower holds its blocks' rows
in window order: captures and edits see them in input order (:class:`RowOrder`). Vision attention weights
are ``(batch, heads, queries, keys)``; where the tower attends in chunks (Qwen: one call per image,
Qwen2.5-VL's windowed blocks one per window) the chunks are gathered into one ``(1, heads, patches,
patches)`` matrix, zero between chunks, and ``rows=`` selects its query rows.

>>> with s.trace() as tr:                                       # doctest: +SKIP
...     tr.capture("lm.blocks.*.resid_post", reduce=lambda h: h[:, -1]); s.forward(batch)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mmlens.errors import InputError
from mmlens.hooks.attention import AttentionTap
from mmlens.hooks.attention_chunks import ChunkReader, RowChunks
from mmlens.hooks.interventions import Edit, Interventions
from mmlens.hooks.points import HookPoint
from mmlens.hooks.views import MethodPatch, RowOrder, as_keys, block_diagonal, features_patch, in_canonical_order


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _replace_first(x: Any, new: torch.Tensor) -> Any:
    if isinstance(x, (tuple, list)):
        return (new, *x[1:]) if isinstance(x, tuple) else [new, *x[1:]]
    return new


#: a method an adapter wraps while a trace is open: (owner, method name, original -> wrapper)
MethodWrap = tuple[Any, str, Callable[[Callable[..., Any]], Callable[..., Any]]]


class Tracer(Interventions):
    """Registers hooks on named points; removes every one of them in :meth:`close` (also on errors).

    Use through :meth:`mmlens.Subject.trace` as a context manager.
    """

    def __init__(self, points: dict[str, HookPoint], patches: Sequence[MethodWrap] = ()) -> None:
        """``patches``: ``(owner, method name, make_wrapper)`` that an adapter needs for the life of a trace (e.g.
        Qwen3-VL's DeepStack made to accept the extra rows that an edit adds); ``make_wrapper(original)``."""
        self.points = points
        self.captured: dict[str, list[Any]] = {}
        self._handles: list[Any] = []
        for owner, method, make_wrapper in patches:
            wrapper = make_wrapper(getattr(owner, method))
            wrapper._mmlens = True
            self._handles.append(MethodPatch(owner, method, wrapper))
        self._taps: dict[int, AttentionTap] = {}
        self._orders: dict[int, torch.Tensor] = {}  # id(RowOrder) -> perm of the current forward
        self._closed = False

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook and attention tap this tracer installed (idempotent)."""
        handles, self._handles = self._handles, []
        for h in reversed(handles):  # last in, first out: stacked method patches restore in order
            h.remove()
        taps, self._taps = self._taps, {}
        for tap in taps.values():
            tap.remove()
        self._closed = True

    def resolve(self, pattern: str) -> list[str]:
        """Names matching ``pattern`` (exact or glob, e.g. ``lm.blocks.*.resid_post``)."""
        if pattern in self.points:
            return [pattern]
        names = [n for n in self.points if fnmatch.fnmatchcase(n, pattern)]
        if not names:
            blocks = sum(1 for n in self.points if n.endswith(".resid_post") and n.startswith("lm."))
            like = (f"'lm.blocks.{{0..{blocks - 1}}}.resid_post', 'projector.out'" if blocks else  # no language model
                    ", ".join(f"'{n}'" for n in list(self.points)[:2]) + " (this model has no language model)")
            raise InputError(f"unknown hook point {pattern!r}: use names like {like} or a glob "
                             f"(Subject.hook_points() lists all {len(self.points)})")
        return names

    def __getitem__(self, name: str) -> Any:
        """The last value captured at ``name``."""
        if not self.captured.get(name):
            raise KeyError(f"nothing captured at {name!r}; captured: {sorted(self.captured)}")
        return self.captured[name][-1]

    def all(self, name: str) -> list[Any]:
        """Every value captured at ``name`` (one per call of the module, e.g. per generation step)."""
        return self.captured.get(name, [])

    def _perm(self, rows: RowOrder) -> Callable[[], torch.Tensor]:
        """Track ``rows``'s permutation of each forward (one pre-hook on its source per tracer)."""
        key = id(rows)
        if key not in self._orders:
            self._orders[key] = torch.zeros(0, dtype=torch.long)

            def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
                self._orders[key] = rows.order(args, kwargs)

            record._mmlens = True  # type: ignore[attr-defined]
            self._handles.append(rows.source.register_forward_pre_hook(record, with_kwargs=True))
        return lambda: self._orders[key]

    def _hook(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> None:
        if self._closed:
            raise RuntimeError("this tracer is closed; open a new `with subject.trace()` block")
        point = self.points[name]
        if point.rows is not None:
            fn = in_canonical_order(fn, self._perm(point.rows))
        fn = as_keys(fn) if point.flat_keys else fn
        if point.kind == "output":

            def out_hook(module: nn.Module, args: Any, output: Any) -> Any:
                new = fn(_first(output))
                return None if new is None else _replace_first(output, new)

            out_hook._mmlens = True  # type: ignore[attr-defined]
            self._handles.append(point.module.register_forward_hook(out_hook))
        elif point.kind == "input":

            def in_hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
                if args:
                    new = fn(args[0])
                    return None if new is None else ((new, *args[1:]), kwargs)
                new = fn(kwargs["hidden_states"])
                return None if new is None else (args, {**kwargs, "hidden_states": new})

            in_hook._mmlens = True  # type: ignore[attr-defined]
            self._handles.append(point.module.register_forward_pre_hook(in_hook, with_kwargs=True))
        elif point.kind == "image_features":  # a video's features too (get_video_features), where the family has them
            busy = [False]
            for method in ("get_image_features", "get_video_features"):
                if hasattr(point.module, method):
                    patch = features_patch(getattr(point.module, method), fn, busy)
                    self._handles.append(MethodPatch(point.module, method, patch))
        else:
            raise InputError(f"{name!r} holds attention weights: use capture_attention / block_attention")

    def _tap(self, name: str) -> AttentionTap:
        point = self.points[name]
        if point.kind != "attn_weights":
            raise InputError(f"{name!r} is not an attention-weights point (names end in '.attn.weights')")
        key = id(point.module)
        if key not in self._taps:
            tap = AttentionTap(point.module)
            tap.install()
            self._taps[key] = tap
        return self._taps[key]

    def capture(self, pattern: str, reduce: Callable[[torch.Tensor], Any] | None = None, detach: bool = True) -> list[str]:
        """Keep ``reduce(tensor)`` (default: the tensor) each time a matching point runs.

        The reducer runs inside the hook, so only what it returns stays alive. ``detach=False`` keeps the
        autograd graph (for gradient methods). Attention-weight points are routed to
        :meth:`capture_attention`.
        """
        names = self.resolve(pattern)
        for name in names:
            if self.points[name].kind == "attn_weights":
                self.capture_attention(name, reduce=reduce, detach=detach)
                continue

            def keep(t: torch.Tensor, name: str = name) -> None:
                t = t.detach() if detach else t
                self.captured.setdefault(name, []).append(reduce(t) if reduce else t)

            self._hook(name, keep)
        return names

    def capture_attention(
        self,
        pattern: str,
        rows: torch.Tensor | list[int] | None = None,
        reduce: Callable[[torch.Tensor], Any] | None = None,
        detach: bool = True,
    ) -> list[str]:
        """Capture attention probabilities ``(batch, heads, rows, keys)`` of matching ``*.attn.weights`` points.

        Only the query ``rows`` asked for are computed (all rows if None), one layer at a time, in float32;
        the model's own attention output is unchanged. ``rows`` are absolute positions (negative: from the
        last query of each call). Each call of the layer that computes any of them adds one capture: during
        ``generate`` (KV cache) the prefill holds the prompt rows and each decode step its new token's row,
        with one column per absolute key position up to that row.
        """
        names = [n for n in self.resolve(pattern) if self.points[n].kind == "attn_weights"]
        if not names:
            raise InputError(f"{pattern!r} matches no attention-weights point (names end in '.attn.weights')")
        index = None if rows is None else torch.as_tensor(rows, dtype=torch.long)
        for name in names:

            def keep(w: torch.Tensor, name: str = name) -> None:
                w = w.detach() if detach else w
                self.captured.setdefault(name, []).append(reduce(w) if reduce else w)

            if self.points[name].chunked or self.points[name].rows is not None:
                self._gather_chunks(name, index, keep)
            else:
                self._tap(name).weight_callbacks.append((index, keep))
        return names

    def recompute_attention(self, name: str, rows: int, on_chunk: ChunkReader, on_done: Callable[[], None]) -> None:
        """Run LM attention point ``name``'s attention in chunks of ``rows`` query rows that keep no probabilities
        for backward; backward recomputes each chunk and calls ``on_chunk(first row, P, dtarget/dP)``, then
        ``on_done()`` (:mod:`mmlens.hooks.attention_chunks`)."""
        point = self.points[self.resolve(name)[0]]
        if point.kind != "attn_weights" or point.chunked or point.rows is not None:
            raise InputError(f"{name!r} is not a language-model attention-weights point: recompute_attention needs one")
        self._tap(name).row_chunks = RowChunks(rows, on_chunk, on_done)

    def _gather_chunks(self, name: str, rows: torch.Tensor | None, keep: Callable[[torch.Tensor], None]) -> None:
        """Collect every attention call of one module forward (one per chunk) and hand ``keep`` the
        block-diagonal matrix over all chunks, in canonical row order (its query ``rows`` if given)."""
        point = self.points[name]
        module = point.module
        perm = None if point.rows is None else self._perm(point.rows)
        chunks: list[torch.Tensor] = []

        def start(m: nn.Module, args: Any) -> None:
            chunks.clear()

        def finish(m: nn.Module, args: Any, output: Any) -> None:
            if not chunks:
                return
            w = chunks[0] if len(chunks) == 1 else block_diagonal(chunks)
            chunks.clear()
            if perm is not None:
                inv = torch.argsort(perm()).to(w.device)
                w = w[:, :, inv][:, :, :, inv]
            keep(w if rows is None else w[:, :, rows.to(w.device)])

        for hook in (start, finish):
            hook._mmlens = True  # type: ignore[attr-defined]
        self._handles.append(module.register_forward_pre_hook(start))
        self._handles.append(module.register_forward_hook(finish))
        self._tap(name).weight_callbacks.append((None, chunks.append))

    def edit(self, pattern: str, fn: Edit) -> list[str]:
        """Replace the tensor at matching points with ``fn(tensor)``."""
        for name in (names := self.resolve(pattern)):
            self._hook(name, fn)
        return names


def count_hooks(model: nn.Module) -> int:
    """Number of mmlens hooks and attention taps left on ``model``'s modules (0 after every trace).

    Hooks that transformers itself installs (e.g. for output recording) are not counted.
    """
    total = 0
    for m in model.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            total += sum(1 for fn in hooks.values() if getattr(fn, "_mmlens", False))
        total += sum(1 for v in list(m.__dict__.values()) if getattr(v, "_mmlens", False) is True)  # method patches
        total += int(hasattr(m, "_mmlens_tap"))
    return total
