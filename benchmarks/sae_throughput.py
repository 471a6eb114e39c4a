"""SAE training throughput (activations / s) and peak memory on a mid-size random LLaVA (benchmarks.common.mid_llava),
one command:

    PYTHONPATH=src python benchmarks/sae_throughput.py

Activations of ``lm.blocks.6.resid_post`` (every position of random images + a question) are collected with the
Tracer, then a TopK SAE (8x expansion, k=32) trains on them in a fresh process that reports its own peak resident
memory (VmHWM, reset once the activations are loaded) above what it holds then: the SAE's parameters, Adam's moments and
the minibatch buffers. Throughput counts activations through the SAE's forward + backward + step only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import image, mid_llava


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Reset the resident-set high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def _train(path: str, d_sae: int, k: int, epochs: int, batch_size: int, queue) -> None:
    torch.set_num_threads(1)
    from mmlens.neuron.sae import train_sae

    acts = torch.load(path)
    _reset_peak()
    base = _status_mb("VmRSS")
    run = train_sae([acts], d_sae=d_sae, k=k, epochs=epochs, batch_size=batch_size, show_progress=False)
    queue.put({"activations": run.activations, "seconds": run.seconds, "activations_per_s": run.throughput,
               "rss_base_mb": base, "rss_peak_mb": _status_mb("VmHWM"), "final_nmse": run.history[-1]["nmse"]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--out", default=None, help="JSON file for the numbers")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mmlens.neuron.sae import activation_batches

    lm = mid_llava()
    hook = f"lm.blocks.{args.layer}.resid_post"
    t0 = time.perf_counter()
    acts = torch.cat(list(activation_batches(lm, [(image(seed=i), "what color is the object?", "red")
                                                  for i in range(args.images)], hook)))
    collect_s = time.perf_counter() - t0
    d = acts.shape[-1]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "acts.pt")
        torch.save(acts, path)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_train, args=(path, args.expansion * d, args.k, args.epochs, args.batch_size, queue))
        proc.start()
        res = queue.get()
        proc.join()
    params = 2 * d * args.expansion * d + args.expansion * d + d
    res.update({"hook": hook, "d_in": d, "d_sae": args.expansion * d, "k": args.k, "rows": int(acts.shape[0]),
                "collect_activations_per_s": acts.shape[0] / collect_s,
                "sae_params_plus_adam_mb": params * 4 * 4 / 2**20,  # weights, grads, two Adam moments (float32)
                "training_peak_above_base_mb": res["rss_peak_mb"] - res["rss_base_mb"],
                "command": "PYTHONPATH=src python benchmarks/sae_throughput.py"})
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
