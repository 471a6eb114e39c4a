"""ShapesVQA: seeded images of coloured shapes with questions whose answer depends on one object.

Every sample carries the exact pixel mask of the object the answer depends on, so attribution
maps can be *scored* against ground truth, not just drawn.

>>> ds = ShapesVQA(image_size=64, seed=0)
>>> s = ds.sample(0)
>>> s.image.size, s.mask.shape, s.question_type in QUESTION_TYPES
((64, 64), (64, 64), True)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mmlens.errors import InputError
from mmlens.util.options import check_int

QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "exists")

#: Object colours (exact RGB; every colour has a channel <= 60, the background none below 190).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 200, 30),
    "purple": (140, 50, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

_QUESTION_WORDS = ("what", "color", "shape", "is", "the", "object", "there", "a", "yes", "no")
#: Every word that can appear in a question or an answer (lower case), plus "?".
VOCAB: tuple[str, ...] = (*_QUESTION_WORDS, *COLORS, *SHAPES, "?")

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 448
MAX_OBJECTS = 4
MAX_SAMPLES = 10_000_000
#: Object side as a fraction of the image side.
_SIZE_RANGE = (0.18, 0.30)
_BACKGROUND_RANGE = (200, 246)
_TEXTURE_AMPLITUDE = 8


@dataclass(frozen=True, eq=False)
class ShapesSample:
    """One ShapesVQA sample.

    ``mask`` (bool, H x W) holds exactly the pixels of the object the answer depends on and
    ``box`` is its bounding box ``(x0, y0, x1, y1)`` with exclusive ends; ``evidence`` is then
    ``"object"``. For an "exists" question answered "no" no single object is the evidence: the
    whole image is, so ``mask`` is all True, ``box`` is the full image and ``evidence`` is
    ``"image"``. ``objects`` lists every object as ``{"shape", "color", "box", "mask"}``.

    Bias fields (see :mod:`mmlens.data.shapes_splits`): ``split`` names the split; ``bias`` is
    ``"cooccur"`` / ``"prior"`` for a question about a biased object, else None; ``trap`` is True when
    the truth contradicts the bias (a biased model is expected to hallucinate); ``hallucination`` is
    the answer that would assert an object that is not there (``"yes"`` on every "is there ...?"
    question whose truth is "no", else None); ``cue`` names the object whose presence triggers the
    bias (``"red circle"`` for co-occurrence), else None. Per-word / per-token labels of a generated
    answer come from :meth:`hallucinated_words`.

    Planted-evidence fields (see :mod:`mmlens.data.shapes_planted`; None on other splits):
    ``model_evidence`` (bool, H x W) is the mask of what a model trained on the split's ``*-train``
    distribution actually answers from, ``model_evidence_kind`` names it (``"trigger"``, ``"cue"``,
    ``"objects"``, ``"object"``, ``"image"``) and ``planted_answer`` is what that model is expected to
    answer. Two-object questions (``question_type == "relation"``) have ``evidence == "objects"``.
    """

    image: Image.Image
    question: str
    answer: str
    mask: np.ndarray = field(repr=False)
    box: tuple[int, int, int, int]
    seed: int
    index: int
    question_type: str
    evidence: str
    objects: list[dict[str, Any]] = field(repr=False)
    split: str = "standard"
    bias: str | None = None
    trap: bool = False
    hallucination: str | None = None
    cue: str | None = None
    model_evidence: np.ndarray | None = field(default=None, repr=False)
    model_evidence_kind: str | None = None
    planted_answer: str | None = None

    def hallucinated_words(self, text: str) -> list[bool]:
        """Per word of a generated answer: True where it asserts what the image does not hold.

        >>> s = ShapesVQA(split="prior-trap").sample(0)
        >>> s.hallucinated_words("yes"), s.hallucinated_words("no")
        ([True], [False])
        """
        from mmlens.data.shapes_splits import hallucinated_words

        return hallucinated_words(self.question, self.answer, self.objects, text)


class ShapesVQA:
    """Deterministic generator of ShapesVQA samples: ``sample(i)`` depends only on ``(seed, i)``.

    >>> ds = ShapesVQA(seed=3, question_types=("color",))
    >>> s = ds.sample(7)
    >>> s.question.startswith("what color is the"), s.answer in COLORS
    (True, True)
    >>> ds.sample(7).question == s.question
    True
    """

    def __init__(
        self,
        image_size: int = 64,
        seed: int = 0,
        question_types: Iterable[str] = QUESTION_TYPES,
        min_objects: int = 2,
        max_objects: int = 4,
        split: str = "standard",
    ) -> None:
        from mmlens.data.shapes_splits import check_split

        self.image_size = check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        self.seed = check_int("seed", seed, 0, 2**63 - 1)
        self.question_types = _check_question_types(question_types)
        self.min_objects = check_int("min_objects", min_objects, 1, MAX_OBJECTS)
        self.max_objects = check_int("max_objects", max_objects, self.min_objects, MAX_OBJECTS)
        self.split = check_split(split)

    def __repr__(self) -> str:
        return (
            f"ShapesVQA(image_size={self.image_size}, seed={self.seed}, "
            f"question_types={self.question_types}, min_objects={self.min_objects}, "
            f"max_objects={self.max_objects}, split={self.split!r})"
        )

    def sample(self, index: int) -> ShapesSample:
        """Return sample ``index`` (any non-negative int), the same for the same ``(seed, index, split)``."""
        index = check_int("index", index, 0, 2**63 - 1)
        rng = np.random.default_rng([self.seed, index])
        extra: dict[str, Any] = {"split": self.split}
        planted = None
        if self.split == "standard":
            qtype, attrs, question, answer, target = _draw_standard(
                rng, self.question_types, self.min_objects, self.max_objects
            )
            boxes = _layout(rng, self.image_size, len(attrs))
        else:
            from mmlens.data.shapes_splits import split_question

            drawn = split_question(self, rng)
            qtype, attrs, boxes, question, answer, target = (
                drawn[k] for k in ("qtype", "attrs", "boxes", "question", "answer", "target")
            )
            extra.update(bias=drawn["bias"], trap=drawn["trap"], cue=drawn["cue"])
            planted = drawn.get("planted")
        if qtype == "exists" and answer == "no":
            extra["hallucination"] = "yes"
        image, masks = _render(rng, self.image_size, attrs, boxes)
        objects = [
            {"shape": shape, "color": color, "box": _mask_box(m), "mask": m}
            for (color, shape), m in zip(attrs, masks, strict=True)
        ]
        if target is None:
            mask = np.ones((self.image_size, self.image_size), dtype=bool)
            box, evidence = (0, 0, self.image_size, self.image_size), "image"
        else:
            mask, box, evidence = masks[target], objects[target]["box"], "object"
        if planted is not None:
            from mmlens.data.shapes_planted import finish_planted

            image, mask, fields = finish_planted(planted, image, masks, mask)
            extra.update(fields)
            if fields["model_evidence_kind"] == "objects":
                box, evidence = _mask_box(mask), "objects"
        return ShapesSample(
            image=image,
            question=question,
            answer=answer,
            mask=mask,
            box=box,
            seed=self.seed,
            index=index,
            question_type=qtype,
            evidence=evidence,
            objects=objects,
            **extra,
        )

    def samples(self, n: int, start: int = 0) -> Iterator[ShapesSample]:
        """Yield samples ``start .. start + n - 1``.

        >>> [s.index for s in ShapesVQA().samples(3, start=5)]
        [5, 6, 7]
        """
        n = check_int("n", n, 0, MAX_SAMPLES)
        start = check_int("start", start, 0, 2**63 - 1)
        return (self.sample(i) for i in range(start, start + n))


# --------------------------------------------------------------------------- validation


def _check_question_types(question_types: Iterable[str]) -> tuple[str, ...]:
    types = (question_types,) if isinstance(question_types, str) else tuple(question_types)
    unknown = [t for t in types if t not in QUESTION_TYPES]
    if unknown or not types:
        got = ", ".join(map(repr, unknown)) if unknown else "none"
        raise InputError(f"unknown question type {got}: choose from {', '.join(QUESTION_TYPES)}")
    return tuple(dict.fromkeys(types))


# --------------------------------------------------------------------------- questions


def _choice(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _draw_standard(
    rng: np.random.Generator, question_types: Sequence[str], min_objects: int, max_objects: int
) -> tuple[str, list[tuple[str, str]], str, str, int | None]:
    """One question of the standard distribution: ``(qtype, attrs, question, answer, target)``."""
    qtype = question_types[int(rng.integers(len(question_types)))]
    n_objects = int(rng.integers(min_objects, max_objects + 1))
    return (qtype, *_make_question(rng, qtype, n_objects))


def _make_question(
    rng: np.random.Generator, qtype: str, n_objects: int
) -> tuple[list[tuple[str, str]], str, str, int | None]:
    """Pick object attributes ``[(color, shape)]`` and a question about one of them.

    Returns ``(attrs, question, answer, target)``; ``target`` is the evidence object's index,
    or None when the whole image is the evidence (an "exists" question answered "no").
    """
    colors, shapes = list(COLORS), list(SHAPES)
    target = (_choice(rng, colors), _choice(rng, shapes))
    if qtype == "color":
        other_shapes = [s for s in shapes if s != target[1]]  # the asked shape is unique
        others = [(_choice(rng, colors), _choice(rng, other_shapes)) for _ in range(n_objects - 1)]
        question, answer = f"what color is the {target[1]}?", target[0]
    elif qtype == "shape":
        other_colors = [c for c in colors if c != target[0]]  # the asked colour is unique
        others = [(_choice(rng, other_colors), _choice(rng, shapes)) for _ in range(n_objects - 1)]
        question, answer = f"what shape is the {target[0]} object?", target[1]
    elif rng.random() < 0.5:  # exists, answer yes: the asked combination is unique
        combos = [(c, s) for c in colors for s in shapes if (c, s) != target]
        others = [_choice(rng, combos) for _ in range(n_objects - 1)]
        question, answer = f"is there a {target[0]} {target[1]}?", "yes"
    else:  # exists, answer no
        attrs = [(_choice(rng, colors), _choice(rng, shapes)) for _ in range(n_objects)]
        color, shape = _absent_combo(rng, attrs)
        return attrs, f"is there a {color} {shape}?", "no", None
    attrs = [target, *others]
    order = rng.permutation(n_objects)
    attrs = [attrs[i] for i in order]
    return attrs, question, answer, int(np.flatnonzero(order == 0)[0])


def _absent_combo(rng: np.random.Generator, attrs: list[tuple[str, str]]) -> tuple[str, str]:
    """A (color, shape) not in the image; half the time one that shares an attribute with an object."""
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in attrs]
    present_c, present_s = {c for c, _ in attrs}, {s for _, s in attrs}
    hard = [(c, s) for c, s in absent if c in present_c or s in present_s]
    return _choice(rng, hard if hard and rng.random() < 0.5 else absent)


# --------------------------------------------------------------------------- drawing


def _layout(rng: np.random.Generator, size: int, n: int) -> list[tuple[int, int, int, int]]:
    """Square boxes ``(x0, y0, x1, y1)`` (exclusive ends) that do not touch, with a margin."""
    lo, hi = (max(4, round(f * size)) for f in _SIZE_RANGE)
    margin = max(1, size // 32)
    while True:  # with <= 4 objects of <= 30% of the side, a layout is found within a few tries
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(100 * n):
            side = int(rng.integers(lo, hi + 1))
            x0, y0 = (int(v) for v in rng.integers(1, size - side, size=2))
            box = (x0, y0, x0 + side, y0 + side)
            if all(_apart(box, b, margin) for b in boxes):
                boxes.append(box)
                if len(boxes) == n:
                    return boxes


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int) -> bool:
    return a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]


def _shape_mask(size: int, shape: str, box: tuple[int, int, int, int]) -> np.ndarray:
    """Exact (aliased) pixel mask of ``shape`` inscribed in ``box``."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box[0], box[1], box[2] - 1, box[3] - 1  # PIL coordinates are inclusive
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=255)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=255)
    return np.asarray(canvas) > 0


def _render(
    rng: np.random.Generator,
    size: int,
    attrs: list[tuple[str, str]],
    boxes: list[tuple[int, int, int, int]],
) -> tuple[Image.Image, list[np.ndarray]]:
    """Draw the objects on a plain or lightly textured light background."""
    base = rng.integers(*_BACKGROUND_RANGE, size=3)
    pixels = np.broadcast_to(base, (size, size, 3)).astype(np.int16)
    if rng.random() < 0.5:
        pixels = pixels + rng.integers(-_TEXTURE_AMPLITUDE, _TEXTURE_AMPLITUDE + 1, size=(size, size, 1))
    pixels = pixels.clip(0, 255).astype(np.uint8)
    masks = []
    for (color, shape), box in zip(attrs, boxes, strict=True):
        mask = _shape_mask(size, shape, box)
        pixels[mask] = COLORS[color]
        masks.append(mask)
    return Image.fromarray(pixels, "RGB"), masks


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
