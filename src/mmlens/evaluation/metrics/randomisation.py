"""Model-randomisation sanity check (Adebayo et al. 2018): an explanation of a model must change when the
model's weights are destroyed.

Cascading randomisation follows what the model reads, from the output down (Adebayo et al. start at the
logits layer): the unembedding (``lm_head``), the language model's blocks from the top block down, the token
embeddings (the bottom of the text path; one step with the unembedding when the two are tied), the projector,
the vision blocks whose output the language model reads, from the top down, then the vision embedding (patch
and position embeddings: without it, a map can still follow the pixels through the untouched patch
embedding). Vision blocks the language model never reads are skipped: with ``vision_feature_layer=-2``
(LLaVA) the last vision block's output is unused, so randomising it would be a step that changes nothing
(:func:`unread_vision_blocks` names them). Each step re-initialises one more block (all earlier ones stay
random). After each step the same method runs again on the same input (same answer tokens, target, seed and
options), and the Spearman rank correlation between the original image map and the new one is recorded. A
method *passes* when the correlation at the end of the cascade is below ``threshold``.

Re-initialisation: every parameter tensor of the block is replaced by a seeded normal with the tensor's own
mean and standard deviation (weight matrices keep their scale; norm gains, whose standard deviation is 0,
keep their value instead of collapsing to 0, which would switch the block off rather than randomise it).
Not randomised: the final norm and the vision tower's standalone norms (a gain has no ranking to destroy)
and LLaVA-NeXT's ``image_newline`` vector. The model's weights are restored exactly on every exit path,
exceptions and interrupts included.

Correlation: on the absolute values of the pixel maps by default (a map whose signs flip but whose
magnitudes keep their ranks counts as unchanged: the stricter reading); ``absolute=False`` uses signed maps.
Degenerate maps: two constant maps correlate 1 (the map did not change: the check fails), a constant and a
varying map 0.

>>> out = randomisation(lm, mmlens.explain(lm, img, "what color?", method="saliency", answer="red"))  # doctest: +SKIP
>>> out.steps[:2], out.correlations[-1], out.passed                                                # doctest: +SKIP
(['lm.unembed', 'lm.blocks.1'], 0.04, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mmlens.errors import InputError
from mmlens.hooks.points import weights_of
from mmlens.evaluation.registry import register_metric
from mmlens.model.subject import Subject
from mmlens.perturb.scoring import check_int
from mmlens.results.explanation import Explanation, TargetKey


@dataclass
class RandomisationScore:
    """Spearman correlation between the original map and the map after each cascade step
    (``steps[j]`` names the block re-initialised at step ``j``); ``score`` = the final correlation."""

    steps: list[str]
    correlations: list[float]
    threshold: float
    absolute: bool

    @property
    def final(self) -> float:
        return self.correlations[-1] if self.correlations else float("nan")

    @property
    def score(self) -> float:
        return self.final

    @property
    def passed(self) -> bool:
        """The map changed: the final correlation is below the threshold (False when it is NaN)."""
        return bool(self.final < self.threshold)

    def __float__(self) -> float:
        return float(self.final)


def vision_blocks_read(subject: Subject) -> int:
    """How many vision blocks, from the bottom, feed the language model: all of them, unless the config's
    ``vision_feature_layer`` picks an earlier hidden state (index ``L`` of ``hidden_states``, whose entry 0 is
    the embedding output, so ``L >= 0`` reads ``L`` blocks and ``L < 0`` reads ``n + 1 + L``; a list of layers
    reads up to the deepest)."""
    n = len(subject.adapter.parts().vision_blocks or [])
    layer = getattr(subject.model.config, "vision_feature_layer", None)
    if layer is None:
        return n
    layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    return min(max(int(x) if int(x) >= 0 else n + 1 + int(x) for x in layers), n)


def unread_vision_blocks(subject: Subject) -> list[str]:
    """Names of the vision blocks the language model never reads (left out of the cascade).

    >>> unread_vision_blocks(tiny_subject("llava"))          # vision_feature_layer=-2   # doctest: +SKIP
    ['vision.blocks.1']
    """
    n = len(subject.adapter.parts().vision_blocks or [])
    return [f"vision.blocks.{i}" for i in range(vision_blocks_read(subject), n)]


def cascade_blocks(subject: Subject) -> list[tuple[str, nn.Module]]:
    """The blocks in cascade order, from the output down: the unembedding, LM blocks top-down, the token
    embeddings (``"lm.unembed+embed"`` is one step when they are tied), the projector, the vision blocks the
    LM reads, top-down, then the vision embedding (patch embedding and position embeddings).

    >>> [name for name, _ in cascade_blocks(tiny_subject("llava"))]       # doctest: +SKIP
    ['lm.unembed', 'lm.blocks.1', 'lm.blocks.0', 'lm.embed', 'projector', 'vision.blocks.0', 'vision.embed']
    """
    if subject.adapter.dual_encoder:
        return tower_cascade(subject)
    parts = subject.adapter.parts()
    embed = subject.model.get_input_embeddings()
    tied = embed is not None and any(p is q for p in parts.unembed.parameters() for q in embed.parameters())
    out = [("lm.unembed+embed" if tied else "lm.unembed", parts.unembed)]
    out += [(f"lm.blocks.{i}", parts.lm_blocks[i]) for i in reversed(range(len(parts.lm_blocks)))]
    if embed is not None and not tied:
        out.append(("lm.embed", embed))
    if parts.projector is not None:
        out.append(("projector", parts.projector))
    vision = list(parts.vision_blocks or [])[: vision_blocks_read(subject)]
    out += [(f"vision.blocks.{i}", vision[i]) for i in reversed(range(len(vision)))]
    stem = weights_of(*parts.vision_stem) if parts.vision_stem else parts.vision_embed
    if stem is not None:
        out.append(("vision.embed", stem))
    return out


def tower_cascade(subject: Subject) -> list[tuple[str, nn.Module]]:
    """A dual encoder's cascade (CLIP, SigLIP): the heads (every weight outside the towers' blocks and embeddings:
    pooling, final norms, projections), then both towers' blocks top-down, block ``-k`` of each in one step,
    then both towers' embeddings.

    >>> [name for name, _ in tower_cascade(tiny_dual_subject("clip"))]      # doctest: +SKIP
    ['heads', 'vision.blocks.1+text.blocks.1', 'vision.blocks.0+text.blocks.0', 'vision.embed+text.embed']
    """
    parts = subject.adapter.parts()
    towers = {"vision": list(parts.vision_blocks or []), "text": list(parts.text_blocks or [])}
    stem = weights_of(*(parts.vision_stem or (parts.vision_embed,)), parts.text_embed)
    inner = {id(p) for m in [*towers["vision"], *towers["text"], stem] for p in m.parameters()}
    out = [("heads", weights_of(*[p for p in subject.model.parameters() if id(p) not in inner]))]
    for k in range(1, max(len(b) for b in towers.values()) + 1):
        step = [(f"{t}.blocks.{len(b) - k}", b[-k]) for t, b in towers.items() if k <= len(b)]
        out.append(("+".join(name for name, _ in step), weights_of(*[m for _, m in step])))
    return out + [("vision.embed+text.embed", stem)]


@contextmanager
def restored_weights(model: nn.Module) -> Iterator[dict[nn.Parameter, torch.Tensor]]:
    """Yield a dict to which callers add ``param -> saved copy`` before modifying ``param``; every saved
    parameter is copied back on exit (exceptions and interrupts too)."""
    saved: dict[nn.Parameter, torch.Tensor] = {}
    try:
        yield saved
    finally:
        with torch.no_grad():
            for param, copy in saved.items():
                param.copy_(copy.to(param.device))


def randomise_block(block: nn.Module, saved: dict[nn.Parameter, torch.Tensor], seed: int) -> None:
    """Re-initialise every parameter of ``block`` with a seeded normal of the tensor's own mean and std
    (saving each original into ``saved`` first)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in block.parameters():
            if param not in saved:
                saved[param] = param.detach().to("cpu", copy=True)
            data = param.detach().float()
            std = float(data.std()) if data.numel() > 1 else 0.0
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            param.copy_((float(data.mean()) + std * noise).to(param.device, param.dtype))


