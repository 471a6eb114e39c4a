"""Dataset statistics as dataset runs: neuron top patches / specificity, head statistics, pruning curves and the
SAE CE-recovered metric, on any engine, resumable.

Each statistic is a :class:`~mmlens.model.samples.SampleStat` of its method's module (one per-sample function,
one streaming reducer, shared with the in-memory functions such as
:func:`~mmlens.neuron.dataset.top_activating_patches`). Here a :class:`StatJob` runs the per-sample function on
every sample and stores its contribution (``shards/part-K.safetensors``, keys ``"{index}/{name}"``); at the end
the contributions are read back shard by shard, in sample order, and folded by the reducer, so the result equals
the in-memory function's on the same samples. ``OUT/result.json`` holds it.

>>> hits = run_neuron_stats("demo", "out/", "top_patches", layer=1, neuron=7, n=200)   # doctest: +SKIP
>>> grids = run_head_stats("demo", "heads/", n=100, engine="ray", replicas=2)           # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mmlens.errors import InputError
from mmlens.model.samples import SampleStat, sample_batch
from mmlens.runs.engine import Job, run_dataset, write_failures
from mmlens.runs.sources import ListSource, Source, open_source
from mmlens.runs.store import RunStore, cleanup_on_failure
from mmlens.util.io import atomic_write

RESULT = "result.json"
NEURON_STATS = ("top_patches", "specificity")
DEFAULT_N = 100


class StatJob(Job):
    """One :class:`SampleStat` per sample: a row per sample (``skipped`` when it contributes nothing) and its
    contribution's tensors."""

    name = "stats"

    def __init__(self, model: str, stat: SampleStat) -> None:
        self.model, self.stat = model, stat

    def config(self) -> dict[str, Any]:
        return {"model": self.model, **self.stat.config()}

    def schema(self) -> Any:
        import pyarrow as pa

        return pa.schema([("index", pa.int64()), ("where", pa.string()), ("skipped", pa.bool_())])

    def setup(self, subject: Any) -> Any:
        self.stat.check(subject)

    def process(self, subject: Any, state: Any, index: int, sample: Any, where: str) -> list[dict[str, Any]]:
        with torch.no_grad():
            batch = sample_batch(subject, sample, self.stat.answer)
            contribution = None if batch is None else self.stat.per_sample(subject, batch)
        row: dict[str, Any] = {"index": index, "where": where, "skipped": contribution is None}
        if contribution is not None:
            row["_tensors"] = {k: v.detach().cpu().contiguous().numpy() for k, v in contribution.items()}
        return [row]


def reduce_run(store: RunStore, stat: SampleStat, subject: Any) -> Any:
    """Fold the stored contributions of a finished run, shard by shard in sample order."""
    from safetensors import safe_open

    reducer = stat.reducer(subject)
    for k in sorted(store.manifest["shards"], key=int):
        rows = [r for r in store.iter_tables_of(int(k), ["index", "skipped"]) if not r["skipped"]]
        if not rows:
            continue
        with safe_open(str(store.shard_path(int(k), ".safetensors")), framework="pt") as f:
            keys = list(f.keys())
            for r in rows:
                prefix = f"{r['index']}/"
                reducer.add(int(r["index"]), {key[len(prefix):]: f.get_tensor(key) for key in keys
                                              if key.startswith(prefix)})
    return reducer.result()


