"""Activation collection as a dataset run: the activations of any hook point(s) at one position group, streamed
to shards with one metadata row per token, for probes and sparse autoencoders.

The run folder is a normal dataset run (``manifest.json``, ``shards/part-K.parquet`` with one row per collected
token, see :mod:`mmlens.model.positions` for its columns, and ``shards/part-K.safetensors`` holding, per sample
and point, the ``(rows, width)`` activations under ``"{index}/{point}"``), so it resumes after a crash and runs
on Ray. Read it back in batches with :class:`~mmlens.runs.activation_reader.ActivationReader`.

>>> run = collect_activations("demo", "lm.blocks.*.resid_post", "object", "acts/", n=100)   # doctest: +SKIP
>>> from mmlens.runs.activation_reader import ActivationReader                               # doctest: +SKIP
>>> for x, meta in ActivationReader("acts/").batches("lm.blocks.1.resid_post", 512):        # doctest: +SKIP
...     x.shape, meta["object_color"][:3]
((512, 128), array(['red', 'red', 'blue'], dtype=object))
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from mmlens.errors import InputError
from mmlens.hooks.points import resolve_points
from mmlens.model.positions import GROUPS, IMAGE_GROUPS, _schema_fields, group_rows
from mmlens.runs.engine import DatasetRun, Job, run_dataset
from mmlens.runs.sources import Source, open_source
from mmlens.runs.store import cleanup_on_failure
from mmlens.util.options import check_choice, check_float, check_int

DTYPES = ("float32", "float16")


class ActivationJob(Job):
    """Capture ``points`` at the positions of ``group`` for every sample (``batch_size`` samples per forward)."""

    name = "activations"

    def __init__(self, model: str, points: list[str], group: str, dtype: str = "float32", min_overlap: float = 0.5,
                 batch_size: int = 8, tag: str | None = None, answer: bool = False) -> None:
        self.model, self.points, self.group, self.tag, self.answer = model, list(points), group, tag, bool(answer)
        self.dtype, self.min_overlap, self.batch_size = dtype, float(min_overlap), int(batch_size)

    def config(self) -> dict[str, Any]:
        return {"model": self.model, "points": self.points, "group": self.group, "dtype": self.dtype,
                "min_overlap": self.min_overlap, **({"tag": self.tag} if self.tag else {}),
                **({"answer": "given"} if self.answer else {})}

    def schema(self) -> Any:
        import pyarrow as pa

        return pa.schema([*_schema_fields(), ("where", pa.string())])

    def process(self, subject: Any, state: Any, index: int, sample: Any, where: str) -> list[dict[str, Any]]:
        return self.process_many(subject, state, [(index, sample, where)])[0]

    def process_many(self, subject: Any, state: Any, items: list[tuple[int, Any, str]]) -> list[list[dict[str, Any]]]:
        """One forward per run of samples whose inputs have the same length; rows and tensors per sample."""
        from mmlens.model.batch import cat_inputs

        prepared = []
        for index, sample, where in items:
            given = getattr(sample, "answer", None) if self.answer else None
            batch = subject.prepare(sample.image, sample.question, answer=given)
            rows = group_rows(self.group, sample, batch, subject.tokenizer, self.min_overlap)
            prepared.append((index, where, batch, rows))
        out: dict[int, list[dict[str, Any]]] = {}
        by_shape: dict[tuple[int, int], list[int]] = {}
        for k, (_, _, batch, _) in enumerate(prepared):
            image = batch.key_positions() if batch.in_key_space else batch.image_positions()  # keys: Mllama
            by_shape.setdefault((batch.seq_len, int(image.numel())), []).append(k)
        for ks in by_shape.values():
            batches = [prepared[k][2] for k in ks]
            inputs = cat_inputs([b.inputs for b in batches]) if len(batches) > 1 else batches[0].inputs
            captured = self._capture(subject, inputs)
            for j, k in enumerate(ks):
                index, where, batch, rows = prepared[k]
                out[k] = self._rows(index, where, batch, rows, {p: self._sample(v, j, len(ks)) for p, v in captured.items()})
        return [out[k] for k in range(len(prepared))]

    @torch.no_grad()
    def _capture(self, subject: Any, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        with subject.trace() as tr:
            for point in self.points:
                tr.capture(point, reduce=lambda h: h.detach().float().cpu())
            subject.model(**subject.model_inputs(inputs), use_cache=False)
        return {p: tr[p] for p in self.points}

    @staticmethod
    def _sample(value: torch.Tensor, j: int, n: int) -> torch.Tensor:
        """Sample ``j``'s tensor: ``(seq, d)`` for LM points; ``(image tokens, d)`` for ``projector.out``."""
        if value.ndim == 3:
            return value[j]
        per = value.shape[0] // n  # projector.out: the image tokens of n equal prompts, one after another
        return value[j * per:(j + 1) * per]

    def _rows(self, index: int, where: str, batch: Any, rows: list[dict[str, Any]],
              values: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        if not rows:
            return []
        positions = torch.tensor([r["position"] for r in rows])
        tensors = {}
        for point, value in values.items():
            if point == "projector.out":  # rows = image tokens in position order
                rank = {int(p): i for i, p in enumerate(batch.image_positions().tolist())}
                take = torch.tensor([rank[int(p)] for p in positions])
            else:
                take = positions
            tensors[point] = value[take].numpy().astype(np.float16 if self.dtype == "float16" else np.float32)
        for row in rows:
            row.update(index=index, where=where)
        rows[0]["_tensors"] = tensors
        return rows


def collect_activations(model: Any, points: str, group: str, out: str | os.PathLike, *, data: Any = None,
                        n: int | None = None, seed: int = 0, dtype: str = "float32", min_overlap: float = 0.5,
                        batch_size: int = 8, shard_size: int = 50, engine: str = "local",
                        show_progress: bool | None = None, strict: bool = False, tag: str | None = None,
                        answer: bool = False, **engine_options: Any) -> DatasetRun:
    """Collect the activations of ``points`` (a name, a glob like ``lm.blocks.*.resid_post``, or a comma list) at
    ``group``'s positions (``object`` / ``image`` / ``question`` / ``answer``) of ``n`` samples of ``data``
    (ShapesVQA at the model's image size when None, seed ``seed``) into folder ``out`` (resumable). ``tag`` marks
    a run of modified weights (e.g. randomised) so that it never resumes into the unmodified model's folder.
    ``answer``: teacher-force each sample's answer (its tokens then count as positions of ``all`` / ``text``)."""
    check_choice("group", group, GROUPS)
    check_choice("dtype", dtype, DTYPES)
    check_float("min_overlap", min_overlap, 0.0, 1.0, open_low=True)
    batch_size = check_int("batch_size", batch_size, 1, 4096)
    subject = model
    if isinstance(model, str):
        from mmlens.model.loading import load

        subject = load(model)
    names = resolve_points(subject, points)
    if "projector.out" in names and group not in IMAGE_GROUPS:
        raise InputError(f"projector.out has rows only for image tokens, not for group {group!r}: use --group object "
                         "or image, or an lm.* point")
    source = data if isinstance(data, Source) else _source(subject, data, n, seed)
    job = ActivationJob(subject.model_id, names, group, dtype, min_overlap, batch_size, tag, answer)
    with cleanup_on_failure(out):
        return run_dataset(job, source, model if engine == "ray" else subject, out, engine=engine,
                           shard_size=shard_size, seed=seed, strict=strict, show_progress=show_progress,
                           **engine_options)


def _source(subject: Any, data: Any, n: int | None, seed: int) -> Source:
    from mmlens.evaluation.benchmark import shapes_image_size

    return open_source(data, n=n, seed=seed, image_size=shapes_image_size(subject) if data is None else 64)
