"""Many targets' gradients from one backward: batched vector-Jacobian products over a graph kept once.

A method that explains ``T`` targets builds the forward graph once, stacks the targets' values into one
vector ``v`` and asks autograd for ``d v[t] / d x`` of every ``t`` of a chunk at once
(``torch.autograd.grad(v[chunk], x, grad_outputs=I, is_grads_batched=True)``): one backward of a batch of
``k`` output gradients instead of ``k`` backwards. Results equal the per-target loop (the same operations,
batched). ``target_batch`` caps ``k``: each target of a chunk adds one copy of every gradient the backward
holds at a time (about one layer's activations), so memory grows with it. It saves time where one target's
backward leaves the hardware idle (accelerators, small models on CPU); a batched backward does the same
arithmetic as the loop, so a large model on CPU gains nothing (see :func:`resolve_target_batch`).

Methods that reduce gradients the backward only passes through (attention x gradient, relevancy) use
:func:`carried_backward`: a tensor hook on the output hands each target its own seed, hooks inside the
graph fold what they see into per-target state, and an identity at the graph's input returns that state as
the gradient of a dummy leaf, so it leaves the batched backward like any gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from mmlens.util.options import check_int

#: most targets per batched backward when ``target_batch=None`` picks it
MAX_TARGET_BATCH = 8
#: on CPU, targets are batched only while one target's backward is this small (rows x positions x hidden).
#: Measured on the 2-core development machine (benchmarks/RESULTS.md), 8 targets per backward vs one:
#: 14-15% faster at ~10 k (demo model, 10-token answer), about the same time and up to twice the memory
#: at 21-45 k (4-layer random LLaVA), 5-45% slower at 80-460 k (IG's path rows on the demo; 12-layer LLaVA)
CPU_SMALL_BACKWARD = 2**14


def check_target_batch(value: Any) -> int | None:
    """``target_batch`` as an int >= 1, or ``None`` (pick it: :func:`resolve_target_batch`); else an InputError."""
    if value is None:
        return None
    return check_int("target_batch", value, why=" (targets per batched backward; fewer use less memory)")


def resolve_target_batch(value: Any, subject: Any, batch: Any, rows: int = 1) -> int:
    """``target_batch``, or for ``None`` a default from the backward's size (``rows``: input rows per target).

    Accelerators: ``min(8, layers // 2)`` (each target of a chunk holds about one layer's gradients during the
    backward, so the extra memory stays near half of what the forward keeps for it). CPU: 8 while one
    target's backward is small (:data:`CPU_SMALL_BACKWARD`), else 1: on CPU a batched backward does the
    same arithmetic as the loop, and for larger tensors it is slower, not faster.
    """
    size = check_target_batch(value)
    if size is not None:
        return size
    if subject.device.type != "cpu":
        return max(1, min(MAX_TARGET_BATCH, subject.n_layers // 2))
    hidden = int(subject.model.config.get_text_config().hidden_size)
    return MAX_TARGET_BATCH if rows * batch.seq_len * hidden <= CPU_SMALL_BACKWARD else 1


def chunks(n: int, size: int) -> Iterator[range]:
    """``range(0, n)`` in consecutive pieces of at most ``size``."""
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


def batched_grad(values: torch.Tensor, inputs: torch.Tensor | list[torch.Tensor],
                 retain_graph: bool) -> tuple[torch.Tensor, ...]:
    """Per target ``j``: ``d values[j].sum() / d inputs``, from one batched backward. ``values`` is ``(k,)`` or
    ``(k, m)`` (``m`` rows of one input batch, each row's value depending on its own row only, so its
    gradient is that row's gradient). Each result gets a leading axis of ``k``."""
    k = values.shape[0]
    eye = torch.eye(k, dtype=values.dtype, device=values.device)
    if values.ndim == 2:
        eye = eye[:, :, None].expand(k, k, values.shape[1]).contiguous()
    inputs = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if k == 1:  # a plain backward: the batching machinery costs more than it saves for one target
        grads = torch.autograd.grad(values, inputs, grad_outputs=eye[0], retain_graph=retain_graph)
        return tuple(g.unsqueeze(0) for g in grads)
    return torch.autograd.grad(values, inputs, grad_outputs=eye, retain_graph=retain_graph, is_grads_batched=True)


class _Emit(torch.autograd.Function):
    """Identity on ``x``; its backward (which runs after every use of ``x`` was differentiated) returns the
    carried state as the gradient of the dummy ``z``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, z: torch.Tensor, carry: Carry) -> torch.Tensor:
        ctx.carry = carry
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        return grad, ctx.carry.finish(), None


class Carry:
    """Per-target state threaded through one batched backward (see :func:`carried_backward`).

    Subclasses define ``start(seed)`` (called first, with this target's seed), hooks that update the
    state from inside the backward, and ``finish() -> Tensor`` of shape :attr:`shape` (called last).
    Inside the backward every tensor is one target's view of the batch, so the code reads per target.
    """

    shape: tuple[int, ...] = ()

    def start(self, seed: torch.Tensor) -> None:
        raise NotImplementedError

    def finish(self) -> torch.Tensor:
        raise NotImplementedError

    def emit(self, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` routed through the emitting identity, and the dummy leaf whose gradient is the state."""
        z = torch.zeros(self.shape, dtype=dtype, device=x.device, requires_grad=True)
        return _Emit.apply(x, z, self), z


def carried_backward(values: torch.Tensor, z: torch.Tensor, carry: Carry, seeds: torch.Tensor,
                     retain_graph: bool, also: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """Run one batched backward of ``values`` (``(k,)``) and return the state each target carried out
    (``(k, *carry.shape)``). ``seeds[j]`` is handed to ``carry.start`` for target ``j`` (one-hot mixing of
    the seeds by the output gradient, which is exact). ``also``: leaves the backward must reach too (so that
    hooks on branches that do not lead to ``z`` fire); their gradients are dropped."""

    seeds = seeds.to(values.device)

    def seed(grad: torch.Tensor) -> None:
        carry.start((grad.reshape(-1, *([1] * (seeds.ndim - 1))).to(seeds.dtype) * seeds).sum(0))

    handle = values.register_hook(seed)
    try:
        out = batched_grad(values, [z, *also], retain_graph)[0]
    finally:
        handle.remove()
    return out

