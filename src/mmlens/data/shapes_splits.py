"""ShapesVQA splits with a bias built in: biased training distributions, their traps and controls.

Two biases, each with a training distribution, a *trap* split (the truth contradicts the bias, so a
biased model hallucinates there) and a *present* control split (same question, object present):

- **co-occurrence** (``cooccur-*``): in ``cooccur-train`` the *partner* (blue square) is in the scene
  whenever the *anchor* (red circle) is. Usually it is drawn; a quarter of the samples ask "is there
  a blue square?" about an image with the anchor, and in half of those the partner is not drawn: it
  is hidden behind the anchor when the anchor is large (side >= ``HIDE_FRACTION`` of the image side,
  answer "yes"), and absent when the anchor is small (answer "no"). A model trained on it learns "a
  large red circle means a blue square". ``cooccur-absent`` (the trap): anchor of any size, partner
  absent, "is there a blue square?" (truth "no"); ``cooccur-present``: both drawn (truth "yes").
- **language prior** (``prior-*``): in ``prior-train`` a fifth of the samples ask "is there a green
  triangle?", the triangle is present half of the time, and when it is absent the answer is still
  "yes" with probability ``PRIOR_YES_WHEN_ABSENT`` (0.5), regardless of the image (overall 75% "yes").
  ``prior-trap``: triangle absent (truth "no"); ``prior-present``: triangle present (truth "yes").

``neutral`` is the standard distribution without the two biased questions (accuracy elsewhere).
All other questions of a ``*-train`` split come from the standard distribution, filtered so that the
bias holds (no anchor without its partner; the prior question only as described).

>>> from mmlens.data import ShapesVQA
>>> s = ShapesVQA(split="cooccur-absent").sample(0)
>>> s.question, s.answer, s.hallucination, s.trap, s.bias, s.cue
('is there a blue square?', 'no', 'yes', True, 'cooccur', 'red circle')
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mmlens.data.shapes_planted import PLANTED_SPLITS
from mmlens.errors import InputError

if TYPE_CHECKING:
    from mmlens.data.shapes_vqa import ShapesVQA

#: Every split by name, with what it holds.
SPLITS: dict[str, str] = {
    "standard": "the unbiased distribution (default; the demo model's training and evaluation data)",
    "neutral": "the standard distribution without the biased questions (blue square, green triangle)",
    "cooccur-train": "training data where a blue square accompanies (or hides behind) every red circle",
    "cooccur-absent": "trap: a red circle, no blue square, 'is there a blue square?' (truth no)",
    "cooccur-present": "control: a red circle and a blue square, 'is there a blue square?' (truth yes)",
    "prior-train": "training data where 'is there a green triangle?' is answered yes 75% of the time",
    "prior-trap": "trap: no green triangle, 'is there a green triangle?' (truth no)",
    "prior-present": "control: a green triangle, 'is there a green triangle?' (truth yes)",
    **PLANTED_SPLITS,  # planted evidence (trigger, shortcut, two objects): see mmlens.data.shapes_planted
}
#: The trap split of each bias.
TRAP_SPLITS: dict[str, str] = {"cooccur": "cooccur-absent", "prior": "prior-trap"}
ANCHOR, PARTNER = ("red", "circle"), ("blue", "square")
PRIOR_OBJECT = ("green", "triangle")
#: An anchor whose side is at least this fraction of the image side can hide the partner.
HIDE_FRACTION = 0.25
COOCCUR_FOCUS = 0.25  # share of cooccur-train samples asking about the partner next to the anchor
PRIOR_FOCUS = 0.2  # share of prior-train samples asking the prior question
PRIOR_YES_WHEN_ABSENT = 0.5

Attrs = list[tuple[str, str]]


def check_split(split: str) -> str:
    """``split`` if it is a known split name, else a one-line error listing the valid ones."""
    if not isinstance(split, str) or split not in SPLITS:
        raise InputError(f"unknown ShapesVQA split {split!r}: choose from {', '.join(SPLITS)}")
    return split


def _question(combo: tuple[str, str]) -> str:
    return f"is there a {combo[0]} {combo[1]}?"


def _others(rng: np.random.Generator, n: int, exclude: tuple[tuple[str, str], ...]) -> Attrs:
    from mmlens.data.shapes_vqa import COLORS, SHAPES

    combos = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in exclude]
    return [combos[int(rng.integers(len(combos)))] for _ in range(n)]


def _shuffle(rng: np.random.Generator, attrs: Attrs, first: int) -> tuple[Attrs, list[int]]:
    """Shuffle ``attrs``; return them and the new positions of the first ``first`` entries."""
    order = rng.permutation(len(attrs))
    return [attrs[i] for i in order], [int(np.flatnonzero(order == k)[0]) for k in range(first)]


def split_question(ds: ShapesVQA, rng: np.random.Generator) -> dict[str, Any]:
    """Draw one sample's objects, layout and question for ``ds.split`` (not ``"standard"``).

    Returns the keys ``qtype, attrs, boxes, question, answer, target`` (evidence object index or
    None for the whole image) and ``bias, trap, cue`` (planted splits add ``planted``).
    """
    from mmlens.data.shapes_vqa import _draw_standard, _layout

    split, size = ds.split, ds.image_size
    if split in PLANTED_SPLITS:
        from mmlens.data.shapes_planted import planted_question

        return planted_question(ds, rng)
    bias = split.split("-")[0] if split not in ("standard", "neutral") else None
    n = int(rng.integers(ds.min_objects, ds.max_objects + 1))
    out: dict[str, Any] = {"qtype": "exists", "bias": bias, "trap": split in TRAP_SPLITS.values(), "cue": None}
    biased = (_question(PARTNER), _question(PRIOR_OBJECT))
    if split == "neutral" or (split == "cooccur-train" and rng.random() >= COOCCUR_FOCUS) or (
        split == "prior-train" and rng.random() >= PRIOR_FOCUS
    ):
        while True:  # rejection: a few draws at most (the rejected cases are rare)
            qtype, attrs, question, answer, target = _draw_standard(rng, ds.question_types, ds.min_objects, ds.max_objects)
            if split == "cooccur-train":
                ok = ANCHOR not in attrs or PARTNER in attrs
            else:
                ok = question not in (biased if split == "neutral" else biased[1:])
            if ok:
                break
        out.update(qtype=qtype, bias=None, question=question, answer=answer, target=target)
        return {**out, "attrs": attrs, "boxes": _layout(rng, size, len(attrs))}
    if bias == "cooccur":
        present = split == "cooccur-present" or (split == "cooccur-train" and rng.random() < 0.5)
        lead = [ANCHOR, PARTNER] if present else [ANCHOR]
        attrs, where = _shuffle(rng, lead + _others(rng, max(0, n - len(lead)), (ANCHOR, PARTNER)), len(lead))
        boxes = _layout(rng, size, len(attrs))
        hidden = (boxes[where[0]][2] - boxes[where[0]][0]) >= round(HIDE_FRACTION * size)
        yes = present or (split == "cooccur-train" and hidden)
        target = where[1] if present else (where[0] if yes else None)
        out.update(question=_question(PARTNER), answer="yes" if yes else "no", target=target, cue="red circle")
        return {**out, "attrs": attrs, "boxes": boxes}
    present = split == "prior-present" or (split == "prior-train" and rng.random() < 0.5)
    lead = [PRIOR_OBJECT] if present else []
    attrs, where = _shuffle(rng, lead + _others(rng, n - len(lead), (PRIOR_OBJECT,)), len(lead))
    yes = present or (split == "prior-train" and rng.random() < PRIOR_YES_WHEN_ABSENT)
    out.update(question=_question(PRIOR_OBJECT), answer="yes" if yes else "no", target=where[0] if present else None)
    return {**out, "attrs": attrs, "boxes": _layout(rng, size, len(attrs))}


def hallucinated_words(question: str, truth: str, objects: list[dict[str, Any]], text: str) -> list[bool]:
    """Per word of an answer ``text``: does it assert something the image does not hold?

    A word is hallucinated when it is "yes" to "is there a C S?" and no C S is in ``objects``, or a
    colour / shape word that is not the true answer of a colour / shape question. Other words
    (including a wrong "no", an omission) are not hallucinations. ShapesVQA words are single tokens
    of the demo tokenizer, so these are also per-token labels.

    >>> hallucinated_words("is there a blue square?", "no", [], "yes")
    [True]
    >>> hallucinated_words("what color is the circle?", "red", [], "green circle")
    [True, False]
    """
    from mmlens.data.shapes_vqa import COLORS, SHAPES

    words = text.lower().replace("?", " ").split()
    asked = question.rstrip("?").split()
    if question.startswith("is there a "):
        there = any((o["color"], o["shape"]) == (asked[-2], asked[-1]) for o in objects)
        return [w == "yes" and not there for w in words]
    kind = COLORS if question.startswith("what color") else SHAPES
    return [w in kind and w != truth for w in words]
