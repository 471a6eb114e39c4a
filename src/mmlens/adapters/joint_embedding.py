"""The joint sequence's input embeddings (hook point ``joint.embed``): a dual encoder's two towers fed from one
tensor, so the gradient machinery differentiates its similarity like an MLLM's answer.

Row layout ``(rows, seq, D)`` with ``D = max(vision width, text width)``: positions ``0 .. n_vision - 1`` hold
the vision tower's patch embeddings (its embedding module's output: patches + position embeddings, CLS first
where there is one), the caption positions the text tower's token embeddings (tokens + positions), the answer
slot zeros; each row is zero-padded past its tower's width (padding never reaches a tower, so its gradient is
0). Each tower's embedding module first runs alone (its forward is cut short there), the joint tensor passes
:class:`JointEmbed` (where a trace captures or edits it), and the towers then run from their slices of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from mmlens.hooks.views import MethodPatch


class JointEmbed(nn.Identity):
    """Identity on the joint input embeddings: the module behind the ``joint.embed`` hook point."""


class _Stop(Exception):
    """Raised by an embedding module once its output is kept: the rest of that tower's forward is skipped."""


def tower_embeddings(embed: nn.Module, run: Callable[[], Any]) -> torch.Tensor:
    """The output of ``embed`` when ``run()`` calls it (``run`` stops there; ``embed``'s hooks do not run)."""
    found: dict[str, torch.Tensor] = {}
    original = embed.forward

    def keep(*args: Any, **kwargs: Any) -> Any:
        found["out"] = original(*args, **kwargs)
        raise _Stop

    patch = MethodPatch(embed, "forward", keep)
    try:
        run()
    except _Stop:
        pass
    finally:
        patch.remove()
    if "out" not in found:
        raise RuntimeError(f"{type(embed).__name__} was not called by the tower's forward")
    return found["out"]


@contextmanager
def embeddings_from(embed: nn.Module, value: torch.Tensor) -> Iterator[None]:
    """Inside, ``embed`` returns ``value`` (its forward hooks, e.g. a trace's, still see and may edit it)."""
    patch = MethodPatch(embed, "forward", lambda *args, **kwargs: value)
    try:
        yield
    finally:
        patch.remove()


def join(vision: torch.Tensor, text: torch.Tensor, tail: int) -> torch.Tensor:
    """``(rows, n_vision + n_text + tail, D)``: both towers' embeddings, zero-padded to the wider width."""
    d = max(vision.shape[-1], text.shape[-1])
    pad = lambda x: nn.functional.pad(x, (0, d - x.shape[-1]))
    zeros = vision.new_zeros(vision.shape[0], tail, d)
    return torch.cat([pad(vision), pad(text.to(vision.dtype)), zeros], dim=1)


def expand_rows(inputs: dict[str, Any], rows: int) -> dict[str, Any]:
    """Every one-row tensor of ``inputs`` repeated to ``rows`` rows (the joint embeddings were edited to more)."""
    return {k: (v.expand(rows, *v.shape[1:]) if torch.is_tensor(v) and v.ndim and v.shape[0] == 1 else v)
            for k, v in inputs.items()}
