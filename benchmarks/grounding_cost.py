"""Cost of per-token grounding signals: ``mmlens.generate_explained`` vs plain greedy generation.

Goal (issue 14): signals for a whole generated answer in <= 3x the time of plain generation on a mid-size
random model. The image stream's signals (log-probs, attention rows over the image, residual streams) are
captured during generation itself (one query row per step); the distorted image costs one teacher-forced
forward with logits only for the answer positions.

    python -m benchmarks.grounding_cost                 # random LLaVA: 12 layers, hidden 768, 576 image tokens
"""

from __future__ import annotations

import argparse

import torch

import mmlens
from benchmarks.common import image, median_time, mid_llava


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--lengths", default="4,16,32", help="answer lengths (max_new_tokens)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lm = mid_llava(layers=args.layers, hidden=args.hidden, image_size=args.image_size)
    img, prompt = image(args.image_size), "what color is the shape in the image ?"
    print(f"model: random LLaVA, {args.layers} layers, hidden {args.hidden}, "
          f"{lm.prepare(img, prompt).prompt_len} prompt positions; one thread")
    print("| answer tokens | plain generate (s) | generate_explained (s) | ratio | goal |")
    print("|---:|---:|---:|---:|---|")
    for n in [int(x) for x in args.lengths.split(",")]:
        got = len(lm.generate(img, prompt, max_new_tokens=n).token_ids)
        plain = median_time(lambda n=n: lm.generate(img, prompt, max_new_tokens=n), repeats=args.repeats)
        explained = median_time(lambda n=n: mmlens.generate_explained(lm, img, prompt, max_new_tokens=n),
                                repeats=args.repeats)
        print(f"| {got} | {plain:.3f} | {explained:.3f} | {explained / plain:.2f}x | <= 3x |")


if __name__ == "__main__":
    main()
