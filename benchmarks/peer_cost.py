"""Relevancy cost: mmlens beside the peers' rules (Chefer et al. 2021, LVLM-Interpret) on the same random
LLaVA and teacher-forced answer, as ratios measured in one run.

    python -m benchmarks.peer_cost [--layers 12 --hidden 768 --image-size 336 --answer-len 10 --repeats 3]
    python -m benchmarks.peer_cost --image-size 756 --layers 4 --repeats 0 --warmup 0   # 2,916 image tokens

Modes, each in a fresh subprocess with one intra-op thread (``--threads``), so each peak is one job alone:
``forward_backward`` (sdpa forward + backward of the whole answer's logits: the floor any gradient method
pays), ``mmlens`` (``mmlens.explain(..., method="relevancy")``, every answer token), ``chefer`` and
``lvlm_interpret`` (:mod:`benchmarks.peer_rules`: every layer's attention map and its gradient kept, the
full ``N x N`` recursion; same numbers as mmlens within 1e-5, tests/test_peer_rules.py). Reported: each
mode's median wall time, its process CPU time per call (steadier than wall time on a shared machine: one
thread), and peak memory over what is alive before it; peer / mmlens, and each / forward+backward.
``--repeats 0`` times the (single) memory-measuring call instead of separate repeats (for the long runs).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.attribution_cost import answer_words
from benchmarks.common import image, median_time, mid_llava, peak_memory_mb, run_fresh
from benchmarks.peer_rules import answer_targets, chefer_rows, lvlm_interpret_maps

MODES = ("forward_backward", "mmlens", "chefer", "lvlm_interpret")
PEERS = ("chefer", "lvlm_interpret")


def run_one(mode: str, args: argparse.Namespace) -> dict:
    import mmlens

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    subject = mid_llava(args.layers, args.hidden, args.image_size, device=args.device)
    answer = answer_words(args.answer_len)
    img = image(args.image_size)
    prompt = "what color is the shape?"
    batch = subject.prepare(img, prompt, answer=answer)
    targets = answer_targets(batch)
    model = subject.model
    if mode in PEERS:
        model.set_attn_implementation("eager")  # as both peers run their model
        if args.peer_params == "frozen":  # all but the token-embedding table, so that the graph still exists
            model.requires_grad_(False)
            model.get_input_embeddings().requires_grad_(True)

    def forward_backward() -> None:
        logits = subject.forward(batch)
        torch.stack([logits[0, q, t] for q, t in targets]).sum().backward()
        model.zero_grad(set_to_none=True)

    def peer(rule) -> None:
        rule(model, subject.model_inputs(batch), targets)
        model.zero_grad(set_to_none=True)

    fns = {
        "forward_backward": forward_backward,
        "mmlens": lambda: mmlens.explain(subject, img, prompt, method="relevancy", answer=answer),
        "chefer": lambda: peer(chefer_rows),
        "lvlm_interpret": lambda: peer(lvlm_interpret_maps),
    }
    fn = fns[mode]
    for _ in range(args.warmup):
        fn()
    start, cpu_start = time.perf_counter(), time.process_time()
    memory = peak_memory_mb(fn, args.device)
    once, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if args.repeats:
        cpu_start = time.process_time()
        seconds = median_time(fn, repeats=args.repeats, warmup=0)
        cpu = (time.process_time() - cpu_start) / args.repeats
    else:
        seconds = once
    return {"mode": mode, "seconds": seconds, "cpu_seconds": cpu, "peak_mb": memory, "seq_len": batch.seq_len,
            "image_tokens": int(batch.image_positions().numel()), "answer_tokens": len(targets)}


def report(r: dict, args: argparse.Namespace) -> None:
    first = next(iter(r.values()))
    print(f"\nmodel: random LLaVA, {args.layers} layers, hidden {args.hidden}, {first['image_tokens']} image tokens, "
          f"{first['seq_len']} positions, {first['answer_tokens']} answer tokens, {args.device}, {args.threads} "
          f"thread(s), peers' parameters {args.peer_params}")
    fb = r.get("forward_backward")
    for mode in [m for m in ("mmlens", *PEERS) if m in r]:
        m = r[mode]
        line = f"{mode:15s} {m['seconds']:9.2f} s (CPU {m['cpu_seconds']:9.2f} s)  +{m['peak_mb']:8.0f} MB"
        if fb:
            line += (f"   vs forward+backward: time {m['seconds'] / fb['seconds']:6.2f}x (CPU "
                     f"{m['cpu_seconds'] / fb['cpu_seconds']:6.2f}x), memory {m['peak_mb'] / fb['peak_mb']:5.2f}x")
        print(line)
    if "mmlens" in r:
        for peer in [p for p in PEERS if p in r]:
            p, m = r[peer], r["mmlens"]
            print(f"{peer} / mmlens: time {p['seconds'] / m['seconds']:.2f}x (CPU {p['cpu_seconds'] / m['cpu_seconds']:.2f}x), "
                  f"peak memory {p['peak_mb'] / m['peak_mb']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--image-size", type=int, default=336)
    ap.add_argument("--answer-len", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (0: time the memory-measuring call)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per measuring process")
    ap.add_argument("--peer-params", choices=("as_loaded", "frozen"), default="as_loaded",
                    help="peers' model parameters as loaded (requires_grad, as their users run them) or frozen (all "
                         "but the token embeddings)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    ap.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    started, results = time.time(), {}
    for mode in [m for m in MODES if m in args.modes.split(",")]:
        results[mode] = r = run_fresh("benchmarks.peer_cost", mode)
        print(f"{mode:17s} {r['seconds']:9.3f}s  peak +{r['peak_mb']:8.1f} MB", flush=True)
    report(results, args)
    print(f"(total {time.time() - started:.0f}s)")


if __name__ == "__main__":
    main()
