"""max |differentiable pipeline - processor| on the normalised pixel_values, per family (issue 16).

    PYTHONPATH=src python -m benchmarks.pixel_pipeline_parity [--n 20 --seed 0]

Each family's tiny model (real transformers processors) and the demo model get ``--n`` random-noise images of
random sizes (8..120 px a side, so up- and down-scaling on either axis); a family prints the largest
difference over them, or the one-line refusal of :class:`mmlens.model.pixels.PixelPipeline` /
:func:`mmlens.model.pixels.check_pixels` (tiles / crops the copy does not re-implement).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

import mmlens
from mmlens.errors import InputError
from mmlens.model.pixels import PixelPipeline, image_tensor
from mmlens.testing import tiny_subject
from mmlens.testing.tiny_dual import DUAL_FAMILIES, tiny_dual_subject
from mmlens.testing.tiny_models import FAMILIES


def parity(subject: mmlens.Subject, sizes: list[tuple[int, int]], rng: np.random.Generator) -> str:
    try:
        pipe = PixelPipeline(subject)
    except InputError as err:
        return f"refused: {err}"
    worst, refused = 0.0, 0
    for w, h in sizes:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        batch = subject.prepare(img, "what color is it ?")
        with torch.no_grad():
            ours = pipe([image_tensor(img)])
        want = batch.inputs["pixel_values"]
        if tuple(ours.shape) != tuple(want.shape):
            refused += 1
            continue
        worst = max(worst, float((ours - want.double()).abs().max()))
    note = f" ({refused} of {len(sizes)} images refused: the processor added crops)" if refused else ""
    return f"max |ours - processor| = {worst:.2e} over {len(sizes) - refused} images{note}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    sizes = [(int(w), int(h)) for w, h in rng.integers(8, 121, (args.n, 2))]
    subjects = [(f, lambda f=f: tiny_subject(f)) for f in FAMILIES]
    subjects += [(f, lambda f=f: tiny_dual_subject(f)) for f in DUAL_FAMILIES]
    subjects += [("demo", lambda: mmlens.load("demo"))]
    for name, build in subjects:
        print(f"{name:16s} {parity(build(), sizes, rng)}")


if __name__ == "__main__":
    main()
