"""One forward whose vision tower is in the autograd graph, for the vision-tower maps (``vision_gradcam``,
``vision_relevancy``).

The tower's patch embeddings (``vision.embed``; Mllama: its ``layernorm_pre`` output) become a leaf that requires
grad (parameters stay frozen), every
vision block's output is kept inside the graph (``vision.blocks.{i}.resid_post``, canonical row order), and the
*feature block* is the last block whose output the target reaches: the block the projector reads (LLaVA's
``vision_feature_layer = -2`` is the second-to-last; blocks after it run but feed nothing). Its output's rows
map to pixels through :mod:`mmlens.model.tower_geometry`. Cross-attention families (Mllama): the feature block
is the last global layer, whose rows (with intermediate local layers' features concatenated) the projector maps
one to one onto the cross-attention keys; the maps come out as ``key_scores`` (:func:`tower_output`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmlens.attribution.output import MethodOutput
from mmlens.errors import InputError
from mmlens.hooks.points import HookPoint
from mmlens.hooks.tracing import Tracer
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.model.tower_geometry import TowerGeometry, tower_geometry
from mmlens.util.options import check_int


@dataclass
class TowerPass:
    """What one forward left: the logits, the patch-embedding leaf and each vision block's output (in graph)."""

    logits: torch.Tensor
    embed: torch.Tensor
    outputs: list[torch.Tensor]

    def feature_block(self, roots: list[torch.Tensor], layer: int | None = None) -> int:
        """The last block whose output ``roots`` (target values) depend on, or ``layer`` after checking it does."""
        used = [i for i, hit in enumerate(reaches(roots, self.outputs)) if hit]
        if not used:
            raise InputError("the target does not depend on the vision tower's blocks: explain an answer about the "
                             "image, or use an LM-side method (gradcam, relevancy)")
        if layer is None:
            return used[-1]
        layer = check_int("layer", layer, -len(self.outputs), len(self.outputs) - 1,
                          " (a vision block; negative counts from the last)") % len(self.outputs)
        if layer > used[-1]:
            raise InputError(f"vision block {layer}'s output does not reach the target (the model reads block "
                             f"{used[-1]}): pass layer <= {used[-1]}")
        return layer


def tower_forward(subject: Subject, batch: Batch, extra: Callable[[Any], None] | None = None,
                  points: dict[str, HookPoint] | None = None, tail: int | None = None) -> TowerPass:
    """Forward ``batch`` (inside :func:`~mmlens.attribution.gradient.gradient_mode`) with the tower in the graph.
    ``extra(tracer)`` adds captures / edits to the same trace (e.g. a carried backward's emitting identity);
    ``points``: hook points added to the subject's for this trace; ``tail``: logits of the last positions
    only (:meth:`~mmlens.model.subject.Subject.forward`)."""
    parts = subject.adapter.parts()
    if not parts.vision_blocks or parts.vision_embed is None:
        raise InputError(f"this {subject.family} model names no vision tower blocks or patch embeddings: use an "
                         "LM-side method (gradcam, relevancy)")
    embeds: list[torch.Tensor] = []
    outputs: list[list[torch.Tensor]] = [[] for _ in parts.vision_blocks]

    def leaf(t: torch.Tensor) -> torch.Tensor:
        x = t.detach().requires_grad_(True)
        embeds.append(x)
        return x

    def keeper(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def keep(t: torch.Tensor) -> torch.Tensor:
            outputs[i].append(t)
            return t

        return keep

    subject.require("activations")
    with Tracer({**subject.hook_point_map(), **(points or {})}, subject.adapter.trace_patches()) as tr:
        tr.edit("vision.embed", leaf)
        for i in range(len(parts.vision_blocks)):
            tr.edit(f"vision.blocks.{i}.resid_post", keeper(i))
        if extra is not None:
            extra(tr)
        logits = subject.forward(batch, tail=tail)
    calls = {len(o) for o in outputs} | {len(embeds)}
    if calls != {1}:
        raise InputError(f"the {subject.family} vision tower ran {max(calls)} times in one forward: vision-tower maps "
                         "need one tower call per forward (pass one image set per prompt)")
    return TowerPass(logits, embeds[0], [o[0] for o in outputs])


def reaches(roots: list[torch.Tensor], tensors: list[torch.Tensor]) -> list[bool]:
    """For each of ``tensors``: whether backward from ``roots`` passes through it (a walk of the autograd graph)."""
    seen: set[Any] = set()
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        stack.extend(n for n, _ in fn.next_functions if n is not None)
    return [t.grad_fn is not None and t.grad_fn in seen for t in tensors]


def block_geometry(subject: Subject, batch: Batch, output: torch.Tensor) -> TowerGeometry:
    """The :class:`TowerGeometry` of a block output ``output`` (``(tiles, S, d)``, ``(1, S, d)`` or ``(N, d)``)."""
    shape = tuple(output.shape[:-1])
    return tower_geometry(subject.adapter, batch.geometry, shape)


def pixel_maps(geometry: TowerGeometry, scores: torch.Tensor) -> list[list[np.ndarray]]:
    """``pixel_maps[t][i]``: target ``t``'s per-row ``scores`` over image ``i``'s original pixels."""
    return [[g.heatmap(scores[t]).astype(np.float32) for g in geometry.images] for t in range(scores.shape[0])]


def tower_output(batch: Batch, geometry: TowerGeometry, scores: torch.Tensor, block: int) -> MethodOutput:
    """A vision-tower map's :class:`MethodOutput` from per-row ``scores`` ``(T, n_rows)``: pixel maps, and each LM
    image token's mean over the rows feeding it (cross-attention families: each key's row score as ``key_scores``,
    the sequence positions 0)."""
    extras = {"tower_block": block, "tower_rows": geometry.n_rows}
    if batch.in_key_space:
        keys = geometry.to_positions(scores, int(batch.key_positions().max()) + 1)
        return MethodOutput(torch.zeros(scores.shape[0], batch.seq_len), pixel_maps(geometry, scores), extras, keys)
    return MethodOutput(geometry.to_positions(scores, batch.seq_len), pixel_maps(geometry, scores), extras=extras)
