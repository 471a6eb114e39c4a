"""The SAE Must-show numbers on the demo LLaVA and ShapesVQA, one command:

    PYTHONPATH=src python benchmarks/sae_demo.py --out benchmarks/sae_demo.json

A TopK SAE on one residual stream (trained on ShapesVQA seed 0, every position of prompt + answer), measured on
held-out samples (seed 1): explained variance, L0, dead fraction, CE recovered (answer cross-entropy with the
reconstruction spliced in at every position vs zero ablation), layer 0 by default. Monosemanticity: for each of the 5 colours and 3
shapes, the feature with the best AUROC for "this image patch belongs to an object of that colour / shape"
(chosen on half of the held-out images, AUROC on the other half), next to the best of d_sae random directions
chosen the same way, and the median random direction.
Clamping: "what color is the ...?" questions (seed 2) whose answer is not red, the "red" feature clamped on the
evidence object's image patches at 1x / 2x / 3x its largest activation on red patches; share of answers that
become "red", vs the same-norm random direction.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import mmlens
from mmlens.data.shapes_vqa import COLORS, SHAPES, ShapesVQA
from mmlens.model.positions import object_cells
from mmlens.neuron.sae import ce_recovered, reconstruction_metrics, train_sae
from mmlens.neuron.sae.features import feature_acts, match_concepts
from mmlens.neuron.sae.intervene import generate_with_feature
from mmlens.runs.sae_run import activation_tensors, collect_sae_activations, collect_tokens

MULTIPLIERS = (1.0, 2.0, 3.0)


def clamp_study(lm, sae, feature: int, top: float, n: int, seed: int) -> dict:
    """Share of non-red colour answers that turn "red" with the feature clamped at ``m * top`` (``top``: its largest
    activation on red patches) on the evidence object's patches, vs the same-norm random direction."""
    counts = {"none": 0, **{f"{mode}_x{m:g}": 0 for m in MULTIPLIERS for mode in ("clamp", "random")}}
    used = 0
    for s in ShapesVQA(seed=seed, question_types=("color",)).samples(n):
        if s.answer == "red":
            continue
        batch = lm.prepare(s.image, s.question, answer=s.answer)
        target = [o for o in s.objects if o["color"] == s.answer and o["shape"] in s.question]
        pos = sorted(c["position"] for c in object_cells(batch, target[:1]) if c["shares"][0] >= 0.25)
        pos = pos or batch.image_positions().tolist()
        used += 1
        counts["none"] += lm.generate(s.image, s.question, max_new_tokens=2).text == "red"
        for m in MULTIPLIERS:
            for mode in ("clamp", "random"):
                out = generate_with_feature(lm, s.image, s.question, sae, feature, mode, m * top, positions=pos,
                                            max_new_tokens=2, seed=used)
                counts[f"{mode}_x{m:g}"] += out.text == "red"
    return {"questions": used, "max_red_activation": round(top, 3),
            **{f"red_share_{k}": round(v / max(used, 1), 4) for k, v in counts.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--train", type=int, default=1500, help="training samples (seed 0)")
    ap.add_argument("--eval", type=int, default=300, help="held-out samples (seed 1)")
    ap.add_argument("--clamp-n", type=int, default=200, help="colour questions for the clamp study (seed 2)")
    ap.add_argument("--d-sae", type=int, default=256)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/sae_demo.json")
    ap.add_argument("--save", default=None, help="folder to save the SAE in (SAELens format)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    lm = mmlens.load(args.model)
    hook = f"lm.blocks.{args.layer}.resid_post"
    tmp = tempfile.TemporaryDirectory(prefix="sae-demo-")
    reader = collect_sae_activations(lm, ShapesVQA(seed=0).samples(args.train), hook, Path(tmp.name) / "train")
    run = train_sae(activation_tensors(reader, hook), d_sae=args.d_sae, k=args.k, epochs=args.epochs, batch_size=512,
                    seed=0, hook_name=hook, meta={"model": args.model})
    if args.save:
        from mmlens.neuron.sae import save_sae

        save_sae(run.sae, args.save)
    held = list(ShapesVQA(seed=1).samples(args.eval))
    rec = reconstruction_metrics(run.sae, activation_tensors(collect_sae_activations(lm, held, hook,
                                                                                  Path(tmp.name) / "held"), hook))
    ce = ce_recovered(lm, run.sae, held, hook)
    table = collect_tokens(lm, held, hook, positions="image")
    matches = match_concepts(run.sae, table, [*COLORS, *SHAPES], seed=0)
    red = next(m for m in matches if m.concept == "red")
    red_acts = feature_acts(run.sae, table)[table.labels["red"], red.feature]
    clamp = clamp_study(lm, run.sae, red.feature, float(red_acts.max()), args.clamp_n, seed=2)
    result = {
        "command": ("PYTHONPATH=src python benchmarks/sae_demo.py " + (f"--layer {args.layer}" if args.layer != 0 else "")).strip(),
        "hook": hook, "d_sae": args.d_sae, "k": args.k, "train_samples": args.train, "train_activations": run.activations,
        "train_seconds": round(run.seconds, 1), "train_activations_per_s": round(run.throughput),
        "reconstruction": {k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()},
        "ce": {k: round(v, 4) if isinstance(v, float) else v for k, v in ce.items()},
        "concepts": [m.to_dict() for m in matches],
        "concepts_at_least_0.95": sum(m.auroc >= 0.95 for m in matches),
        "clamp_red": clamp, "seconds": round(time.time() - t0, 1),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{hook}: EV {rec['explained_variance']:.3f}  L0 {rec['l0']:.1f}  dead {rec['dead_fraction']:.3f}  "
          f"CE recovered {ce['ce_recovered']:.3f} (clean {ce['ce_clean']:.3f}, SAE {ce['ce_sae']:.3f}, zero {ce['ce_zero']:.3f})")
    print("| concept | feature | AUROC | best random direction | median random direction |\n|---|---|---|---|---|")
    for m in matches:
        print(f"| {m.concept} | {m.feature} | {m.auroc:.3f} | {m.random_auroc:.3f} | {m.random_median:.3f} |")
    print(f">= 0.95: {result['concepts_at_least_0.95']} of {len(matches)}")
    print(f"clamp 'red' (feature {red.feature}): {clamp}")
    print(f"{result['seconds']} s")


if __name__ == "__main__":
    main()
