"""The ``mmlens`` command line (typer + rich). Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from mmlens.errors import MMLensError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Explain and interpret multimodal LLMs.")
console = Console(stderr=True)

ModelOpt = typer.Option("demo", "--model", "-m", help="HF id, local folder, or 'demo' (the bundled model)")
AnswerOpt = typer.Option(None, "--answer", help="teacher-force this answer instead of the model's own")
LayersOpt = typer.Option(None, "--layers", help="comma-separated layer indices (default: all)")


def cli_errors(fn: Callable) -> Callable:
    """Turn mmlens errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MMLensError as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _layers(text: str | None) -> list[int] | None:
    from mmlens.errors import InputError

    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--layers {text!r}: pass comma-separated integers, e.g. 0,1,2") from None


def _outputs(out: Path, default_stem: str) -> tuple[Path, Path]:
    """(png, json) paths for ``--out``; both are checked before any work is done."""
    from mmlens.errors import InputError

    png = out if out.suffix.lower() == ".png" else out / f"{default_stem}.png" if out.is_dir() else None
    if png is None:
        raise InputError(f"--out {str(out)!r}: pass a .png path (a .json is written beside it) or a folder")
    if not png.parent.exists():
        raise InputError(f"folder {str(png.parent)!r} does not exist: create it or choose another --out")
    return png, png.with_suffix(".json")


def _batch(model: str, image: Path, prompt: str, answer: str | None):
    import mmlens
    from mmlens.core.images import to_rgb

    to_rgb(str(image))  # a bad image fails before the model is loaded
    subject = mmlens.load(model)
    batch = subject.prepare(str(image), prompt, answer=answer) if answer else subject.generate(str(image), prompt).batch
    console.print(f"answer: [bold]{batch.answer}[/]", highlight=False)
    return subject, batch


def _write(result: Any, png: Path, js: Path) -> None:
    result.save(js)
    result.save(png)
    print(png)
    print(js)


@app.command("methods")
@cli_errors
def methods_cmd() -> None:
    """List every method as the survey's tree, with its access tier."""
    from rich.tree import Tree

    from mmlens.core.registry import methods

    tree = Tree("mmlens methods (survey leaf / method \\[access tier])")
    nodes: dict[str, Any] = {}
    for m in methods():
        node = tree
        path = ""
        for part in m.leaf.split("/"):
            path = f"{path}/{part}"
            if path not in nodes:
                nodes[path] = node.add(part)
            node = nodes[path]
        node.add(f"[bold]{m.name}[/] [dim]\\[{m.tier}][/] {m.summary}")
    Console().print(tree)


@app.command("explain")
@cli_errors
def explain_cmd(
    image: Path = typer.Argument(..., help="image file"),
    prompt: str = typer.Argument(..., help="question or instruction"),
    model: str = ModelOpt,
    method: str = typer.Option("relevancy", "--method", help="attribution method (see `mmlens methods`)"),
    target: str | None = typer.Option(None, "--target", help="answer word/phrase, 'answer', or 'red - blue' (default: every token)"),
    answer: str | None = AnswerOpt,
    option: list[str] = typer.Option([], "--option", "-O", help="method option as key=value (repeatable), e.g. -O steps=32"),
    out: Path = typer.Option(Path("explanation.png"), "--out", "-o", help=".png, .html, .json or .safetensors"),
) -> None:
    """Explain which pixels and prompt words made each answer token."""
    import mmlens
    from mmlens.core.images import to_rgb
    from mmlens.core.registry import get_method
    from mmlens.core.results import SUFFIXES
    from mmlens.errors import InputError

    if out.suffix.lower() not in SUFFIXES:
        raise InputError(f"--out {str(out)!r}: use a file name ending in {', '.join(SUFFIXES)}")
    if not out.parent.is_dir():
        raise InputError(f"folder {str(out.parent)!r} does not exist: create it or choose another --out")
    get_method(method)  # unknown methods fail before the model loads
    options = dict(_option(o) for o in option)
    to_rgb(str(image))
    subject = mmlens.load(model)
    ex = mmlens.explain(subject, str(image), prompt, method=method, target=target, answer=answer, **options)
    console.print(f"answer: [bold]{ex.answer}[/]  targets: {', '.join(ex.targets)}", highlight=False)
    print(ex.save(out))


