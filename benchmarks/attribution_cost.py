"""Cost of explaining every answer token on a mid-size random LLaVA, as ratios measured in one run.

    python -m benchmarks.attribution_cost [--layers 12 --hidden 768 --image-size 336 --answer-lens 10,100]
    python -m benchmarks.attribution_cost --family qwen3_vl   # or gemma3: benchmarks.common.MID_MODELS

Each measurement runs in a fresh subprocess with one intra-op thread (``--threads``; peak memory is then
that of one job alone), once per answer length:
- attention methods (raw attention, for every answer token from one forward) vs a plain forward: time and
  peak memory (goal <= 1.2x time, <= 1.3x memory);
- relevancy / attention x gradient / input x gradient for every answer token vs one plain forward +
  backward of the whole answer: time (goal <= 1.5x at 10 tokens, <= 3x at 100) and peak memory (<= 1.5x);
- Integrated Gradients through mmlens vs Captum's ``IntegratedGradients`` called per answer token on
  mmlens' embedding function (``ig_captum``, which re-runs the vision tower) and on the LM's
  ``inputs_embeds`` directly (``ig_embeds``: the vision tower run once, as a user would call it), same
  steps and internal batch size: time (goal <= 1.0x). Like for like: mmlens reports Captum's convergence delta
  (one extra forward of two rows), so ``ig_embeds_delta`` is that Captum call with ``return_convergence_delta``
  and ``ig_mmlens_nodelta`` is mmlens with ``convergence_delta=False``;
- ``forward_backward_tail``: that forward + backward with the LM head run only at the positions that
  predict the answer (``logits_to_keep``), as the cheapest training-style step would;
- ``vjp_floor``: the cheapest plain-PyTorch way to the same K input gradients (``benchmarks.vjp_floor``: no
  hooks, parameters frozen, one forward with ``logits_to_keep``, K vector-Jacobian products batched over one
  graph or looped; the faster variant counts); every gradient mode is reported against it too.

    python -m benchmarks.attribution_cost --layers 4 --hidden 256 --image-size 112 --answer-lens 10 \
        --modes forward_backward,forward_backward_tail,vjp_floor,relevancy,attention_x_gradient,input_x_gradient \
        [--vocab 32064] [--flops]

``--flops`` counts each mode's matrix-product FLOPs instead of timing it (the work, free of noise).
``--vocab N`` gives the random LM a real model's vocabulary (LLaVA-1.5 32064, Qwen2-VL 151936, Gemma 3 262208)
so that the LM head costs what it does there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks.common import MID_MODELS, image, mid_llava, mid_model, peak_memory_mb, run_fresh

MODES = ("forward", "attention", "forward_backward", "forward_backward_tail", "relevancy", "attention_x_gradient",
         "input_x_gradient", "ig_mmlens", "ig_mmlens_nodelta", "ig_captum", "ig_embeds", "ig_embeds_delta", "vjp_floor")
LLAVA_ONLY = ("vjp_floor",)  # benchmarks.vjp_floor feeds the whole input as inputs_embeds
WORDS = ["red", "green", "blue", "circle", "square", "triangle", "yellow", "shape", "object", "image"]


def answer_words(n: int) -> str:
    """An ``n``-token answer of the benchmark tokenizer's words (``w0``.. after the first ten)."""
    return " ".join((WORDS + [f"w{i}" for i in range(200)])[:n])


