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
from mmlens.model.samples import SampleStat, iter_batches, reduce_samples
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


class TopPatches(SampleStat):
    """Top-activating image patches of one MLP neuron: each sample's ``k`` best image tokens (its contribution),
    merged into a ``k``-heap (the reducer)."""

    name = "top_patches"

    def __init__(self, layer: int, neuron: int, k: int = 10) -> None:
        self.layer, self.neuron, self.k = int(layer), int(neuron), int(k)

    def config(self) -> dict[str, Any]:
        return {"stat": self.name, "layer": self.layer, "neuron": self.neuron, "k": self.k}

    def check(self, subject: Subject) -> None:
        (self.layer,) = check_layers(subject, [self.layer])
        width = mlp_width(subject)
        if not 0 <= self.neuron < width:
            raise InputError(f"neuron index {self.neuron} is beyond the MLP width: use 0..{width - 1}")
        if self.k < 1:
            raise InputError(f"k={self.k}: pass 1 or more")

    def per_sample(self, subject: Subject, batch: Any) -> dict[str, torch.Tensor]:
        neuron = self.neuron
        batch.require_sequence_images("top_patches", "use neuron_scores or ablate_neurons (every sequence position)")
        with subject.trace() as tr:
            tr.capture(f"lm.blocks.{self.layer}.mlp.act", reduce=lambda h: h[0, :, neuron].float().cpu())
            subject.forward(batch)
        acts = tr[f"lm.blocks.{self.layer}.mlp.act"]
        act, pos, img, box = [], [], [], []
        for geo in batch.geometry:
            boxes = geo.position_boxes()
            for p in geo.grid_positions().tolist():
                act.append(float(acts[p]))
                pos.append(p)
                img.append(geo.image_index)
                box.append(boxes[p][0])
        order = sorted(range(len(act)), key=lambda j: -act[j])[: self.k]
        return {"activation": torch.tensor([act[j] for j in order], dtype=torch.float32),
                "position": torch.tensor([pos[j] for j in order], dtype=torch.int64),
                "image": torch.tensor([img[j] for j in order], dtype=torch.int64),
                "box": torch.tensor([box[j] for j in order], dtype=torch.float64).reshape(-1, 4)}

    def reducer(self, subject: Subject) -> TopK:
        return TopK(self.k)


class TopK:
    """Streaming top-``k`` of :class:`PatchHit` (memory does not grow with the dataset)."""

    def __init__(self, k: int) -> None:
        self.k, self.heap = k, []

    def add(self, index: int, c: dict[str, torch.Tensor]) -> None:
        for a, p, im, box in zip(c["activation"].tolist(), c["position"].tolist(), c["image"].tolist(),
                                 c["box"].tolist()):
            hit = PatchHit(float(a), int(index), int(p), int(im), tuple(box))
            if len(self.heap) < self.k:
                heapq.heappush(self.heap, hit)
            elif hit > self.heap[0]:
                heapq.heapreplace(self.heap, hit)

    def result(self) -> list[PatchHit]:
        return sorted(self.heap, reverse=True)


@register_method("top_patches", leaf="model/neuron/individual", tier="activations",
                 summary="image patches that activate a neuron most over a dataset (streaming top-k)", kind="analysis")
@torch.no_grad()
def top_activating_patches(subject: Subject, samples: Iterable[Any], layer: int, neuron: int, k: int = 10,
                           show_progress: bool | None = None) -> list[PatchHit]:
    """The ``k`` image tokens (over all ``samples``) with the largest activation of ``neuron`` in ``layer``'s
    MLP, with their original-image pixel boxes. Keeps a k-heap: memory does not grow with the dataset (the
    dataset-run version: :func:`mmlens.run_neuron_stats`).

    >>> hits = top_activating_patches(lm, ShapesVQA().samples(100), layer=2, neuron=17)   # doctest: +SKIP
    """
    subject.require_language_model("top_activating_patches")
    return reduce_samples(subject, samples, TopPatches(layer, neuron, k), "top patches", show_progress)


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


