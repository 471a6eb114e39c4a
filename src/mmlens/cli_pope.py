"""``mmlens pope``: POPE object probing (the command; :mod:`mmlens.evaluation.pope` does the work).

Kept out of :mod:`mmlens.cli` (which registers it) so each module stays small.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from mmlens.cli_options import ModelVariantOpt
from mmlens.evaluation.pope import POPE_TEMPLATE

_N = typer.Option(100, "--n", help="ShapesVQA images (or the first n rows of --data)")
_NEGATIVES = typer.Option("all", "--negatives", help="'all' or comma-separated: random, popular, adversarial")
_DATA = typer.Option(None, "--data", help="JSONL: image and objects per line (or question and yes / no answer)")
_TEMPLATE = typer.Option(POPE_TEMPLATE, "--template", help="question for a --data file's objects; {} = the object")
_SPLIT = typer.Option("standard", "--split", help="ShapesVQA split of the images, e.g. cooccur-train")
_SEED = typer.Option(0, "--seed", help="seed of the ShapesVQA images and of the random negatives")
_PER_IMAGE = typer.Option(3, "--per-image", help="present objects probed per image (as many negatives)")
_OUT = typer.Option(Path("pope"), "--out", "-o", help="folder for pope.json, pope.md and pope.png")


def pope_cmd(
    model: str = ModelVariantOpt,
    n: int = _N,
    negatives: str = _NEGATIVES,
    data: Path | None = _DATA,
    split: str = _SPLIT,
    seed: int = _SEED,
    per_image: int = _PER_IMAGE,
    out: Path = _OUT,
    template: str = _TEMPLATE,
) -> None:
    """POPE object-hallucination probing: accuracy, precision, recall, F1 and yes-ratio per negative setting."""
    from mmlens.evaluation.pope import OUTPUT_FILES, run_pope

    args = ["--model", model, "--n", str(n)]
    args += ["--data", str(data), "--negatives", negatives, "--template", template] if data is not None else \
        ["--negatives", negatives, "--split", split, "--seed", str(seed)]
    args += (["--per-image", str(per_image)] if per_image != 3 else []) + ["--out", str(out)]
    result = run_pope(model, n=n, negatives=negatives, seed=seed, split=split, data=data, per_image=per_image,
                      out=out, show_progress=sys.stderr.isatty(), template=template,
                      command="mmlens pope " + " ".join(shlex.quote(a) for a in args))
    print(result.to_markdown())
    for name in OUTPUT_FILES:
        print(out / name)
