"""The best energy-in-mask a token-level map can reach on ShapesVQA, for the issue #5 goal (>= 0.6).

    python -m benchmarks.energy_ceiling [--n 200 --image-size 64 --grid 8]

The "oracle" map gives each grid cell (one image token of the demo model) the share of the evidence
object that the cell holds, then is upsampled to pixels the way every explanation is (bilinear, as in
``ImageGeometry.heatmap``) or with nearest-neighbour cells. No model is involved: this is the ceiling of
any method whose resolution is the token grid.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from mmlens.data import ShapesVQA
from mmlens.evaluation.metrics.energy_pointing_game import energy_in_mask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--grid", type=int, default=8)
    args = ap.parse_args()
    cell = args.image_size // args.grid
    scores: dict[str, list[float]] = {"bilinear": [], "nearest": []}
    for s in ShapesVQA(image_size=args.image_size, seed=0).samples(args.n):
        if s.evidence != "object":
            continue
        mask = torch.tensor(s.mask, dtype=torch.float32)
        share = mask.reshape(args.grid, cell, args.grid, cell).mean((1, 3))[None, None]
        for mode in scores:
            kw = {"align_corners": False} if mode == "bilinear" else {}
            heat = F.interpolate(share, size=mask.shape, mode=mode, **kw)[0, 0].numpy()
            scores[mode].append(energy_in_mask(heat, s.mask))
    n = len(scores["bilinear"])
    print(f"{n} object-evidence samples, {args.grid}x{args.grid} token grid over {args.image_size} px:")
    for mode, values in scores.items():
        print(f"  oracle token map, {mode} upsampling: energy in mask {np.mean(values):.3f}")


if __name__ == "__main__":
    main()
