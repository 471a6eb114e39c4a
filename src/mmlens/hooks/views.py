"""Views that make a hook point show the same rows in every family (used by :mod:`mmlens.hooks.tracing`).

Image features flattened to one row per image token, a tower's permuted rows shown in input order,
chunked attention gathered into one matrix, and a method patch that a trace removes like a hook.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class RowOrder:
    """A tower that holds its rows permuted (Qwen2.5-VL's window order) while hook points show them in
    canonical order: ``order(args, kwargs)`` of ``source``'s call gives ``perm``, held row ``i`` = canonical
    row ``perm[i]``."""

    source: nn.Module
    order: Callable[[tuple, dict], torch.Tensor]


def flatten_features(feats: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """Image features as ``get_image_features`` returns them (a tensor, or a list / tuple per image) ->
    one ``(tokens, d)`` tensor, and the function that puts an edited one back into the same structure."""
    if torch.is_tensor(feats):
        return feats.reshape(-1, feats.shape[-1]), lambda new: new.reshape(feats.shape)
    shapes = [f.shape for f in feats]
    sizes = [f.numel() // f.shape[-1] for f in feats]
    flat = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])

    def restore(new: torch.Tensor) -> Any:
        parts = [p.reshape(shape) for p, shape in zip(torch.split(new, sizes), shapes)]
        return type(feats)(parts)

    return flat, restore


def features_patch(original: Callable[..., Any], fn: Callable[[torch.Tensor], Any],
                   busy: list[bool]) -> Callable[..., Any]:
    """``original`` (a ``get_image_features`` / ``get_video_features``) with ``fn`` applied to its features as one
    ``(tokens, d)`` tensor (an edit when ``fn`` returns a tensor). Patches sharing ``busy`` apply ``fn`` once per
    call: a ``get_video_features`` that calls ``get_image_features`` (Qwen3-VL) is seen once, from outside."""

    def features(*args: Any, **kwargs: Any) -> Any:
        if busy[0]:
            return original(*args, **kwargs)
        busy[0] = True
        try:
            out = original(*args, **kwargs)
        finally:
            busy[0] = False
        flat, restore = flatten_features(out.pooler_output)
        new = fn(flat)
        if new is not None:
            out.pooler_output = restore(new)
        return out

    features._mmlens = True  # type: ignore[attr-defined]  (counted by count_hooks while installed)
    return features


class MethodPatch:
    """Replaces ``owner.<name>`` by a wrapper for the life of a trace; ``remove`` restores what was there."""

    _MISSING = object()

    def __init__(self, owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
        self.owner, self.name = owner, name
        self.previous = owner.__dict__.get(name, self._MISSING)
        setattr(owner, name, wrapper)

    def remove(self) -> None:
        if self.previous is self._MISSING:
            self.owner.__dict__.pop(self.name, None)
        else:
            setattr(self.owner, self.name, self.previous)


def block_diagonal(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Square attention chunks ``(1, heads, n_i, n_i)`` -> one ``(1, heads, sum n_i, sum n_i)`` matrix."""
    n = sum(c.shape[-1] for c in chunks)
    out = chunks[0].new_zeros(*chunks[0].shape[:2], n, n)
    start = 0
    for c in chunks:
        end = start + c.shape[-1]
        out[..., start:end, start:end] = c
        start = end
    return out


def in_canonical_order(fn: Callable[[torch.Tensor], Any], perm: Callable[[], torch.Tensor]) -> Callable:
    """``fn`` seeing rows (axis -2) in canonical order, its edit put back in the module's order."""

    def wrapped(t: torch.Tensor) -> Any:
        p = perm().to(t.device)
        new = fn(t.index_select(-2, torch.argsort(p)))
        return None if new is None else new.index_select(-2, p)

    return wrapped


def as_keys(fn: Callable[[torch.Tensor], Any]) -> Callable:
    """``fn`` seeing a ``(batch, ..., d)`` tensor as ``(batch, keys, d)`` (its edit reshaped back)."""

    def wrapped(t: torch.Tensor) -> Any:
        new = fn(t.reshape(t.shape[0], -1, t.shape[-1]))
        return None if new is None else new.reshape(t.shape)

    return wrapped