def run_one(mode: str, args: argparse.Namespace) -> dict:
    import mmlens
    from mmlens.model.targets import resolve_targets

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.family == "llava":
        subject = mid_llava(args.layers, args.hidden, args.image_size, device=args.device, heads=args.heads,
                            tiles=args.tiles, dtype=getattr(torch, args.dtype), vocab=args.vocab)
    elif args.heads or args.tiles or args.dtype != "float32":
        raise SystemExit("--heads / --tiles / --dtype are options of the llava family's model")
    else:
        subject = mid_model(args.family, args.layers, args.hidden, args.image_size, device=args.device,
                            vocab=args.vocab)
    answer = answer_words(args.answer_len)
    img = image(args.image_size * round(args.tiles**0.5) if args.tiles else args.image_size)
    batch = subject.prepare(img, "what color is the shape?", answer=answer)
    steps = args.ig_steps

    def forward() -> None:
        with torch.no_grad():
            subject.forward(batch)

    def forward_backward() -> None:
        target = resolve_targets(subject.tokenizer, batch, "answer")[0]
        target.value(subject.forward(batch), batch).sum().backward()
        subject.model.zero_grad(set_to_none=True)

    def forward_backward_tail() -> None:  # the LM head only where the answer's log-probs are read
        query = (batch.answer_positions - 1).to(subject.device)
        logits = subject.model(**subject.model_inputs(batch), logits_to_keep=query, use_cache=False).logits
        logits[0].float().log_softmax(-1).gather(-1, batch.answer_ids.to(logits.device)[:, None]).sum().backward()
        subject.model.zero_grad(set_to_none=True)

    def explain(method: str, **options) -> None:
        if args.target_batch is not None and method != "attention":
            options["target_batch"] = args.target_batch
        if args.attention_chunk is not None and method in ("relevancy", "attention_x_gradient"):
            options["attention_chunk"] = args.attention_chunk
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

    def ig_embeds(delta: bool = False) -> None:
        from captum.attr import IntegratedGradients

        from mmlens.attribution.captum_gradients import baseline_embeddings, input_embeddings

        pos = batch.image_positions()
        full = input_embeddings(subject, batch).detach()
        x = full[:, pos]
        base = baseline_embeddings(subject, batch, pos, "black").detach()
        mask = subject.model_inputs(batch)["attention_mask"]

        def f(emb: torch.Tensor, target) -> torch.Tensor:
            embeds = full.expand(emb.shape[0], -1, -1).clone()
            embeds[:, pos] = emb
            out = subject.model(inputs_embeds=embeds, attention_mask=mask.expand(emb.shape[0], -1), use_cache=False)
            return target.value(out.logits, batch)

        for target in resolve_targets(subject.tokenizer, batch, None):
            IntegratedGradients(lambda emb, t=target: f(emb, t)).attribute(
                x, baselines=base, n_steps=steps, internal_batch_size=steps, return_convergence_delta=delta)

    fns = {
        "forward": forward,
        "attention": lambda: explain("attention"),
        "forward_backward": forward_backward,
        "forward_backward_tail": forward_backward_tail,
        "relevancy": lambda: explain("relevancy"),
        "attention_x_gradient": lambda: explain("attention_x_gradient"),
        "input_x_gradient": lambda: explain("input_x_gradient"),
        "ig_mmlens": lambda: explain("integrated_gradients", steps=steps, internal_batch_size=steps, baseline="black"),
        "ig_mmlens_nodelta": lambda: explain("integrated_gradients", steps=steps, internal_batch_size=steps,
                                             baseline="black", convergence_delta=False),
        "ig_captum": ig_captum,
        "ig_embeds": ig_embeds,
        "ig_embeds_delta": lambda: ig_embeds(delta=True),
    }
    shape = {"seq_len": batch.seq_len, "image_tokens": int(batch.image_positions().numel()),
             "answer_tokens": int(batch.answer_ids.numel())}
    if args.flops:  # the work, counted once (the floor's two variants do the same products)
        from benchmarks.flops import FlopCount
        from benchmarks.vjp_floor import floor_functions

        fn = floor_functions(subject, batch)["loop"] if mode == "vjp_floor" else fns[mode]
        with FlopCount() as count:
            fn()
        return {"mode": mode, "gflops": count.total / 1e9, **shape}
    if mode == "vjp_floor":
        return {"mode": mode, **floor(subject, batch, args), **shape}
    return {"mode": mode, **measure(fns[mode], args), **shape}


def measure(fn, args: argparse.Namespace) -> dict:
    """Median wall seconds of ``args.repeats`` runs after a warm-up, process CPU seconds per run, peak MB.

    The first timed run is the memory run; only ``fn`` itself is timed (the garbage collection and resets
    before it take about 0.4 s in this process, more than a small model's whole forward + backward)."""
    fn()  # warm-up
    wall: list[float] = []
    cpu: list[float] = []

    def timed() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started, cpu_start = time.perf_counter(), time.process_time()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_start)  # steadier than wall time on a shared machine

    memory = peak_memory_mb(timed, args.device)  # also the first timed run
    for _ in range(args.repeats - 1):
        timed()
    return {"seconds": statistics.median(wall), "cpu_seconds": statistics.median(cpu), "peak_mb": memory}


