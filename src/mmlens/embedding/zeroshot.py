"""Zero-shot classification with a dual encoder: class texts (or prompt ensembles) against image embeddings.

>>> import torch
>>> accuracy(torch.eye(3), torch.eye(3), [0, 1, 2])
1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mmlens.errors import InputError


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def class_embeddings(t: Any, classes: Sequence[str] | Sequence[Sequence[str]]) -> torch.Tensor:
    """``(k, d)`` normalised class embeddings: one text per class, or a list of prompts per class (averaged)."""
    from mmlens.embedding.tower import tower

    t = tower(t)
    t.require_text("zero-shot classification")
    if len(classes) < 2:
        raise InputError(f"{len(classes)} class(es) given: zero-shot classification needs at least 2")
    rows = []
    for c in classes:
        prompts = [c] if isinstance(c, str) else list(c)
        rows.append(normalize(normalize(t.encode_texts(prompts)).mean(0)))
    return torch.stack(rows)


def predict(image_emb: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """Class index per image (cosine similarity; works on any leading batch shape)."""
    return (normalize(image_emb) @ class_emb.T).argmax(-1)


def accuracy(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    labels = torch.as_tensor(labels)
    if labels.numel() != image_emb.shape[0]:
        raise InputError(f"{labels.numel()} labels for {image_emb.shape[0]} images: pass one label per image")
    return float((predict(image_emb, class_emb) == labels).float().mean())
