"""Run a :class:`Job` over a :class:`~mmlens.runs.sources.Source`: results streamed to Parquet shards.

The same per-sample function runs under every engine: ``local`` (one process, one loaded model, shard after
shard, a progress bar with samples/s and ETA) or ``ray`` (Ray Data: one model replica per actor, see
:mod:`mmlens.runs.ray_engine`). Shards already complete in the folder's manifest are skipped, so re-running
the same command after a crash continues where it stopped and gives the same final table.

>>> run = run_dataset(job, open_source(None, n=20, seed=0), "demo", "out/")          # doctest: +SKIP
>>> sum(1 for _ in run.iter_rows())                                                # doctest: +SKIP
20
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmlens.errors import InputError
from mmlens.runs.sources import Source
from mmlens.runs.store import RunStore
from mmlens.util.options import check_choice, check_int

ENGINES = ("local", "ray")
DEFAULT_SHARD_SIZE = 50
TENSORS = "_tensors"


class Job:
    """A dataset-level job: ``process`` turns one sample into rows (dicts matching ``schema``); a row may carry
    ``"_tensors"``: ``{name: array}``, stored in the shard's safetensors file under ``"{index}/{name}"``;
    ``where`` names the sample for messages (file and row, or "ShapesVQA sample i").

    ``config()`` says what makes two runs the same run (the manifest compares it); ``setup`` makes per-process
    state (e.g. which methods are warmed up). Jobs must pickle (Ray ships them to its actors).

    ``batch_size`` > 1: the engine hands ``process_many`` up to that many consecutive readable samples at once
    (one batched forward); by default it calls ``process`` on each."""

    name = "job"
    batch_size = 1

    def config(self) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def schema(self) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def setup(self, subject: Any) -> Any:
        return None

    def process(self, subject: Any, state: Any, index: int, sample: Any, where: str) -> list[dict[str, Any]]:
        raise NotImplementedError  # pragma: no cover - interface

    def process_many(self, subject: Any, state: Any, items: list[tuple[int, Any, str]]) -> list[list[dict[str, Any]]]:
        """Rows of each ``(index, sample, where)`` in ``items``, in order (override to batch them)."""
        return [self.process(subject, state, index, sample, where) for index, sample, where in items]


@dataclass
class ShardOutput:
    """What one shard produced: its table, its tensors (safetensors bytes) and its unreadable rows."""

    shard: int
    table: Any
    tensors: bytes | None
    failures: list[dict[str, Any]]


def process_shard(job: Job, subject: Any, state: Any, source: Source, shard: int, start: int, stop: int,
                  strict: bool, tick: Any = None) -> ShardOutput:
    """Run ``job`` on samples ``start..stop-1``: the one per-sample loop every engine uses."""
    import pyarrow as pa

    rows: list[dict[str, Any]] = []
    tensors: dict[str, np.ndarray] = {}
    failures: list[dict[str, Any]] = []
    pending: list[tuple[int, Any, str]] = []

    def flush() -> None:
        for (index, _, _), got in zip(pending, job.process_many(subject, state, pending), strict=True):
            for row in got:
                for name, value in (row.pop(TENSORS, None) or {}).items():
                    tensors[f"{index}/{name}"] = np.ascontiguousarray(value)
                rows.append(row)
        if tick is not None:
            tick(len(pending))
        pending.clear()

    size = max(1, int(getattr(job, "batch_size", 1)))
    for index in range(start, stop):
        try:
            sample = source.sample(index)
        except InputError as err:  # an unreadable row: named, recorded, skipped (or fatal with strict)
            if strict:
                raise
            failures.append({"index": index, "where": source.where(index), "error": str(err)})
            if tick is not None:
                tick(1)
            continue
        pending.append((index, sample, source.where(index)))
        if len(pending) >= size:
            flush()
    if pending:
        flush()
    schema = job.schema()
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    blob = None
    if tensors:
        from safetensors.numpy import save

        blob = save(tensors)
    return ShardOutput(shard, table, blob, failures)


@dataclass
class DatasetRun:
    """A finished run: its folder (manifest + shards), read back shard by shard."""

    store: RunStore
    description: str

    @property
    def folder(self) -> Any:
        return self.store.folder

    def iter_rows(self, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
        return self.store.iter_rows(columns)

    def failures(self) -> list[dict[str, Any]]:
        return self.store.failures()


def check_engine(engine: str, replicas: int, gpus_per_replica: float, address: str | None) -> None:
    """The engine flags, checked before any work (Ray itself is imported only when it runs)."""
    check_choice("engine", engine, ENGINES)
    check_int("replicas", replicas, 1, 10_000)
    if not (isinstance(gpus_per_replica, (int, float)) and 0 <= gpus_per_replica <= 64):
        raise InputError(f"gpus_per_replica={gpus_per_replica!r}: pass 0 (CPU) up to 64")
    if engine == "local" and (address is not None or replicas != 1 or gpus_per_replica):
        raise InputError("--address, --replicas and --gpus-per-replica are Ray options: add --engine ray")


def run_dataset(job: Job, source: Source, model: Any, out: str | os.PathLike, *, engine: str = "local",
                shard_size: int = DEFAULT_SHARD_SIZE, seed: int = 0, strict: bool = False,
                show_progress: bool | None = None, replicas: int = 1, gpus_per_replica: float = 0,
                address: str | None = None) -> DatasetRun:
    """Run ``job`` over ``source`` into folder ``out`` (resumed when it holds the same run, an error when it
    holds another). ``model``: a :class:`~mmlens.model.subject.Subject` or what :func:`mmlens.load` takes (Ray
    actors load that name; a Subject is shipped to them)."""
    check_engine(engine, replicas, gpus_per_replica, address)
    shard_size = check_int("shard_size", shard_size, 1, 1_000_000)
    config = {"job": job.name, **job.config(), "data": source.spec}
    store = RunStore.open(out, config, len(source), shard_size, seed)
    todo = store.todo()
    if todo:
        if engine == "ray":
            from mmlens.runs.ray_engine import run_ray

            run_ray(job, source, model, store, todo, strict, replicas, gpus_per_replica, address, show_progress)
        else:
            _run_local(job, source, model, store, todo, strict, show_progress)
    if not store.manifest["complete"]:
        store.mark_complete()
    return DatasetRun(store, source.description)


def _run_local(job: Job, source: Source, model: Any, store: RunStore, todo: list[int], strict: bool,
               show_progress: bool | None) -> None:
    from mmlens.util.progress import progress_bar

    subject = _load(model)
    state = job.setup(subject)
    total = sum(store.ranges[k][1] - store.ranges[k][0] for k in todo)
    with progress_bar(total, f"{job.name}", show=show_progress, rate=True) as bar:
        for k in todo:
            start, stop = store.ranges[k]
            out = process_shard(job, subject, state, source, k, start, stop, strict, bar.update)
            store.write_shard(k, out.table, out.tensors, out.failures)


def _load(model: Any) -> Any:
    if isinstance(model, str):
        from mmlens.model.loading import load

        return load(model)
    return model


def table_to_bytes(table: Any) -> bytes:
    """A pyarrow table as Arrow IPC bytes (how Ray actors hand a shard back)."""
    import pyarrow as pa

    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def table_from_bytes(data: bytes) -> Any:
    import pyarrow as pa

    return pa.ipc.open_stream(io.BytesIO(data)).read_all()


def write_failures(run: DatasetRun, folder: Any) -> Any:
    """``failures.jsonl`` in ``folder`` (one unreadable row per line), or None when every row was read."""
    from pathlib import Path

    from mmlens.util.io import atomic_write

    failures = run.failures()
    path = Path(folder) / "failures.jsonl"
    if not failures:
        path.unlink(missing_ok=True)
        return None
    text = "".join(json.dumps(f) + "\n" for f in failures)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
