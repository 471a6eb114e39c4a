"""Mean ablation of direct contributions (TextSpan, Gandelsman et al.): replace components by their dataset mean and
watch zero-shot accuracy, by layer (attention / MLP, early layers first), by single head, or for a group of heads.

>>> import torch
>>> from mmlens.embedding.decompose import Decomposition
>>> d = Decomposition(["embed", "L0.H0", "L0.mlp"], torch.randn(4, 3, 2), torch.zeros(4, 2), 1, 1)
>>> tuple(mean_ablate(d, [1]).shape)
(4, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mmlens.catalog import register_method
from mmlens.embedding.decompose import Decomposition
from mmlens.embedding.zeroshot import accuracy
from mmlens.errors import InputError


def mean_ablate(dec: Decomposition, components: Sequence[int]) -> torch.Tensor:
    """Embeddings ``(n, d)`` (the components' sum) with ``components`` replaced by their mean over the images."""
    c = dec.contributions
    out = c.sum(1)
    idx = list(components)
    if idx:
        sel = c[:, idx]
        out = out - sel.sum(1) + sel.mean(0).sum(0)
    return out


def _layer(dec: Decomposition, prefix: str) -> list[int]:
    return [i for i, n in enumerate(dec.names) if n.startswith(prefix)]


@register_method("mean-ablation", leaf="model/embedding/visual", tier="activations", kind="embedding",
                 summary="zero-shot accuracy as layers / MLPs / heads' direct effects are mean-ablated (TextSpan)")
def ablation_curves(dec: Decomposition, class_emb: torch.Tensor, labels: Sequence[int]) -> dict[str, Any]:
    """Zero-shot accuracy with the direct effects of layers ``0..k-1`` mean-ablated (``attn``: all heads;
    ``mlp``; ``both``) for every ``k``, and the accuracy drop of each single head (``heads[l][h]``)."""
    labels = list(labels)
    if len(labels) != dec.contributions.shape[0]:
        raise InputError(f"{len(labels)} labels for {dec.contributions.shape[0]} images: pass one label per image")
    base = accuracy(dec.contributions.sum(1), class_emb, labels)
    curves: dict[str, list[float]] = {"attn": [], "mlp": [], "both": []}
    for k in range(dec.n_layers + 1):
        heads = [i for layer in range(k) for i in _layer(dec, f"L{layer}.H")]
        mlps = [i for layer in range(k) for i in _layer(dec, f"L{layer}.mlp")]
        for key, comps in (("attn", heads), ("mlp", mlps), ("both", heads + mlps)):
            curves[key].append(accuracy(mean_ablate(dec, comps), class_emb, labels))
    per_head = [[base - accuracy(mean_ablate(dec, [dec.head(layer, h)]), class_emb, labels)
                 for h in range(dec.n_heads)] for layer in range(dec.n_layers)] if "L0.H0" in dec.names else []
    return {"accuracy": base, "layers_ablated": list(range(dec.n_layers + 1)), "curves": curves, "head_drop": per_head}


def group_drop(dec: Decomposition, heads: Sequence[tuple[int, int]], class_emb: torch.Tensor,
               labels: Sequence[int]) -> dict[str, float]:
    """Accuracy before and after mean-ablating the direct effects of ``heads`` (``(layer, head)`` pairs)."""
    base = accuracy(dec.contributions.sum(1), class_emb, labels)
    after = accuracy(mean_ablate(dec, [dec.head(layer, h) for layer, h in heads]), class_emb, labels)
    return {"accuracy": base, "ablated": after, "drop": base - after, "n_heads": len(heads)}
