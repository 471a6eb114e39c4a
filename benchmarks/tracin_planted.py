"""TracIn planted-label check: fine-tune the demo model on a small training set where a few colour answers are
wrong (``--plant``), save checkpoints, and count how often a planted sample is among the top-10 TracIn influences
of the held-out test samples it affects (colour questions about an object of the planted sample's true colour
and shape). Prints the hit rate; numbers recorded in benchmarks/RESULTS.md.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/tracin_planted.py --train-size 200 --plant 5 --steps 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mmlens.data.shapes_vqa import ShapesVQA
from mmlens.demo.evaluation import EVAL_SEEDS
from mmlens.demo.train import TrainConfig, train
from mmlens.training.tracin import tracin, training_samples


def _target(sample) -> tuple[str, str]:
    """(true colour, shape) of the object a colour question asks about."""
    return sample.answer, sample.question.removeprefix("what color is the ").rstrip(" ?")


def planted_hit_rate(folder: Path, per_planted: int = 3, k: int = 10, by: str = "abs", params: str = "unembed",
                     show_progress: bool | None = None) -> dict:
    """Hit rate of planted samples in the top ``k`` of the test samples they affect (and the TracIn result)."""
    _index, samples = training_samples(folder)
    from mmlens.demo.checkpoints import read_manifest

    planted = read_manifest(folder)["planted"]
    clean = ShapesVQA(image_size=samples[0].image.size[0], seed=read_manifest(folder)["data_seed"])
    pool = [s for s in ShapesVQA(image_size=samples[0].image.size[0], seed=EVAL_SEEDS[0]).samples(600)
            if s.question_type == "color"]
    tests, owner = [], []
    for p in planted:
        want = _target(clean.sample(p))
        match = [s for s in pool if _target(s) == want][:per_planted]
        tests += match
        owner += [p] * len(match)
    result = tracin(folder, tests, params=params, show_progress=show_progress)
    hits = [owner[i] in [result.train_index[j] for j in result.top(i, k, by)] for i in range(len(tests))]
    return {"cases": len(hits), "hits": int(sum(hits)), "rate": sum(hits) / max(1, len(hits)), "result": result}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-size", type=int, default=200)
    ap.add_argument("--plant", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--save-every", type=int, default=25)
    ap.add_argument("--params", default="unembed")
    ap.add_argument("--out", type=Path, default=None, help="also save the contact sheet / JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        cfg = TrainConfig(init="demo", vision_steps=0, steps=args.steps, lr=3e-4, aux_weight=0.0,
                          batch_size=args.batch_size, save_every=args.save_every, checkpoint_dir=tmp,
                          train_size=args.train_size, plant=args.plant, log_every=max(1, args.steps // 4))
        train(cfg)
        trained = time.time() - start
        for by in ("abs", "opponents"):
            r = planted_hit_rate(Path(tmp), by=by, params=args.params)
            print(f"rank by {by:9s}: planted in top-10 for {r['hits']}/{r['cases']} affected tests "
                  f"= {r['rate']:.2f}", flush=True)
        print(f"train {trained:.0f}s, total {time.time() - start:.0f}s", flush=True)
        if args.out:
            r["result"].save(args.out / "tracin.png", by="abs")
            r["result"].save(args.out / "tracin.json", by="abs")


if __name__ == "__main__":
    main()
