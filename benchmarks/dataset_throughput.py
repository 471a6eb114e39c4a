"""Explanations per second over a dataset on the demo model, as ratios measured in one run.

    python -m benchmarks.dataset_throughput [--n 200] [--methods attention,integrated_gradients,occlusion]
        [--ray] [--memory-n 200,2000]

Each measurement runs in a fresh subprocess with one intra-op thread (ShapesVQA seed 0, the dataset's answers
teacher-forced, target the whole answer; model loading is not timed, everything else is):
- ``local``: ``mmlens.runs.explain_job.explain_dataset`` (the local engine: shards, safetensors, index);
- ``loop``: a plain Python loop calling ``mmlens.explain`` per sample (nothing written);
- ``captum``: a loop calling Captum per sample where Captum applies (``IntegratedGradients`` on mmlens'
  image-token embedding function; ``Occlusion`` on ``pixel_values`` with an 8 x 8 window grid, stride half a
  window), the same target;
- ``ray`` (``--ray``): the same ``explain_dataset`` with ``engine="ray", replicas=2`` on a local Ray started
  with ``num_cpus=2`` (Ray start-up and the two replicas' model loads included);
- peak memory (resident-set high-water mark of the subprocess) of the local engine for ``attention`` at each
  ``--memory-n``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

MODES = ("local", "loop", "captum", "ray")


def run_one(mode: str, method: str, n: int) -> dict:
    import torch

    torch.set_num_threads(1)
    import mmlens
    from mmlens.data.shapes_vqa import ShapesVQA

    subject = mmlens.load("demo")
    out = tempfile.mkdtemp(prefix="mmlens-throughput-")
    samples = ShapesVQA(image_size=_size(subject), seed=0)
    start = time.perf_counter()
    if mode in ("local", "ray"):
        from mmlens.runs.explain_job import explain_dataset

        if mode == "ray":
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        explain_dataset("demo" if mode == "ray" else subject, None, method, out, n=n, sheet=0, show_progress=False,
                        engine=mode, replicas=2 if mode == "ray" else 1)
    elif mode == "loop":
        for i in range(n):
            s = samples.sample(i)
            mmlens.explain(subject, s.image, s.question, method=method, target="answer", answer=s.answer)
    else:
        fn = _captum(subject, method)
        if fn is None:
            return {"mode": mode, "method": method, "n": n, "skipped": "Captum has no such method"}
        for i in range(n):
            s = samples.sample(i)
            fn(subject.prepare(s.image, s.question, answer=s.answer))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "method": method, "n": n, "seconds": seconds, "per_s": n / seconds, "peak_mb": peak}


def _size(subject) -> int:
    from mmlens.evaluation.benchmark import shapes_image_size

    return shapes_image_size(subject)


def _captum(subject, method: str):
    import torch

    from mmlens.model.targets import resolve_targets

    if method == "integrated_gradients":
        from captum.attr import IntegratedGradients

        from mmlens.attribution.captum_gradients import baseline_embeddings, embedding_function, input_embeddings

        def ig(batch) -> None:
            pos = batch.image_positions()
            x = input_embeddings(subject, batch)[:, pos].detach()
            base = baseline_embeddings(subject, batch, pos, "black").detach()
            (target,) = resolve_targets(subject.tokenizer, batch, "answer")
            IntegratedGradients(embedding_function(subject, batch, target, pos)).attribute(
                x, baselines=base, n_steps=32, internal_batch_size=32)

        return ig
    if method == "occlusion":
        from captum.attr import Occlusion

        def occ(batch) -> None:
            inputs = subject.model_inputs(batch)
            (target,) = resolve_targets(subject.tokenizer, batch, "answer")
            pv = inputs["pixel_values"]

            @torch.no_grad()
            def f(x: torch.Tensor) -> torch.Tensor:
                rows = {k: (v.expand(x.shape[0], *v.shape[1:]) if torch.is_tensor(v) and v.shape[:1] == (1,)
                            else v) for k, v in inputs.items()}
                rows["pixel_values"] = x
                return target.value(subject.model(**rows, use_cache=False).logits, batch)

            w = max(1, pv.shape[-1] // 8)
            Occlusion(f).attribute(pv, sliding_window_shapes=(pv.shape[1], w, w), strides=(pv.shape[1], w // 2 or 1,
                                   w // 2 or 1), baselines=0.0, perturbations_per_eval=16)

        return occ
    return None


def measure(mode: str, method: str, n: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.dataset_throughput", "--one", mode, method, str(n)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"mode": mode, "method": method, "n": n, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--methods", default="attention,integrated_gradients,occlusion")
    parser.add_argument("--ray", action="store_true", help="also run the Ray engine (2 replicas, local Ray)")
    parser.add_argument("--memory-n", default="200,2000", help="sample counts for the peak-memory check (attention)")
    parser.add_argument("--one", nargs=3, metavar=("MODE", "METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], int(args.one[2]))))
        return
    results = []
    for method in args.methods.split(","):
        for mode in ("local", "loop", "captum") + (("ray",) if args.ray else ()):
            r = measure(mode, method, args.n)
            results.append(r)
            print(json.dumps(r), flush=True)
    print("\n| method | local engine /s | plain loop /s | Captum loop /s | Ray 2 replicas /s | local / loop | "
          "local / Captum | Ray / local |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method in args.methods.split(","):
        got = {r["mode"]: r.get("per_s") for r in results if r["method"] == method}
        cell = lambda v: f"{v:.2f}" if v else "n/a"
        ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "n/a"
        print(f"| {method} | {cell(got.get('local'))} | {cell(got.get('loop'))} | {cell(got.get('captum'))} | "
              f"{cell(got.get('ray'))} | {ratio(got.get('local'), got.get('loop'))} | "
              f"{ratio(got.get('local'), got.get('captum'))} | {ratio(got.get('ray'), got.get('local'))} |")
    memory = [measure("local", "attention", int(k)) for k in args.memory_n.split(",")]
    print("\n| n (attention, local engine) | seconds | peak RSS MB |")
    print("|---:|---:|---:|")
    for r in memory:
        print(f"| {r['n']} | {r.get('seconds', float('nan')):.1f} | {r.get('peak_mb', float('nan')):.0f} |")
    if len(memory) >= 2 and all("peak_mb" in r for r in memory):
        print(f"\npeak memory ratio n={memory[-1]['n']} / n={memory[0]['n']}: "
              f"{memory[-1]['peak_mb'] / memory[0]['peak_mb']:.3f}x")


if __name__ == "__main__":
    main()
