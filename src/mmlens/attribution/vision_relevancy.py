"""Chefer et al. (ICCV 2021) relevancy continued from the language model into the vision tower.

1. LM side (as ``relevancy``): ``d = (R_lm - I)[q]`` averaged over the target's query rows ``q``, with
   ``R_lm = prod_l (I + B_l)``, ``B_l = mean_heads(relu(dtarget/dA_l * A_l))`` over the LM's layers.
2. Through the projector: each LM image token's relevance is split evenly over the tower patches that feed it
   (:mod:`mmlens.model.tower_geometry`: identity, 2x2 merge windows, pixel shuffle, pooling, unpadded tiles).
   A dual encoder (CLIP) has no LM: the seed is its pooled CLS row, as in Chefer et al.'s CLIP explanations.
3. Inside the tower, from the feature block down: ``v <- v + v B_k`` per tile, i.e. ``v R_tower`` with
   ``R_tower = prod_k (I + B_k)`` over the tower blocks up to the feature block (same ``B`` rule, the tower's
   attention). Score of a patch = ``v`` there; pixels through the tower geometry.

All of it comes out of one forward (eager attention) and one batched backward per ``target_batch`` targets
(:mod:`mmlens.attribution.batched`): backward reaches every LM layer before any tower layer (the tower feeds the
LM), so the carried state folds the LM layers, starts ``v`` at the first tower layer and folds the tower's.
Towers that attend in chunks (Qwen: one attention call per image; Qwen2.5-VL's windowed blocks, one per window,
on rows held in window order) are read call by call: each call's ``B`` acts on its rows in held order, and ``v``
is permuted to and from that order around it.
Qwen3-VL's DeepStack features (intermediate tower blocks added inside the LM) are not followed: relevance enters
the tower at its output only.

Cross-attention families (Mllama: the images are the LM's cross-attention keys, one per tower row): step 1 is
``relevancy``'s bi-modal rule (Chefer et al. eqs. 6-7, 10: ``R_ti`` at the target's query rows, the key scores of
``relevancy``), step 2 is the identity (key ``k`` is the projection of its own tower row), step 3 as above over the
local then global layers, which attend across all tiles of an image (and their padding rows). As in eq. 10 with the
tower's ``R_ii``, but unnormalised like the other families' step 3. Mllama's keys also read intermediate local
layers' outputs (concatenated features); that path is not followed: relevance enters at the last global layer.

>>> import mmlens                                                                       # doctest: +SKIP
>>> ex = mmlens.explain(lm, "cat.png", "what is this?", method="vision_relevancy")      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mmlens.attribution.batched import Carry, carried_backward, chunks, resolve_target_batch
from mmlens.attribution.gradient import gradient_mode
from mmlens.attribution.output import MethodOutput
from mmlens.attribution.relevancy import CrossRelevancy, row_seeds
from mmlens.attribution.tower_pass import block_geometry, reaches, tower_forward, tower_output
from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.hooks.attention import graph_tensor
from mmlens.hooks.points import HookPoint
from mmlens.hooks.views import RowOrder
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.model.targets import Target, check_objective, targets_tail
from mmlens.model.tower_geometry import TowerGeometry


def _b(a: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``mean_heads(relu(grad * A))``: ``(..., heads, N, N)`` -> ``(..., N, N)``."""
    return (grad.float() * a.float()).clamp_min(0).mean(-3)


