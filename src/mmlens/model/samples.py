"""Running analyses over many inputs: samples in, prepared batches out, with streaming reductions."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mmlens.errors import InputError
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.util.progress import progress


def sample_fields(sample: Any) -> tuple[Any, str, str | None]:
    """(image(s), prompt, answer or None) from a ShapesSample-like object, a dict or a tuple."""
    if hasattr(sample, "image") and hasattr(sample, "question"):
        return sample.image, sample.question, getattr(sample, "answer", None)
    if isinstance(sample, dict):
        return sample["image"], sample.get("prompt") or sample["question"], sample.get("answer")
    if isinstance(sample, (tuple, list)) and len(sample) in (2, 3):
        return sample[0], sample[1], (sample[2] if len(sample) == 3 else None)
    raise InputError("a sample must be (image, prompt[, answer]), a dict with image/prompt, or a ShapesSample")


def iter_batches(subject: Subject, samples: Iterable[Any], answer: str = "model", description: str = "inputs",
                 show_progress: bool | None = None, total: int | None = None) -> Iterator[tuple[int, Batch]]:
    """Yield ``(index, teacher-forced batch)`` per sample; ``answer="model"`` explains the model's own greedy
    answer, ``answer="given"`` the sample's answer. A sample whose generated answer is empty (the model stopped
    at once) has nothing to explain and is skipped, so one such sample does not end a dataset run."""
    if answer not in ("model", "given"):
        raise InputError(f"answer={answer!r}: use 'model' (the model's own answer) or 'given' (the sample's)")
    for i, sample in enumerate(progress(samples, description, enabled=show_progress, total=total)):
        batch = sample_batch(subject, sample, answer)
        if batch is not None:
            yield i, batch


def sample_batch(subject: Subject, sample: Any, answer: str = "model") -> Batch | None:
    """One sample's teacher-forced batch (see :func:`iter_batches`); None when the model's answer is empty."""
    image, prompt, given = sample_fields(sample)
    if answer == "given" and given is not None:
        return subject.prepare(image, prompt, answer=given)
    gen = subject.generate(image, prompt, max_new_tokens=8)
    return gen.batch if gen.token_ids.numel() else None


class SampleStat:
    """A dataset statistic split in two: ``per_sample(subject, batch)`` turns one sample's batch into a dict of
    tensors (its contribution), and ``reducer()`` folds contributions, in sample order, into the result
    (``add(index, contribution)``, then ``result()``). In-memory functions and dataset runs share both, so the
    loop over samples has one home per place (:func:`reduce_samples` here, a run's job in :mod:`mmlens.runs`).
    ``answer``: which answer the batches teacher-force ("given" or "model"); ``config()`` names the statistic.
    Instances must pickle (Ray ships them)."""

    name = "stat"
    answer = "given"

    def config(self) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def check(self, subject: Subject) -> None:
        """Check the options against the model (before any sample runs)."""

    def per_sample(self, subject: Subject, batch: Batch) -> dict[str, torch.Tensor] | None:
        raise NotImplementedError  # pragma: no cover - interface

    def reducer(self, subject: Subject) -> Any:
        raise NotImplementedError  # pragma: no cover - interface


def reduce_samples(subject: Subject, samples: Iterable[Any], stat: SampleStat, description: str = "inputs",
                   show_progress: bool | None = None) -> Any:
    """``stat`` over ``samples`` in this process: one sample in memory at a time."""
    stat.check(subject)
    reducer = stat.reducer(subject)
    for i, batch in iter_batches(subject, samples, answer=stat.answer, description=description,
                                 show_progress=show_progress):
        contribution = stat.per_sample(subject, batch)
        if contribution is not None:
            reducer.add(i, contribution)
    return reducer.result()


@dataclass
class RunningMean:
    """Streaming mean of equally shaped tensors (memory does not grow with the number of inputs)."""

    total: torch.Tensor | None = None
    count: int = 0

    def add(self, value: torch.Tensor) -> None:
        value = value.detach().double().cpu()
        self.total = value.clone() if self.total is None else self.total + value
        self.count += 1

    @property
    def mean(self) -> torch.Tensor:
        if self.total is None:
            raise InputError("no inputs were processed: pass at least one sample")
        return (self.total / self.count).float()
