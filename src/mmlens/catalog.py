"""The method catalog: every method is registered by name with its survey leaf and access tier.

>>> from mmlens.catalog import methods
>>> sorted({m.tier for m in methods()}) <= sorted(TIERS)
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mmlens.errors import InputError

#: Access tiers: the least a method needs from a model (see TAXONOMY.md).
TIERS = ("black-box", "attention", "gradient", "activations", "intervention", "weights", "training")

#: Survey leaves, as paths in the tree "perspective / level / leaf".
LEAVES = (
    "data/input-output",
    "data/benchmark",
    "model/token/visual",
    "model/token/visual-text",
    "model/embedding/visual",
    "model/embedding/textual",
    "model/embedding/cross-modal",
    "model/neuron/individual",
    "model/neuron/specialization",
    "model/layer/components",
    "model/layer/workflow",
    "model/architecture/analysis",
    "model/architecture/design",
    "training-inference/training",
    "training-inference/inference",
)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    leaf: str
    tier: str
    summary: str
    fn: Callable
    kind: str = "attribution"  # "attribution" methods plug into mmlens.explain


_REGISTRY: dict[str, MethodInfo] = {}


def register_method(name: str, leaf: str, tier: str, summary: str, kind: str = "attribution") -> Callable:
    """Decorator: add a method to the catalog under ``name``."""
    if leaf not in LEAVES:
        raise ValueError(f"unknown survey leaf {leaf!r}; use one of {LEAVES}")
    if tier not in TIERS:
        raise ValueError(f"unknown access tier {tier!r}; use one of {TIERS}")

    def deco(fn: Callable) -> Callable:
        _REGISTRY[name] = MethodInfo(name, leaf, tier, summary, fn, kind)
        return fn

    return deco


def methods(kind: str | None = None) -> list[MethodInfo]:
    """Every registered method (optionally of one ``kind``), ordered by leaf then name.

    The method packages register themselves on import; ``import mmlens`` (which runs before any of its
    submodules is imported) imports all of them, so the catalog is always complete."""
    found = [m for m in _REGISTRY.values() if kind is None or m.kind == kind]
    return sorted(found, key=lambda m: (LEAVES.index(m.leaf), m.name))


def get_method(name: str) -> MethodInfo:
    if name not in _REGISTRY:
        raise InputError(f"unknown method {name!r}: choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
