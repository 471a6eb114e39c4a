"""``make demo``: the bundled model answers ShapesVQA questions, and mmlens shows what it looked at.

    python -m mmlens.demo [--n-eval 200] [--out demo_out]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

import mmlens
from mmlens.data import ShapesVQA
from mmlens.errors import MMLensError

console = Console()

#: ShapesVQA seed of the samples the demo shows (never used in training).
DEMO_SEED = 7


def show_answers(subject: mmlens.Subject, n: int = 6) -> list:
    samples = list(ShapesVQA(image_size=64, seed=DEMO_SEED).samples(n))
    table = Table(title="demo model on ShapesVQA (held-out seed)")
    for col in ("question", "truth", "model", ""):
        table.add_column(col)
    for s in samples:
        answer = subject.generate(s.image, s.question, max_new_tokens=3).text
        table.add_row(s.question, s.answer, answer, "ok" if answer.split()[:1] == [s.answer] else "MISS")
    console.print(table)
    return samples


def show_accuracy(subject: mmlens.Subject, n: int) -> None:
    from mmlens.demo.train import evaluate

    result = evaluate(subject.model, subject.processor, n=n)
    per_type = ", ".join(f"{k} {v:.1%}" for k, v in result.items() if k not in ("overall", "n"))
    console.print(f"accuracy on {result['n']} fresh samples: [bold]{result['overall']:.1%}[/] ({per_type})")


def show_geometry(subject: mmlens.Subject, sample) -> None:
    batch = subject.prepare(sample.image, sample.question)
    geo = batch.geometry[0]
    grid = geo.grids[0]
    console.print(
        f"image geometry: {geo.n_tokens} image tokens at positions {int(geo.positions[0])}..{int(geo.positions[-1])} "
        f"of {batch.seq_len}, grid {grid.shape[0]}x{grid.shape[1]} over pixel box {tuple(round(x) for x in grid.box)}; "
        f"cell (0,0) covers pixels {tuple(round(x) for x in grid.cell_box(0, 0))}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmlens.demo", description=__doc__)
    ap.add_argument("--n-eval", type=int, default=200, help="fresh samples for the accuracy line")
    ap.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for the explanation files")
    args = ap.parse_args(argv)
    try:
        subject = mmlens.load("demo")
        console.print(f"loaded {subject!r}")
        samples = show_answers(subject)
        show_accuracy(subject, args.n_eval)
        show_geometry(subject, samples[0])
        write_explanation(subject, next(s for s in samples if s.evidence == "object"), args.out)
    except MMLensError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        return 2
    return 0


def write_explanation(subject: mmlens.Subject, sample, out: Path) -> None:
    """Explain one sample's answer with the method the benchmark trusts most on this model (occlusion over
    superpixels) and with relevancy (one backward); write each as PNG + HTML and say where its peak lies."""
    out.mkdir(parents=True, exist_ok=True)
    from mmlens.evaluation.metrics.pointing_game import pointing_game

    for name, method, options in (("occlusion_slic", "occlusion", {"regions": "slic"}), ("relevancy", "relevancy", {})):
        ex = mmlens.explain(subject, sample.image, sample.question, method=method, **options)
        path = ex.save(out / f"{name}.png")
        ex.save(out / f"{name}.html")
        hit = pointing_game(ex.image_map(), sample.mask, tolerance=2)
        console.print(f"{name} explanation of {ex.answer!r} for {sample.question!r}: {path} "
                      f"(peak {'inside' if hit else 'outside'} the evidence object)")


if __name__ == "__main__":
    sys.exit(main())
