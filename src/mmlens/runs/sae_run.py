"""Sparse autoencoders on the one activation-collection path: the activations of a hook point collected as a
dataset run (:func:`~mmlens.runs.activations.collect_activations`, teacher-forced answers included), streamed to
:func:`~mmlens.neuron.sae.train.train_sae` or read as a labelled :class:`~mmlens.neuron.sae.activations.TokenTable`.

>>> table = collect_tokens(lm, ShapesVQA(seed=1).samples(50), "lm.blocks.0.resid_post", "image")  # doctest: +SKIP
>>> run = train_sae(activation_tensors("acts/", "lm.blocks.0.resid_post"), d_sae=256, k=16, epochs=10)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from mmlens.hooks.points import check_point
from mmlens.model.subject import Subject
from mmlens.neuron.sae.activations import COLUMNS, TokenTable
from mmlens.runs.activation_reader import ActivationReader
from mmlens.runs.activations import collect_activations
from mmlens.runs.sources import ListSource, Source
from mmlens.util.options import check_choice

#: SAE position groups (a subset of the collection's groups)
SAE_GROUPS = ("all", "image", "text")


class activation_tensors:
    """The rows of ``point`` in a collection folder as float32 tensors of up to ``batch_size`` rows, in stored
    order; iterable again for every epoch (what :func:`train_sae` needs)."""

    def __init__(self, folder: str | os.PathLike | ActivationReader, point: str, batch_size: int = 4096) -> None:
        self.reader = folder if isinstance(folder, ActivationReader) else ActivationReader(folder)
        self.point, self.batch_size = self.reader.check_point(point), int(batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for x, _ in self.reader.batches(self.point, self.batch_size, columns=[]):
            yield torch.from_numpy(x)


def collect_sae_activations(subject: Subject, samples: Iterable[Any] | Source, hook_name: str, folder: str | os.PathLike,
                            positions: str = "all", show_progress: bool | None = None,
                            **options: Any) -> ActivationReader:
    """Collect ``hook_name`` at ``positions`` (all / image / text tokens of prompt + the sample's answer) into
    ``folder`` (resumable) and open it."""
    hook_name = check_point(subject, hook_name)
    positions = check_choice("positions", positions, SAE_GROUPS)
    source = samples if isinstance(samples, Source) else ListSource(list(samples))
    collect_activations(subject, hook_name, positions, folder, data=source, answer=True,
                        show_progress=show_progress, **options)
    return ActivationReader(folder)


def collect_tokens(subject: Subject, samples: Iterable[Any] | Source, hook_name: str, positions: str = "all",
                   folder: str | os.PathLike | None = None, show_progress: bool | None = None,
                   **options: Any) -> TokenTable:
    """Every token of ``positions`` with its metadata and object labels, in memory (collected into ``folder``, or
    a temporary folder removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="mmlens-sae-") as tmp:
        reader = collect_sae_activations(subject, samples, hook_name, folder or os.path.join(tmp, "acts"),
                                         positions, show_progress, **options)
        point = reader.points[0]
        acts, meta = reader.load(point, COLUMNS)
    return TokenTable.from_columns(acts, meta, point)
