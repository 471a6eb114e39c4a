"""``mmlens explain-dataset``: every sample of a dataset explained with one method, on any engine.

The run folder holds the manifest, ``shards/part-K.parquet`` (one row per sample: question, answer, targets,
seconds, or the error) and ``shards/part-K.safetensors`` (the explanations' arrays, keys ``"{index}/..."``);
at the end :func:`explain_dataset` writes ``index.jsonl`` (one line per sample: where its explanation lies),
``failures.jsonl`` (unreadable rows, if any) and ``contact_sheet.png`` (the first overlays).

>>> run = explain_dataset("demo", None, "attention", "out/", n=20)        # doctest: +SKIP
>>> load_explanation("out/", 3).answer                                   # doctest: +SKIP
'red'
"""

from __future__ import annotations

import inspect
import json
import os
import time
from pathlib import Path
from typing import Any

from mmlens.errors import InputError
from mmlens.results.explanation import Explanation, jsonable
from mmlens.runs.engine import DatasetRun, Job, run_dataset, write_failures
from mmlens.runs.sources import open_source
from mmlens.runs.store import RunStore, cleanup_on_failure
from mmlens.util.io import atomic_write

INDEX, SHEET = "index.jsonl", "contact_sheet.png"
ANSWERS = ("given", "model")


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([("index", pa.int64()), ("where", pa.string()), ("question", pa.string()),
                      ("answer", pa.string()), ("targets", pa.list_(pa.string())), ("seconds", pa.float64()),
                      ("meta", pa.string()), ("error", pa.string())])


class ExplainJob(Job):
    """``mmlens.explain`` on one sample; the explanation's arrays go to the shard's safetensors file."""

    name = "explain"

    def __init__(self, model: str, method: str, options: dict[str, Any], target: str | None, answer: str,
                 seed: int) -> None:
        self.model, self.method, self.options = model, method, dict(options)
        self.target, self.answer, self.seed = target, answer, int(seed)

    def config(self) -> dict[str, Any]:
        return {"model": self.model, "method": self.method, "options": jsonable(self.options),
                "target": self.target, "answer": self.answer}

    def schema(self) -> Any:
        return _schema()

    def process(self, subject: Any, state: Any, index: int, sample: Any, where: str) -> list[dict[str, Any]]:
        from mmlens.evaluation.benchmark_job import sample_seed
        from mmlens.explain import explain

        given = getattr(sample, "answer", None) if self.answer == "given" else None
        row: dict[str, Any] = {"index": index, "where": where, "question": sample.question}
        try:
            start = time.perf_counter()
            ex = explain(subject, sample.image, sample.question, method=self.method, target=self.target,
                         answer=given, seed=sample_seed(self.seed, index), **self.options)
            row["seconds"] = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - one sample failing is recorded in the index, not fatal
            row["error"] = f"{where}: {err.__class__.__name__}: {' '.join(str(err).split())[:300]}"
            return [row]
        row.update(answer=ex.answer, targets=list(ex.labels), meta=json.dumps(ex.meta()), _tensors=ex.arrays())
        return [row]


def explain_dataset(model: Any, data: str | os.PathLike | None, method: str, out: str | os.PathLike, *,
                    n: int | None = None, seed: int = 0, target: str | None = "answer", answer: str = "given",
                    options: dict[str, Any] | None = None, sheet: int = 16, strict: bool = False,
                    engine: str = "local", shard_size: int = 50, show_progress: bool | None = None,
                    replicas: int = 1, gpus_per_replica: float = 0, address: str | None = None) -> DatasetRun:
    """Explain every sample of ``data`` (see :func:`~mmlens.runs.sources.open_source`; ShapesVQA when None)
    with ``method`` into folder ``out`` (resumed when it holds the same run)."""
    from mmlens.catalog import get_method
    from mmlens.explain import _check_options
    from mmlens.util.limits import check_option_ranges
    from mmlens.util.options import check_choice, check_int

    info = get_method(method)
    if info.kind != "attribution":
        raise InputError(f"--method {method!r} is not an attribution method: see `mmlens methods`")
    options = dict(options or {})
    _check_options(info, options)
    check_option_ranges(options)
    check_choice("answer", answer, ANSWERS)
    sheet = check_int("sheet", sheet, 0, 400)
    if "progress" in inspect.signature(info.fn).parameters:
        options.setdefault("progress", False)
    subject = model
    if isinstance(model, str):
        from mmlens.model.loading import load

        subject = load(model)
    from mmlens.evaluation.benchmark import shapes_image_size

    source = open_source(data, n=n, seed=seed, image_size=shapes_image_size(subject) if data is None else 64)
    job = ExplainJob(subject.model_id, method, options, target, answer, seed)
    with cleanup_on_failure(out):
        run = run_dataset(job, source, model if engine == "ray" else subject, out, engine=engine,
                          shard_size=shard_size, seed=seed, strict=strict, show_progress=show_progress,
                          replicas=replicas, gpus_per_replica=gpus_per_replica, address=address)
    write_index(run.store)
    write_failures(run, out)
    if sheet:
        contact_sheet(run.store, Path(out) / SHEET, sheet)
    return run


