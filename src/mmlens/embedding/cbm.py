"""A label-free concept bottleneck (after Oikarinen et al., ICLR 2023; implemented from the paper): the class is
predicted by a sparse linear layer over concept activations, which are the CLIP similarities of the image with
each concept text (standardised on the training set). Label-free CBM learns a projection from a backbone to those
similarities; with CLIP's own image tower as the backbone that projection is the identity, so the similarities are
used directly. The sparse layer is trained with an elastic-net penalty by proximal gradient (GLM-SAGA's update).
A linear probe on the same image embeddings is trained alongside for comparison.

>>> import torch
>>> from mmlens.embedding.cbm import ConceptBottleneck
>>> m = ConceptBottleneck(["a", "b"], ["x", "y"], torch.eye(2), torch.zeros(2), torch.ones(2), torch.eye(2), torch.zeros(2))
>>> m.explain(torch.tensor([[1.0, 0.0]]))[0]["prediction"]
'x'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmlens.catalog import register_method
from mmlens.embedding.solvers import sparse_logistic
from mmlens.embedding.zeroshot import normalize
from mmlens.errors import InputError
from mmlens.util.options import check_float, check_int


@dataclass
class ConceptBottleneck:
    concepts: list[str]
    classes: list[str]
    concept_emb: torch.Tensor  # (k, d) normalised
    mean: torch.Tensor  # (k,) activation mean on the training set
    std: torch.Tensor
    weight: torch.Tensor  # (classes, k)
    bias: torch.Tensor

    def activations(self, image_emb: torch.Tensor) -> torch.Tensor:
        """Standardised concept activations ``(n, k)``."""
        return (normalize(image_emb.float()) @ self.concept_emb.T - self.mean) / self.std

    def predict(self, image_emb: torch.Tensor) -> torch.Tensor:
        return (self.activations(image_emb) @ self.weight.T + self.bias).argmax(-1)

    def explain(self, image_emb: torch.Tensor, top: int = 5) -> list[dict[str, Any]]:
        """Per image: the predicted class and its top concepts by contribution (weight x activation)."""
        acts, pred = self.activations(image_emb), self.predict(image_emb)
        out = []
        for a, k in zip(acts, pred.tolist(), strict=True):
            contrib = self.weight[k] * a
            order = contrib.argsort(descending=True)[:top]
            out.append({"prediction": self.classes[k], "concepts": [
                {"concept": self.concepts[j], "contribution": round(float(contrib[j]), 6),
                 "weight": round(float(self.weight[k, j]), 6), "activation": round(float(a[j]), 6)}
                for j in order.tolist() if self.weight[k, j] != 0]})
        return out

    def sparsity(self) -> dict[str, float]:
        nz = (self.weight != 0).sum(1).float()
        return {"nonzero_per_class": float(nz.mean()), "nonzero_total": int((self.weight != 0).sum())}


@register_method("concept-bottleneck", leaf="model/architecture/design", tier="training", kind="embedding",
                 summary="label-free concept bottleneck over CLIP concept similarities, sparse final layer")
def train_cbm(image_emb: torch.Tensor, labels: Sequence[int], classes: Sequence[str], concepts: Sequence[str],
              concept_emb: torch.Tensor, l1: float = 1e-3, steps: int = 2000) -> ConceptBottleneck:
    """Train the sparse head on image embeddings ``(n, d)`` with integer ``labels`` (indices into ``classes``)."""
    l1 = check_float("l1", l1, 0.0, open_low=True)
    steps = check_int("steps", steps, 1, 1_000_000)
    y = _labels(labels, len(classes), image_emb.shape[0])
    c = normalize(concept_emb.float())
    acts = normalize(image_emb.float()) @ c.T
    mean, std = acts.mean(0), acts.std(0).clamp_min(1e-6)
    w, b = sparse_logistic((acts - mean) / std, y, len(classes), l1=l1, steps=steps)
    return ConceptBottleneck(list(concepts), list(classes), c, mean, std, w, b)


def linear_probe(image_emb: torch.Tensor, labels: Sequence[int], n_classes: int, l2: float = 1e-4,
                 steps: int = 2000) -> Any:
    """A dense logistic-regression probe on standardised image embeddings; returns ``predict(emb) -> labels``."""
    y = _labels(labels, n_classes, image_emb.shape[0])
    x = normalize(image_emb.float())
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    w, b = sparse_logistic((x - mean) / std, y, n_classes, l1=0.0, l2=l2, steps=steps)
    return lambda emb: (((normalize(emb.float()) - mean) / std) @ w.T + b).argmax(-1)


def _labels(labels: Sequence[int], n_classes: int, n: int) -> torch.Tensor:
    y = torch.as_tensor(list(labels), dtype=torch.long)
    if y.numel() != n:
        raise InputError(f"{y.numel()} labels for {n} images: pass one label per image")
    if n_classes < 2 or y.min() < 0 or y.max() >= n_classes:
        raise InputError(f"labels must be class indices 0..{n_classes - 1} with at least 2 classes")
    return y
