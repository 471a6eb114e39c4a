"""SpLiCE (Bhalla et al., 2024): an image embedding as a sparse, non-negative combination of concept embeddings.

As in the paper and its reference code, both sides are normalised, centred and normalised again: the concepts
with the mean of the vocabulary's embeddings, the image with a mean image embedding (the paper uses MSCOCO's;
here ``image_mean``, by default the mean of the decomposed images). The weights solve a non-negative lasso
``1/(2d) ||z - w C||^2 + l1 ||w||_1`` (scikit-learn's scaling; the reference code's penalty lambda is
``l1 = lambda / (2d)``, and the default is its lambda = 0.25). ``cosine`` compares the recomposed and the original
centred embedding; ``cosine_full`` normalises the recomposition and adds the image mean back first, as the
paper's recomposed embedding does.

>>> from mmlens.testing.tiny_dual import tiny_dual_model_and_processor
>>> from mmlens.testing.tiny_models import tiny_images
>>> r = splice(tiny_dual_model_and_processor("clip"), tiny_images("llava", n=3), ["red", "blue", "circle"], l1=0.01)
>>> len(r), all(w > 0 for c in r for _, w in c.concepts)
(3, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmlens.catalog import register_method
from mmlens.embedding.solvers import nonneg_lasso
from mmlens.embedding.tower import tower
from mmlens.embedding.vocab import check_vocabulary
from mmlens.embedding.zeroshot import normalize
from mmlens.errors import InputError
from mmlens.model.images import ImageLike
from mmlens.util.options import check_float

#: the reference implementation's usual L1 penalty (its scaling: ``l1 = lambda / (2d)`` here)
PAPER_LAMBDA = 0.25


@dataclass
class SpliceResult:
    #: ``(concept, weight)`` with weight > 0, largest first
    concepts: list[tuple[str, float]]
    cosine: float
    cosine_full: float

    def to_dict(self) -> dict[str, Any]:
        return {"concepts": [{"concept": c, "weight": round(w, 6)} for c, w in self.concepts],
                "l0": len(self.concepts), "cosine": self.cosine, "cosine_full": self.cosine_full}


@register_method("splice", leaf="model/embedding/cross-modal", tier="activations", kind="embedding",
                 summary="SpLiCE: sparse non-negative concept decomposition of image embeddings")
@torch.no_grad()
def splice(model: Any, images: Sequence[ImageLike] | torch.Tensor, vocabulary: Sequence[str],
           l1: float | None = None, image_mean: torch.Tensor | Sequence[ImageLike] | None = None, steps: int = 1000,
           ) -> list[SpliceResult]:
    """Decompose each image's embedding over ``vocabulary`` (see the module docstring).

    ``images``: images or their embeddings ``(n, d)``; ``l1``: default ``0.25 / (2d)`` (the paper's penalty);
    ``image_mean``: the image-side mean (a vector, or images to average; best a large reference set, as the
    paper's MSCOCO mean); default: the mean of ``images`` (then at least 2 are needed)."""
    l1 = None if l1 is None else check_float("l1", l1, 0.0, open_low=True)
    words = check_vocabulary(vocabulary)
    t = tower(model)
    t.require_text("SpLiCE")
    emb = normalize(images.float() if torch.is_tensor(images) else t.encode_images(list(images)))
    l1 = PAPER_LAMBDA / (2 * emb.shape[1]) if l1 is None else l1
    mean = _image_mean(t, emb, image_mean)
    concepts = normalize(t.encode_texts(words))
    atoms = normalize(concepts - concepts.mean(0))
    target = normalize(emb - mean)
    weights = nonneg_lasso(atoms, target, l1, steps)
    recon = weights @ atoms
    cos = torch.nn.functional.cosine_similarity(recon, target, dim=-1)
    full = torch.nn.functional.cosine_similarity(normalize(recon) + mean, emb, dim=-1)
    out = []
    for i in range(emb.shape[0]):
        order = [int(j) for j in weights[i].argsort(descending=True) if weights[i, j] > 0]
        out.append(SpliceResult([(words[j], float(weights[i, j])) for j in order], float(cos[i]), float(full[i])))
    return out


def _image_mean(t: Any, emb: torch.Tensor, image_mean: Any) -> torch.Tensor:
    if image_mean is None:
        if emb.shape[0] < 2:
            raise InputError("SpLiCE centres with the image-side mean: pass image_mean= (a vector or >= 2 images) "
                             "or decompose at least 2 images")
        return emb.mean(0)
    if torch.is_tensor(image_mean):
        vec = image_mean.float().reshape(-1)
        if vec.shape[0] != emb.shape[1]:
            raise InputError(f"image_mean has {vec.shape[0]} dims, the embeddings {emb.shape[1]}: pass a mean of the "
                             "same model's image embeddings")
        return vec
    return normalize(t.encode_images(list(image_mean))).mean(0)
