"""Dataset-level neuron analyses with streaming reductions: top-activating image patches, and
modality / domain specificity by activation-probability entropy (MMNeuron-style)."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.layer.logit_lens import check_layers
from mmlens.model.samples import iter_batches
from mmlens.model.subject import Subject
from mmlens.neuron.scores import mlp_width


@dataclass(order=True)
class PatchHit:
    """One image token where a neuron fired strongly: its activation and where it sits in which image."""

    activation: float
    sample: int = field(compare=False)
    position: int = field(compare=False)
    image: int = field(compare=False)
    box: tuple[float, float, float, float] = field(compare=False)


@register_method("top_patches", leaf="model/neuron/individual", tier="activations",
                 summary="image patches that activate a neuron most over a dataset (streaming top-k)", kind="analysis")
@torch.no_grad()
def top_activating_patches(subject: Subject, samples: Iterable[Any], layer: int, neuron: int, k: int = 10,
                           show_progress: bool | None = None) -> list[PatchHit]:
    """The ``k`` image tokens (over all ``samples``) with the largest activation of ``neuron`` in ``layer``'s
    MLP, with their original-image pixel boxes. Keeps a k-heap: memory does not grow with the dataset.

    >>> hits = top_activating_patches(lm, ShapesVQA().samples(100), layer=2, neuron=17)   # doctest: +SKIP
    """
    (layer,) = check_layers(subject, [layer])
    width = mlp_width(subject)
    if not 0 <= neuron < width:
        raise InputError(f"neuron index {neuron} is beyond the MLP width: use 0..{width - 1}")
    if k < 1:
        raise InputError(f"k={k}: pass 1 or more")
    heap: list[PatchHit] = []
    for i, batch in iter_batches(subject, samples, answer="given", description="top patches", show_progress=show_progress):
        with subject.trace() as tr:
            tr.capture(f"lm.blocks.{layer}.mlp.act", reduce=lambda h: h[0, :, neuron].float().cpu())
            subject.forward(batch)
        acts = tr[f"lm.blocks.{layer}.mlp.act"]
        for geo in batch.geometry:
            boxes = geo.position_boxes()
            for pos in geo.grid_positions().tolist():
                hit = PatchHit(float(acts[pos]), i, pos, geo.image_index, boxes[pos][0])
                if len(heap) < k:
                    heapq.heappush(heap, hit)
                elif hit > heap[0]:
                    heapq.heapreplace(heap, hit)
    return sorted(heap, reverse=True)


@dataclass
class Specificity:
    """Per-neuron activation probability per group and the entropy of its normalised distribution."""

    groups: list[str]
    layer: int
    activation_prob: torch.Tensor  # (groups, neurons)
    entropy: torch.Tensor  # (neurons,), in nats; low = specific to one group
    tokens: dict[str, int]

    def specific(self, group: str, max_entropy: float = 0.3, min_prob: float = 0.05) -> list[int]:
        """Neurons whose activation concentrates on ``group`` (entropy below ``max_entropy``)."""
        g = self.groups.index(group)
        best = self.activation_prob.argmax(0)
        keep = (best == g) & (self.entropy < max_entropy) & (self.activation_prob[g] >= min_prob)
        return torch.nonzero(keep).flatten().tolist()

    def to_dict(self) -> dict[str, Any]:
        return {"groups": self.groups, "layer": self.layer, "tokens": self.tokens,
                "entropy_mean": float(self.entropy.mean()), "max_entropy": math.log(len(self.groups)),
                "specific": {g: self.specific(g)[:50] for g in self.groups}}


@register_method("neuron_specificity", leaf="model/neuron/specialization", tier="activations",
                 summary="activation-probability entropy of each neuron across modalities or domains (MMNeuron)",
                 kind="analysis")
@torch.no_grad()
def neuron_specificity(subject: Subject, samples: Iterable[Any] | Mapping[str, Iterable[Any]], layer: int,
                       show_progress: bool | None = None) -> Specificity:
    """Activation probability (share of tokens where the neuron's activation is > 0) per group, and its
    entropy across groups. ``samples`` is an iterable (groups = image tokens vs text tokens: modality) or a
    dict ``domain -> samples`` (groups = domains, all prompt tokens). Streaming counts only.
    """
    (layer,) = check_layers(subject, [layer])
    by_domain = isinstance(samples, Mapping)
    sources = dict(samples) if by_domain else {"": samples}
    groups = list(sources) if by_domain else ["image", "text"]
    counts = torch.zeros(len(groups), mlp_width(subject), dtype=torch.float64)
    tokens = dict.fromkeys(groups, 0)
    for domain, items in sources.items():
        for _, batch in iter_batches(subject, items, answer="given", description=f"specificity {domain}".strip(),
                                     show_progress=show_progress):
            with subject.trace() as tr:
                tr.capture(f"lm.blocks.{layer}.mlp.act", reduce=lambda h: (h[0] > 0).cpu())
                subject.forward(batch)
            fired = tr[f"lm.blocks.{layer}.mlp.act"][: batch.prompt_len]
            parts = {domain: torch.arange(batch.prompt_len)} if by_domain else \
                {"image": batch.image_positions(), "text": batch.text_positions()}
            for name, pos in parts.items():
                g = groups.index(name)
                counts[g] += fired[pos].double().sum(0)
                tokens[name] += int(pos.numel())
    if any(v == 0 for v in tokens.values()):
        raise InputError(f"some groups saw no tokens ({tokens}): give every group at least one sample")
    prob = counts / torch.tensor([tokens[g] for g in groups], dtype=torch.float64)[:, None]
    q = prob / prob.sum(0, keepdim=True).clamp_min(1e-12)
    entropy = -(q * q.clamp_min(1e-12).log()).sum(0)
    return Specificity(groups, layer, prob.float(), entropy.float(), tokens)
