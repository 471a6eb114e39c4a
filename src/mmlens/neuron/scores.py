"""Scores of the language model's MLP neurons for a target, and ablating or scaling a neuron set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.layer.logit_lens import check_layers
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.model.targets import resolve_targets

SCORINGS = ("act_x_grad", "dla")


@dataclass
class NeuronScores:
    """``scores[layer_index, neuron]`` for ``layers``; ``top(k)`` lists the best (layer, neuron, score)."""

    scores: torch.Tensor
    layers: list[int]
    method: str
    target: str
    meta: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int = 10) -> list[tuple[int, int, float]]:
        flat = self.scores.flatten()
        values, idx = flat.topk(min(k, flat.numel()))
        width = self.scores.shape[1]
        return [(self.layers[int(i) // width], int(i) % width, float(v)) for v, i in zip(values, idx)]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "target": self.target, "layers": self.layers, "top": self.top(20), "meta": self.meta}


def mlp_width(subject: Subject) -> int:
    return int(subject.adapter.parts().mlp_down(0).in_features)


@register_method("neuron_scores", leaf="model/neuron/individual", tier="gradient",
                 summary="MLP neurons scored by activation x gradient or direct logit contribution to the target",
                 kind="analysis")
def neuron_scores(subject: Subject, batch: Batch, target: Any = "answer", layers: Sequence[int] | None = None,
                  method: str = "act_x_grad") -> NeuronScores:
    """Score every MLP neuron of ``layers`` for the target in one forward + one backward.

    ``act_x_grad``: sum over positions of activation x d target / d activation (first-order effect of
    removing the neuron). ``dla``: direct logit contribution at the target's query positions: activation x
    (down-projection column . d target / d final residual), i.e. the path that skips later layers.

    >>> ns = neuron_scores(lm, batch); ns.top(5)          # doctest: +SKIP
    """
    subject.require_language_model("neuron_scores")
    if method not in SCORINGS:
        raise InputError(f"unknown neuron scoring {method!r}: use one of {', '.join(SCORINGS)}")
    layers_ = check_layers(subject, layers)
    (tgt,) = resolve_targets(subject.tokenizer, batch, target)[:1]
    last = subject.n_layers - 1
    with torch.enable_grad(), subject.trace() as tr:
        for layer in layers_:
            tr.capture(f"lm.blocks.{layer}.mlp.act", detach=False, reduce=_keep_grad)
        tr.capture(f"lm.blocks.{last}.resid_post", detach=False, reduce=_keep_grad)
        logits = subject.forward(batch, tail=tgt.tail(batch))
        tgt.value(logits, batch).sum().backward()
    q = tgt.query_positions(batch)
    rows = []
    for layer in layers_:
        act = tr[f"lm.blocks.{layer}.mlp.act"]
        if method == "act_x_grad":
            rows.append((act * act.grad)[0].sum(0).detach())
        else:
            g = tr[f"lm.blocks.{last}.resid_post"].grad[0, q]  # (k, d_model)
            down = subject.adapter.parts().mlp_down(layer).weight  # (d, m)
            rows.append((act[0, q].detach() * (g @ down.detach())).sum(0))
    subject.model.zero_grad(set_to_none=True)
    return NeuronScores(torch.stack(rows).float().cpu(), layers_, method, tgt.label, {"model": subject.model_id})


def _keep_grad(t: torch.Tensor) -> torch.Tensor:
    t.retain_grad()
    return t


@torch.no_grad()
def ablate_neurons(subject: Subject, batch: Batch, neurons: Sequence[tuple[int, int]], target: Any = "answer",
                   scale: float = 0.0, positions: Sequence[int] | None = None) -> dict[str, float]:
    """Multiply the activations of ``neurons`` ``[(layer, index), ...]`` by ``scale`` (0 = ablate) at
    ``positions`` (all if None); returns the target's probability before and after.

    >>> ablate_neurons(lm, batch, [(2, 17), (3, 5)])     # doctest: +SKIP
    {'p_clean': 0.98, 'p_edited': 0.41, 'delta': -0.57}
    """
    subject.require_language_model("ablate_neurons")
    width = mlp_width(subject)
    by_layer: dict[int, list[int]] = {}
    for layer, index in neurons:
        (layer,) = check_layers(subject, [layer])
        if not 0 <= int(index) < width:
            raise InputError(f"neuron index {index} is beyond the MLP width: use 0..{width - 1}")
        by_layer.setdefault(layer, []).append(int(index))
    (tgt,) = resolve_targets(subject.tokenizer, batch, target)[:1]
    p_clean = float(tgt.value(subject.forward(batch, tail=tgt.tail(batch)), batch).exp())
    pos = None if positions is None else torch.as_tensor(positions)

    def scaler(idx: list[int]):
        def fn(h: torch.Tensor) -> torch.Tensor:
            h = h.clone()
            units = torch.tensor(idx, device=h.device)
            rows = torch.arange(h.shape[-2], device=h.device) if pos is None else pos.to(h.device)
            h[:, rows[:, None], units[None, :]] *= scale
            return h

        return fn

    with subject.trace() as tr:
        for layer, idx in by_layer.items():
            tr.edit(f"lm.blocks.{layer}.mlp.act", scaler(idx))
        p_edit = float(tgt.value(subject.forward(batch, tail=tgt.tail(batch)), batch).exp())
    return {"p_clean": p_clean, "p_edited": p_edit, "delta": p_edit - p_clean}
