"""Run the vision tower and projector once for many forwards of the same images.

Methods that perturb only the language model's inputs (Integrated Gradients, SmoothGrad on the LM input
embeddings) run many forwards over the same pixels; inside :func:`cached_image_features` the family's
``get_image_features`` (vision tower + projector) computes its result on the first call and hands back
the same features while it is called with the same tensors again (other pixels are computed as usual).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from mmlens.hooks.views import MethodPatch

#: distinct inputs kept (e.g. the image and an IG baseline image)
ENTRIES = 4


def _tensors(args: tuple, kwargs: dict) -> list[Any]:
    return [v for v in (*args, *(kwargs[k] for k in sorted(kwargs))) if torch.is_tensor(v) or v is None]


def _same(a: list[Any], b: list[Any]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x is y:
            continue
        if x is None or y is None or x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
            return False
    return True


@contextmanager
def cached_image_features(subject: Any) -> Iterator[dict[str, int]]:
    """Inside, ``get_image_features`` of ``subject``'s model (a :class:`~mmlens.model.subject.Subject`) runs
    once per distinct input (the last :data:`ENTRIES` kept) and is reused after (restored on exit, also on errors). Yields counters
    ``{"computed": n, "reused": m}``. Families without a ``get_image_features`` module run unchanged."""
    owner = subject.adapter.parts().image_features
    counts = {"computed": 0, "reused": 0}
    if owner is None:
        yield counts
        return
    busy = [False]  # a get_video_features that calls get_image_features (Qwen3-VL) is cached once, from outside
    patches = [MethodPatch(owner, name, _cached(getattr(owner, name), counts, busy))  # a video's features too
               for name in ("get_image_features", "get_video_features") if hasattr(owner, name)]
    try:
        yield counts
    finally:
        for patch in reversed(patches):
            patch.remove()


def _cached(original: Any, counts: dict[str, int], busy: list[bool]) -> Any:
    """``original`` computing once per distinct input (the last :data:`ENTRIES`), counted in ``counts``; a call
    made while another cached call of ``busy``'s group runs goes straight to ``original``."""
    cache: list[tuple[list[Any], Any]] = []  # (inputs, features), newest last

    def features(*args: Any, **kwargs: Any) -> Any:
        if busy[0]:
            return original(*args, **kwargs)
        key = _tensors(args, kwargs)
        hit = next((out for k, out in cache if _same(k, key)), None)
        if hit is not None:
            counts["reused"] += 1
        else:
            busy[0] = True
            try:
                with torch.no_grad():
                    hit = original(*args, **kwargs)
            finally:
                busy[0] = False
            cache[:] = [*cache[-(ENTRIES - 1):], (key, hit)]
            counts["computed"] += 1
        return copy.copy(hit)  # a trace may replace the copy's fields; the cached one stays

    features._mmlens = True  # type: ignore[attr-defined]  (counted by count_hooks while installed)
    return features
