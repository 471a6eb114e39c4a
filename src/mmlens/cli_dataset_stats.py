"""``mmlens dataset-stats neurons|heads|pruning``: dataset statistics as resumable dataset runs on any engine
(the engine flags of ``mmlens benchmark``). Each writes ``OUT/result.json`` beside the run's shards; heads and
pruning also write a PNG.

>>> # mmlens dataset-stats neurons --stat top_patches --layer 1 --neuron 7 --n 200 --out top/ --engine ray
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

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
from mmlens.cli_runs import check_run_args

stats_app = typer.Typer(no_args_is_help=True, help="Dataset statistics (neurons, heads, pruning) as resumable runs")

SeedOpt = typer.Option(0, "--seed", help="seed of ShapesVQA")
OutOpt = typer.Option(..., "--out", "-o", help="run folder: manifest, shards, result.json")


def _common(model: str, data: str | None, n: int | None, seed: int, out: Path, shard_size: int, strict: bool,
            engine: str, address: str | None, replicas: int, gpus: float) -> dict[str, Any]:
    """The shared options, checked before the model loads."""
    check_run_args(out, n, data, engine, address, replicas, gpus)
    return {"model": model, "out": out, "data": data, "n": n, "seed": seed, "shard_size": shard_size,
            "strict": strict, "engine": engine, "show_progress": sys.stderr.isatty(),
            **({"address": address, "replicas": replicas, "gpus_per_replica": gpus} if engine == "ray" else {})}


@stats_app.command("neurons")
def neurons_cmd(
    stat: str = typer.Option("top_patches", "--stat", help="top_patches (one neuron) or specificity (image vs text)"),
    layer: int = typer.Option(..., "--layer", help="LM block whose MLP neurons are read"),
    neuron: int | None = typer.Option(None, "--neuron", help="top_patches: the neuron index"),
    k: int = typer.Option(10, "--k", help="top_patches: how many patches"),
    model: str = ModelOpt, data: str | None = RunDataOpt, n: int | None = RunNOpt, seed: int = SeedOpt,
    out: Path = OutOpt, shard_size: int = ShardSizeOpt, strict: bool = StrictOpt, engine: str = EngineOpt,
    address: str | None = AddressOpt, replicas: int = ReplicasOpt, gpus_per_replica: float = GpusOpt,
) -> None:
    """Top-activating image patches of a neuron, or neuron specificity, over a dataset."""
    from mmlens.runs.stats_run import RESULT, run_neuron_stats

    common = _common(model, data, n, seed, out, shard_size, strict, engine, address, replicas, gpus_per_replica)
    run_neuron_stats(common.pop("model"), common.pop("out"), stat, layer=layer, neuron=neuron, k=k, **common)
    print(out / RESULT)


@stats_app.command("heads")
def heads_cmd(
    stats: str = typer.Option("image_share,ablation", "--stats", help="image_share and / or ablation"),
    layers: str | None = typer.Option(None, "--layers", help="comma-separated layers (default: all)"),
    model: str = ModelOpt, data: str | None = RunDataOpt, n: int | None = RunNOpt, seed: int = SeedOpt,
    out: Path = OutOpt, shard_size: int = ShardSizeOpt, strict: bool = StrictOpt, engine: str = EngineOpt,
    address: str | None = AddressOpt, replicas: int = ReplicasOpt, gpus_per_replica: float = GpusOpt,
) -> None:
    """Mean attention share on the image and mean ablation effect per head over a dataset."""
    from mmlens.cli import _layers
    from mmlens.runs.stats_run import RESULT, run_head_stats

    chosen = _layers(layers) if layers else None
    common = _common(model, data, n, seed, out, shard_size, strict, engine, address, replicas, gpus_per_replica)
    grids = run_head_stats(common.pop("model"), common.pop("out"), stats, layers=chosen, **common)
    print(out / RESULT)
    for name, grid in grids.items():
        print(grid.save(out / f"heads_{name}.png"))


@stats_app.command("pruning")
def pruning_cmd(
    ratios: str = typer.Option("0,0.1,0.25,0.5,0.75,0.9,1", "--ratios", help="shares of image tokens pruned"),
    after_layer: int = typer.Option(2, "--after-layer", help="prune from this layer on (FastV ranks one layer before)"),
    model: str = ModelOpt, data: str | None = RunDataOpt, n: int | None = RunNOpt, seed: int = SeedOpt,
    out: Path = OutOpt, shard_size: int = ShardSizeOpt, strict: bool = StrictOpt, engine: str = EngineOpt,
    address: str | None = AddressOpt, replicas: int = ReplicasOpt, gpus_per_replica: float = GpusOpt,
) -> None:
    """The mean FastV visual-token pruning curve over a dataset."""
    from mmlens.errors import InputError
    from mmlens.runs.stats_run import RESULT, run_pruning_curve

    try:
        values = [float(r) for r in ratios.split(",") if r.strip()]
    except ValueError:
        raise InputError(f"--ratios {ratios!r}: pass comma-separated numbers in [0, 1], e.g. 0,0.5,1") from None
    common = _common(model, data, n, seed, out, shard_size, strict, engine, address, replicas, gpus_per_replica)
    curve = run_pruning_curve(common.pop("model"), common.pop("out"), values, after_layer=after_layer, **common)
    print(out / RESULT)
    print(curve.save(out / "pruning.png"))
