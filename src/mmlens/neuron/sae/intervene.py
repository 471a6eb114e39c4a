"""Interventions on one SAE feature during a forward or a generation: ablate, clamp or steer it.

The hook point's activation ``x`` is edited along the feature's decoder direction ``w``:
``ablate``: ``x - f(x) * w``; ``clamp``: ``x + (value - f(x)) * w``; ``steer``: ``x + value * w``; the
reconstruction error is left in place, so only the feature changes. ``random`` is the control: the same
change in norm as ``clamp`` would make, along a seeded random unit direction instead of ``w``.

>>> sae = SparseAutoencoder(4, 8, k=2, seed=0)
>>> x = torch.randn(3, 4)
>>> torch.equal(feature_edit(sae, 1, "steer", 0.0)(x), x)
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mmlens.errors import InputError
from mmlens.hooks.points import check_point
from mmlens.model.batch import Generation
from mmlens.model.subject import Subject
from mmlens.neuron.sae.model import SparseAutoencoder
from mmlens.util.options import check_choice, check_float, check_int

MODES = ("ablate", "clamp", "steer", "random")


def feature_edit(sae: SparseAutoencoder, feature: int, mode: str = "clamp", value: float = 0.0,
                 positions: Sequence[int] | torch.Tensor | None = None, seed: int = 0,
                 hook_name: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit ``x -> x'`` for :meth:`mmlens.hooks.tracing.Tracer.edit` on ``feature`` (see the module doc).

    ``positions``: sequence positions to edit (absolute; a call whose sequence does not reach them, e.g. a
    decode step of ``generate``, is left alone); None edits every row of every call."""
    check_int("feature", feature, 0, sae.d_sae - 1)
    mode = check_choice("mode", mode, MODES)
    value = check_float("value", value, -1e6, 1e6)
    w = sae.direction(feature)
    if mode == "random":
        gen = torch.Generator().manual_seed(check_int("seed", seed, 0, 2**63 - 1))
        r = torch.randn(sae.d_in, generator=gen)
        r = r / r.norm()
    pos = None if positions is None else torch.as_tensor(positions, dtype=torch.long).flatten()
    where = hook_name or sae.hook_name

    def delta(x: torch.Tensor) -> torch.Tensor:
        sae.check_fits(where, int(x.shape[-1]))
        if mode == "steer":
            return value * w.to(x.device, torch.float32).expand(x.shape)
        f = sae.encode(x.float())[..., feature : feature + 1]
        target = torch.zeros_like(f) if mode == "ablate" else torch.full_like(f, value)
        change = (target - f) * w.to(x.device, torch.float32)
        if mode == "random":
            return change.norm(dim=-1, keepdim=True) * r.to(x.device)
        return change

    @torch.no_grad()
    def edit(t: torch.Tensor) -> torch.Tensor:
        if pos is None:
            return (t.float() + delta(t)).to(t.dtype)
        if int(pos.max()) >= t.shape[-2]:
            return t
        t = t.clone()
        idx = pos.to(t.device)
        rows = t[..., idx, :]
        t[..., idx, :] = (rows.float() + delta(rows)).to(t.dtype)
        return t

    return edit


def _positions(batch: Any, positions: str | Sequence[int] | None) -> torch.Tensor | None:
    if positions is None or positions == "all":
        return None
    if positions == "image":
        batch.require_sequence_images("positions='image'", "pass positions='all' or a list of sequence positions")
        return batch.image_positions()
    if isinstance(positions, str):
        raise InputError(f"positions={positions!r}: use 'all', 'image' or a list of sequence positions")
    pos = torch.as_tensor(list(positions), dtype=torch.long)
    if pos.numel() == 0 or int(pos.min()) < 0 or int(pos.max()) >= batch.prompt_len:
        raise InputError(f"positions must be prompt positions 0..{batch.prompt_len - 1}: pass indices in that range")
    return pos


@torch.no_grad()
def generate_with_feature(subject: Subject, images: Any, prompt: str, sae: SparseAutoencoder, feature: int,
                          mode: str = "clamp", value: float = 0.0, positions: str | Sequence[int] | None = "image",
                          max_new_tokens: int = 8, seed: int = 0) -> Generation:
    """Greedy answer with ``feature`` ablated / clamped / steered (or the random control) at the SAE's hook
    point, at ``positions`` ('image': the image tokens; 'all': every position of every step; or a list).

    >>> generate_with_feature(lm, img, "what color is the circle?", sae, 17, "clamp", 30.0).text   # doctest: +SKIP
    'red'
    """
    subject.require_language_model("generate_with_feature")
    hook = check_point(subject, sae.hook_name)
    batch = subject.prepare(images, prompt)
    edit = feature_edit(sae, feature, mode, value, _positions(batch, positions), seed=seed)
    with subject.trace() as tr:
        tr.edit(hook, edit)
        out = subject.model.generate(**subject.model_inputs(batch), do_sample=False,
                                     max_new_tokens=subject.token_budget(batch, max_new_tokens))
    return subject.generation(batch, out[0, batch.prompt_len:])
