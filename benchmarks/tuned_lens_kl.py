"""Tuned lens vs logit lens on the demo model: KL(final distribution || lens at layer l) on held-out samples.

    python -m benchmarks.tuned_lens_kl [--model demo --n-train 300 --n-test 100 --lr 3e-3]

Trains translators on ShapesVQA seed 1000 (training data of the demo model), evaluates on samples spread over
the held-out seeds 0..9, and prints one row per layer (the last layer is the final distribution: KL 0).
"""

from __future__ import annotations

import argparse

import torch

import mmlens
from mmlens.data import ShapesVQA


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lm = mmlens.load(args.model)
    train = list(ShapesVQA(seed=1000).samples(args.n_train))
    held_out = [s for seed in range(10) for s in ShapesVQA(seed=seed).samples(args.n_test // 10)]
    lens = mmlens.train_tuned_lens(lm, train, lr=args.lr, show=False)
    plain, tuned = mmlens.lens_kl(lm, held_out), mmlens.lens_kl(lm, held_out, lens)
    print(f"{args.model}: {len(train)} training samples (seed 1000), {len(held_out)} held-out (seeds 0..9)")
    print("| layer | logit lens KL | tuned lens KL | tuned / logit |")
    print("|---:|---:|---:|---:|")
    for layer, (p, t) in enumerate(zip(plain, tuned, strict=True)):
        ratio = f"{t / p:.2f}" if p > 0 else "-"
        print(f"| {layer} | {p:.4f} | {t:.4f} | {ratio} |")


if __name__ == "__main__":
    main()
