"""The best energy-in-mask a map can reach on ShapesVQA at a given resolution, for the issue #5 goal (>= 0.6).

    python -m benchmarks.energy_ceiling [--n 200 --image-size 64 --grid 8 --segments 50]

The "oracle" map gives each grid cell (one image token of the demo model) the share of the evidence
object that the cell holds, then is upsampled to pixels the way every explanation is (bilinear, as in
``ImageGeometry.heatmap``) or with nearest-neighbour cells. No model is involved: this is the ceiling of
any method whose resolution is the token grid. The same oracle on SLIC superpixels (what
``occlusion`` / ``kernel_shap`` / ``lime`` with ``regions="slic"`` paint) is the ceiling of those maps.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from mmlens.attribution.regions import paint, region_labels
from mmlens.data import ShapesVQA
from mmlens.evaluation.metrics.energy_pointing_game import energy_in_mask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--grid", type=int, default=8)
    ap.add_argument("--segments", type=int, default=50, help="n_segments of the SLIC superpixels")
    args = ap.parse_args()
    cell = args.image_size // args.grid
    scores: dict[str, list[float]] = {"bilinear": [], "nearest": [], "superpixels": []}
    for s in ShapesVQA(image_size=args.image_size, seed=0).samples(args.n):
        if s.evidence != "object":
            continue
        mask = torch.tensor(s.mask, dtype=torch.float32)
        share = mask.reshape(args.grid, cell, args.grid, cell).mean((1, 3))[None, None]
        labels = region_labels(s.image, "slic", n_segments=args.segments)
        shares = np.bincount(labels.ravel(), weights=s.mask.ravel()) / np.bincount(labels.ravel())
        scores["superpixels"].append(energy_in_mask(paint(labels, shares), s.mask))
        for mode in ("bilinear", "nearest"):
            kw = {"align_corners": False} if mode == "bilinear" else {}
            heat = F.interpolate(share, size=mask.shape, mode=mode, **kw)[0, 0].numpy()
            scores[mode].append(energy_in_mask(heat, s.mask))
    n = len(scores["bilinear"])
    print(f"{n} object-evidence samples, {args.grid}x{args.grid} token grid over {args.image_size} px:")
    for mode, values in scores.items():
        what = f"SLIC superpixels (n_segments={args.segments})" if mode == "superpixels" else \
            f"token map, {mode} upsampling"
        print(f"  oracle {what}: energy in mask {np.mean(values):.3f}")


if __name__ == "__main__":
    main()
