"""Attention x gradient methods: attention-gradient saliency and Chefer et al.'s generic relevancy.

Both differentiate the target w.r.t. the language model's attention probabilities. They run the model with
eager attention (whose probabilities are the ones in the autograd graph), capture each layer's
probabilities with ``capture_attention(rows=None, detach=False)`` and register a gradient hook on them; the
hook reduces ``grad * A`` as soon as backward reaches that layer (heads fused at once), so no
``layers x heads x N x N`` gradient stack is ever kept. One forward, then one batched backward per
``target_batch`` targets (default: ``resolve_target_batch``): the hooks see every target of a chunk at
once and fold their reductions into per-target state carried out of the backward
(:mod:`mmlens.attribution.batched`).

``objective`` (every method here): the target tokens' summed logits (``"logit"``), log-probs
(``"log_prob"``) or joint probability (``"prob"``). ``relevancy`` defaults to the logit, as Chefer et al.'s
code and LVLM-Interpret do (a confident answer's log-prob has a tiny gradient, which shrinks the
higher-order terms of the recursion); ``attention_x_gradient`` keeps the log-prob, like the other gradient
methods. A contrast target is explained from the answer's forward only, so its foil must be one token
(scored at the position it shares with the answer).

Memory: see :mod:`mmlens.attribution.attention_backward` (long sequences recompute attention in row chunks,
``attention_chunk``).

>>> import mmlens                                                                      # doctest: +SKIP
>>> ex = mmlens.explain(lm, "cat.png", "what is this?", method="relevancy")            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmlens.attribution.attention import cross_layers, select_indices, target_rows
from mmlens.attribution.attention_backward import (  # noqa: F401  (re-exported: their home before the split)
    ATTENTION_CHUNK_BYTES,
    AttentionCarry,
    attention_chunk_rows,
    attention_gradients,
    row_seeds,
)
from mmlens.attribution.gradient import scores_output
from mmlens.attribution.output import MethodOutput
from mmlens.catalog import register_method
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.model.targets import Target

# -- attention x gradient ------------------------------------------------------------------------------------


@register_method(
    "attention_x_gradient",
    leaf="model/token/visual-text",
    tier="gradient",
    summary="attention of the target's query rows times its gradient, positive part, mean over heads and layers",
)
def attention_x_gradient(
    subject: Subject,
    batch: Batch,
    targets: list[Target],
    layers: int | Sequence[int] | None = None,
    objective: str = "log_prob",
    target_batch: int | None = None,
    attention_chunk: int | None = None,
) -> MethodOutput:
    """Score of position ``k`` = ``mean_{layers, heads} relu(A[q, k] * dtarget/dA[q, k])``, averaged over the
    target's query positions ``q``. Images that enter through cross-attention (Mllama): ``k`` runs over the image
    keys and ``A`` is the cross-attention of the selected layers that have one. ``attention_chunk``: query rows
    per recomputed self-attention chunk (long sequences; default: from a memory budget, see
    :func:`attention_chunk_rows`)."""
    subject.require_language_model()
    layer_ids = select_indices("layers", layers, subject.n_layers)
    rows, index = target_rows(targets, batch)
    weights = torch.zeros(len(targets), len(rows))  # target t's mean over its query rows, as weights on ``rows``
    for t, i in enumerate(index):
        weights[t, i] = 1.0 / len(i)
    extras = {"layers": layer_ids, "query_positions": rows.tolist()}
    if batch.in_key_space:
        extras["layers"] = layer_ids = cross_layers(subject, layer_ids)
        carry = _AttentionTimesGradient(rows, int(batch.key_positions().max()) + 1)
        scores = attention_gradients(subject, batch, targets, layer_ids, carry, weights, objective, target_batch,
                                     kind="xattn")
        return scores_output(batch, scores / len(layer_ids), extras)
    carry = _AttentionTimesGradient(rows, batch.seq_len)
    scores = attention_gradients(subject, batch, targets, layer_ids, carry, weights, objective, target_batch,
                                 attention_chunk=attention_chunk)
    return MethodOutput(scores / len(layer_ids), extras=extras)


class _AttentionTimesGradient(AttentionCarry):
    """Sum over layers of ``w @ mean_heads(relu(A[:, rows] * grad[:, rows]))`` (``w``: this target's row weights)."""

    def __init__(self, rows: torch.Tensor, n: int) -> None:
        self.query_rows, self.shape = rows, (n,)

    def start(self, seed: torch.Tensor) -> None:
        self.w, self.total = seed, None

    def layer(self, layer: int, a: torch.Tensor, grad: torch.Tensor) -> None:
        q = self.query_rows.to(a.device)
        contrib = (a[:, q].float() * grad[:, q].float()).clamp_min(0).mean(0)  # (R, N)
        term = self.w.to(contrib.device) @ contrib
        self.total = term if self.total is None else self.total + term

    def rows(self, layer: int, start: int, a: torch.Tensor, grad: torch.Tensor) -> None:
        inside = (self.query_rows >= start) & (self.query_rows < start + a.shape[1])
        if not bool(inside.any()):
            return
        q = (self.query_rows[inside] - start).to(a.device)
        contrib = (a[:, q].float() * grad[:, q].float()).clamp_min(0).mean(0)  # (rows of the chunk, N)
        term = self.w[inside].to(contrib.device) @ contrib
        self.total = term if self.total is None else self.total + term

    def done(self, layer: int) -> None:
        pass

    def finish(self) -> torch.Tensor:
        return self.total


# -- relevancy -------------------------------------------------------------------------------------------------


class RowRecursion:
    """Rows of ``R = (I + B_{L-1}) ... (I + B_0)`` computed as ``r <- r + r @ B_l`` from the last layer down.

    Layers may arrive in any order (backward delivers them last-first); each is folded in as soon as every
    later layer has been, so normally a single ``N x N`` matrix is held at a time. The off-identity part
    ``d = r - I[rows]`` is what is kept (``d <- d + (I[rows] + d) @ B_l``), so small relevancies are not lost
    to rounding against the identity's ones.
    """

    def __init__(self, rows: torch.Tensor, n: int, n_layers: int) -> None:
        self.rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        self.d = torch.zeros(len(self.rows), n)
        self.next = n_layers - 1
        self.pending: dict[int, torch.Tensor] = {}

    def add(self, layer: int, b: torch.Tensor) -> None:
        self.pending[layer] = b
        while self.next in self.pending:
            m = self.pending.pop(self.next)
            d = self.d.to(m.device, m.dtype)
            self.d = (d + m[self.rows.to(m.device)] + d @ m).cpu()
            self.next -= 1

    def delta(self) -> torch.Tensor:
        """``(R - I)[rows]``."""
        if self.next != -1:
            raise RuntimeError(f"relevancy recursion stopped at layer {self.next}: its gradient never arrived")
        return self.d

    def result(self) -> torch.Tensor:
        """``R[rows]``."""
        r = self.delta().clone()
        r[torch.arange(len(r)), self.rows] += 1.0
        return r


def relevancy_rows(b_stack: Sequence[torch.Tensor], rows: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Rows ``rows`` of Chefer et al.'s ``R``: ``R = I``, then per layer ``l = 0..L-1``: ``R <- R + B_l @ R``,
    with ``B_l = mean_heads(relu(dtarget/dA_l * A_l))`` (``(N, N)`` each). Returns ``(len(rows), N)``.

    >>> b = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    >>> relevancy_rows([b, b], [1])
    tensor([[2., 1.]])
    """
    rows = torch.as_tensor(rows, dtype=torch.long)
    rec = RowRecursion(rows, b_stack[0].shape[-1], len(b_stack))
    for layer in reversed(range(len(b_stack))):
        rec.add(layer, b_stack[layer].float())
    return rec.result()


@register_method(
    "relevancy",
    leaf="model/architecture/analysis",
    tier="gradient",
    summary="generic attention-model relevancy (Chefer et al. 2021) of the language model, read at the target's rows",
)
def relevancy(subject: Subject, batch: Batch, targets: list[Target], objective: str = "logit",
              target_batch: int | None = None, attention_chunk: int | None = None) -> MethodOutput:
    """Chefer et al. (ICCV 2021) relevancy over the LM's self-attention: ``R = I``; for each layer ``l``
    (first to last) ``R <- R + B_l R`` with ``B_l = mean_heads(relu(dtarget/dA_l * A_l))``. Score of position
    ``k`` = ``(R - I)[q, k]`` averaged over the target's query positions ``q`` (``- I`` drops each query's
    trivial self-relevance, so prompt-token scores are comparable).

    The target is the tokens' summed logit by default (``objective``), as in the reference code.
    Only the query rows of ``R`` are needed: they follow ``r <- r + r B_l`` from the last layer down, which is
    the order backward delivers the ``B_l`` (see :class:`RowRecursion`). Images that enter through cross-attention
    (Mllama): Chefer et al.'s bi-modal rules, scores over the image keys (:func:`_cross_relevancy`).
    ``attention_chunk``: query rows per recomputed self-attention chunk (long sequences; default: from a memory
    budget, see :func:`attention_chunk_rows`; not used with cross-attention, whose text sequences are short).
    """
    subject.require_language_model()
    if batch.in_key_space:
        return _cross_relevancy(subject, batch, targets, objective, target_batch)
    rows, _ = target_rows(targets, batch)
    seeds, counts = row_seeds(targets, batch)
    carry = _Relevancy(subject.n_layers, batch.seq_len, seeds.shape[1])
    deltas = attention_gradients(subject, batch, targets, list(range(subject.n_layers)), carry, seeds, objective,
                                 target_batch, attention_chunk=attention_chunk)  # (T, R, N)
    scores = torch.stack([deltas[t, :k].mean(0) for t, k in enumerate(counts)])
    return MethodOutput(scores, extras={"query_positions": rows.tolist()})


class _Relevancy(AttentionCarry):
    """:class:`RowRecursion` inside the backward: ``d <- d + (S + d) @ B_l`` from the last layer down, with
    ``S`` this target's one-hot query rows (its seed) and ``B_l = mean_heads(relu(grad * A))``; layers that
    arrive early wait for the later ones."""

    def __init__(self, n_layers: int, n: int, r: int) -> None:
        self.n_layers, self.shape = n_layers, (r, n)

    def start(self, seed: torch.Tensor) -> None:
        self.s, self.d, self.next, self.pending = seed, torch.zeros_like(seed), self.n_layers - 1, {}
        self.parts: dict[int, list[torch.Tensor]] = {}

    def layer(self, layer: int, a: torch.Tensor, grad: torch.Tensor) -> None:
        self.pending[layer] = (grad.float() * a.float()).clamp_min(0).mean(0)
        self._fold()

    def rows(self, layer: int, start: int, a: torch.Tensor, grad: torch.Tensor) -> None:
        """Rows ``start ..`` of ``B_l``: folded in at once when every later layer has been (``(S + d) @ B_l`` is
        a sum over row blocks of ``B_l``), else kept until :meth:`done` (out of order: held whole)."""
        m = (grad.float() * a.float()).clamp_min(0).mean(0)  # (rows, N)
        if layer != self.next:
            self.parts.setdefault(layer, []).append(m)
            return
        rows = slice(start, start + m.shape[0])
        term = (self.s.to(m.device)[:, rows] + self.d.to(m.device)[:, rows]) @ m
        self.acc = term if start == 0 else self.acc + term

    def done(self, layer: int) -> None:
        if layer in self.parts:
            self.pending[layer] = torch.cat(self.parts.pop(layer), 0)
        else:
            self.d, self.next = self.d.to(self.acc.device) + self.acc, self.next - 1
        self._fold()

    def _fold(self) -> None:
        while self.next in self.pending:
            m = self.pending.pop(self.next)
            s, d = self.s.to(m.device), self.d.to(m.device)
            self.d = d + (s + d) @ m
            self.next -= 1

    def finish(self) -> torch.Tensor:
        if self.next != -1:
            raise RuntimeError(f"relevancy recursion stopped at layer {self.next}: its gradient never arrived")
        return self.d


# -- relevancy with cross-attention (Mllama) ---------------------------------------------------------------------


def _cross_relevancy(subject: Subject, batch: Batch, targets: list[Target], objective: str,
                     target_batch: int | None) -> MethodOutput:
    """Chefer et al.'s bi-modal rules (ICCV 2021, eqs. 6-7 and 10) for a decoder whose text tokens self-attend and
    cross-attend to image keys that attend to nothing in the LM: ``R_tt = I``, ``R_ti = 0``; a self-attention
    layer ``R_tt <- R_tt + B R_tt``, ``R_ti <- R_ti + B R_ti``; a cross-attention layer ``R_ti <- R_ti + norm(R_tt)^T
    B`` (``norm``: the residual-normalised ``R_tt``, rows of ``R_tt - I`` summing to 1, plus ``I``; ``R_ii = I``, so
    eq. 11 adds nothing). ``B = mean_heads(relu(dtarget/dA * A))``. Key scores: ``R_ti`` at the target's query rows;
    text scores ``(R_tt - I)`` there, as :func:`relevancy` gives them."""
    n, k = batch.seq_len, int(batch.key_positions().max()) + 1
    kinds = ["attn" if f"lm.blocks.{i}.attn.weights" in subject.hook_point_map() else "xattn"
             for i in range(subject.n_layers)]
    rows, _ = target_rows(targets, batch)
    seeds, counts = row_seeds(targets, batch)
    carry = CrossRelevancy(kinds, n, k, seeds.shape[1])
    out = attention_gradients(subject, batch, targets, list(range(subject.n_layers)), carry, seeds, objective,
                              target_batch, kind="any", emit_at="lm.blocks.0.resid_pre")  # (T, R, N + K)
    scores = torch.stack([out[t, :c].mean(0) for t, c in enumerate(counts)])
    return MethodOutput(scores[:, :n], extras={"query_positions": rows.tolist()}, key_scores=scores[:, n:])


def _residual_normalised(r: torch.Tensor) -> torch.Tensor:
    """Chefer et al.'s ``handle_residual``: rows of ``R - I`` scaled to sum to 1 (zero rows stay zero), plus ``I``."""
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)
    hat = r - eye
    total = hat.sum(-1, keepdim=True)
    return hat / torch.where(total > 0, total, torch.ones_like(total)) + eye


