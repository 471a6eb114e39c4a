"""Which attribution method runs on which family: every registered method explains a two-token answer on every
MLLM family's tiny model, and a caption's image similarity on every dual encoder's (CLIP, SigLIP, SigLIP 2;
defaults, with cheap sample counts), and the result is written into the README's table.

    PYTHONPATH=src python docs/family_support.py            # rewrites the table between the README's markers
    PYTHONPATH=src python docs/family_support.py --check    # exit 1 when the README's table is out of date

A cell is "yes" when the method produced a finite, non-zero map with no hook left behind, else "refused: <the
method's one-line error>"; anything else (an unexpected exception) stops the script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import mmlens
from mmlens.testing import tiny_subject
from mmlens.testing.tiny_dual import DUAL_FAMILIES, tiny_dual_subject
from mmlens.testing.tiny_models import FAMILIES, tiny_images

#: every column of the table: the MLLM families, then the dual encoders
COLUMNS = (*FAMILIES, *DUAL_FAMILIES)

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- family-support:start -->", "<!-- family-support:end -->"
#: option values that keep the sampling methods quick on tiny models (the defaults are for real use)
CHEAP = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"nt_samples": 2}, "rise": {"n_masks": 16},
         "kernel_shap": {"n_samples": 16}, "lime": {"n_samples": 16}, "mm_shap": {"n_samples": 16},
         "pixel_integrated_gradients": {"steps": 4}, "pixel_smoothgrad": {"nt_samples": 2}}


def cell(subject: mmlens.Subject, family: str, method: str) -> str:
    dual = family in DUAL_FAMILIES
    prompt, answer = ("a red cat", None) if dual else ("what color is the cat ?", "red cat")
    try:
        ex = mmlens.explain(subject, tiny_images("llava" if dual else family), prompt, method=method, answer=answer,
                            **CHEAP.get(method, {}))
    except mmlens.InputError as err:
        return f"refused: {str(err).splitlines()[0]}"
    maps = np.stack([ex.image_map(t) for t in range(len(ex.targets))])
    scores = np.asarray(ex.extras.get("key_scores", ex.position_scores))  # key scores: cross-attention images
    ok = np.isfinite(maps).all() and np.abs(scores).max() > 0
    if not ok or mmlens.count_hooks(subject.model):
        raise AssertionError(f"{method} on {family}: empty or non-finite map, or hooks left")
    return "yes"


def table() -> str:
    methods = [m.name for m in mmlens.methods(kind="attribution")]
    rows = ["| method | " + " | ".join(f"`{f}`" for f in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    cells = {}
    for family in COLUMNS:
        subject = tiny_dual_subject(family) if family in DUAL_FAMILIES else tiny_subject(family)
        for method in methods:
            cells[family, method] = cell(subject, family, method)
            print(f"{family:16s} {method:22s} {cells[family, method]}", file=sys.stderr)
    notes = sorted({c for c in cells.values() if c != "yes"})
    for method in methods:
        marks = ["yes" if cells[f, method] == "yes" else f"no ({notes.index(cells[f, method]) + 1})" for f in COLUMNS]
        rows.append(f"| `{method}` | " + " | ".join(marks) + " |")
    rows += [""] + [f"({i}) {n}" for i, n in enumerate(notes, 1)] if notes else []
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare with the README")
    args = ap.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table()}\n{END}{tail}"
    if args.check:
        return 0 if new == text else 1
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
