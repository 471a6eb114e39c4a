"""Forward calls and wall time of mmlens occlusion vs Captum FeatureAblation run once per answer token.

    python -m benchmarks.perturbation_calls [--layers 4 --hidden 256 --image-size 336 --patch 48 --batch 32]

Both occlude the same non-overlapping ``patch x patch`` windows with the image's mean colour. mmlens scores
every answer token from one teacher-forced forward per chunk of masks; Captum's ``FeatureAblation`` explains
one output at a time, so (like ``LLMAttribution``) it re-runs every mask for each answer token. Prints calls,
rows, wall time, their ratios, and the largest difference between the two maps (they compute the same thing).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from captum.attr import FeatureAblation
from PIL import Image

from benchmarks.common import ForwardCounter, image, mid_llava
from mmlens.attribution.perturbation import occlusion
from mmlens.attribution.perturbation_masks import occlusion_windows
from mmlens.model.targets import resolve_targets
from mmlens.perturb.scoring import forward_values, perturbed_inputs


def captum_per_token(subject, batch, targets, patch: int, batch_size: int) -> list[np.ndarray]:
    """FeatureAblation over the window masks, one ``attribute`` call per target (answer token)."""
    img = batch.images[0]
    w, h = img.size
    x = torch.from_numpy(np.asarray(img, dtype=np.float32))[None]  # (1, H, W, 3)
    baseline = x.mean(dim=(1, 2), keepdim=True).expand_as(x).contiguous()
    mask = torch.zeros(1, h, w, 1, dtype=torch.long)
    for k, (cx, cy) in enumerate(occlusion_windows(img.size, patch, patch)):
        mask[0, cy : cy + patch, cx : cx + patch] = k
    maps = []
    for t in range(len(targets)):
        def forward(pixels: torch.Tensor, t: int = t) -> torch.Tensor:
            rows = [[Image.fromarray(np.clip(np.rint(p.numpy()), 0, 255).astype(np.uint8))] for p in pixels]
            return forward_values(subject, batch, perturbed_inputs(subject, batch, rows), targets)[:, t]

        attr = FeatureAblation(forward).attribute(x, baselines=baseline, feature_mask=mask.expand_as(x),
                                                  perturbations_per_eval=batch_size)
        maps.append(attr[0, :, :, 0].numpy())
    return maps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=336)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--answer", default="a red circle of a blue square")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    subject = mid_llava(args.layers, args.hidden, args.image_size, device=args.device)
    batch = subject.prepare(image(args.image_size), "what color is the circle?", answer=args.answer)
    targets = resolve_targets(subject.tokenizer, batch)
    windows = len(occlusion_windows(batch.images[0].size, args.patch, args.patch))
    print(f"model: {args.layers} layers, hidden {args.hidden}, {batch.seq_len} positions, {args.device}; "
          f"{windows} windows, {len(targets)} answer tokens, batch {args.batch}")

    with ForwardCounter(subject.model) as ours_count:
        start = time.perf_counter()
        ours = occlusion(subject, batch, targets, patch=args.patch, words=False, baseline="mean", batch_size=args.batch)
        ours_time = time.perf_counter() - start
    with ForwardCounter(subject.model) as captum_count:
        start = time.perf_counter()
        theirs = captum_per_token(subject, batch, targets, args.patch, args.batch)
        captum_time = time.perf_counter() - start

    diff = max(float(np.abs(ours.pixel_maps[t][0] - theirs[t]).max()) for t in range(len(targets)))
    print(f"{'':28s}{'calls':>8s}{'rows':>8s}{'wall s':>10s}")
    print(f"{'mmlens occlusion':28s}{ours_count.calls:8d}{ours_count.rows:8d}{ours_time:10.2f}")
    print(f"{'captum FeatureAblation/tok':28s}{captum_count.calls:8d}{captum_count.rows:8d}{captum_time:10.2f}")
    print(f"ratio captum/mmlens: calls {captum_count.calls / ours_count.calls:.1f}x, rows "
          f"{captum_count.rows / ours_count.rows:.1f}x, wall {captum_time / ours_time:.1f}x; "
          f"max |map difference| {diff:.2e}")


if __name__ == "__main__":
    main()
