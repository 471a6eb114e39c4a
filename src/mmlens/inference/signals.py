"""Per-token grounding signals of a generated answer, for every family, at about the cost of generating it.

:func:`generate_explained` generates the answer greedily with captures installed (one query row per step:
each layer's residual stream and its attention row over the image tokens, and the log-probs), then runs
ONE teacher-forced forward of the answer with the distorted image. With ``answer=`` given, the image and
the distorted image share one batched teacher-forced forward instead. Per answer token ``j``:

- ``visual_reliance``: ``log p(token | image) - log p(token | distorted image)``;
- ``log_prob``: ``log p(token | image)``;
- ``image_attention``: attention share on image tokens (mean over heads; per layer in ``layers``, mean);
- ``lens_first_top1`` / ``lens_entropy``: first layer whose logit lens ranks the token first, and the lens
  distribution's entropy (per layer in ``layers``, mean over layers);
- ``map_contrast``: the token's attention map over the image (mean over layers) on image content minus on
  background, divided by its mean (content: pixels far from the image's median colour).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmlens.catalog import register_method
from mmlens.inference.distort import DISTORTIONS, distorted_all
from mmlens.inference.result import GroundingResult
from mmlens.model.batch import Batch
from mmlens.model.images import ImageLike
from mmlens.model.subject import Subject
from mmlens.perturb.scoring import perturbed_inputs
from mmlens.util.options import check_choice, check_int

#: a pixel is image content when a channel differs this much from the image's median colour
CONTENT_THRESHOLD = 48


@register_method("grounding_signals", leaf="training-inference/inference", tier="activations",
                 summary="per generated token: visual reliance, image-attention share, logit-lens features, "
                         "map-content contrast", kind="analysis")
@torch.no_grad()
def generate_explained(
    subject: Subject,
    images: ImageLike | Sequence[ImageLike],
    prompt: str,
    max_new_tokens: int = 32,
    answer: str | Sequence[int] | None = None,
    distortion: str = "noise",
    seed: int = 0,
) -> GroundingResult:
    """Generate (or teacher-force ``answer``) and return every answer token with its grounding signals.

    >>> import mmlens                                                        # doctest: +SKIP
    >>> r = mmlens.generate_explained(lm, "shapes.png", "is there a red circle?")   # doctest: +SKIP
    >>> r.signals["visual_reliance"]                                         # doctest: +SKIP
    """
    subject.require_language_model("generate_explained (grounding signals)")
    from mmlens.util.limits import OPTION_RANGES

    subject.require("activations")
    check_choice("distortion", distortion, DISTORTIONS)
    seed = check_int("seed", seed, 0)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, *OPTION_RANGES["max_new_tokens"])
    batch = subject.prepare(images, prompt, answer=answer)
    batch.require_sequence_images("grounding signals (generate_explained, mmlens generate)",
                                  "use generate_with(vcd=VCD()) (mmlens generate --vcd-alpha) or mmlens.explain")
    image_pos = batch.image_positions()
    bad = distorted_all(batch.images, distortion, seed)
    n_layers = subject.n_layers
    with subject.trace() as tr:
        if answer is None:
            rows = torch.tensor([-1])  # the newest query of every call: the prefill's last row, then each step's
        else:
            rows = batch.answer_positions - 1
        tr.capture("lm.blocks.*.resid_post", reduce=lambda h: h[0, rows.to(h.device)].float())
        tr.capture_attention("lm.blocks.*.attn.weights", rows=rows,
                             reduce=lambda w: w[0, :, :, image_pos.to(w.device)].mean(0))
        tr.capture("lm.logits", reduce=lambda t: t[:, rows.to(t.device)].float().log_softmax(-1))
        if answer is None:
            gen = subject.generate(batch.visual_input(), prompt, max_new_tokens=max_new_tokens)
            batch = gen.batch
        else:
            subject.model(**subject.model_inputs(perturbed_inputs(subject, batch, [batch.images, bad])),
                          use_cache=False)
        n = int(batch.answer_ids.numel())
        resid = torch.stack([torch.cat(tr.all(f"lm.blocks.{i}.resid_post"))[:n] for i in range(n_layers)])
        attn = torch.stack([torch.cat(tr.all(f"lm.blocks.{i}.attn.weights"))[:n] for i in range(n_layers)])
        logps = torch.cat(tr.all("lm.logits"), dim=1)
    ids = batch.answer_ids
    lp = logps[0, :n].gather(-1, ids[:, None].to(logps.device))[:, 0].cpu()
    if answer is None:  # generated: the distorted run scores the answer afterwards (nothing when it is empty)
        lp_bad = _distorted_log_probs(subject, batch, bad) if n else lp
    else:
        lp_bad = logps[1, :n].gather(-1, ids[:, None].to(logps.device))[:, 0].cpu()
    first, entropy = _lens_features(subject, resid, ids)
    share = attn.sum(-1).cpu()  # (layers, n)
    signals = {
        "visual_reliance": (lp - lp_bad).tolist(),
        "log_prob": lp.tolist(),
        "image_attention": share.mean(0).tolist(),
        "lens_first_top1": first.float().tolist(),
        "lens_entropy": entropy.mean(0).tolist(),
        "map_contrast": map_contrast(batch, attn.mean(0).cpu()).tolist(),
    }
    return GroundingResult(
        model=subject.model_id, prompt=prompt, answer=batch.answer or "",
        tokens=subject.tokenizer.convert_ids_to_tokens(ids.tolist()), token_ids=ids.tolist(), signals=signals,
        layers={"image_attention": share.T.tolist(), "lens_entropy": entropy.T.tolist()},
        meta={"distortion": distortion, "seed": seed, "teacher_forced": answer is not None, "layers": n_layers},
    )


def _distorted_log_probs(subject: Subject, batch: Batch, bad: list) -> torch.Tensor:
    """Answer-token log-probs of one teacher-forced forward with the distorted images (answer logits only)."""
    import inspect

    inputs = subject.model_inputs(perturbed_inputs(subject, batch, [bad]))
    n = int(batch.answer_ids.numel())
    if "logits_to_keep" in inspect.signature(subject.model.forward).parameters:
        inputs["logits_to_keep"] = n + 1
    logits = subject.model(**inputs, use_cache=False).logits[0, -(n + 1):-1].float().log_softmax(-1)
    return logits.gather(-1, batch.answer_ids[:, None].to(logits.device))[:, 0].cpu()


def _lens_features(subject: Subject, resid: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first layer ranking each token first (``layers`` if none), per-layer entropy ``(layers, n)``)."""
    parts = subject.adapter.parts()
    n_layers, n = resid.shape[:2]
    if n == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(n_layers, 0)
    dtype = next(subject.model.parameters()).dtype
    logits = parts.unembed(parts.lm_norm(resid.to(subject.device, dtype))).float()
    logp = logits.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1).cpu()
    top = (logits.argmax(-1).cpu() == ids[None]).int()  # (layers, n)
    first = torch.where(top.any(0), top.argmax(0), torch.full((n,), n_layers))
    return first, entropy


