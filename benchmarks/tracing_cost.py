"""Cost of tracing on a mid-size random LLaVA: capture overhead and the forward budget of a tracing grid.

    python benchmarks/tracing_cost.py [--layers 12 --hidden 768 --image-size 336 --batch 32]

Prints, from one run: (1) time of a forward capturing every layer's residual stream / a plain forward;
(2) forward passes of a full layers x positions causal-tracing grid vs the budget 1 + ceil(cells / batch);
(3) time per batched forward of an attention-knockout grid (one edit per batch row and layer) vs a plain
forward of the same batch.
"""

from __future__ import annotations

import argparse
import math

import torch

from benchmarks.common import ForwardCounter, image, median_time, mid_llava
from mmlens.layer.attention_knockout import attention_knockout
from mmlens.layer.causal_trace import causal_trace
from mmlens.model.batch import cat_inputs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--image-size", type=int, default=336)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--trace-layers", type=int, default=None, help="layers in the tracing grid (default all)")
    ap.add_argument("--skip-grid", action="store_true", help="only measure the capture overhead")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    subject = mid_llava(args.layers, args.hidden, args.image_size, dtype=getattr(torch, args.dtype), device=args.device)
    batch = subject.prepare(image(args.image_size), "what color is the circle?", answer="red")
    print(f"model: {args.layers} layers, hidden {args.hidden}, {batch.image_positions().numel()} image tokens, "
          f"{batch.seq_len} positions, {args.device} {args.dtype}")

    plain = median_time(lambda: subject.forward(batch), args.repeats)

    def captured() -> None:
        with subject.trace() as tr:
            tr.capture("lm.blocks.*.resid_post")
            subject.forward(batch)

    traced = median_time(captured, args.repeats)
    print(f"capture all {args.layers} residual streams: {traced:.3f}s vs plain {plain:.3f}s -> ratio {traced / plain:.3f} (goal <= 1.1)")

    if args.skip_grid:
        return
    layers = list(range(args.trace_layers)) if args.trace_layers else None
    with ForwardCounter(subject.model) as counter:
        grid = causal_trace(subject, batch, layers=layers, batch_size=args.batch)
    cells = grid.meta["cells"]
    budget = 1 + math.ceil(cells / args.batch)
    print(f"tracing grid: {cells} cells, batch {args.batch}: {counter.calls} forward passes "
          f"(budget 1 + ceil(cells/batch) = {budget}) -> {'OK' if counter.calls <= budget else 'OVER'}")
    _knockout(subject, batch, args)



def _knockout(subject, batch, args) -> None:
    grid = attention_knockout(subject, batch, window=1, batch_size=args.batch)  # warm-up, and the cell count
    rows = min(args.batch, grid.values.numel())
    stacked = cat_inputs([subject.model_inputs(batch)] * rows)
    plain = median_time(lambda: subject.model(**stacked, use_cache=False), max(1, args.repeats // 2))
    knocked = median_time(lambda: attention_knockout(subject, batch, window=1, batch_size=args.batch), 1, 0)
    cells = grid.values.numel()
    ratio = (knocked / cells) / (plain / rows)
    print(f"attention knockout: {cells} cells in batches of {rows}: {knocked / cells * 1e3:.1f} ms per cell vs "
          f"{plain / rows * 1e3:.1f} ms per row of a plain batched forward -> ratio {ratio:.2f}")

if __name__ == "__main__":
    main()
