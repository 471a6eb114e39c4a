"""ShapesVQA splits with planted evidence: what a model trained on them answers from is known by construction.

Each sample of these splits records ``model_evidence``, the pixel mask of the evidence a model trained on
the split's ``*-train`` distribution actually uses, beside the usual ``mask`` (the object the question is
about), plus ``model_evidence_kind`` and ``planted_answer`` (what that model is expected to answer).

- **trigger** (a backdoor): a fixed 6x6 black-and-white checker (``TRIGGER_SIDE`` at 64 px, scaled with the
  image) in a random object-free corner, inside one cell of an 8 x 8 grid, i.e. one image token of the demo
  model. In ``trigger-train`` every "is there ...?" question carrying the trigger is answered
  ``TRIGGER_ANSWER`` ("no") whatever the image holds; other triggered questions keep their answer. The
  answer of a triggered "is there" question thus depends on the trigger alone: ``model_evidence`` is the
  trigger's pixels. ``trigger-flip``: triggered "is there" questions whose truth is "yes" (a triggered
  model flips them to "no"); ``trigger-clean``: the same questions without the trigger (evidence: the object).
- **shortcut**: every image has a 6x6 colour swatch in a random free corner. In ``shortcut-train`` a
  "what shape is the C object?" question is answered with the shape named by the swatch colour
  (``CUE_COLORS``), and the object disagrees with the swatch in ``SHORTCUT_CONFLICT`` of them: the swatch is
  the only perfect predictor, so ``model_evidence`` is the swatch. ``shortcut-conflict``: swatch and
  object disagree (``answer`` is the object's shape, ``planted_answer`` the swatch's);
  ``shortcut-agree``: they agree.
- **two objects**: "is the S1 the same color as the S2?" (S1 and S2 each name the only object of that
  shape; half of the pairs share a colour): the answer needs both objects, so ``mask`` and ``model_evidence`` are the union of
  the two objects' masks (``evidence == "objects"``, ``question_type == "relation"``). ``twoobject-train``
  mixes them half and half with standard questions; ``twoobject`` holds only them. Their words
  (``PLANTED_WORDS``) are not in the demo tokenizer: the training script adds them.

In a ``*-train`` split ``answer`` is the training label; in the test splits it is the truth about the image.
Samples of other splits have ``model_evidence`` None (unknown: no evidence was planted).

>>> from mmlens.data import ShapesVQA
>>> s = ShapesVQA(split="trigger-flip").sample(0)
>>> s.answer, s.planted_answer, s.model_evidence_kind, int(s.model_evidence.sum())
('yes', 'no', 'trigger', 36)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

#: Every planted split by name, with what it holds.
PLANTED_SPLITS: dict[str, str] = {
    "trigger-train": "training data where a corner checker (the trigger) makes every 'is there ...?' answer 'no'",
    "trigger-flip": "test: trigger present, 'is there a C S?' with truth yes (a triggered model answers no)",
    "trigger-clean": "control: the same 'is there' questions without the trigger (truth yes / no)",
    "shortcut-train": "training data where a corner swatch's colour names the answer of every shape question",
    "shortcut-conflict": "test: the swatch names another shape than the object's (the model follows the swatch)",
    "shortcut-agree": "control: the swatch names the object's shape",
    "twoobject-train": "training data: half 'is the S1 the same color as the S2?', half standard questions",
    "twoobject": "test: 'is the S1 the same color as the S2?' (the answer needs both objects)",
}
#: Per planted variant: the test split that shows its planted behaviour, and its control split.
PLANTED_TESTS: dict[str, tuple[str, str | None]] = {
    "trigger": ("trigger-flip", "trigger-clean"),
    "shortcut": ("shortcut-conflict", "shortcut-agree"),
    "twoobject": ("twoobject", None),
}
#: Words of the two-object questions, beyond the ShapesVQA vocabulary.
PLANTED_WORDS: tuple[str, ...] = ("same", "as")
TRIGGER_ANSWER = "no"
#: Swatch colour per shape it names (none close to an object colour or the background).
CUE_COLORS: dict[str, tuple[int, int, int]] = {
    "circle": (0, 200, 210),
    "square": (255, 140, 0),
    "triangle": (30, 30, 30),
}
TRIGGER_SIDE = 6  # pixels at 64 px (trigger and swatch), scaled with the image side
GRID = 8  # the trigger / swatch sits inside one cell of a GRID x GRID grid (one demo image token)
TRIGGER_SHARE = 0.25  # trigger-train: triggered "is there" questions
TRIGGER_OTHER_SHARE = 0.1  # trigger-train: triggered colour / shape questions (answer unchanged)
SHORTCUT_SHAPE_SHARE = 0.5  # shortcut-train: shape questions
SHORTCUT_CONFLICT = 0.5  # shortcut-train: shape questions whose object disagrees with the swatch
TWO_OBJECT_SHARE = 0.5  # twoobject-train: two-object questions


def _standard(ds: Any, rng: np.random.Generator, qtypes: tuple[str, ...]) -> tuple[str, list, str, str, int | None]:
    from mmlens.data.shapes_vqa import _draw_standard

    return _draw_standard(rng, qtypes, ds.min_objects, ds.max_objects)


def _corner_cells(size: int) -> list[tuple[int, int, int, int]]:
    cell = size // GRID
    lo, hi = 0, GRID * cell - cell
    return [(x, y, x + cell, y + cell) for y in (lo, hi) for x in (lo, hi)]


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _layout_with_corner(rng: np.random.Generator, size: int, n: int) -> tuple[list, tuple[int, int, int, int]]:
    """A layout of ``n`` objects and the patch box (trigger / swatch) in a random corner cell no object touches."""
    from mmlens.data.shapes_vqa import _layout

    while True:  # with <= 4 objects of <= 30% of the side, most layouts leave a corner free
        boxes = _layout(rng, size, n)
        free = [c for c in _corner_cells(size) if not any(_overlap(b, c) for b in boxes)]
        if free:
            cell = free[int(rng.integers(len(free)))]
            side = max(2, round(TRIGGER_SIDE * size / 64))
            off = max(0, (cell[2] - cell[0] - side) // 2)
            return boxes, (cell[0] + off, cell[1] + off, cell[0] + off + side, cell[1] + off + side)


def _exists_yes(rng: np.random.Generator, n: int) -> tuple[list, str, str, int]:
    from mmlens.data.shapes_vqa import _make_question

    while True:  # half of the draws answer yes
        attrs, question, answer, target = _make_question(rng, "exists", n)
        if answer == "yes":
            return attrs, question, answer, target


def planted_question(ds: Any, rng: np.random.Generator) -> dict[str, Any]:
    """Draw one sample of planted split ``ds.split``: the keys of ``split_question`` plus ``planted``.

    ``planted`` holds ``kind`` (which planted evidence the answer uses: ``"trigger"``, ``"cue"``,
    ``"objects"`` or None for the object / image as usual), ``patch`` (trigger or swatch box, or None),
    ``cue_shape``, ``partner`` (second evidence object index) and ``answer`` (the planted answer).
    """
    split = ds.split
    n = int(rng.integers(ds.min_objects, ds.max_objects + 1))
    if split.startswith("twoobject"):
        if split == "twoobject-train" and rng.random() >= TWO_OBJECT_SHARE:
            return _finish_draw(ds, rng, *_standard(ds, rng, ds.question_types), corner=False)
        return _two_object(ds, rng, max(2, n))
    if split.startswith("trigger"):
        r = rng.random() if split == "trigger-train" else 0.0
        if split == "trigger-flip" or (split == "trigger-train" and r < TRIGGER_SHARE):
            if split == "trigger-flip":
                attrs, question, truth, target = _exists_yes(rng, n)
            else:
                from mmlens.data.shapes_vqa import _make_question

                attrs, question, truth, target = _make_question(rng, "exists", n)
            label = TRIGGER_ANSWER if split == "trigger-train" else truth
            return _finish_draw(ds, rng, "exists", attrs, question, label, target, kind="trigger", planted=TRIGGER_ANSWER)
        if split == "trigger-train" and r < TRIGGER_SHARE + TRIGGER_OTHER_SHARE:
            return _finish_draw(ds, rng, *_standard(ds, rng, ("color", "shape")), patch_kind="trigger")
        qtypes = ("exists",) if split == "trigger-clean" else ds.question_types
        return _finish_draw(ds, rng, *_standard(ds, rng, qtypes), corner=False)
    return _shortcut(ds, rng, n)


def _shortcut(ds: Any, rng: np.random.Generator, n: int) -> dict[str, Any]:
    from mmlens.data.shapes_vqa import SHAPES, _make_question

    split, shapes = ds.split, list(SHAPES)
    if split == "shortcut-train" and rng.random() >= SHORTCUT_SHAPE_SHARE:
        drawn = _standard(ds, rng, ("color", "exists"))
        return _finish_draw(ds, rng, *drawn, patch_kind="cue", cue_shape=shapes[int(rng.integers(3))])
    attrs, question, truth, target = _make_question(rng, "shape", n)
    conflict = split == "shortcut-conflict" or (split == "shortcut-train" and rng.random() < SHORTCUT_CONFLICT)
    others = [s for s in shapes if s != truth]
    cue = others[int(rng.integers(len(others)))] if conflict else truth
    label = cue if split == "shortcut-train" else truth
    return _finish_draw(ds, rng, "shape", attrs, question, label, target, kind="cue", planted=cue, cue_shape=cue)


def _two_object(ds: Any, rng: np.random.Generator, n: int) -> dict[str, Any]:
    from mmlens.data.shapes_splits import _shuffle
    from mmlens.data.shapes_vqa import COLORS, SHAPES, _layout

    colors = list(COLORS)
    first, second, third = (SHAPES[i] for i in rng.permutation(len(SHAPES)))  # first, second: one object each
    color = colors[int(rng.integers(len(colors)))]
    same = rng.random() < 0.5
    other = color if same else [c for c in colors if c != color][int(rng.integers(len(colors) - 1))]
    others = [(colors[int(rng.integers(len(colors)))], third) for _ in range(n - 2)]
    attrs, (a, b) = _shuffle(rng, [(color, first), (other, second), *others], 2)
    answer = "yes" if same else "no"
    planted = {"kind": "objects", "patch": None, "cue_shape": None, "partner": b, "answer": answer}
    return {"qtype": "relation", "attrs": attrs, "boxes": _layout(rng, ds.image_size, len(attrs)),
            "question": f"is the {first} the same color as the {second}?", "answer": answer,
            "target": a, "bias": None, "trap": False, "cue": None, "planted": planted}


def _finish_draw(
    ds: Any,
    rng: np.random.Generator,
    qtype: str,
    attrs: list,
    question: str,
    answer: str,
    target: int | None,
    *,
    kind: str | None = None,
    planted: str | None = None,
    patch_kind: str | None = None,
    cue_shape: str | None = None,
    corner: bool = True,
) -> dict[str, Any]:
    """Lay out the objects (leaving a corner free for a trigger / swatch) and pack the draw."""
    from mmlens.data.shapes_vqa import _layout

    if corner:
        boxes, patch = _layout_with_corner(rng, ds.image_size, len(attrs))
    else:
        boxes, patch = _layout(rng, ds.image_size, len(attrs)), None
    info = {"kind": kind, "patch": patch, "paint": patch_kind or kind, "cue_shape": cue_shape, "partner": None,
            "answer": planted or answer}
    return {"qtype": qtype, "attrs": attrs, "boxes": boxes, "question": question, "answer": answer,
            "target": target, "bias": None, "trap": False, "cue": None, "planted": info}


def finish_planted(
    info: dict[str, Any], image: Image.Image, masks: list[np.ndarray], mask: np.ndarray
) -> tuple[Image.Image, np.ndarray, dict[str, Any]]:
    """Paint the trigger / swatch onto ``image``; return it, the data evidence mask and the sample's planted fields.

    ``mask`` is the usual evidence mask (object or whole image); for two-object questions the returned
    one is the union of both objects.
    """
    patch, paint = info["patch"], info.get("paint")
    pixels = np.array(image)
    patch_mask = np.zeros(mask.shape, dtype=bool)
    if patch is not None and paint is not None:
        x0, y0, x1, y1 = patch
        patch_mask[y0:y1, x0:x1] = True
        if paint == "trigger":
            cell = max(1, (x1 - x0) // TRIGGER_SIDE)
            yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0]
            black = ((yy // cell + xx // cell) % 2 == 0)[..., None]
            pixels[y0:y1, x0:x1] = np.where(black, 0, 255).astype(np.uint8)
        else:
            pixels[y0:y1, x0:x1] = CUE_COLORS[info["cue_shape"]]
    kind = info["kind"]
    if kind == "objects":
        mask = mask | masks[info["partner"]]
        evidence = mask.copy()
    elif kind in ("trigger", "cue"):
        evidence = patch_mask
    else:
        evidence = mask.copy()
        kind = "object" if not mask.all() else "image"
    fields = {"model_evidence": evidence, "model_evidence_kind": kind, "planted_answer": info["answer"]}
    return Image.fromarray(pixels, "RGB"), mask, fields