class _TowerRelevancy(Carry):
    """Per target: the LM recursion (``d <- d + (s + d) B_l``, last layer first; with ``cross``: the bi-modal
    rule's layers kept and folded first to last), then ``v`` (the LM image-token or key relevance split over the
    tower rows, or the CLS seed) folded through the tower blocks, last first."""

    def __init__(self, n_lm: int, dual: bool, cross: CrossRelevancy | None = None) -> None:
        self.n_lm, self.dual, self.cross = n_lm, dual, cross  # cross: the LM part over cross-attention keys
        #: chunked towers: each layer's chunk sizes in call order, and held row i = canonical row ``perm[i]``
        self.chunks: dict[int, list[int]] = {}
        self.perm: torch.Tensor | None = None
        self.block = -1
        self.geometry: TowerGeometry | None = None
        self.tiles: tuple[int, int] = (1, 0)

    def setup(self, block: int, geometry: TowerGeometry, tiles: tuple[int, int]) -> None:
        self.block, self.geometry, self.tiles = block, geometry, tiles
        fed = geometry.token_of >= 0
        self.index = geometry.token_of.clamp_min(0)
        count = torch.zeros(int(self.index.max()) + 1).index_add_(0, self.index[fed], torch.ones(int(fed.sum())))
        self.share = torch.where(fed, 1.0 / count[self.index].clamp_min(1), torch.zeros(()))

    def start(self, seed: torch.Tensor) -> None:
        self.s, self.d, self.next, self.pending = seed, torch.zeros_like(seed), self.n_lm - 1, {}
        if self.cross is not None:
            self.cross.start(seed)
        self.v, self.v_next, self.v_pending, self.parts = None, self.block, {}, {}

    def lm_layer(self, layer: int, a: torch.Tensor, grad: torch.Tensor) -> None:
        if self.cross is not None:  # kept, folded first to last once every LM layer has arrived
            self.cross.layer(layer, a, grad)
            self._fold()  # tower layers that arrived first (they need not feed the LM's first layers) waited
            return
        self.pending[layer] = _b(a, grad)
        while self.next in self.pending:
            m = self.pending.pop(self.next)
            s, d = self.s.to(m.device), self.d.to(m.device)
            self.d = d + (s + d) @ m
            self.next -= 1

    def _seed_rows(self, device: torch.device) -> torch.Tensor:
        if self.cross is not None:  # R_ti at the query rows (seeds / their count: the sum is the mean): per key
            keys = self.cross.finish()[:, self.cross.n:].sum(0).to(device)
            return (keys[self.index.to(device)] * self.share.to(device)).reshape(self.tiles)
        if self.next != -1:
            raise RuntimeError(f"tower relevancy started before LM layer {self.next}'s gradient arrived")
        if self.dual:  # the pooled CLS row of the (single) tile
            return torch.zeros(self.tiles, device=device).index_fill(1, torch.tensor([0], device=device), 1.0)
        lm = self.d.sum(0).to(device)  # seeds are one-hot rows / their count: the sum is the mean over rows
        return (lm[self.index.to(device)] * self.share.to(device)).reshape(self.tiles)

    def vision_layer(self, layer: int, a: torch.Tensor, grad: torch.Tensor) -> None:
        if layer <= self.block:
            self.v_pending[layer] = _b(a, grad).reshape(self.tiles[0], self.tiles[1], self.tiles[1])
            self._fold()

    def vision_chunk(self, layer: int, index: int, a: torch.Tensor, grad: torch.Tensor) -> None:
        """One attention call of a tower that attends in chunks (held row order, see :attr:`perm`); the layer is
        folded once all its chunks have arrived."""
        if layer <= self.block:
            self.parts.setdefault(layer, {})[index] = _b(a, grad)[0]
            if len(self.parts[layer]) == len(self.chunks[layer]):
                self.v_pending[layer] = self.parts.pop(layer)
                self._fold()

    def _lm_done(self) -> bool:
        return len(self.cross.b) == len(self.cross.kinds) if self.cross is not None else self.next == -1

    def _fold(self) -> None:
        while self.v_next in self.v_pending and (self.v is not None or self.cross is None or self._lm_done()):
            m = self.v_pending.pop(self.v_next)
            if isinstance(m, dict):  # chunks: block-diagonal in held order
                device = m[0].device
                v = self._seed_rows(device) if self.v is None else self.v.to(device)
                flat = v.reshape(-1)
                held = flat if self.perm is None else flat[self.perm.to(device)]
                pieces = torch.split(held, self.chunks[self.v_next])
                held = torch.cat([p + p @ m[i] for i, p in enumerate(pieces)])
                flat = held if self.perm is None else held[torch.argsort(self.perm).to(device)]
                self.v = flat.reshape(v.shape)
            else:
                v = self._seed_rows(m.device) if self.v is None else self.v.to(m.device)
                self.v = v + (v[:, None, :] @ m)[:, 0]
            self.v_next -= 1

    def finish(self) -> torch.Tensor:
        if self.v_next != -1:
            raise RuntimeError(f"tower relevancy stopped at vision block {self.v_next}: its gradient never arrived")
        return self.v.reshape(-1)


