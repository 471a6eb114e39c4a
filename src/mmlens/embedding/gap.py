"""The modality gap (Liang et al., 2022): image and text embeddings of a dual encoder live in separate cones.
The gap vector is the difference of the normalised means; shifting the image embeddings along it shows how
zero-shot accuracy depends on the gap.

>>> import torch
>>> g = gap_vector(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
>>> [round(v, 3) for v in g.tolist()]
[1.0, -1.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mmlens.catalog import register_method
from mmlens.embedding.zeroshot import accuracy, normalize
from mmlens.errors import InputError

#: Default shifts (multiples of the gap vector subtracted from the image embeddings; 1 = onto the text mean).
SHIFTS = (-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


def gap_vector(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Mean normalised image embedding minus mean normalised text embedding."""
    if image_emb.shape[0] == 0 or text_emb.shape[0] == 0:
        raise InputError("the modality gap needs at least one image and one text embedding")
    return normalize(image_emb.float()).mean(0) - normalize(text_emb.float()).mean(0)


@register_method("modality-gap", leaf="model/embedding/cross-modal", tier="activations", kind="embedding",
                 summary="modality gap: gap vector, its norm, zero-shot accuracy as images shift along it")
def modality_gap(image_emb: torch.Tensor, text_emb: torch.Tensor, class_emb: torch.Tensor | None = None,
                 labels: Sequence[int] | None = None, shifts: Sequence[float] = SHIFTS) -> dict[str, Any]:
    """The gap over a dataset (``image_emb``, ``text_emb``: e.g. images and their captions) and, given class
    embeddings and labels, zero-shot accuracy with image embeddings ``normalize(x - s * gap)`` for each shift."""
    g = gap_vector(image_emb, text_emb)
    img, txt = normalize(image_emb.float()), normalize(text_emb.float())
    out: dict[str, Any] = {"gap_norm": float(g.norm()), "gap": g.tolist(),
                           "mean_image_text_cosine": float((img.mean(0) @ txt.mean(0)) / (img.mean(0).norm() * txt.mean(0).norm())),
                           "centroid_norms": {"image": float(img.mean(0).norm()), "text": float(txt.mean(0).norm())}}
    if class_emb is not None and labels is not None:
        out["shifts"] = [float(s) for s in shifts]
        out["accuracy"] = [accuracy(normalize(img - float(s) * g), class_emb, labels) for s in shifts]
    return out
