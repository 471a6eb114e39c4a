"""Cost of explaining every answer token on a mid-size random LLaVA, as ratios measured in one run.

    python -m benchmarks.attribution_cost [--layers 12 --hidden 768 --image-size 336 --answer-len 10]

Each measurement runs in a fresh subprocess (peak memory is then that of one job alone):
- attention methods (raw attention, for every answer token from one forward) vs a plain forward: time and
  peak memory (goal <= 1.2x time, <= 1.3x memory);
- relevancy for every answer token vs one plain forward + backward: peak memory (goal <= 1.5x);
- Integrated Gradients through mmlens vs calling Captum directly on the same function: time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from benchmarks.common import image, median_time, mid_llava, peak_memory_mb

MODES = ("forward", "attention", "forward_backward", "relevancy", "ig_mmlens", "ig_captum")


def run_one(mode: str, args: argparse.Namespace) -> dict:
    import mmlens
    from mmlens.model.targets import resolve_targets

    torch.manual_seed(0)
    subject = mid_llava(args.layers, args.hidden, args.image_size, device=args.device)
    answer = " ".join(["red", "green", "blue", "circle", "square", "triangle", "yellow", "shape", "object", "image"][: args.answer_len])
    img = image(args.image_size)
    batch = subject.prepare(img, "what color is the shape?", answer=answer)
    steps = args.ig_steps

    def forward() -> None:
        with torch.no_grad():
            subject.forward(batch)

    def forward_backward() -> None:
        target = resolve_targets(subject.tokenizer, batch, "answer")[0]
        target.value(subject.forward(batch), batch).sum().backward()
        subject.model.zero_grad(set_to_none=True)

    def explain(method: str, **options) -> None:
        mmlens.explain(subject, img, batch.prompt, method=method, answer=answer, **options)

    def ig_captum() -> None:
        from captum.attr import IntegratedGradients

        from mmlens.attribution.captum_gradients import (
            baseline_embeddings,
            embedding_function,
            input_embeddings,
        )

        pos = batch.image_positions()
        x = input_embeddings(subject, batch)[:, pos].detach()
        base = baseline_embeddings(subject, batch, pos, "black").detach()
        for target in resolve_targets(subject.tokenizer, batch, None):
            IntegratedGradients(embedding_function(subject, batch, target, pos)).attribute(
                x, baselines=base, n_steps=steps, internal_batch_size=steps)

    fns = {
        "forward": forward,
        "attention": lambda: explain("attention"),
        "forward_backward": forward_backward,
        "relevancy": lambda: explain("relevancy"),
        "ig_mmlens": lambda: explain("integrated_gradients", steps=steps, internal_batch_size=steps, baseline="black"),
        "ig_captum": ig_captum,
    }
    fn = fns[mode]
    fn()  # warm-up
    memory = peak_memory_mb(fn, args.device)
    seconds = median_time(fn, repeats=args.repeats, warmup=0)
    return {"mode": mode, "seconds": seconds, "peak_mb": memory, "seq_len": batch.seq_len,
            "image_tokens": int(batch.image_positions().numel()), "answer_tokens": int(batch.answer_ids.numel())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--image-size", type=int, default=336)
    ap.add_argument("--answer-len", type=int, default=10)
    ap.add_argument("--ig-steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    ap.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    started = time.time()
    results = {}
    for mode in [m for m in MODES if m in args.modes.split(",")]:
        cmd = [sys.executable, "-m", "benchmarks.attribution_cost", "--one", mode, *sys.argv[1:]]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[mode] = json.loads(out)
        r = results[mode]
        print(f"{mode:17s} {r['seconds']:8.3f}s  peak +{r['peak_mb']:8.1f} MB", flush=True)
    r = results
    first = next(iter(r.values()))
    print(f"\nmodel: {args.layers} layers, hidden {args.hidden}, {first['image_tokens']} image tokens, "
          f"{first['seq_len']} positions, {first['answer_tokens']} answer tokens, {args.device}")
    if {"forward", "attention"} <= set(r):
        fwd, att = r["forward"], r["attention"]
        print(f"attention (all answer tokens) / plain forward: time {att['seconds'] / fwd['seconds']:.2f}x "
              f"(goal <= 1.2), peak memory {att['peak_mb'] / fwd['peak_mb']:.2f}x (goal <= 1.3)")
    if {"forward_backward", "relevancy"} <= set(r):
        rel, fb = r["relevancy"], r["forward_backward"]
        print(f"relevancy (all answer tokens) / forward+backward: peak memory {rel['peak_mb'] / fb['peak_mb']:.2f}x "
              f"(goal <= 1.5), time {rel['seconds'] / fb['seconds']:.2f}x")
    if {"ig_mmlens", "ig_captum"} <= set(r):
        ratio = r["ig_mmlens"]["seconds"] / r["ig_captum"]["seconds"]
        print(f"integrated gradients mmlens / direct Captum: time {ratio:.2f}x (goal <= 1.0)")
    print(f"(total {time.time() - started:.0f}s)")


if __name__ == "__main__":
    main()
