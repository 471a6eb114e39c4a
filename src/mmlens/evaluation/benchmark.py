"""``mmlens benchmark``: score every attribution method (and three baselines) on data with known evidence.

For each sample (ShapesVQA at the model's input size, or the rows of a user data file) and each method, the
sample's ground-truth answer is teacher-forced and explained as a whole (target ``"answer"``), then scored:

- localisation metrics (pointing game, energy in mask, top-k IoU) on the samples whose evidence is one
  object (ShapesVQA "is there ...? no" samples have the whole image as evidence and are left out);
- complexity (sparseness) and faithfulness (deletion / insertion AUC) on every sample;
- the randomisation sanity check and max-sensitivity on the first ``sanity_n`` samples only (each costs
  several explanations per sample);
- seconds per explanation (the method's call only; the first, warm-up call per method is not timed).

Everything is streamed: running means and mean curves, so memory does not grow with ``n``. Every random choice
is seeded from ``seed`` (and the sample index), so two runs give the same table except for the timings.

>>> result = run_benchmark(mmlens.load("demo"), methods=["gradcam", "occlusion"], n=20)   # doctest: +SKIP
>>> result.rows[0]["method"], result.rows[0]["deletion"]                               # doctest: +SKIP
('gradcam', 0.21)
>>> result.save("bench/")                                                               # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmlens.errors import InputError
from mmlens.evaluation.benchmark_job import SANITY_CATEGORIES
from mmlens.evaluation.benchmark_result import BenchmarkResult, MethodStats
from mmlens.evaluation.method_spec import parse_method_spec
from mmlens.evaluation.registry import MetricInfo, get_metric
from mmlens.evaluation.registry import metrics as all_metrics
from mmlens.explain import _check_options as check_method_options
from mmlens.model.subject import Subject
from mmlens.util.io import check_output_folder
from mmlens.util.limits import MAX_SAMPLES
from mmlens.util.options import check_int

DEFAULT_IMAGE_SIZE = 64


# -- configuration checks ------------------------------------------------------------------------------------
def resolve_methods(methods: str | Sequence[str]) -> list[str]:
    """Method specs from ``"all"`` (every attribution method) or a list / comma-separated string of specs:
    method names, optionally with options (``"occlusion:regions=slic"``, see
    :func:`~mmlens.evaluation.method_spec.parse_method_spec`); ``"all"`` may also be one item of the list."""
    from mmlens.catalog import get_method
    from mmlens.catalog import methods as catalog

    every = [m.name for m in catalog(kind="attribution")]
    items = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else [str(m).strip() for m in methods]
    names = [n for item in items if item for n in (every if item == "all" else [item])]
    if not names:
        raise InputError("no methods given: pass 'all' or method names, e.g. gradcam,occlusion")
    out = []
    for spec in names:
        name, options = parse_method_spec(spec)
        info = get_method(name)  # unknown -> one-line InputError listing the methods
        if info.kind != "attribution":
            raise InputError(f"method {name!r} is an {info.kind} method, not an attribution method: choose from "
                             f"{', '.join(every)}")
        check_method_options(info, options)
        if spec not in out:
            out.append(spec)
    return out


def resolve_metrics(names: str | Sequence[str] | None) -> list[MetricInfo]:
    """``None`` / ``"all"``: every registered metric; else a list / comma-separated string of metric names."""
    if names is None or (isinstance(names, str) and names.strip() == "all"):
        return all_metrics()
    items = [m.strip() for m in names.split(",")] if isinstance(names, str) else [str(m).strip() for m in names]
    items = [m for m in items if m]
    if not items:
        raise InputError("no metrics given: pass 'all' or metric names, e.g. pointing_game,deletion")
    found = {get_metric(name).name: get_metric(name) for name in items}  # unknown -> one-line InputError
    return [m for m in all_metrics() if m.name in found]


def _check_options(methods: list[str], method_options: dict[str, dict[str, Any]] | None,
                   metric_list: list[MetricInfo], metric_options: dict[str, dict[str, Any]] | None) -> None:
    import inspect

    from mmlens.catalog import get_method

    for spec, opts in (method_options or {}).items():
        if spec not in methods:
            raise InputError(f"method_options names {spec!r}, which is not among the benchmarked methods "
                             f"({', '.join(methods)})")
        check_method_options(get_method(parse_method_spec(spec)[0]), dict(opts))
    chosen = {m.name: m for m in metric_list}
    for name, opts in (metric_options or {}).items():
        if name not in chosen:
            raise InputError(f"metric_options names {name!r}, which is not among the chosen metrics "
                             f"({', '.join(chosen)})")
        params = inspect.signature(chosen[name].fn).parameters
        unknown = sorted(set(opts) - set(params) - {"subject", "ex", "heat", "mask"})
        if unknown:
            offered = [p for p in params if p not in ("subject", "ex", "heat", "mask")]
            raise InputError(f"metric {name!r} has no option {unknown[0]!r}; its options: {', '.join(offered)}")
        _check_values(name, opts)


def _check_values(name: str, opts: dict[str, Any]) -> None:
    """Option values of the built-in model metrics, checked before the run (not once per sample)."""
    from mmlens.attribution.perturbation_masks import BASELINES
    from mmlens.perturb.scoring import check_int

    where = f" (metric {name!r})"
    if "cells" in opts:
        check_int("cells", opts["cells"], 1, 64, where)
    if opts.get("steps") is not None:
        check_int("steps", opts["steps"], 1, None, where)
    if "baseline" in opts and opts["baseline"] not in BASELINES:
        raise InputError(f"baseline={opts['baseline']!r}{where}: pass one of {', '.join(BASELINES)}")
    if "order" in opts and opts["order"] not in ("patch", "pixel"):
        raise InputError(f"order={opts['order']!r}{where}: pass patch or pixel")
    for key, low in (("n", 1), ("max_steps", 1), ("batch_size", 1)):
        if opts.get(key) is not None:
            check_int(key, opts[key], low, None, where)
    if "radius" in opts and not (isinstance(opts["radius"], (int, float)) and opts["radius"] > 0):
        raise InputError(f"radius={opts['radius']!r}{where}: pass an L-inf noise radius > 0")
    if "threshold" in opts and not (isinstance(opts["threshold"], (int, float)) and 0 < opts["threshold"] <= 1):
        raise InputError(f"threshold={opts['threshold']!r}{where}: pass a correlation in (0, 1]")


def shapes_image_size(subject: Subject) -> int:
    """The side of the square images the model sees (the image processor's crop size, else its size), within
    ShapesVQA's range."""
    from mmlens.data.shapes_vqa import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

    ip = getattr(subject.processor, "image_processor", None)
    side = None
    for attr, keys in (("crop_size", ("height", "width")), ("size", ("height", "width", "shortest_edge"))):
        value = getattr(ip, attr, None) if getattr(ip, f"do_{'center_crop' if attr == 'crop_size' else 'resize'}",
                                                  True) else None
        for key in keys:
            got = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
            if isinstance(got, int) and got > 0:
                side = got
                break
        if side:
            break
    return int(min(max(side or DEFAULT_IMAGE_SIZE, MIN_IMAGE_SIZE), MAX_IMAGE_SIZE))


# -- the run ------------------------------------------------------------------------------------------------
def run_benchmark(
    subject: Subject | str,
    methods: str | Sequence[str] = "all",
    n: int = 200,
    seed: int = 0,
    data: str | os.PathLike | None = None,
    metrics: str | Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    sanity_n: int = 5,
    method_options: dict[str, dict[str, Any]] | None = None,
    metric_options: dict[str, dict[str, Any]] | None = None,
    baselines: bool = True,
    show_progress: bool | None = None,
    command: str | None = None,
    *,
    engine: str = "local",
    replicas: int = 1,
    gpus_per_replica: float = 0,
    address: str | None = None,
    shard_size: int = 20,
    keep_shards: bool = False,
    suite: str = "default",
    variants: str | Sequence[str] | None = None,
    split: str = "standard",
    require_model_evidence: bool = False,
) -> Any:
    """Score ``methods`` (``"all"`` attribution methods, or a list) and the three baselines on ``n`` samples.

    ``data``: a JSONL file (see :mod:`mmlens.evaluation.data_file`; its first ``n`` rows), else ShapesVQA with
    ``seed`` at the model's input size. ``metrics``: names (default: every registered metric).
    ``sanity_n``: the randomisation and max-sensitivity metrics run on the first ``sanity_n`` samples only.
    ``method_options`` / ``metric_options``: ``{name: {option: value}}``. ``out``: a folder for results.csv,
    results.json, results.md and curves.png. Every argument is checked before any work is done; the files are
    written only when the whole run succeeded.

    The samples run through :func:`mmlens.runs.run_dataset` (``engine="local"`` or ``"ray"`` with ``replicas``,
    ``gpus_per_replica``, ``address``): per-sample results go to Parquet shards of ``shard_size`` samples in
    ``out/.run`` (a temporary folder without ``out``), so a run stopped by a crash continues from its last
    complete shard when re-run with the same arguments; the shards are removed once the tables are written,
    unless ``keep_shards``.

    ``suite="planted"``: every method on every planted-evidence demo variant (``variants``, default all shipped),
    scored against the evidence each model really uses (:func:`mmlens.evaluation.planted.run_planted`; returns a
    :class:`~mmlens.evaluation.planted.PlantedResult`). ``split``: the ShapesVQA split (default ``"standard"``);
    ``require_model_evidence``: every sample must carry a ``model_evidence`` mask (data files: one error line
    naming the file and row otherwise).
    """
    from mmlens.evaluation.planted import check_suite

    if check_suite(suite) == "planted":
        from mmlens.evaluation.planted import run_planted

        return run_planted(subject, methods=methods, n=n, seed=seed, variants=variants, data=data, metrics=metrics,
                           out=out, sanity_n=sanity_n, method_options=method_options,
                           metric_options=metric_options, baselines=baselines, show_progress=show_progress,
                           command=command, engine=engine, replicas=replicas, gpus_per_replica=gpus_per_replica,
                           address=address, shard_size=shard_size, keep_shards=keep_shards)
    if variants is not None:
        raise InputError("variants are chosen only with suite='planted' (pass suite='planted' or drop variants)")
    from mmlens.evaluation.benchmark_job import BenchmarkJob, reduce_rows
    from mmlens.evaluation.data_file import read_data_file
    from mmlens.runs.engine import check_engine, run_dataset
    from mmlens.runs.sources import DataFileSource, ShapesSource
    from mmlens.runs.store import cleanup_on_failure, temporary_folder

    n = check_int("n", n, 1, MAX_SAMPLES)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    sanity_n = check_int("sanity_n", sanity_n, 0, MAX_SAMPLES)
    check_engine(engine, replicas, gpus_per_replica, address)
    method_names = resolve_methods(methods)
    metric_list = resolve_metrics(metrics)
    _check_options(method_names, method_options, metric_list, metric_options)
    if out is not None:
        check_output_folder(out, "out")
    if engine == "ray":
        from mmlens.runs.ray_engine import check_address, import_ray

        check_address(address)
        import_ray()
    if split != "standard":
        from mmlens.data.shapes_splits import check_split

        check_split(split)
    data_file = read_data_file(data, model_evidence=require_model_evidence) if data is not None else None
    model = subject
    if isinstance(subject, str):
        from mmlens.model.loading import load

        subject = load(subject)
    if subject.adapter.dual_encoder:  # the samples' answers are teacher-forced: a dual encoder answers no question
        raise InputError(f"the benchmark explains each sample's answer to its question, and this {subject.family} "
                         "model is an image-text dual encoder, which answers none (its answer is the image-caption "
                         "match): benchmark an MLLM, or score a dual encoder's maps with mmlens.explain and the metrics "
                         "(deletion, insertion, road, randomisation)")

    if data_file is not None:
        source: Any = DataFileSource(data_file, int(n))
        n = len(source)
    else:
        source = ShapesSource(int(n), int(seed), shapes_image_size(subject), split)
    sanity_n = min(int(sanity_n), int(n))
    method_options = {m: {**_quiet(parse_method_spec(m)[0]), **parse_method_spec(m)[1],
                          **dict((method_options or {}).get(m, {}))} for m in method_names}
    metric_options = {k: dict(v) for k, v in (metric_options or {}).items()}
    job = BenchmarkJob(subject.model_id, method_names, method_options, [m.name for m in metric_list],
                       metric_options, int(seed), sanity_n, baselines)
    temp = temporary_folder() if out is None else None
    folder = Path(temp.name if temp is not None else out) / ".run"  # type: ignore[arg-type]
    try:
        with cleanup_on_failure(folder, out):
            run = run_dataset(job, source, model if engine == "ray" else subject, folder, engine=engine,
                              shard_size=shard_size, seed=int(seed), show_progress=show_progress, replicas=replicas,
                              gpus_per_replica=gpus_per_replica, address=address)
        counts: dict[str, int] = {}
        stats, n_loc = reduce_rows(run.iter_rows(), job.methods(), boot_seed=int(seed), counts=counts)
        result = _finish(subject, stats, metric_list, metric_options, int(n), n_loc, sanity_n, int(seed),
                         source.description, data, command, out, counts)
        if out is not None and not keep_shards:
            shutil.rmtree(folder, ignore_errors=True)
        return result
    finally:
        if temp is not None:
            temp.cleanup()


def _quiet(method: str) -> dict[str, Any]:
    """``progress=False`` for methods that draw their own progress bar (the benchmark draws one)."""
    import inspect

    from mmlens.catalog import get_method

    return {"progress": False} if "progress" in inspect.signature(get_method(method).fn).parameters else {}


def _finish(subject: Subject, stats: list[MethodStats], metric_list: list[MetricInfo],
            metric_options: dict[str, dict[str, Any]], n: int, n_loc: int, sanity_n: int, seed: int,
            description: str, data: Any, command: str | None, out: Any,
            counts: dict[str, int] | None = None) -> BenchmarkResult:
    from mmlens.evaluation.metrics.deletion_insertion import curve_points
    from mmlens.evaluation.metrics.randomisation import (
        cascade_blocks,
        unread_vision_blocks,
    )
    from mmlens.explain import versions

    threshold = float(metric_options.get("randomisation", {}).get("threshold", 0.5))
    names = {m.name for m in metric_list}
    rows = []
    for st in stats:
        row: dict[str, Any] = {"method": st.method, "kind": st.kind, "n": st.explained, "n_localisation": n_loc,
                               "n_sanity": st.sanity_checked if "randomisation" in names else sanity_n}
        for m in metric_list:
            row[m.name] = st.scores[m.name].mean if m.name in st.scores else float("nan")
        for name in st.scores:  # scores against the model's evidence, gaps, metric extras (e.g. road:drop)
            if name not in names:
                row[name] = st.scores[name].mean
        for name, boot in st.boots.items():
            row[f"{name}_ci"] = list(boot.interval())
        row["nan_counts"] = {m.name: st.scores[m.name].nan for m in metric_list if m.name in st.scores}
        row["scored"] = {m.name: st.scores[m.name].count for m in metric_list if m.name in st.scores}
        if "randomisation" in names:
            final = row["randomisation"]
            row["randomisation_pass_rate"] = (st.sanity_passes / st.sanity_checked if st.sanity_checked
                                              else float("nan"))
            row["sanity"] = "n/a" if math.isnan(final) else ("pass" if final < threshold else "fail")
        row["seconds_per_explanation"] = st.seconds.mean
        row["failures"] = st.failures
        if st.first_error:
            row["first_error"] = st.first_error
        rows.append(row)

    fractions = {}
    for mode in ("deletion", "insertion"):
        measured = [st.fractions[mode] for st in stats if mode in st.fractions]
        cells = int(metric_options.get(mode, {}).get("cells", 8))
        points = curve_points(cells * cells, metric_options.get(mode, {}).get("steps"))
        fractions[mode] = measured[0] if measured else [k / (cells * cells) for k in points]
    curves = {st.method: {mode: st.curves[mode].mean for mode in ("deletion", "insertion") if mode in st.curves}
              for st in stats}
    curves = {k: v for k, v in curves.items() if v}
    rand_steps = [name for name, _ in cascade_blocks(subject)]
    unread = unread_vision_blocks(subject)
    max_steps = metric_options.get("randomisation", {}).get("max_steps")
    if max_steps:
        rand_steps = rand_steps[: int(max_steps)]
    randomisation = {st.method: {"steps": rand_steps, "correlations": st.curves["randomisation"].mean}
                     for st in stats if "randomisation" in st.curves}
    metric_meta = [{"name": m.name, "category": m.category, "higher_is_better": m.higher_is_better,
                    "summary": m.summary, "degenerate": m.degenerate, "degenerate_note": m.degenerate_note,
                    "samples": "object" if m.category == "localisation" else
                    "sanity" if m.category in SANITY_CATEGORIES else "all",
                    "options": metric_options.get(m.name, {})} for m in metric_list]
    meta = {"model": subject.model_id, "family": subject.family, "n": n, "n_localisation": n_loc,
            "n_sanity": sanity_n, "seed": seed, "data": str(data) if data is not None else "ShapesVQA",
            "data_description": description, "randomisation_threshold": threshold,
            "methods": [st.method for st in stats if st.kind == "method"],
            "baselines": [st.method for st in stats if st.kind == "baseline"],
            "target": "answer (teacher-forced ground truth; probability = exp of the summed log-probs)",
            "randomisation_skipped": unread, "n_model_evidence": (counts or {}).get("model", 0),
            "n_conflict": (counts or {}).get("conflict", 0),
            "bootstrap": {"level": 0.95, "replicates": 1000, "seed": seed,
                          "kind": "Poisson bootstrap over samples (percentile interval of the mean)"},
            "command": command, "versions": versions()}
    result = BenchmarkResult(rows, metric_meta, curves, fractions, randomisation, meta)
    if out is not None:
        result.save(out)
    return result
