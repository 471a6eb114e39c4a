"""Attention x gradient methods: attention-gradient saliency and Chefer et al.'s generic relevancy.

Both differentiate the target w.r.t. the language model's attention probabilities. They run the model with
eager attention (whose probabilities are the ones in the autograd graph), capture each layer's
probabilities with ``capture_attention(rows=None, detach=False)`` and register a gradient hook on them; the
hook reduces ``grad * A`` as soon as backward reaches that layer (heads fused at once), so no
``layers x heads x N x N`` gradient stack is ever kept. One forward, one backward per target.

``objective`` (every method here): the target tokens' summed logits (``"logit"``), log-probs
(``"log_prob"``) or joint probability (``"prob"``). ``relevancy`` defaults to the logit, as Chefer et al.'s
code and LVLM-Interpret do (a confident answer's log-prob has a tiny gradient, which shrinks the
higher-order terms of the recursion); ``attention_x_gradient`` keeps the log-prob, like the other gradient
methods. A contrast target is explained from the answer's forward only, so its foil must be one token
(scored at the position it shares with the answer).

Memory: eager attention itself keeps every layer's ``heads x N x N`` probabilities for backward (that is
the floor for any method that differentiates attention); on top of it, ``attention_x_gradient`` keeps
``rows x N`` per target and ``relevancy`` one ``N x N`` head-fused layer at a time.

>>> import mmlens                                                                      # doctest: +SKIP
>>> ex = mmlens.explain(lm, "cat.png", "what is this?", method="relevancy")            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mmlens.attribution.attention import select_indices, target_rows
from mmlens.attribution.gradient import gradient_mode, leaf_input
from mmlens.attribution.output import MethodOutput
from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.model.targets import Target, check_objective

#: called by the gradient hook of layer ``l`` with (layer, A, dtarget/dA), both ``(heads, N, N)``
GradHook = Callable[[int, torch.Tensor, torch.Tensor], None]


def attention_gradients(subject: Subject, batch: Batch, targets: list[Target], layers: Sequence[int],
                        on_grad: Callable[[int], GradHook], objective: str = "log_prob") -> None:
    """Forward once; for each target ``t`` backward once, calling ``on_grad(t)(layer, A, grad)`` for each
    selected layer as backward reaches it (last layer first)."""
    check_objective(objective)
    for target in targets:
        if target.needs_foil_forward:
            raise InputError(f"contrast {target.label!r} has a foil of {len(target.contrast_ids or ())} tokens, which "
                             "attention-gradient methods cannot explain (they read one forward's attention): pass a "
                             "one-token foil, or use saliency, integrated_gradients or occlusion")
    current: list[GradHook] = []
    reached: list[int] = []

    def capture(layer: int) -> Callable[[torch.Tensor], None]:
        def reduce(w: torch.Tensor) -> None:
            if not w.requires_grad:
                raise RuntimeError(f"layer {layer}'s attention probabilities are not in the autograd graph")
            a = w.detach()[0]

            def on_backward(g: torch.Tensor) -> None:
                reached.append(layer)
                current[-1](layer, a, g[0])

            w.register_hook(on_backward)

        return reduce

    with gradient_mode(subject, eager=True):
        with subject.trace() as tr:
            x = leaf_input(tr)
            for layer in layers:
                tr.capture_attention(f"lm.blocks.{layer}.attn.weights", rows=None, reduce=capture(layer), detach=False)
            logits = subject.forward(batch)
        for t, target in enumerate(targets):
            current.append(on_grad(t))
            reached.clear()
            value = target.value(logits, batch, objective).sum()
            torch.autograd.grad(value, x[0], retain_graph=t < len(targets) - 1)
            if sorted(reached) != sorted(layers):  # e.g. probabilities recomputed beside the forward, not used by it
                raise RuntimeError(f"attention gradients reached layers {sorted(reached)} of {sorted(layers)}")


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
) -> MethodOutput:
    """Score of position ``k`` = ``mean_{layers, heads} relu(A[q, k] * dtarget/dA[q, k])``, averaged over the
    target's query positions ``q``."""
    layer_ids = select_indices("layers", layers, subject.n_layers)
    rows, index = target_rows(targets, batch)
    scores = torch.zeros(len(targets), batch.seq_len)

    def on_grad(t: int) -> GradHook:
        q = rows[index[t]]

        def hook(layer: int, a: torch.Tensor, g: torch.Tensor) -> None:
            q_dev = q.to(a.device)
            contrib = (a[:, q_dev].float() * g[:, q_dev].float()).clamp_min(0).mean(0)  # (R_t, N)
            scores[t] += contrib.mean(0).cpu()

        return hook

    attention_gradients(subject, batch, targets, layer_ids, on_grad, objective)
    return MethodOutput(scores / len(layer_ids), extras={"layers": layer_ids, "query_positions": rows.tolist()})


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
def relevancy(subject: Subject, batch: Batch, targets: list[Target], objective: str = "logit") -> MethodOutput:
    """Chefer et al. (ICCV 2021) relevancy over the LM's self-attention: ``R = I``; for each layer ``l``
    (first to last) ``R <- R + B_l R`` with ``B_l = mean_heads(relu(dtarget/dA_l * A_l))``. Score of position
    ``k`` = ``(R - I)[q, k]`` averaged over the target's query positions ``q`` (``- I`` drops each query's
    trivial self-relevance, so prompt-token scores are comparable).

    The target is the tokens' summed logit by default (``objective``), as in the reference code.
    Only the query rows of ``R`` are needed: they follow ``r <- r + r B_l`` from the last layer down, which is
    the order backward delivers the ``B_l`` (see :class:`RowRecursion`).
    """
    rows, index = target_rows(targets, batch)
    n, n_layers = batch.seq_len, subject.n_layers
    recursions: list[RowRecursion] = []

    def on_grad(t: int) -> GradHook:
        rec = RowRecursion(rows[index[t]], n, n_layers)
        recursions.append(rec)

        def hook(layer: int, a: torch.Tensor, g: torch.Tensor) -> None:
            rec.add(layer, (g.float() * a.float()).clamp_min(0).mean(0))

        return hook

    attention_gradients(subject, batch, targets, list(range(n_layers)), on_grad, objective)
    scores = torch.zeros(len(targets), n)
    for t, rec in enumerate(recursions):
        scores[t] = rec.delta().mean(0)
    return MethodOutput(scores, extras={"query_positions": rows.tolist()})
