"""Mitigations as decoding options that every family accepts, applied while the model generates greedily.

- :class:`VCD` (visual contrastive decoding, Leng et al. 2024): each step scores the image and a distorted
  copy in one batched forward and picks ``argmax (1 + alpha) l(image) - alpha l(distorted)`` among the tokens
  whose probability with the image is at least ``beta`` times the top one (the adaptive plausibility cut-off).
- :class:`PAI` (after Liu et al. 2024, "Paying more attention to image"): in the chosen layers the attention
  of the answer's queries (and the last prompt position) to the image tokens is multiplied by ``1 + alpha``
  before the softmax renormalises (a ``log(1 + alpha)`` logit bias through the attention-edit machinery;
  the paper adds ``alpha |s|`` to the logits instead).
- :class:`Steering`: ``scale * vector`` added to the residual stream leaving one layer at every position
  (vectors from :func:`mmlens.inference.steering.steering_vector`).

Every option is checked when built (one line, nothing generated); hooks are removed on exit, also on errors.

>>> VCD(alpha=-1.0)
Traceback (most recent call last):
...
mmlens.errors.InputError: alpha=-1.0 is out of range: pass a number in [0.0, inf)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.inference.distort import DISTORTIONS, distorted_all
from mmlens.inference.steering import SteeringVector
from mmlens.model.batch import Generation
from mmlens.model.images import ImageLike
from mmlens.model.subject import Subject
from mmlens.perturb.scoring import perturbed_inputs
from mmlens.util.options import check_choice, check_float, check_int, select_indices


@dataclass(frozen=True)
class VCD:
    """Visual contrastive decoding: ``alpha >= 0`` (0 = plain greedy), cut-off ``beta`` in (0, 1]."""

    alpha: float = 1.0
    beta: float = 0.1
    distortion: str = "noise"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_float("alpha", self.alpha, 0.0))
        object.__setattr__(self, "beta", check_float("beta", self.beta, 0.0, 1.0, open_low=True))
        check_choice("distortion", self.distortion, DISTORTIONS)
        check_int("seed", self.seed, 0)


@dataclass(frozen=True)
class PAI:
    """Attention toward image tokens multiplied by ``1 + alpha`` (``alpha >= 0``) in ``layers`` (None = all)."""

    alpha: float = 0.5
    layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_float("alpha", self.alpha, 0.0))


@dataclass(frozen=True)
class Steering:
    """``scale * vector.vector`` added to ``lm.blocks.{vector.layer}.resid_post``."""

    vector: SteeringVector
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.vector, SteeringVector):
            raise InputError(f"steering vector has type {type(self.vector).__name__}: pass a SteeringVector "
                             "(mmlens.inference.steering.steering_vector or SteeringVector.load)")
        object.__setattr__(self, "scale", check_float("scale", self.scale, -1e4, 1e4))


def vcd_step(logits: torch.Tensor, distorted_logits: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """VCD's contrastive logits ``(1 + alpha) l - alpha l'``, ``-inf`` outside the plausible set
    ``{v : p(v | image) >= beta * max p(. | image)}`` (float32; last axis = vocabulary).

    >>> vcd_step(torch.tensor([2.0, 1.0, -5.0]), torch.tensor([2.0, 0.0, 0.0]), 1.0, 0.1)
    tensor([2., 2., -inf])
    """
    l, d = logits.float(), distorted_logits.float()
    contrast = (1 + alpha) * l - alpha * d
    plausible = l >= l.max(-1, keepdim=True).values + math.log(beta)
    return contrast.masked_fill(~plausible, float("-inf"))


@dataclass
class _Contrast(LogitsProcessor):
    """Row 0 = the image, row 1 = the distorted image: both rows take VCD's token (a forced choice)."""

    vcd: VCD
    steps: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        contrast = vcd_step(scores[0], scores[1], self.vcd.alpha, self.vcd.beta)
        self.steps.append(contrast.cpu())
        forced = torch.full_like(scores, float("-inf"))
        forced[:, int(contrast.argmax())] = 0.0
        return forced