def run_stat(stat: SampleStat, model: Any, out: str | os.PathLike, *, data: Any = None, n: int | None = None,
             seed: int = 0, shard_size: int = 50, engine: str = "local", strict: bool = False,
             show_progress: bool | None = None, **engine_options: Any) -> Any:
    """``stat`` over ``data`` (a path, see :func:`~mmlens.runs.sources.open_source`; a list of samples; a
    Source; ShapesVQA at the model's image size when None, ``n`` samples, default 100) as a dataset run in
    ``out`` (resumed when it holds the same run); returns the reduced result and writes ``OUT/result.json``."""
    subject = model
    if isinstance(model, str):
        from mmlens.model.loading import load

        subject = load(model)
    subject.require_language_model(f"the dataset statistic {stat.name}")  # every SampleStat reads the LM
    stat.check(subject)  # bad options fail before any folder is made
    source = _source(subject, data, n, seed)
    job = StatJob(subject.model_id, stat)
    with cleanup_on_failure(out):
        run = run_dataset(job, source, model if engine == "ray" else subject, out, engine=engine,
                          shard_size=shard_size, seed=seed, strict=strict, show_progress=show_progress,
                          **engine_options)
    result = reduce_run(run.store, stat, subject)
    write_failures(run, out)
    text = json.dumps({"stat": stat.config(), "model": subject.model_id, "data": source.spec,
                       "result": _jsonable(result)}, indent=1)
    atomic_write(Path(out) / RESULT, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return result


def run_neuron_stats(model: Any, out: str | os.PathLike, stat: str = "top_patches", *, layer: int,
                     neuron: int | None = None, k: int = 10, **run_options: Any) -> Any:
    """Top-activating image patches of ``neuron`` (``stat="top_patches"``: a list of
    :class:`~mmlens.neuron.dataset.PatchHit`) or image-vs-text specificity of every neuron of ``layer``'s MLP
    (``"specificity"``: a :class:`~mmlens.neuron.dataset.Specificity`) as a dataset run (see :func:`run_stat`)."""
    from mmlens.neuron.dataset import NeuronSpecificity, TopPatches
    from mmlens.util.options import check_choice

    check_choice("neuron statistic", stat, NEURON_STATS)
    if stat == "top_patches":
        if neuron is None:
            raise InputError("top_patches needs a neuron: pass neuron=INDEX (--neuron)")
        return run_stat(TopPatches(layer, neuron, k), model, out, **run_options)
    return run_stat(NeuronSpecificity(layer), model, out, **run_options)


def run_head_stats(model: Any, out: str | os.PathLike, stats: Sequence[str] = ("image_share", "ablation"), *,
                   layers: Sequence[int] | None = None, target: str = "answer", answer: str = "given",
                   **run_options: Any) -> Any:
    """Mean image-attention share and / or ablation effect per head (``{statistic: GridResult}``) as a dataset
    run (see :func:`run_stat`; in memory: :func:`~mmlens.layer.heads.dataset_head_stats`)."""
    from mmlens.layer.heads import HeadStats

    stats = [s.strip() for s in stats.split(",")] if isinstance(stats, str) else list(stats)
    return run_stat(HeadStats(stats, layers, target, answer), model, out, **run_options)


def run_pruning_curve(model: Any, out: str | os.PathLike, ratios: Sequence[float] | None = None, *,
                      after_layer: int = 2, **run_options: Any) -> Any:
    """The mean FastV pruning curve (a :class:`~mmlens.token.pruning.PruningCurve`) as a dataset run (see
    :func:`run_stat`; in memory: :func:`~mmlens.token.pruning.dataset_pruning_curve`)."""
    from mmlens.token.pruning import DEFAULT_RATIOS, PruningStat

    return run_stat(PruningStat(DEFAULT_RATIOS if ratios is None else ratios, after_layer), model, out,
                    **run_options)


def run_ce_recovered(model: Any, sae: Any, hook_name: str, out: str | os.PathLike, *, positions: str = "all",
                     answer: str = "given", **run_options: Any) -> dict[str, float]:
    """An SAE's CE recovered at ``hook_name`` as a dataset run (see :func:`run_stat`; in memory:
    :func:`~mmlens.neuron.sae.metrics.ce_recovered`). ``sae`` must pickle for ``engine="ray"``."""
    from mmlens.neuron.sae.metrics import CeRecovered

    return run_stat(CeRecovered(sae, hook_name, positions, answer), model, out, **run_options)


def _source(subject: Any, data: Any, n: int | None, seed: int) -> Source:
    if isinstance(data, Source):
        return data
    if data is not None and not isinstance(data, (str, os.PathLike)):
        items = list(data)
        return ListSource(items[:n] if n is not None else items)
    from mmlens.evaluation.benchmark import shapes_image_size

    if data is None:
        return open_source(None, n=DEFAULT_N if n is None else n, seed=seed, image_size=shapes_image_size(subject))
    return open_source(data, n=n, seed=seed)


def _jsonable(result: Any) -> Any:
    """The reduced result as JSON: dataclasses / result objects through their ``to_dict``."""
    from dataclasses import asdict, is_dataclass

    if hasattr(result, "to_dict"):
        return result.to_dict()
    if isinstance(result, dict):
        return {k: _jsonable(v) for k, v in result.items()}
    if isinstance(result, list):
        return [_jsonable(v) for v in result]
    if is_dataclass(result):
        return asdict(result)
    return result