def write_index(store: RunStore) -> Path:
    """``index.jsonl``: per sample, its answer and targets and where its arrays lie (or its error)."""
    lines = []
    for k in sorted(store.manifest["shards"], key=int):
        shard = store.shard_path(int(k), ".safetensors").relative_to(store.folder)
        for row in store.iter_tables_of(int(k), ["index", "where", "question", "answer", "targets", "seconds",
                                                 "error"]):
            entry = {key: v for key, v in row.items() if v is not None}
            if row["error"] is None:
                entry.update(file=str(shard), prefix=f"{row['index']}/")
            lines.append(json.dumps(entry))
    text = "".join(line + "\n" for line in lines)
    return atomic_write(store.folder / INDEX, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def iter_explanations(folder: str | os.PathLike, limit: int | None = None) -> Any:
    """Yield ``(index, Explanation)`` in sample order from a finished explain-dataset folder."""
    from safetensors import safe_open

    store = RunStore(Path(folder), _manifest(Path(folder)))
    count = 0
    for k in sorted(store.manifest["shards"], key=int):
        rows = [r for r in store.iter_tables_of(int(k), ["index", "meta", "error"]) if r["error"] is None]
        if not rows:
            continue
        with safe_open(str(store.shard_path(int(k), ".safetensors")), framework="numpy") as f:
            keys = list(f.keys())
            for r in rows:
                prefix = f"{r['index']}/"
                arrays = {key[len(prefix):]: f.get_tensor(key) for key in keys if key.startswith(prefix)}
                yield r["index"], Explanation.from_arrays(json.loads(r["meta"]), arrays)
                count += 1
                if limit is not None and count >= limit:
                    return


def load_explanation(folder: str | os.PathLike, index: int) -> Explanation:
    """The explanation of sample ``index`` from an explain-dataset folder."""
    for i, ex in iter_explanations(folder):
        if i == index:
            return ex
    raise InputError(f"{str(folder)!r} holds no explanation of sample {index}: see its index.jsonl")


def _manifest(folder: Path) -> dict[str, Any]:
    from mmlens.runs.store import MANIFEST, _read_manifest

    if not (folder / MANIFEST).is_file():
        raise InputError(f"{str(folder)!r} holds no run: pass the --out folder of `mmlens explain-dataset`")
    return _read_manifest(folder / MANIFEST)


def contact_sheet(store: RunStore, path: Path, limit: int) -> Path | None:
    """A PNG grid of the first ``limit`` explanations' overlays (whole-answer map of image 0)."""
    from matplotlib.figure import Figure

    from mmlens.viz.overlay import overlay

    items = list(iter_explanations(store.folder, limit))
    if not items:
        return None
    cols = min(4, len(items))
    rows = (len(items) + cols - 1) // cols
    fig = Figure(figsize=(2.6 * cols, 2.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (index, ex) in zip(axes, items):
        overlay(ex.images[0], ex.image_map(0, 0), ax)
        ax.set_title(f"#{index}: {ex.answer[:24]}", fontsize=8)
    for ax in axes[len(items):]:
        ax.axis("off")
    fig.suptitle(f"{ex.method}: first {len(items)} explanations", fontsize=9)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90), suffixes=(".png",))