def _hook(fn: Callable[[int, torch.Tensor, torch.Tensor], None], layer: int, batch_axis: bool,
          seen: dict[tuple[str, int], Any], kind: str) -> Callable[[torch.Tensor], None]:
    def reduce(w: torch.Tensor) -> None:
        used = graph_tensor(w)
        if not used.requires_grad:
            raise RuntimeError(f"{kind} layer {layer}'s attention probabilities are not in the autograd graph")
        seen[kind, layer] = used
        a = w.detach()[0] if batch_axis else w.detach()
        used.register_hook(lambda g: fn(layer, a, (g[0] if batch_axis else g).float()))

    return reduce


@register_method(
    "vision_relevancy",
    leaf="model/architecture/analysis",
    tier="gradient",
    summary="Chefer et al. relevancy from the LM's image tokens back through the projector and the vision tower",
)
def vision_relevancy(subject: Subject, batch: Batch, targets: list[Target], objective: str = "logit",
                     target_batch: int | None = None) -> MethodOutput:
    """Relevancy of each vision-tower patch (see the module doc); the target is the summed logit by default."""
    rows, geometry, block = vision_relevancy_rows(subject, batch, targets, objective, target_batch)
    return tower_output(batch, geometry, rows, block)


def vision_relevancy_rows(subject: Subject, batch: Batch, targets: list[Target], objective: str = "logit",
                          target_batch: int | None = None) -> tuple[torch.Tensor, TowerGeometry, int]:
    """:func:`vision_relevancy`'s per-row relevancies ``(T, n_rows)``, the tower geometry and the feature block."""
    check_objective(objective)
    dual = subject.adapter.dual_encoder
    if dual and subject.adapter.embedding_parts().pooling != "cls":
        raise InputError("vision_relevancy seeds a dual encoder at its pooled CLS row, and this tower pools with an "
                         "attention head instead: use vision_gradcam or gradcam")
    for target in targets:
        if target.needs_foil_forward:
            raise InputError(f"contrast {target.label!r} has a foil of {len(target.contrast_ids or ())} tokens, "
                             "which vision_relevancy cannot explain (it reads one forward's attention): pass a "
                             "one-token foil, or use vision_gradcam")
    n_lm = 0 if dual else subject.n_layers
    tower_blocks = subject.adapter.parts().vision_blocks or []
    n_vision = len(tower_blocks)
    hook_points = subject.hook_point_map()
    # cross-attention families: each LM layer's self- or cross-attention (``relevancy``'s bi-modal rule)
    lm_points = [f"lm.blocks.{i}.attn.weights" if f"lm.blocks.{i}.attn.weights" in hook_points
                 else f"lm.blocks.{i}.xattn.weights" for i in range(n_lm)]
    cross = None
    if batch.in_key_space:
        cross = CrossRelevancy([p.split(".")[3] for p in lm_points], batch.seq_len,
                                int(batch.key_positions().max()) + 1, row_seeds(targets, batch)[0].shape[1])
    carry = _TowerRelevancy(n_lm, dual, cross)
    if dual:
        seeds = torch.ones(len(targets), 1)
    else:
        seeds, counts = row_seeds(targets, batch)
        seeds = seeds / torch.tensor(counts, dtype=seeds.dtype)[:, None, None]
    emitted: list[torch.Tensor] = []
    lm_leaves: list[torch.Tensor] = []
    seen: dict[tuple[str, int], Any] = {}

    def lm_leaf(x: torch.Tensor) -> torch.Tensor:
        lm_leaves.append(x.detach().requires_grad_(True))
        return lm_leaves[-1]

    def emit(x: torch.Tensor) -> torch.Tensor:
        carry.shape = (x.shape[:-1].numel(),)
        y, z = carry.emit(x, torch.float32)
        emitted.append(z)
        return y

    # the carried state leaves the backward at the first block's input (the rows of every block's output: a tower
    # may pad its patch embeddings); towers that attend in chunks (Qwen: one call per image / window) are read call
    # by call, in held row order
    calls: dict[str, HookPoint] = {"vision.tower_in": HookPoint(tower_blocks[0], "input")} if n_vision else {}
    rows_order: list[RowOrder] = []
    for layer in range(n_vision):
        point = hook_points[f"vision.blocks.{layer}.attn.weights"]
        if point.chunked or point.rows is not None:
            calls[f"vision.blocks.{layer}.attn.calls"] = HookPoint(point.module, "attn_weights")
            rows_order += [point.rows] if point.rows is not None and not rows_order else []

    def chunk_hook(layer: int) -> Callable[[torch.Tensor], None]:
        def reduce(w: torch.Tensor) -> None:
            index = len(carry.chunks.setdefault(layer, []))
            carry.chunks[layer].append(int(w.shape[-1]))
            used = graph_tensor(w)
            seen.setdefault(("vision", layer), []).append(used)
            a = w.detach()
            used.register_hook(lambda g: carry.vision_chunk(layer, index, a, g.float()))

        return reduce

    def extra(tr: Any) -> None:
        tr.edit("vision.tower_in", emit)
        if cross is not None:  # LM layers before the first cross-attention layer do not depend on the images:
            tr.edit("lm.blocks.0.resid_pre", lm_leaf)  # a leaf there puts them in the graph
        for layer in range(n_lm):
            tr.capture_attention(lm_points[layer], reduce=_hook(carry.lm_layer, layer, True, seen, "lm"), detach=False)
        for layer in range(n_vision):
            if f"vision.blocks.{layer}.attn.calls" in calls:
                tr.capture_attention(f"vision.blocks.{layer}.attn.calls", detach=False, reduce=chunk_hook(layer))
            else:
                tr.capture_attention(f"vision.blocks.{layer}.attn.weights", detach=False,
                                     reduce=_hook(carry.vision_layer, layer, False, seen, "vision"))

    def record_order(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        carry.perm = rows_order[0].order(args, kwargs).cpu()

    record_order._mmlens = True  # type: ignore[attr-defined]
    size = resolve_target_batch(target_batch, subject, batch)
    out = []
    with gradient_mode(subject, eager=True):
        handle = rows_order[0].source.register_forward_pre_hook(record_order, with_kwargs=True) if rows_order else None
        try:
            run = tower_forward(subject, batch, extra, points=calls, tail=targets_tail(targets, batch))
        finally:
            if handle is not None:
                handle.remove()
        values = [t.value(run.logits, batch, objective).sum() for t in targets]
        block = run.feature_block(values)
        missing = [k for k in range(block + 1) if ("vision", k) not in seen]
        if missing:
            raise InputError(f"the {subject.family} vision tower's attention cannot be captured (block {missing[0]}): "
                             "use vision_gradcam or relevancy")
        ws = [w for k in range(block + 1) for w in (seen["vision", k] if isinstance(seen["vision", k], list)
                                                     else [seen["vision", k]])]
        if not all(reaches(values, ws)):
            raise InputError(f"the {subject.family} vision tower's attention probabilities are not the ones its forward "
                             "used: use vision_gradcam or relevancy")
        a = run.outputs[block]
        geometry = block_geometry(subject, batch, a)
        carry.setup(block, geometry, (a.shape[0], a.shape[1]) if a.ndim == 3 else (1, a.shape[0]))
        parts = list(chunks(len(targets), size))
        for c, part in enumerate(parts):
            chunk = torch.stack([values[t] for t in part])
            out.append(carried_backward(chunk, emitted[0], carry, seeds[list(part)], retain_graph=c < len(parts) - 1,
                                        also=tuple(lm_leaves)))
    return torch.cat(out).cpu(), geometry, block