def floor(subject, batch, args: argparse.Namespace) -> dict:
    """Both variants of :mod:`benchmarks.vjp_floor` measured (after checking them against per-token autograd);
    the faster one's numbers, its name, the other's seconds, and its time split into parts."""
    from benchmarks.vjp_floor import breakdown, check_floor, floor_functions

    fns = floor_functions(subject, batch)
    error = check_floor(subject, batch, {name: fn() for name, fn in fns.items()})
    got = {name: measure(fn, args) for name, fn in fns.items()}
    best = min(got, key=lambda name: got[name]["seconds"])
    return {**got[best], "variant": best, "variants": {n: g["seconds"] for n, g in got.items()},
            "max_rel_error": error, "parts": breakdown(subject, batch, best, args.repeats)}


GRADIENT_GOALS = {10: 1.5, 100: 3.0}


def report(results: dict, args: argparse.Namespace, length: int) -> None:
    r = results
    first = next(iter(r.values()))
    tiles = f"LLaVA-NeXT, base + {args.tiles} tiles, " if args.tiles else ""
    print(f"\nmodel: random {args.family}, {args.layers} layers, hidden {args.hidden}, "
          f"{args.heads or max(2, args.hidden // 64)} heads, {tiles}{first['image_tokens']} image tokens, "
          f"{first['seq_len']} positions, {first['answer_tokens']} answer tokens, {args.device}, "
          f"{args.threads} thread(s), target_batch {args.target_batch or 'default'}, "
          f"vocab {args.vocab or 'the word tokenizer'}")
    if {"forward", "attention"} <= set(r):
        fwd, att = r["forward"], r["attention"]
        print(f"attention (all answer tokens) / plain forward: time {att['seconds'] / fwd['seconds']:.2f}x "
              f"(goal <= 1.2), peak memory {att['peak_mb'] / fwd['peak_mb']:.2f}x (goal <= 1.3)")
    goal = GRADIENT_GOALS.get(length)
    for method in ("relevancy", "attention_x_gradient", "input_x_gradient"):
        if {"forward_backward", method} <= set(r):
            m, fb = r[method], r["forward_backward"]
            print(f"{method} (all {length} answer tokens) / forward+backward: time {m['seconds'] / fb['seconds']:.2f}x"
                  f" (goal <= {goal or '-'}), peak memory {m['peak_mb'] / fb['peak_mb']:.2f}x (goal <= 1.5)")
    for method, base in (("attention", "forward"), ("relevancy", "forward_backward"),
                         ("attention_x_gradient", "forward_backward"), ("input_x_gradient", "forward_backward")):
        if {method, base} <= set(r) and "cpu_seconds" in r[method]:
            print(f"{method} / {base}: process CPU time {r[method]['cpu_seconds'] / r[base]['cpu_seconds']:.2f}x")
    if "vjp_floor" in r:
        report_floor(r, length)
    for ours, ref in (("ig_mmlens", "ig_captum"), ("ig_mmlens", "ig_embeds"), ("ig_mmlens", "ig_embeds_delta"),
                      ("ig_mmlens_nodelta", "ig_embeds")):
        if {ours, ref} <= set(r) and "cpu_seconds" in r[ours] and "cpu_seconds" in r[ref]:
            ratio, cpu = (r[ours][k] / r[ref][k] for k in ("seconds", "cpu_seconds"))
            print(f"integrated gradients {ours} / direct Captum ({ref}): time {ratio:.2f}x, CPU {cpu:.2f}x (goal <= 1.0)")


def report_floor(r: dict, length: int) -> None:
    """The plain-PyTorch floor against forward + backward (logits at every position, and at the answer's
    positions only), and every gradient mode against all of them."""
    fl = r["vjp_floor"]
    others = ", ".join(f"{n} {s:.3f}s" for n, s in fl["variants"].items())
    parts = ", ".join(f"{k[:-2]} {v:.3f}s" for k, v in fl["parts"].items())
    print(f"vjp_floor: the {fl['variant']} variant ({others}; median parts: {parts}; "
          f"max error vs per-token autograd {fl['max_rel_error']:.1e} of the largest gradient)")
    bases = [b for b in ("forward_backward", "forward_backward_tail") if b in r]
    for base in bases:
        fb = r[base]
        print(f"vjp_floor (all {length} answer tokens) / {base}: time {fl['seconds'] / fb['seconds']:.2f}x, "
              f"process CPU time {fl['cpu_seconds'] / fb['cpu_seconds']:.2f}x, "
              f"peak memory {fl['peak_mb'] / fb['peak_mb']:.2f}x")
    for method in ("relevancy", "attention_x_gradient", "input_x_gradient"):
        if method in r:
            m = r[method]
            vs = "".join(f", vs {b} {m['seconds'] / r[b]['seconds']:.2f}x" for b in bases)
            print(f"{method} / vjp_floor: time {m['seconds'] / fl['seconds']:.2f}x{vs}; "
                  f"process CPU time {m['cpu_seconds'] / fl['cpu_seconds']:.2f}x, "
                  f"peak memory {m['peak_mb'] / fl['peak_mb']:.2f}x")