def content_fractions(batch: Batch, threshold: int = CONTENT_THRESHOLD) -> dict[int, float]:
    """Share of "content" pixels (far from the image's median colour) in each image token's box."""
    out: dict[int, float] = {}
    for geo in batch.geometry:
        arr = np.asarray(batch.images[geo.image_index].convert("RGB"), dtype=np.int32)
        median = np.median(arr.reshape(-1, 3), axis=0)
        mask = (np.abs(arr - median).max(-1) > threshold).astype(np.float64)
        integral = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        h, w = mask.shape
        for pos, boxes in geo.position_boxes().items():
            total = area = 0.0
            for x0, y0, x1, y1 in boxes:
                a, b = int(np.clip(round(x0), 0, w)), int(np.clip(round(x1), 0, w))
                c, d = int(np.clip(round(y0), 0, h)), int(np.clip(round(y1), 0, h))
                if b > a and d > c:
                    total += integral[d, b] - integral[c, b] - integral[d, a] + integral[c, a]
                    area += (b - a) * (d - c)
            out[pos] = out.get(pos, 0.0) + (total / area if area else 0.0)
    return out


def map_contrast(batch: Batch, maps: torch.Tensor) -> torch.Tensor:
    """Per answer token: (mean of its image-token map on content - on background) / its mean.

    ``maps``: ``(n_tokens, n_image_positions)`` over ``batch.image_positions()`` (in that order). Zero when
    the image has no content or no background."""
    fractions = content_fractions(batch)
    positions = batch.image_positions().tolist()
    c = torch.tensor([fractions.get(p, float("nan")) for p in positions])
    keep = ~c.isnan()  # separators (no pixels) out
    c, m = c[keep], maps[:, keep].float()
    if m.shape[0] == 0 or c.sum() <= 0 or (1 - c).sum() <= 0:
        return torch.zeros(maps.shape[0])
    on = (m * c).sum(-1) / c.sum()
    off = (m * (1 - c)).sum(-1) / (1 - c).sum()
    return (on - off) / m.mean(-1).clamp_min(1e-12)