@dataclass
class DecodedGeneration(Generation):
    """A :class:`Generation` with its decoding settings; ``step_logits[t]``: VCD's logits at step ``t``."""

    settings: dict = field(default_factory=dict)
    step_logits: list[torch.Tensor] = field(default_factory=list)


@register_method("vcd", leaf="training-inference/inference", tier="black-box", kind="decoding",
                 summary="visual contrastive decoding: logits with the image vs a distorted image, plausibility cut-off")
@register_method("pai", leaf="training-inference/inference", tier="intervention", kind="decoding",
                 summary="PAI-style decoding: attention toward image tokens re-weighted in chosen layers")
@register_method("steering", leaf="training-inference/inference", tier="intervention", kind="decoding",
                 summary="steering vector (grounded minus hallucinated mean activation) added at a layer")
@torch.no_grad()
def generate_with(
    subject: Subject,
    images: ImageLike | Sequence[ImageLike],
    prompt: str,
    max_new_tokens: int = 32,
    vcd: VCD | None = None,
    pai: PAI | None = None,
    steering: Steering | None = None,
) -> DecodedGeneration:
    """Greedy generation with any combination of the mitigations (none = :meth:`Subject.generate`).

    >>> out = generate_with(lm, "shapes.png", "is there a blue square?", vcd=VCD(alpha=1.0, beta=0.1))  # doctest: +SKIP
    >>> out.text, out.settings                                                                       # doctest: +SKIP
    """
    subject.require_language_model("generate_with (VCD, PAI, steering)")
    from mmlens.util.limits import OPTION_RANGES

    max_new_tokens = check_int("max_new_tokens", max_new_tokens, *OPTION_RANGES["max_new_tokens"])
    for option, kind in ((vcd, VCD), (pai, PAI), (steering, Steering)):
        if option is not None and not isinstance(option, kind):
            raise InputError(f"{kind.__name__.lower()}= takes a {kind.__name__}(...), not {type(option).__name__}")
    if pai is not None or steering is not None:
        subject.require("intervention")
    pai_layers = select_indices("PAI layers", list(pai.layers) if pai and pai.layers is not None else None,
                                subject.n_layers)
    if steering is not None:
        steering.vector.check(subject)
    batch = subject.prepare(images, prompt)
    if pai is not None and batch.in_key_space:
        raise InputError("pai re-weights attention to image tokens in the sequence, and this model's images are "
                         "cross-attention keys, where one bias on every key cancels in the softmax: use vcd or steering")
    budget = subject.token_budget(batch, max_new_tokens)
    processor = _Contrast(vcd) if vcd is not None else None
    if vcd is not None:
        inputs = perturbed_inputs(subject, batch, [batch.images, distorted_all(batch.images, vcd.distortion, vcd.seed)])
    else:
        inputs = batch.inputs
    with subject.trace() as tr:
        if pai is not None and pai.alpha > 0:
            queries = torch.arange(batch.prompt_len - 1, batch.prompt_len + budget)
            for layer in pai_layers:
                tr.block_attention(f"lm.blocks.{layer}.attn.weights", queries, batch.image_positions(),
                                   bias=math.log1p(pai.alpha))
        if steering is not None:
            tr.add(f"lm.blocks.{steering.vector.layer}.resid_post", steering.vector.vector, scale=steering.scale)
        extra = {"logits_processor": LogitsProcessorList([processor])} if processor is not None else {}
        out = subject.model.generate(**subject.model_inputs(inputs), max_new_tokens=budget, do_sample=False, **extra)
    gen = subject.generation(batch, out[0, batch.prompt_len:])
    settings = {"vcd": vars(vcd) if vcd else None,
                "pai": {"alpha": pai.alpha, "layers": pai_layers} if pai else None,
                "steering": {"layer": steering.vector.layer, "scale": steering.scale} if steering else None}
    return DecodedGeneration(text=gen.text, token_ids=gen.token_ids, tokens=gen.tokens, batch=gen.batch,
                             settings=settings, step_logits=processor.steps if processor else [])
