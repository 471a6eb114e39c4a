"""The CLI's dataset commands: ``mmlens benchmark`` and ``mmlens explain-dataset``, with the engine flags they
share (``--engine local|ray``, ``--address``, ``--replicas``, ``--gpus-per-replica``): the same command runs on
a laptop, on one multi-GPU machine and on a Ray cluster, only the flags change."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from mmlens.cli_options import (
    AddressOpt,
    EngineOpt,
    GpusOpt,
    ModelOpt,
    ReplicasOpt,
    RunDataOpt,
    RunNOpt,
    ShardSizeOpt,
    StrictOpt,
)
from mmlens.errors import InputError

console = Console(stderr=True)


def _engine_args(engine: str, address: str | None, replicas: int, gpus: float) -> list[str]:
    """The engine flags as given (for the 'Regenerate with' line), and checked before any work."""
    from mmlens.runs.engine import check_engine

    check_engine(engine, replicas, gpus, address)
    if engine == "ray":
        from mmlens.runs.ray_engine import check_address, import_ray

        check_address(address)
        import_ray()
        return ["--engine", "ray", "--replicas", str(replicas)] + (["--address", address] if address else []) + \
            (["--gpus-per-replica", f"{gpus:g}"] if gpus else [])
    return []


def check_run_args(out: Path, n: int | None, data: str | Path | None, engine: str, address: str | None,
                   replicas: int, gpus: float) -> None:
    """A dataset run's options, checked before the model loads (a missing or unreadable dataset fails here)."""
    from mmlens.runs.sources import open_source
    from mmlens.util.io import check_output_folder
    from mmlens.util.limits import MAX_SAMPLES
    from mmlens.util.options import check_int

    if n is not None:
        check_int("--n", n, 1, MAX_SAMPLES)
    check_output_folder(out, "--out")
    _engine_args(engine, address, replicas, gpus)
    if data is not None:
        open_source(data, n=n)


def benchmark_cmd(
    model: str = ModelOpt,
    methods: str = typer.Option("all", "--methods", help="'all' or comma-separated attribution methods, each optionally with options, e.g. all,occlusion:regions=slic"),
    n: int = typer.Option(200, "--n", help="samples (ShapesVQA, or the first n rows of --data)"),
    seed: int = typer.Option(0, "--seed", help="seed of the ShapesVQA samples and of every random choice"),
    data: Path | None = typer.Option(None, "--data", help="JSONL of image, question, answer, mask or box"),
    out: Path = typer.Option(Path("benchmark"), "--out", "-o", help="folder for results.csv/.json/.md and curves.png"),
    sanity_n: int | None = typer.Option(None, "--sanity-n", help="samples that also get the randomisation and robustness checks (default 5; planted suite: 30)"),
    metrics: str = typer.Option("all", "--metrics", help="'all' or comma-separated metric names"),
    cells: int = typer.Option(8, "--cells", help="deletion / insertion grid: cells x cells patches"),
    engine: str = EngineOpt,
    address: str | None = AddressOpt,
    replicas: int = ReplicasOpt,
    gpus_per_replica: float = GpusOpt,
    keep_shards: bool = typer.Option(False, "--keep-shards", help="keep the per-sample Parquet shards in OUT/.run"),
    suite: str = typer.Option("default", "--suite", help="default (one model) or planted (every planted-evidence demo variant, scored against the evidence the model really uses)"),
    variants: str | None = typer.Option(None, "--variants", help="planted suite: comma-separated variants (default: every shipped one)"),
) -> None:
    """Score attribution methods and baselines on ground-truth data (table + CSV, JSON, Markdown, curves PNG);
    --suite planted: against the evidence each planted demo variant really uses (+ leaderboard PNG / SVG)."""
    from mmlens.evaluation.benchmark import resolve_metrics, run_benchmark
    from mmlens.evaluation.benchmark_result import OUTPUT_FILES
    from mmlens.evaluation.planted import check_suite
    from mmlens.util.io import check_output_folder
    from mmlens.util.limits import MAX_SAMPLES
    from mmlens.util.options import check_int

    check_int("--n", n, 1, MAX_SAMPLES)
    sanity_n = (30 if suite == "planted" else 5) if sanity_n is None else sanity_n
    check_int("--sanity-n", sanity_n, 0, MAX_SAMPLES)
    check_int("--seed", seed, 0, 2**63 - 1)
    check_output_folder(out, "--out")  # named as the CLI spells it (run_benchmark checks it again as "out")
    flags = _engine_args(engine, address, replicas, gpus_per_replica)
    if check_suite(suite) == "planted":
        _planted(model, methods, n, seed, data, out, sanity_n, metrics, cells, variants, flags,
                 {"engine": engine, "address": address, "replicas": replicas, "gpus_per_replica": gpus_per_replica,
                  "keep_shards": keep_shards})
        return
    if variants is not None:
        raise InputError("--variants chooses planted variants: pass it with --suite planted")
    chosen = {m.name for m in resolve_metrics(metrics)}
    curve_options = {mode: {"cells": cells} for mode in ("deletion", "insertion") if mode in chosen}
    args = ["--model", model, "--methods", methods, "--n", str(n), "--seed", str(seed), "--sanity-n", str(sanity_n)]
    args += (["--data", str(data)] if data is not None else []) + (["--metrics", metrics] if metrics != "all" else [])
    args += (["--cells", str(cells)] if cells != 8 else []) + ["--out", str(out)] + flags
    # every argument (methods, metrics, options, data file, --out) is checked before the model is loaded
    result = run_benchmark(model, methods=methods, n=n, seed=seed, data=data, metrics=metrics, out=out,
                           sanity_n=sanity_n, metric_options=curve_options, show_progress=sys.stderr.isatty(),
                           command="mmlens benchmark " + " ".join(shlex.quote(a) for a in args), engine=engine,
                           address=address, replicas=replicas, gpus_per_replica=gpus_per_replica,
                           keep_shards=keep_shards)
    Console(width=None if sys.stdout.isatty() else 200).print(result.table())
    for line in result.failures():
        console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    for name in OUTPUT_FILES:
        print(out / name)


