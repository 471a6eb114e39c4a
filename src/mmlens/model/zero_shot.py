"""Zero-shot classification of one image among given captions with a dual encoder (CLIP, SigLIP): the class is
the caption with the highest image-caption similarity, its probability the softmax over the captions'
similarity logits. The numbers are the joint sequence's (see :mod:`mmlens.adapters.dual_encoder`): explaining
``mmlens.explain(subject, image, result.label, candidates=result.texts)`` with the default ``log_prob`` objective
differentiates exactly ``log result.probs[result.index]``.

>>> from mmlens.testing.tiny_dual import tiny_dual_subject
>>> from mmlens.testing.tiny_models import tiny_images
>>> r = zero_shot(tiny_dual_subject("clip"), tiny_images("llava")[0], ["a red cat", "a blue dog"])
>>> round(sum(r.probs), 6), r.label in r.texts
(1.0, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmlens.errors import InputError
from mmlens.model.images import ImageLike


@dataclass
class ZeroShot:
    """Captions, their similarity logits and softmax probabilities (in the given order), and the winner."""

    texts: list[str]
    logits: list[float]
    probs: list[float]

    @property
    def index(self) -> int:
        return max(range(len(self.probs)), key=self.probs.__getitem__)

    @property
    def label(self) -> str:
        return self.texts[self.index]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "classes": [{"text": t, "logit": round(s, 6), "prob": round(p, 6)}
                                                 for t, s, p in zip(self.texts, self.logits, self.probs, strict=True)]}


def zero_shot(subject: Any, image: ImageLike, texts: Sequence[str]) -> ZeroShot:
    """The class of ``image`` among the captions ``texts`` (at least 2, distinct), by a dual-encoder subject."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InputError(f"texts={texts!r}: pass a list of captions (strings), one per class")
    texts = list(texts)
    adapter = getattr(subject, "adapter", None)
    if adapter is not None and not adapter.dual_encoder:
        raise InputError(f"zero_shot compares an image with captions in a shared embedding space, and this "
                         f"{adapter.family} model has no text tower aligned with its images: load an image-text dual "
                         "encoder, or ask this model (Subject.generate, mmlens.explain)")
    if len({t.strip() for t in texts}) != len(texts) or len(texts) < 2:
        raise InputError(f"{len(texts)} caption(s) given ({len({t.strip() for t in texts})} distinct): zero-shot "
                         "classification needs at least 2 distinct captions")
    batch = subject.prepare(image, texts[0], answer="<match>", candidates=texts)
    with torch.no_grad():
        row = subject.forward(batch)[0, batch.prompt_len - 1, 1:].float().cpu()
    return ZeroShot(texts, row.tolist(), row.softmax(-1).tolist())
