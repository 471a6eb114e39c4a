"""A label-free concept bottleneck (after Oikarinen et al., ICLR 2023; implemented from the paper): the class is
predicted by a sparse linear layer over concept activations, which are the CLIP similarities of the image with
each concept text (standardised on the training set). Label-free CBM learns a projection from a backbone to those
similarities; with CLIP's own image tower as the backbone that projection is the identity, so the similarities are
used directly. As in the paper, the concept set is filtered first (:func:`filter_concepts`): concepts that are
too long, too similar to a class name (which would make the bottleneck a zero-shot classifier in disguise) or
near-duplicates of a kept concept are removed. The sparse layer is trained with an elastic-net penalty by proximal
gradient (GLM-SAGA's update). A linear probe on the same image embeddings is trained alongside for comparison.

>>> import torch
>>> from mmlens.embedding.cbm import ConceptBottleneck
>>> m = ConceptBottleneck(["a", "b"], ["x", "y"], torch.eye(2), torch.zeros(2), torch.ones(2), torch.eye(2), torch.zeros(2))
>>> m.explain(torch.tensor([[1.0, 0.0]]))[0]["prediction"]
'x'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
    #: concepts :func:`filter_concepts` removed, with the reason
    removed: dict[str, str] = field(default_factory=dict)

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
              concept_emb: torch.Tensor, l1: float = 1e-3, steps: int = 2000,
              class_emb: torch.Tensor | None = None) -> ConceptBottleneck:
    """Train the sparse head on image embeddings ``(n, d)`` with integer ``labels`` (indices into ``classes``).

    ``class_emb``: text embeddings of the class names; given, the concepts are filtered first
    (:func:`filter_concepts` with its defaults) and the removed ones listed in ``.removed``."""
    l1 = check_float("l1", l1, 0.0, open_low=True)
    steps = check_int("steps", steps, 1, 1_000_000)
    y = _labels(labels, len(classes), image_emb.shape[0])
    removed: dict[str, str] = {}
    if class_emb is not None:
        concepts, concept_emb, removed = filter_concepts(concepts, concept_emb, class_emb, classes)
    c = normalize(concept_emb.float())
    acts = normalize(image_emb.float()) @ c.T
    mean, std = acts.mean(0), acts.std(0).clamp_min(1e-6)
    w, b = sparse_logistic((acts - mean) / std, y, len(classes), l1=l1, steps=steps)
    return ConceptBottleneck(list(concepts), list(classes), c, mean, std, w, b, removed)


def filter_concepts(concepts: Sequence[str], concept_emb: torch.Tensor, class_emb: torch.Tensor,
                    classes: Sequence[str] | None = None, class_sim: float = 0.85, concept_sim: float = 0.9,
                    max_chars: int = 30, centre: bool = True, drop_mentions: bool = False,
                    ) -> tuple[list[str], torch.Tensor, dict[str, str]]:
    """Label-free CBM's concept-set filters (text side): drop concepts longer than ``max_chars``, equal to a
    class name or with text-embedding cosine > ``class_sim`` to a class, and those with cosine > ``concept_sim``
    to a concept kept before them. Returns the kept concepts, their embeddings and ``{removed: reason}``.

    ``centre``: compare after subtracting the concepts' mean embedding (and renormalising), as SpLiCE centres
    its vocabulary; raw text-text cosines of a small CLIP are all close to 1 (one shared direction dominates),
    which would make any threshold remove everything or nothing. ``drop_mentions`` (stricter than the paper):
    also drop every concept that contains a class name as a word ("red square" for the class "red").

    >>> e = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.6, 0.8]])
    >>> kept, _, why = filter_concepts(["a", "a2", "b", "ab"], e, torch.tensor([[0.0, 1.0]]), ["b"], centre=False)
    >>> kept, why
    (['a', 'ab'], {'a2': 'cosine 0.99 to concept a', 'b': 'is class b'})
    """
    words = list(concepts)
    if len(words) != concept_emb.shape[0]:
        raise InputError(f"{len(words)} concepts for {concept_emb.shape[0]} embeddings: pass one embedding each")
    names = [c.strip().lower() for c in classes] if classes is not None else []
    emb, cls = normalize(concept_emb.float()), normalize(class_emb.float())
    if centre:
        mean = emb.mean(0)
        emb, cls = normalize(emb - mean), normalize(cls - mean)
    to_class = emb @ cls.T
    keep: list[int] = []
    removed: dict[str, str] = {}
    for i, word in enumerate(words):
        j = int(to_class[i].argmax())
        sims = emb[keep] @ emb[i] if keep else torch.zeros(0)
        if len(word) > max_chars:
            removed[word] = f"longer than {max_chars} characters"
        elif word.strip().lower() in names:
            removed[word] = f"is class {word.strip()}"
        elif drop_mentions and set(word.lower().split()) & set(names):
            removed[word] = f"names class {min(set(word.lower().split()) & set(names))}"
        elif float(to_class[i, j]) > class_sim:
            removed[word] = f"cosine {float(to_class[i, j]):.2f} to class {names[j] if names else j}"
        elif sims.numel() and float(sims.max()) > concept_sim:
            removed[word] = f"cosine {float(sims.max()):.2f} to concept {words[keep[int(sims.argmax())]]}"
        else:
            keep.append(i)
    if not keep:
        raise InputError(f"every one of the {len(words)} concepts is a class name, too similar to one or a "
                         "duplicate: pass concepts that describe the classes without naming them")
    return [words[i] for i in keep], concept_emb[keep], removed


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