def _planted(model: str, methods: str, n: int, seed: int, data: Path | None, out: Path, sanity_n: int, metrics: str,
             cells: int, variants: str | None, flags: list[str], engine: dict[str, Any]) -> None:
    """``mmlens benchmark --suite planted``: the suite's metrics default to the cheap ones (localisation, ROAD,
    randomisation); every argument is checked before any model loads."""
    from mmlens.evaluation.benchmark import resolve_metrics, run_benchmark
    from mmlens.evaluation.planted import DEFAULT_METRICS, OUTPUT_FILES, resolve_variants

    chosen_metrics = DEFAULT_METRICS if metrics == "all" else metrics
    chosen = {m.name for m in resolve_metrics(chosen_metrics)}
    if data is None:
        resolve_variants(variants)
    curve_options = {mode: {"cells": cells} for mode in ("deletion", "insertion") if mode in chosen}
    args = ["--suite", "planted", "--model", model, "--methods", methods, "--n", str(n), "--seed", str(seed),
            "--sanity-n", str(sanity_n)] + (["--variants", variants] if variants else [])
    args += (["--data", str(data)] if data is not None else []) + (["--metrics", metrics] if metrics != "all" else [])
    args += (["--cells", str(cells)] if cells != 8 else []) + ["--out", str(out)] + flags
    result = run_benchmark(model, suite="planted", variants=variants, methods=methods, n=n, seed=seed, data=data,
                           metrics=chosen_metrics, out=out, sanity_n=sanity_n, metric_options=curve_options,
                           show_progress=sys.stderr.isatty(),
                           command="mmlens benchmark " + " ".join(shlex.quote(a) for a in args), **engine)
    for res in [result.reference, *result.variants.values()]:
        if res is not None:
            Console(width=None if sys.stdout.isatty() else 200).print(res.table())
            for line in res.failures():
                console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    for name in OUTPUT_FILES:
        print(out / name)


def explain_dataset_cmd(
    data: str | None = RunDataOpt,
    method: str = typer.Option(..., "--method", help="attribution method (see `mmlens methods`)"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder: manifest, shards, index.jsonl, contact_sheet.png"),
    model: str = ModelOpt,
    n: int | None = RunNOpt,
    seed: int = typer.Option(0, "--seed", help="seed of ShapesVQA and of every random choice"),
    target: str = typer.Option("answer", "--target", help="'answer' (whole answer) or an answer word"),
    answer: str = typer.Option("given", "--answer", help="given (the data's answer when it has one) or model"),
    option: list[str] = typer.Option([], "--option", "-O", help="method option key=value (repeatable)"),
    sheet: int = typer.Option(16, "--sheet", help="overlays on the contact sheet (0: none)"),
    shard_size: int = ShardSizeOpt,
    strict: bool = StrictOpt,
    engine: str = EngineOpt,
    address: str | None = AddressOpt,
    replicas: int = ReplicasOpt,
    gpus_per_replica: float = GpusOpt,
) -> None:
    """Explain every sample of a dataset (resumable: re-run the same command after a crash)."""
    from mmlens.cli import _option
    from mmlens.runs.explain_job import INDEX, SHEET, explain_dataset
    check_run_args(out, n, data, engine, address, replicas, gpus_per_replica)
    options: dict[str, Any] = dict(_option(o) for o in option)
    run = explain_dataset(model, data, method, out, n=n if n is not None or data is not None else 100, seed=seed,
                          target=target, answer=answer, options=options, sheet=sheet, strict=strict,
                          engine=engine, shard_size=shard_size, show_progress=sys.stderr.isatty(),
                          replicas=replicas, gpus_per_replica=gpus_per_replica, address=address)
    for failure in run.failures():
        console.print(f"[yellow]skipped:[/] {escape(failure['error'])}", highlight=False, soft_wrap=True)
    print(out / INDEX)
    if (out / SHEET).exists():
        print(out / SHEET)
    if run.failures():
        print(out / "failures.jsonl")


def register(app: typer.Typer) -> None:
    """Add the dataset commands to the CLI."""
    app.command("benchmark")(benchmark_cmd)
    app.command("explain-dataset")(explain_dataset_cmd)
