"""``mmlens probe``: linear / MLP probes per layer x position group with control tasks (the command;
:func:`mmlens.runs.probe_run.run_probes` does the work). Kept out of :mod:`mmlens.cli`, which registers it."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from mmlens.cli_options import ModelVariantOpt

_POINT = typer.Option("lm.blocks.*.resid_post", "--point", help="hook point(s): a name, a glob or a comma list")
_GROUP = typer.Option("object", "--group", help="positions: object (its image tokens), image, question or answer")
_PROPERTY = typer.Option("color", "--property", help="color, shape, present, location, question_type, answer, "
                                                     "a metadata column, or the name of --labels' label")
_LABELS = typer.Option(None, "--labels", help="CSV / JSONL of index,label rows (sample index -> label)")
_N = typer.Option(300, "--n", help="ShapesVQA samples (or the first n rows of --data)")
_DATA = typer.Option(None, "--data", help="JSONL / image folder / Parquet instead of ShapesVQA")
_SEED = typer.Option(0, "--seed", help="seed of the ShapesVQA samples")
_SEEDS = typer.Option(5, "--seeds", help="seeded train / val / test splits by image (seeds 0..N-1)")
_KINDS = typer.Option("logistic,ridge,mlp", "--kinds", help="probe kinds: logistic, ridge, mlp")
_CONTROL = typer.Option(True, "--control/--no-control", help="Hewitt & Liang control task (selectivity)")
_CONTROL_TYPE = typer.Option("object", "--control-type", help="control types: object (colour + shape) or "
                                                              "object+cell (with the token's grid cell)")
_RANDOMISED = typer.Option(False, "--randomised", help="also probe a copy of the model with randomised weights")
_POOL = typer.Option("token", "--pool", help="token (one row per token) or mean (one row per sample)")
_FLOAT16 = typer.Option(False, "--float16", help="store the collected activations as float16")
_CHECKPOINTS = typer.Option(None, "--checkpoints", help="a training run's --checkpoint-dir: layer x checkpoint maps "
                                                         "of probe accuracy, selectivity and the logit lens")
_OUT = typer.Option(Path("probes"), "--out", "-o", help="folder for probes.json, layer_curve.png, activations/")


def probe_cmd(
    model: str = ModelVariantOpt,
    point: str = _POINT,
    group: str = _GROUP,
    prop: str = _PROPERTY,
    labels: Path | None = _LABELS,
    n: int = _N,
    data: Path | None = _DATA,
    seed: int = _SEED,
    seeds: int = _SEEDS,
    kinds: str = _KINDS,
    control: bool = _CONTROL,
    control_type: str = _CONTROL_TYPE,
    randomised: bool = _RANDOMISED,
    pool: str = _POOL,
    float16: bool = _FLOAT16,
    out: Path = _OUT,
    checkpoints: Path | None = _CHECKPOINTS,
) -> None:
    """Probe a property at every hook point: accuracy, control-task accuracy and selectivity (JSON + PNG)."""
    from rich.console import Console

    from mmlens.probing.result import JSON, PLOT
    from mmlens.runs.probe_run import run_probes

    args = ["--model", model, "--point", point, "--group", group, "--property", prop, "--n", str(n)]
    args += (["--labels", str(labels)] if labels else []) + (["--data", str(data)] if data else [])
    args += ["--seed", str(seed), "--seeds", str(seeds), "--kinds", kinds]
    args += ([] if control else ["--no-control"]) + (["--control-type", control_type] if control_type != "object"
                                                     else [])
    args += (["--randomised"] if randomised else []) + (["--pool", pool] if pool != "token" else [])
    args += (["--float16"] if float16 else []) + ["--out", str(out)]
    if checkpoints is not None:
        from mmlens.runs.checkpoint_probe import JSON as CJSON
        from mmlens.runs.checkpoint_probe import PLOT as CPLOT
        from mmlens.runs.checkpoint_probe import probe_checkpoints

        args = ["--checkpoints", str(checkpoints), *args[2:]]
        probe_checkpoints(checkpoints, point, group, prop, n, out, kinds=kinds, seeds=seeds, seed=seed,
                          show_progress=sys.stderr.isatty(),
                          command="mmlens probe " + " ".join(shlex.quote(a) for a in args))
        for name in (CJSON, CPLOT):
            print(out / name)
        return
    result = run_probes(model, point, group, prop, n, out, data=data, seed=seed, labels=labels, kinds=kinds,
                        seeds=seeds, control=control, control_type=control_type, randomised=randomised, pool=pool,
                        dtype="float16" if float16 else "float32", show_progress=sys.stderr.isatty(),
                        command="mmlens probe " + " ".join(shlex.quote(a) for a in args))
    Console(width=None if sys.stdout.isatty() else 200, highlight=False).print(result.table(), markup=False)
    for name in (JSON, PLOT):
        print(out / name)
