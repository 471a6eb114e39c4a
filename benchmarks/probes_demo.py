"""Probes on the demo LLaVA and ShapesVQA (issue 15): colour of the evidence object from its image tokens at
every hook point, against Hewitt & Liang's control task, on the trained and on randomised weights.

Run from the repository root::

    python -m benchmarks.probes_demo [--n 300] [--seeds 10] [--out benchmarks/probes_demo]

Prints (and writes to OUT/table.md) one table per control-type definition; the layer curves are in
OUT/object/layer_curve.png and OUT/object+cell/layer_curve.png. Held-out test sets: seeds 0..seeds-1 of the
60/20/20 split by image.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

POINTS = "projector.out,lm.blocks.*.resid_post"


def main() -> None:
    import torch

    import mmlens
    from mmlens.runs.probe_run import run_probes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/probes_demo"))
    parser.add_argument("--select", default="selectivity", choices=("accuracy", "selectivity"),
                        help="regularisation rule: best validation accuracy, or Hewitt & Liang's most selective "
                        "setting with validation accuracy >= 0.95")
    args = parser.parse_args()
    torch.set_num_threads(1)
    subject = mmlens.load("demo")
    lines = []
    for control_type, kinds, randomised in (("object", "logistic,ridge,mlp", True), ("object+cell", "logistic,ridge", False)):
        start = time.perf_counter()
        result = run_probes(subject, POINTS, "object", "color", n=args.n, out=args.out / control_type, kinds=kinds,
                            seeds=args.seeds, control_type=control_type, randomised=randomised, show_progress=True,
                            select=args.select)
        best = result.best("logistic")
        lines += [f"### control types: {control_type} ({time.perf_counter() - start:.0f} s)", "",
                  f"{result.info['rows']} object-token rows of {result.info['images']} images, classes "
                  f"{result.info['class_counts']}, chance (majority) {result.chance:.3f}; best logistic layer: "
                  f"{best['point']} accuracy {best['accuracy']:.3f}, selectivity {best.get('selectivity', 0):.3f}", "",
                  result.table(), ""]
    text = "\n".join(lines)
    print(text)
    (args.out / "table.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