def _option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as int, float, bool or string."""
    from mmlens.errors import InputError

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--option {text!r}: pass key=value, e.g. --option steps=32")
    for cast in (int, float):
        try:
            return key.strip(), cast(raw)
        except ValueError:
            pass
    return key.strip(), {"true": True, "false": False}.get(raw.lower(), raw)


@app.command("lens")
@cli_errors
def lens_cmd(
    image: Path = typer.Argument(..., help="image file"),
    prompt: str = typer.Argument(..., help="question or instruction"),
    model: str = ModelOpt,
    answer: str | None = AnswerOpt,
    target: str | None = typer.Option(None, "--target", help="word whose probability to track (default: first answer token)"),
    layers: str | None = LayersOpt,
    out: Path = typer.Option(Path("lens.png"), "--out", "-o", help="PNG path; the JSON goes beside it"),
) -> None:
    """Logit lens over layers x positions (image tokens included)."""
    from mmlens.layer.logit_lens import logit_lens

    png, js = _outputs(out, "lens")
    subject, batch = _batch(model, image, prompt, answer)
    _write(logit_lens(subject, batch, target=target, layers=_layers(layers)), png, js)


@app.command("trace")
@cli_errors
def trace_cmd(
    image: Path = typer.Argument(..., help="image file"),
    prompt: str = typer.Argument(..., help="question or instruction"),
    model: str = ModelOpt,
    answer: str | None = AnswerOpt,
    component: str = typer.Option("resid", "--component", help="resid | attn | mlp"),
    corrupt_image: Path | None = typer.Option(None, "--corrupt-image", help="corrupt with this image instead of noise"),
    noise_scale: float = typer.Option(3.0, "--noise-scale"),
    batch_size: int = typer.Option(32, "--batch-size"),
    out: Path = typer.Option(Path("trace.png"), "--out", "-o", help="PNG path; the JSON goes beside it"),
) -> None:
    """Causal tracing: restore clean activations per (layer, position) in a corrupted run."""
    from mmlens.layer.causal_trace import causal_trace

    png, js = _outputs(out, "trace")
    subject, batch = _batch(model, image, prompt, answer)
    kwargs = {"corrupt": "image", "corrupt_with": str(corrupt_image)} if corrupt_image else {"noise_scale": noise_scale}
    grid = causal_trace(subject, batch, component=component, batch_size=batch_size,
                        show_progress=sys.stderr.isatty(), **kwargs)
    _write(grid, png, js)


@app.command("knockout")
@cli_errors
def knockout_cmd(
    image: Path = typer.Argument(..., help="image file"),
    prompt: str = typer.Argument(..., help="question or instruction"),
    model: str = ModelOpt,
    answer: str | None = AnswerOpt,
    window: int | None = typer.Option(None, "--window", help="layers per window (default: all layers at once)"),
    out: Path = typer.Option(Path("knockout.png"), "--out", "-o", help="PNG path; the JSON goes beside it"),
) -> None:
    """Attention knockout between image, question and last positions."""
    from mmlens.layer.attention_knockout import attention_knockout

    png, js = _outputs(out, "knockout")
    subject, batch = _batch(model, image, prompt, answer)
    _write(attention_knockout(subject, batch, window=window), png, js)


@app.command("benchmark")
@cli_errors
def benchmark_cmd(
    model: str = ModelOpt,
    methods: str = typer.Option("all", "--methods", help="'all' or comma-separated attribution methods, each optionally with options, e.g. all,occlusion:regions=slic"),
    n: int = typer.Option(200, "--n", help="samples (ShapesVQA, or the first n rows of --data)"),
    seed: int = typer.Option(0, "--seed", help="seed of the ShapesVQA samples and of every random choice"),
    data: Path | None = typer.Option(None, "--data", help="JSONL of image, question, answer, mask or box"),
    out: Path = typer.Option(Path("benchmark"), "--out", "-o", help="folder for results.csv/.json/.md and curves.png"),
    sanity_n: int = typer.Option(5, "--sanity-n", help="samples that also get the randomisation and robustness checks"),
    metrics: str = typer.Option("all", "--metrics", help="'all' or comma-separated metric names"),
    cells: int = typer.Option(8, "--cells", help="deletion / insertion grid: cells x cells patches"),
) -> None:
    """Score attribution methods and baselines on ground-truth data (table + CSV, JSON, Markdown, curves PNG)."""
    import shlex

    from mmlens.evaluation.benchmark import resolve_metrics, run_benchmark
    from mmlens.evaluation.benchmark_result import OUTPUT_FILES

    chosen = {m.name for m in resolve_metrics(metrics)}
    curve_options = {mode: {"cells": cells} for mode in ("deletion", "insertion") if mode in chosen}
    args = ["--model", model, "--methods", methods, "--n", str(n), "--seed", str(seed), "--sanity-n", str(sanity_n)]
    args += (["--data", str(data)] if data is not None else []) + (["--metrics", metrics] if metrics != "all" else [])
    args += (["--cells", str(cells)] if cells != 8 else []) + ["--out", str(out)]
    # every argument (methods, metrics, options, data file, --out) is checked before the model is loaded
    result = run_benchmark(model, methods=methods, n=n, seed=seed, data=data, metrics=metrics, out=out,
                           sanity_n=sanity_n, metric_options=curve_options, show_progress=sys.stderr.isatty(),
                           command="mmlens benchmark " + " ".join(shlex.quote(a) for a in args))
    Console(width=None if sys.stdout.isatty() else 200).print(result.table())
    for line in result.failures():
        console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    for name in OUTPUT_FILES:
        print(out / name)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
