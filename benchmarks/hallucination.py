"""Hallucination on the demo variants that hallucinate by construction: how well each per-token grounding
signal detects it, and what each mitigation does to it (issue 14).

For each variant (``demo:cooccur``, ``demo:prior``):

1. Detection: ``mmlens.generate_explained`` on its trap split and on its present-control split; every answer
   token is labelled hallucinated / grounded (``hallucinated_words``); the AUROC of each signal (oriented so
   that "less grounded" scores higher, fixed in advance, no flipping) on the trap split alone and on trap +
   control (where "yes" is both grounded and hallucinated, so a signal cannot just recognise the word "yes"),
   with a random-score baseline row.
2. Mitigation: hallucination rate on the trap split (answers holding a hallucinated word), accuracy on the
   present control (a method that just says "no" would fail there) and on the neutral split, before and after each decoding option (a small sweep of each, all reported). The
   steering vector is the mean difference, at the middle layer's last prompt position, between grounded and
   hallucinated cases of a separate sample set (trap split and neutral absent-object questions, seed 500).

    python -m benchmarks.hallucination --n 200 --out benchmarks/hallucination.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from mmlens.data.shapes_splits import hallucinated_words
from scipy.stats import rankdata

import mmlens
from mmlens.data import TRAP_SPLITS, ShapesVQA
from mmlens.inference.result import SIGNALS

SEED = 0


def auroc(scores: list[float], labels: list[bool]) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (Mann-Whitney, ties counted half); nan if one class."""
    y = np.asarray(labels, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def labelled_tokens(lm, samples, split: str) -> list[dict]:
    rows = []
    for s in samples:
        r = mmlens.generate_explained(lm, s.image, s.question, max_new_tokens=4)
        words = [t.strip() for t in r.tokens]
        labels = hallucinated_words(s.question, s.answer, s.objects, " ".join(words))
        if len(labels) != len(words):
            continue
        for j, label in enumerate(labels):
            rows.append({"split": split, "token": words[j], "hallucinated": bool(label),
                         **{n: r.hallucination_scores(n)[j] for n in SIGNALS}})
    return rows


def detection(lm, variant: str, n: int) -> list[str]:
    trap = labelled_tokens(lm, ShapesVQA(split=TRAP_SPLITS[variant], seed=SEED).samples(n), "trap")
    ctrl = labelled_tokens(lm, ShapesVQA(split=f"{variant}-present", seed=SEED).samples(n), "present")
    rng = np.random.default_rng(SEED)
    lines = ["| signal | AUROC trap split | AUROC trap + present control |", "|---|---:|---:|"]
    for name in [*SIGNALS, "random"]:
        cells = []
        for rows in (trap, trap + ctrl):
            scores = rng.random(len(rows)).tolist() if name == "random" else [r[name] for r in rows]
            cells.append(f"{auroc(scores, [r['hallucinated'] for r in rows]):.3f}")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    h = sum(r["hallucinated"] for r in trap)
    lines.append(f"\nTokens: trap {len(trap)} ({h} hallucinated), present control {len(ctrl)} "
                 f"({sum(r['hallucinated'] for r in ctrl)} hallucinated).")
    return lines


def rates(lm, trap, control, neutral, **options) -> tuple[float, float, float]:
    """(hallucination rate on the trap split, accuracy on the present control, accuracy on neutral)."""
    def answer(s):
        return mmlens.generate_with(lm, s.image, s.question, 4, **options).text

    halluc = sum(any(hallucinated_words(s.question, s.answer, s.objects, answer(s))) for s in trap)
    return (halluc / len(trap), sum(answer(s) == s.answer for s in control) / len(control),
            sum(answer(s) == s.answer for s in neutral) / len(neutral))


def steering(lm, variant: str, n: int) -> tuple[mmlens.SteeringVector | None, str]:
    layer = lm.n_layers // 2
    grounded, hallucinated = [], []
    pool = list(ShapesVQA(split=TRAP_SPLITS[variant], seed=500).samples(n))
    pool += [s for s in ShapesVQA(split="neutral", seed=500).samples(3 * n)
             if s.question.startswith("is there") and s.answer == "no"][:n]
    for s in pool:
        out = lm.generate(s.image, s.question, max_new_tokens=4)
        bad = any(hallucinated_words(s.question, s.answer, s.objects, out.text))
        (hallucinated if bad else grounded if out.text == s.answer else []).append(lm.prepare(s.image, s.question))
    counts = f"{len(grounded)} grounded / {len(hallucinated)} hallucinated cases"
    if not hallucinated or not grounded:
        return None, counts
    return mmlens.steering_vector(lm, grounded, hallucinated, layer), counts


def mitigation(lm, variant: str, n: int) -> list[str]:
    trap = list(ShapesVQA(split=TRAP_SPLITS[variant], seed=SEED).samples(n))
    control = list(ShapesVQA(split=f"{variant}-present", seed=SEED).samples(n))
    neutral = list(ShapesVQA(split="neutral", seed=SEED).samples(n))
    vec, counts = steering(lm, variant, n)
    settings = [("none", {})]
    settings += [(f"VCD alpha={a} beta=0.1 noise", {"vcd": mmlens.VCD(a, 0.1)}) for a in (1.0, 3.0)]
    settings += [(f"VCD alpha={a} beta=0.1 remove", {"vcd": mmlens.VCD(a, 0.1, "remove")}) for a in (1.0, 3.0)]
    settings += [(f"PAI alpha={a} all layers", {"pai": mmlens.PAI(a)}) for a in (1.0, 4.0)]
    if vec is not None:
        settings += [(f"steering layer {vec.layer} scale={s}", {"steering": mmlens.Steering(vec, s)})
                     for s in (1.0, 2.0)]
    lines = ["| decoding | hallucination rate (trap) | accuracy (present control) | neutral accuracy |",
             "|---|---:|---:|---:|"]
    for name, options in settings:
        h, ctrl, acc = rates(lm, trap, control, neutral, **options)
        lines.append(f"| {name} | {h:.3f} | {ctrl:.3f} | {acc:.3f} |")
    lines.append(f"\nSteering vector from {counts} (seed 500: trap split + neutral absent-object questions)"
                 + ("" if vec is not None else ": none built, steering not run") + ".")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="samples per split")
    parser.add_argument("--variants", default="cooccur,prior")
    parser.add_argument("--model", default=None, help="score this model on every variant's splits (default demo:VARIANT)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/hallucination.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    text = ["# Hallucination: detection and mitigation on the demo variants\n",
            f"Command: `python -m benchmarks.hallucination {' '.join(shlex.quote(a) for a in sys.argv[1:])}`\n"]
    for variant in args.variants.split(","):
        name = args.model or f"demo:{variant}"
        lm = mmlens.load(name)
        part = [f"## {name} on the {variant} splits\n", "Per-token detection:\n", *detection(lm, variant, args.n), "",
                "Mitigations:\n", *mitigation(lm, variant, args.n), ""]
        print("\n".join(part), flush=True)
        text += part
    text.append(f"({time.time() - start:.0f} s on one thread)")
    args.out.write_text("\n".join(text) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
