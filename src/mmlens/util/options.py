"""Checks of method options: each failure is one InputError line naming the option and the valid range."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from mmlens.errors import InputError


def check_int(name: str, value: Any, low: int = 1, high: int | None = None, why: str = "") -> int:
    """``value`` as an int in ``[low, high]``, else a one-line :class:`InputError` naming the option."""
    span = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name}={value!r} is not an integer: pass {span}{why}")
    value = int(value)
    if value < low or (high is not None and value > high):
        raise InputError(f"{name}={value!r} is out of range: pass {span}{why}")
    return value


def check_float(name: str, value: Any, low: float, high: float | None = None, open_low: bool = False,
                open_high: bool = False) -> float:
    """``value`` as a float in ``[low, high]`` (an open end with ``open_low`` / ``open_high``), else an InputError."""
    left, right = "(" if open_low else "[", "]" if high is not None and not open_high else ")"
    span = f"{left}{low}, {high if high is not None else 'inf'}{right}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name}={value!r} is not a number: pass a number in {span}")
    value = float(value)
    below_high = high is None or (value < high if open_high else value <= high)
    if not ((value > low if open_low else value >= low) and below_high and value == value):
        raise InputError(f"{name}={value!r} is out of range: pass a number in {span}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InputError(f"{name}={value!r} is not an option: choose one of {', '.join(map(repr, choices))}")
    return value


def select_indices(name: str, value: int | Sequence[int] | None, count: int) -> list[int]:
    """Layer / head indices from None (all), an int or a list (negative counts from the end)."""
    if value is None:
        return list(range(count))
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        items = list(items)
    except TypeError:
        raise InputError(f"{name}={value!r}: pass an index, a list of indices or None (all)") from None
    out = []
    for i in items:
        if isinstance(i, bool) or not isinstance(i, int) or not -count <= i < count:
            raise InputError(f"{name}={value!r} is out of range: the model has {count} {name} (0..{count - 1})")
        out.append(i % count)
    if not out:
        raise InputError(f"{name}=[] selects nothing: pass indices or None (all)")
    return sorted(set(out))
