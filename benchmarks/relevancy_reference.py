"""How close mmlens ``relevancy`` is to the reference rule (Chefer et al. 2021 / LVLM-Interpret) on the demo model.

    python -m benchmarks.relevancy_reference [--n 40 --seed 7]

For each ShapesVQA sample (held-out seed) the demo model answers greedily; the target is the first answer
token. The reference is computed here from the definition, independently of mmlens's implementation: every
layer's eager attention from ``output_attentions`` with ``retain_grad``, the gradient of the answer token's
*logit*, then ``R = I; R += mean_heads(clamp(grad * attn, min=0)) @ R`` per layer (float64), row = the query
position. Reported: Spearman correlation over the image-token positions between that row and mmlens
``relevancy`` with ``objective="log_prob"`` (the old default) and with the default (``"logit"``).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from scipy.stats import spearmanr

import mmlens
from mmlens.data import ShapesVQA


def reference_row(lm: mmlens.Subject, batch, q: int, token: int) -> np.ndarray:
    model = lm.model
    saved = model.config.get_text_config()._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.enable_grad():
            out = model(**lm.model_inputs(batch), output_attentions=True, use_cache=False)
            for a in out.attentions:
                a.retain_grad()
            out.logits[0, q, token].backward()
    finally:
        model.set_attn_implementation(saved)
        model.zero_grad(set_to_none=True)
    n = batch.seq_len
    r = torch.eye(n, dtype=torch.float64)
    for a in out.attentions:
        r = r + (a.grad[0].double() * a[0].detach().double()).clamp(min=0).mean(0) @ r
    return (r - torch.eye(n, dtype=torch.float64))[q].numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7, help="ShapesVQA seed (7: the demo's held-out samples)")
    args = ap.parse_args()
    lm = mmlens.load("demo")
    rho: dict[str, list[float]] = {"log_prob": [], "logit": []}
    for s in ShapesVQA(image_size=64, seed=args.seed).samples(args.n):
        batch = lm.generate(s.image, s.question, max_new_tokens=3).batch
        if batch.answer_ids.numel() == 0:
            continue
        ref = reference_row(lm, batch, batch.prompt_len - 1, int(batch.answer_ids[0]))
        image = batch.image_positions().numpy()
        for objective in rho:
            options = {"objective": objective} if objective == "log_prob" else {}
            ex = mmlens.explain(lm, s.image, s.question, method="relevancy", answer=batch.answer_ids.tolist(),
                                **options)
            rho[objective].append(float(spearmanr(ex.position_scores[0, image], ref[image]).statistic))
    for objective, values in rho.items():
        label = "log_prob (old default)" if objective == "log_prob" else "logit (new default)"
        print(f"relevancy objective={label}: Spearman vs reference over image tokens, n={len(values)}: "
              f"mean {statistics.fmean(values):.3f}, median {statistics.median(values):.3f}, "
              f"min {min(values):.3f}")


if __name__ == "__main__":
    main()
