"""``mmlens pope``: POPE object probing (the command; :mod:`mmlens.evaluation.pope` does the work).

Kept out of :mod:`mmlens.cli` (which registers it) so each module stays small.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer


def pope_cmd(
    model: str = typer.Option("demo", "--model", "-m", help="HF id, local folder, 'demo' or 'demo:VARIANT'"),
    n: int = typer.Option(100, "--n", help="ShapesVQA images (or the first n rows of --data)"),
    negatives: str = typer.Option("all", "--negatives", help="'all' or comma-separated: random, popular, adversarial"),
    data: Path | None = typer.Option(None, "--data", help="JSONL of image, question, answer (yes / no) per line"),
    split: str = typer.Option("standard", "--split", help="ShapesVQA split of the images, e.g. cooccur-train"),
    seed: int = typer.Option(0, "--seed", help="seed of the ShapesVQA images and of the random negatives"),
    per_image: int = typer.Option(3, "--per-image", help="present objects probed per image (as many negatives)"),
    out: Path = typer.Option(Path("pope"), "--out", "-o", help="folder for pope.json, pope.md and pope.png"),
) -> None:
    """POPE object-hallucination probing: accuracy, precision, recall, F1 and yes-ratio per negative setting."""
    from mmlens.evaluation.pope import OUTPUT_FILES, run_pope

    args = ["--model", model, "--n", str(n), "--negatives", negatives, "--seed", str(seed)]
    args += (["--data", str(data)] if data is not None else ["--split", split])
    args += (["--per-image", str(per_image)] if per_image != 3 else []) + ["--out", str(out)]
    result = run_pope(model, n=n, negatives=negatives, seed=seed, split=split, data=data, per_image=per_image,
                      out=out, show_progress=sys.stderr.isatty(),
                      command="mmlens pope " + " ".join(shlex.quote(a) for a in args))
    print(result.to_markdown())
    for name in OUTPUT_FILES:
        print(out / name)
