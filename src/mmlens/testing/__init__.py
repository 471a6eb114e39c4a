"""Offline test subjects: tiny random-weight models of every family with real processors.

>>> from mmlens.testing import tiny_subject
>>> tiny_subject("qwen2_vl").family
'qwen2_vl'
"""

from __future__ import annotations

from mmlens.model.subject import Subject


def tiny_subject(family: str, seed: int = 0) -> Subject:
    """A :class:`~mmlens.Subject` around a tiny random model of ``family`` (see ``tiny_models.FAMILIES``)."""
    from mmlens.testing.tiny_models import tiny_model_and_processor

    model, processor = tiny_model_and_processor(family, seed=seed)
    return Subject(model, processor, model_id=f"tiny-{family}")


__all__ = ["tiny_subject"]