class NeuronSpecificity(SampleStat):
    """Activation counts per group (image vs text tokens, or all prompt tokens of one ``domain``): each
    sample's fired-token counts (its contribution), summed (the reducer)."""

    name = "neuron_specificity"

    def __init__(self, layer: int, groups: list[str] | None = None, domain: str | None = None) -> None:
        self.layer, self.groups, self.domain = int(layer), list(groups or ["image", "text"]), domain

    def config(self) -> dict[str, Any]:
        return {"stat": self.name, "layer": self.layer, "groups": self.groups}

    def check(self, subject: Subject) -> None:
        (self.layer,) = check_layers(subject, [self.layer])

    def per_sample(self, subject: Subject, batch: Any) -> dict[str, torch.Tensor]:
        with subject.trace() as tr:
            tr.capture(f"lm.blocks.{self.layer}.mlp.act", reduce=lambda h: (h[0] > 0).cpu())
            subject.forward(batch)
        fired = tr[f"lm.blocks.{self.layer}.mlp.act"][: batch.prompt_len]
        if self.domain is None:
            batch.require_sequence_images("neuron_specificity over image vs text tokens", "pass samples as a dict "
                                          "domain -> samples (it compares domains over every prompt token)")
        parts = {self.domain: torch.arange(batch.prompt_len)} if self.domain is not None else \
            {"image": batch.image_positions(), "text": batch.text_positions()}
        counts = torch.zeros(len(self.groups), fired.shape[-1], dtype=torch.float64)
        tokens = torch.zeros(len(self.groups), dtype=torch.int64)
        for name, pos in parts.items():
            g = self.groups.index(name)
            counts[g] += fired[pos].double().sum(0)
            tokens[g] += int(pos.numel())
        return {"counts": counts, "tokens": tokens}

    def reducer(self, subject: Subject) -> SpecificityCounts:
        return SpecificityCounts(self.groups, self.layer, mlp_width(subject))


class SpecificityCounts:
    """Streaming sums of fired tokens per group and neuron; :meth:`result` gives the :class:`Specificity`."""

    def __init__(self, groups: list[str], layer: int, width: int) -> None:
        self.groups, self.layer = groups, layer
        self.counts = torch.zeros(len(groups), width, dtype=torch.float64)
        self.tokens = torch.zeros(len(groups), dtype=torch.int64)

    def add(self, index: int, c: dict[str, torch.Tensor]) -> None:
        self.counts += c["counts"]
        self.tokens += c["tokens"]

    def result(self) -> Specificity:
        tokens = dict(zip(self.groups, (int(t) for t in self.tokens)))
        if any(v == 0 for v in tokens.values()):
            raise InputError(f"some groups saw no tokens ({tokens}): give every group at least one sample")
        prob = self.counts / self.tokens.double()[:, None]
        q = prob / prob.sum(0, keepdim=True).clamp_min(1e-12)
        entropy = -(q * q.clamp_min(1e-12).log()).sum(0)
        return Specificity(self.groups, self.layer, prob.float(), entropy.float(), tokens)


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
    subject.require_language_model("neuron_specificity")
    if not isinstance(samples, Mapping):
        return reduce_samples(subject, samples, NeuronSpecificity(layer), "specificity", show_progress)
    groups = list(samples)
    reducer = None
    for domain, items in samples.items():
        stat = NeuronSpecificity(layer, groups, domain)
        stat.check(subject)
        reducer = reducer or stat.reducer(subject)
        for i, batch in iter_batches(subject, items, answer=stat.answer, description=f"specificity {domain}",
                                     show_progress=show_progress):
            reducer.add(i, stat.per_sample(subject, batch))
    if reducer is None:
        raise InputError("no domains given: pass a dict domain -> samples with at least one domain")
    return reducer.result()
