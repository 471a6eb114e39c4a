"""Floating-point operations of a run, counted with torch's own FLOP formulas (matrix products, convolutions,
attention; elementwise work is not counted): the work each benchmark mode does, free of timing noise.

``torch.utils.flop_counter.FlopCounterMode`` also tracks modules with hooks that fail under
``torch.autograd.grad`` on a leaf (what every input-gradient method calls), so this counter keeps only its
formulas; CPU's fused attention kernels are added to them.

>>> with FlopCount() as count:                  # doctest: +SKIP
...     model(**inputs).logits.sum().backward()
>>> count.total
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _shape(x: Any) -> Any:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else x


def _cpu_sdpa(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(_shape(query), _shape(key), _shape(value))


def _cpu_sdpa_backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_backward_flop_count(_shape(grad_out), _shape(query), _shape(key), _shape(value))


EXTRA = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


class FlopCount(TorchDispatchMode):
    """Counts the FLOPs of every operation dispatched while active (``total``), forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in flop_registry and packet not in EXTRA:
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if packet in EXTRA:
            self.total += EXTRA[packet](*args, **kwargs)
        elif packet in flop_registry:
            self.total += flop_registry[packet](*args, **kwargs, out_val=out)
        return out
