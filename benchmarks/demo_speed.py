"""Seconds per explanation on the bundled demo model, per gradient method: the benchmark table's
"s / explanation" column measured alone (median over ShapesVQA samples, the dataset's answer, one thread).
Also prints the process CPU seconds (the fastest repeat's), which other load on a shared machine disturbs
less than wall time. Any registered method name works (e.g. ``pixel_integrated_gradients,pixel_smoothgrad``).

    python -m benchmarks.demo_speed [--n 20 --methods saliency,relevancy,...]

Run it on two checkouts (``PYTHONPATH=<checkout>/src``) to compare before / after.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mmlens
from mmlens.data.shapes_vqa import ShapesVQA

METHODS = ("saliency", "input_x_gradient", "gradcam", "integrated_gradients", "smoothgrad", "attention_x_gradient",
           "relevancy")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="runs per sample; the fastest counts")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--answer", default=None, help="explain this answer instead of the dataset's (e.g. a long one)")
    ap.add_argument("--target-batch", type=int, default=None, help="target_batch for the gradient methods")
    args = ap.parse_args()
    options = {} if args.target_batch is None else {"target_batch": args.target_batch}
    torch.set_num_threads(1)
    lm = mmlens.load("demo")
    samples = list(ShapesVQA(seed=args.seed).samples(args.n))
    for method in args.methods.split(","):
        mmlens.explain(lm, samples[0].image, samples[0].question, method=method, answer=samples[0].answer)  # warm-up
        times, cpu = [], []
        for s in samples:
            best = best_cpu = float("inf")
            for _ in range(args.repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                mmlens.explain(lm, s.image, s.question, method=method, answer=args.answer or s.answer, **options)
                best = min(best, time.perf_counter() - start)
                best_cpu = min(best_cpu, time.process_time() - start_cpu)
            times.append(best)
            cpu.append(best_cpu)
        print(f"{method:22s} {statistics.median(times):.4f} s / explanation (median of {len(times)}; CPU "
              f"{statistics.median(cpu):.4f} s)", flush=True)


if __name__ == "__main__":
    main()
