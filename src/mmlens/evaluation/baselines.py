"""Baseline maps for the benchmark, and re-running an explanation (a method or a baseline) on new inputs.

Three pseudo-methods sit in every benchmark table so that a method's numbers can be read against what no
model knowledge achieves:

- ``baseline:random``: seeded uniform noise in [0, 1) (chance level of every metric);
- ``baseline:centre``: a Gaussian centred on the image, sigma = 1/4 of each side (objects are often central);
- ``baseline:uniform``: a constant map (every pixel ties).

:func:`baseline_explanation` turns a baseline into a real :class:`~mmlens.results.explanation.Explanation`, so every
metric treats methods and baselines alike; :func:`reexplain` runs the same method (or baseline), with the same
target, answer tokens, seed and options, on new images (the noisy copies of max-sensitivity) or on a modified
model (the randomised copies of the sanity check).

>>> int(centre_bias_map((5, 3)).argmax())   # (W, H) = (5, 3): peak in the middle pixel, row 1, column 2
7
>>> float(uniform_map((4, 2)).std()), random_map((4, 2), seed=0).shape
(0.0, (2, 4))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmlens.errors import InputError
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.results.explanation import Explanation

PREFIX = "baseline:"


def random_map(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``(H, W)`` uniform noise in [0, 1) for an image of PIL ``size`` ``(W, H)``, from ``default_rng(seed)``."""
    w, h = size
    return np.random.default_rng(seed).random((h, w)).astype(np.float32)


def centre_bias_map(size: tuple[int, int], sigma: float = 0.25) -> np.ndarray:
    """``(H, W)`` Gaussian centred on the image, standard deviation ``sigma`` times each side."""
    w, h = size
    ys = (np.arange(h) + 0.5 - h / 2) / (sigma * h)
    xs = (np.arange(w) + 0.5 - w / 2) / (sigma * w)
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)).astype(np.float32)


def uniform_map(size: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` map of ones: no pixel is preferred."""
    w, h = size
    return np.ones((h, w), dtype=np.float32)


#: name -> (map of an image of ``size`` given a seed)
BASELINES: dict[str, Callable[[tuple[int, int], int], np.ndarray]] = {
    "random": lambda size, seed: random_map(size, seed),
    "centre": lambda size, seed: centre_bias_map(size),
    "uniform": lambda size, seed: uniform_map(size),
}

BASELINE_NAMES: tuple[str, ...] = tuple(PREFIX + name for name in BASELINES)


def is_baseline(method: str) -> bool:
    return method.startswith(PREFIX)


def baseline_explanation(subject: Subject, batch: Batch, name: str, seed: int = 0) -> Explanation:
    """An :class:`Explanation` of ``batch``'s whole answer whose pixel maps are the baseline ``name``
    (``"random"``, ``"centre"``, ``"uniform"``, with or without the ``baseline:`` prefix); the image-token
    scores are the maps pooled over each token's pixels, so grid maps agree with pixel maps. Image ``i`` of
    the random baseline uses seed ``[seed, i]``.

    >>> ex = baseline_explanation(lm, lm.prepare(img, "what color?", answer="red"), "random", seed=1)  # doctest: +SKIP
    >>> ex.method, ex.image_map().shape                                                       # doctest: +SKIP
    ('baseline:random', (32, 32))
    """
    from mmlens.attribution.output import MethodOutput
    from mmlens.attribution.perturbation_masks import pool_to_positions
    from mmlens.explain import build_explanation
    from mmlens.model.targets import resolve_targets

    key = name[len(PREFIX):] if is_baseline(name) else name
    if key not in BASELINES:
        raise InputError(f"unknown baseline {name!r}: choose one of {', '.join(BASELINES)}")
    targets = resolve_targets(subject.tokenizer, batch, "answer")
    maps = [BASELINES[key](img.size, int(np.random.default_rng([seed, i]).integers(2**31)))
            for i, img in enumerate(batch.images)]
    scores = torch.zeros(1, batch.seq_len)
    for geom, heat in zip(batch.geometry, maps):
        if geom.space == "sequence":  # cross-attention keys: pooled by build_explanation
            pool_to_positions(geom, heat, scores[0])
    out = MethodOutput(position_scores=scores, pixel_maps=[maps])
    spec = {"target": "answer", "answer": batch.answer_ids.tolist(), "max_new_tokens": None}
    return build_explanation(subject, batch, targets, out, PREFIX + key, {}, seed, spec)


def answer_ids(subject: Subject, ex: Explanation) -> list[int]:
    """The token ids of ``ex``'s answer (from its stored answer tokens; the answer text as a fallback)."""
    answer = ex.metadata.get("answer")
    if isinstance(answer, list) and answer and all(isinstance(t, int) for t in answer):
        return [int(t) for t in answer]
    tok = subject.tokenizer
    ids = tok.convert_tokens_to_ids(list(ex.answer_tokens)) if ex.answer_tokens else []
    if ids and all(isinstance(t, int) for t in ids):
        return [int(t) for t in ids]
    if not ex.answer:
        raise InputError("this explanation holds no answer to re-score: explain with answer=... first")
    return subject.adapter.answer_ids(subject.adapter.prompt_text(ex.prompt, len(ex.images)), ex.answer)


def visual_input(ex: Explanation, images: Sequence[Image.Image] | None = None) -> Any:
    """``images`` (default: ``ex``'s) as ``ex`` was explained: an image list, or the frames of a video."""
    from mmlens.model.video import Video

    frames = list(images) if images is not None else list(ex.images)
    return Video(frames, float(ex.metadata["video"]["fps"])) if ex.is_video else frames


def answer_batch(subject: Subject, ex: Explanation, images: Sequence[Image.Image] | None = None) -> Batch:
    """The teacher-forced batch of ``ex`` (its prompt and answer tokens) with ``images`` (default: its own)."""
    return subject.prepare(visual_input(ex, images), ex.prompt, answer=answer_ids(subject, ex))


def reexplain(subject: Subject, ex: Explanation, images: Sequence[Image.Image] | None = None) -> Explanation:
    """Run ``ex``'s method (or baseline) again, same prompt, answer tokens, target, seed and options, on
    ``images`` (default: the same images) with ``subject`` as it is now.

    >>> noisy = reexplain(lm, ex, [noisy_image])                      # doctest: +SKIP
    """
    from mmlens.explain import explain

    seed = int(ex.metadata.get("seed", 0))
    if is_baseline(ex.method):
        return baseline_explanation(subject, answer_batch(subject, ex, images), ex.method, seed)
    target: Any = ex.metadata.get("target")
    if isinstance(target, list):
        target = tuple(target)
    options = dict(ex.metadata.get("options") or {})
    return explain(subject, visual_input(ex, images), ex.prompt, method=ex.method, target=target, answer=answer_ids(subject, ex), seed=seed, **options)
