"""One attention layer at LLaVA-NeXT length: eager autograd vs the row-chunked recompute, in one process.

    python -m benchmarks.attention_chunks_layer [--positions 2940 --heads 12 --head-dim 64 --repeats 3]

Both compute the attention output, its backward (dQ, dK, dV) and the attention-gradient methods' reduction
``mean_heads(relu(dtarget/dA * A))`` for every row, with a causal mask. Prints, per variant, the bytes autograd
keeps between forward and backward (``saved_tensors_hooks``: exact, what the row chunks remove) and the time,
variants alternating so the machine's load hits both alike; then the ratios chunked / eager.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mmlens.hooks.attention import AttentionCall
from mmlens.hooks.attention_chunks import RowChunks, row_chunked_attention


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--positions", type=int, default=2940)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rows", type=int, default=None, help="rows per chunk (default: the methods' 32 MiB budget)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, h, d = args.positions, args.heads, args.head_dim
    rows = args.rows or max(1, 32 * 2**20 // (h * n * 4))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, n, d, generator=gen, requires_grad=True) for _ in range(3))
    pos = torch.arange(n)
    mask = torch.zeros(1, 1, n, n).masked_fill(pos[None] > pos[:, None], torch.finfo(torch.float32).min)
    grad_out = torch.randn(1, n, h, d, generator=gen)
    scale = d**-0.5

    def eager() -> tuple:
        p = torch.softmax(q @ k.transpose(-1, -2) * scale + mask, -1)
        out = (p @ v).transpose(1, 2)
        return out, lambda: torch.autograd.grad(out, (q, k, v, p), grad_out)[3].mul(p.detach()).clamp_min(0).mean(1)

    def chunked() -> tuple:
        reduced = []
        plan = RowChunks(rows, lambda s, p, dp: reduced.append((dp * p).clamp_min(0).mean(1)), lambda: None)
        out = row_chunked_attention(AttentionCall(None, q, k, mask, scale, True, 0, 0, False), v, plan)
        return out, lambda: (torch.autograd.grad(out, (q, k, v), grad_out), torch.cat(reduced, 1))[1]

    kept, times = {}, {"eager": [], "chunked": []}
    for _ in range(args.repeats):
        for name, fn in (("eager", eager), ("chunked", chunked)):
            saved: list[torch.Tensor] = []
            start = time.perf_counter()
            with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t) or t, lambda t: t):
                _, backward = fn()
            kept[name] = sum({t.data_ptr(): t.numel() * t.element_size() for t in saved}.values())
            backward()
            times[name].append(time.perf_counter() - start)
    print(f"one layer: {n} positions, {h} heads x {d}, causal, {rows} rows per chunk, {args.threads} thread(s)")
    for name, seconds in times.items():
        print(f"{name:8s} kept for backward {kept[name] / 2**20:8.1f} MiB, forward+backward+reduction "
              f"{statistics.median(seconds):.2f} s (median of {args.repeats})")
    print(f"chunked / eager: kept {kept['chunked'] / kept['eager']:.3f}x, "
          f"time {statistics.median(times['chunked']) / statistics.median(times['eager']):.2f}x")


if __name__ == "__main__":
    main()