def report_flops(r: dict, args: argparse.Namespace, length: int) -> None:
    """Every mode's counted work in units of the others' (``--flops``)."""
    print(f"\nwork (matrix-product FLOPs, {length} answer tokens, vocab {args.vocab or 'the word tokenizer'}):")
    for base in ("forward", "forward_backward", "forward_backward_tail", "vjp_floor"):
        if base in r:
            ratios = ", ".join(f"{m} {x['gflops'] / r[base]['gflops']:.2f}" for m, x in r.items() if m != base)
            print(f"  in units of {base}: {ratios}")


def select_modes(given: str | None, family: str) -> list[str]:
    """The modes to run, in :data:`MODES` order: ``given`` (comma-separated) or every one ``family`` supports."""
    wanted = given.split(",") if given else [m for m in MODES if family == "llava" or m not in LLAVA_ONLY]
    unknown = sorted(set(wanted) - set(MODES))
    if unknown:
        raise SystemExit(f"--modes: unknown {', '.join(unknown)}: pass a comma-separated subset of {', '.join(MODES)}")
    if family != "llava" and set(wanted) & set(LLAVA_ONLY):
        raise SystemExit(f"--modes {', '.join(LLAVA_ONLY)}: the llava family only (--family llava)")
    return [m for m in MODES if m in wanted]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=sorted(MID_MODELS), default="llava", help="mid-size random model family")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--image-size", type=int, default=336)
    ap.add_argument("--heads", type=int, default=None, help="LM attention heads (default: hidden / 64)")
    ap.add_argument("--tiles", type=int, default=0, help="a LLaVA-NeXT: base image + this many tiles (4 = 2 x 2)")
    ap.add_argument("--attention-chunk", type=int, default=None, help="attention_chunk for relevancy / attention x grad")
    ap.add_argument("--answer-lens", default="10", help="comma-separated answer lengths (tokens), e.g. 10,100")
    ap.add_argument("--answer-len", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ig-steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per measuring process")
    ap.add_argument("--target-batch", type=int, default=None, help="target_batch for the gradient methods")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                    help="model weights' dtype (bfloat16 for the GPU measurement of issue 18)")
    ap.add_argument("--vocab", type=int, default=None,
                    help="LM vocabulary rows (default: the small word tokenizer's), e.g. 32064 as LLaVA-1.5")
    ap.add_argument("--flops", action="store_true",
                    help="count each mode's matrix-product FLOPs (one run, benchmarks.flops) instead of timing it")
    ap.add_argument("--modes", default=None, help="comma-separated subset of " + ", ".join(MODES) + " (default: all "
                    "that the family supports; " + ", ".join(LLAVA_ONLY) + ": llava only)")
    ap.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    modes = select_modes(args.modes, args.family)
    started = time.time()
    lengths = [args.answer_len] if args.answer_len else [int(n) for n in args.answer_lens.split(",")]
    for length in lengths:
        results = {}
        for mode in modes:
            results[mode] = run_fresh("benchmarks.attribution_cost", mode, "--answer-len", str(length))
            r = results[mode]
            got = (f"{r['gflops']:9.3f} GFLOP" if args.flops else
                   f"{r['seconds']:8.3f}s (CPU {r['cpu_seconds']:8.3f}s)  peak +{r['peak_mb']:8.1f} MB")
            print(f"[{length:3d} tokens] {mode:21s} {got}", flush=True)
        args.answer_len = length
        (report_flops if args.flops else report)(results, args, length)
    print(f"(total {time.time() - started:.0f}s)")


if __name__ == "__main__":
    main()