def rank_correlation(a: np.ndarray, b: np.ndarray, absolute: bool = True) -> float:
    """Spearman rank correlation of two maps (flattened; absolute values when ``absolute``). Two constant maps
    score 1, one constant map 0; NaN when a map holds NaN.

    >>> x = np.arange(16.0).reshape(4, 4)
    >>> rank_correlation(x, x ** 2), rank_correlation(x, -x, absolute=False)
    (1.0, -1.0)
    """
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"maps of {a.size} and {b.size} values cannot be compared: pass maps of one image")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    if absolute:
        a, b = np.abs(a), np.abs(b)
    const_a, const_b = np.ptp(a) == 0, np.ptp(b) == 0
    if const_a or const_b:
        return 1.0 if const_a and const_b else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).statistic)


@register_metric("randomisation", "randomisation", higher_is_better=False, needs_model=True,
                 summary="Spearman correlation between the map and the map of a cascade-randomised model "
                         "(unembedding, LM blocks top-down, token embeddings, projector, the vision blocks the LM "
                         "reads, vision embedding); a sound method drops below 0.5",
                 degenerate="fixed", degenerate_note="two constant maps correlate 1 (unchanged: fails), a "
                                                     "constant and a varying map 0")
def randomisation(
    subject: Subject,
    ex: Explanation,
    *,
    target: TargetKey = None,
    image: int = 0,
    threshold: float = 0.5,
    absolute: bool = True,
    max_steps: int | None = None,
    seed: int = 0,
) -> RandomisationScore:
    """Cascading randomisation of ``subject``'s weights, re-running ``ex``'s method after each step (lower
    final correlation is better; ``passed`` when it ends below ``threshold``). ``max_steps`` stops the cascade
    early. The weights are restored afterwards, also when the method raises.
    """
    from mmlens.evaluation.baselines import reexplain

    if not 0 < float(threshold) <= 1:
        raise InputError(f"threshold={threshold}: pass a correlation in (0, 1]")
    blocks = cascade_blocks(subject)
    if max_steps is not None:
        blocks = blocks[: check_int("max_steps", max_steps, 1)]
    t, i = ex._index(target), ex._image(image)
    original = ex.image_map(t, i)
    names, corrs = [], []
    with restored_weights(subject.model) as saved:
        for step, (name, block) in enumerate(blocks):
            randomise_block(block, saved, seed * 1_000_003 + step)
            new = reexplain(subject, ex)
            names.append(name)
            corrs.append(rank_correlation(original, new.image_map(t, i), absolute))
    return RandomisationScore(names, corrs, float(threshold), bool(absolute))