class CrossRelevancy(AttentionCarry):
    """:func:`_cross_relevancy`'s recursion: the layers' ``B`` are kept as backward delivers them (text x text and
    text x keys: no image tokens in the sequence, so small), and folded first to last at the end."""

    def __init__(self, kinds: list[str], n: int, k: int, r: int) -> None:
        self.kinds, self.n, self.shape = kinds, n, (r, n + k)

    def start(self, seed: torch.Tensor) -> None:
        self.s, self.b = seed, {}

    def layer(self, layer: int, a: torch.Tensor, grad: torch.Tensor) -> None:
        self.b[layer] = (grad.float() * a.float()).clamp_min(0).mean(0)

    def finish(self) -> torch.Tensor:
        if len(self.b) != len(self.kinds):
            raise RuntimeError(f"relevancy got the gradients of layers {sorted(self.b)} of {len(self.kinds)}")
        first = self.b[0]
        r_tt = torch.eye(self.n, dtype=first.dtype, device=first.device)
        r_ti = first.new_zeros(self.n, self.shape[1] - self.n)
        for layer, kind in enumerate(self.kinds):
            b = self.b[layer]
            if kind == "attn":
                r_tt, r_ti = r_tt + b @ r_tt, r_ti + b @ r_ti
            else:
                r_ti = r_ti + _residual_normalised(r_tt).T @ b
        s = self.s.to(r_tt.device)
        eye = torch.eye(self.n, dtype=r_tt.dtype, device=r_tt.device)
        return torch.cat([s @ (r_tt - eye), s @ r_ti], dim=-1)
