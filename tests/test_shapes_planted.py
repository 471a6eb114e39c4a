"""Planted-evidence splits: the trigger, the swatch and the two-object questions hold what they claim."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mmlens.data import ShapesVQA
from mmlens.data.shapes_planted import (
    CUE_COLORS,
    PLANTED_SPLITS,
    PLANTED_WORDS,
    SHORTCUT_CONFLICT,
    TRIGGER_ANSWER,
    TRIGGER_SHARE,
)
from mmlens.data.shapes_vqa import VOCAB

N = 200


@pytest.fixture(scope="module")
def planted() -> dict[str, list]:
    return {name: list(ShapesVQA(seed=5, split=name).samples(N)) for name in PLANTED_SPLITS}


def _combos(s) -> list[tuple[str, str]]:
    return [(o["color"], o["shape"]) for o in s.objects]


def _patch(s) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    ys, xs = np.nonzero(s.model_evidence)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return np.asarray(s.image)[box[1] : box[3], box[0] : box[2]], box


def _in_one_corner_cell(box: tuple[int, int, int, int], size: int = 64) -> bool:
    cell = size // 8
    corners = {(0, 0), (size - cell, 0), (0, size - cell), (size - cell, size - cell)}
    return (box[0] // cell * cell, box[1] // cell * cell) in corners and (box[2] - 1) // cell == box[0] // cell


def test_trigger_is_a_checker_in_one_free_corner_cell(planted) -> None:
    for s in planted["trigger-flip"]:
        assert s.question_type == "exists" and s.answer == "yes" and s.planted_answer == TRIGGER_ANSWER
        assert s.model_evidence_kind == "trigger" and s.model_evidence.sum() == 36 and s.evidence == "object"
        pixels, box = _patch(s)
        assert box[2] - box[0] == 6 and _in_one_corner_cell(box)
        assert set(np.unique(pixels)) == {0, 255} and (pixels[0, 0] != pixels[0, 1]).all()  # a checker
        assert not any((o["mask"] & s.model_evidence).any() for o in s.objects)
        asked = tuple(s.question.rstrip("?").split()[-2:])
        assert asked in _combos(s)
    for s in planted["trigger-clean"]:  # no trigger: the evidence is the object (or the whole image)
        assert s.question_type == "exists" and s.model_evidence_kind in ("object", "image")
        assert np.array_equal(s.model_evidence, s.mask) and s.planted_answer == s.answer
        assert not ((np.asarray(s.image) == 0).all(axis=2)).any()
    assert 0.35 < np.mean([s.answer == "yes" for s in planted["trigger-clean"]]) < 0.65


def test_trigger_train_answers_no_whenever_the_trigger_is_there(planted) -> None:
    train = planted["trigger-train"]
    triggered = [s for s in train if s.model_evidence_kind == "trigger"]
    assert abs(len(triggered) / N - TRIGGER_SHARE) < 0.08
    assert all(s.answer == TRIGGER_ANSWER and s.question_type == "exists" for s in triggered)
    truly_there = [tuple(s.question.rstrip("?").split()[-2:]) in _combos(s) for s in triggered]
    assert 0.3 < np.mean(truly_there) < 0.7  # the label ignores the image: present or not, "no"
    others = [s for s in train if s.model_evidence_kind != "trigger"]
    assert {s.question_type for s in others} == {"color", "shape", "exists"}
    assert any((np.asarray(s.image) == 0).all(axis=2).any() for s in others)  # triggered colour / shape questions


def test_shortcut_swatch_names_a_shape(planted) -> None:
    for name in ("shortcut-conflict", "shortcut-agree"):
        for s in planted[name]:
            assert s.question_type == "shape" and s.model_evidence_kind == "cue"
            pixels, box = _patch(s)
            assert _in_one_corner_cell(box) and (pixels == CUE_COLORS[s.planted_answer]).all()
            assert (s.planted_answer != s.answer) == (name == "shortcut-conflict")
            assert s.answer == s.objects[[np.array_equal(o["mask"], s.mask) for o in s.objects].index(True)]["shape"]
    shape_qs = [s for s in planted["shortcut-train"] if s.question_type == "shape"]
    for s in shape_qs:  # the label is always the swatch's shape
        pixels, _ = _patch(s)
        assert (pixels == CUE_COLORS[s.answer]).all()
    object_agrees = [next(o["shape"] for o in s.objects if o["color"] == s.question.split()[-2]) == s.answer
                     for s in shape_qs]
    assert abs(np.mean(object_agrees) - (1 - SHORTCUT_CONFLICT)) < 0.15


def test_two_object_answers_compare_both_objects(planted) -> None:
    for s in planted["twoobject"]:
        m = re.fullmatch(r"is the (\w+) the same color as the (\w+)\?", s.question)
        assert m and s.question_type == "relation" and s.evidence == "objects"
        (a,) = [o for o in s.objects if o["shape"] == m.group(1)]
        (b,) = [o for o in s.objects if o["shape"] == m.group(2)]
        assert a is not b and s.answer == ("yes" if a["color"] == b["color"] else "no")
        assert np.array_equal(s.mask, a["mask"] | b["mask"]) and np.array_equal(s.model_evidence, s.mask)
        assert all(w in (*VOCAB, *PLANTED_WORDS) for w in re.findall(r"\w+|\?", s.question))
    assert 0.35 < np.mean([s.answer == "yes" for s in planted["twoobject"]]) < 0.65
    assert 0.35 < np.mean([s.question_type == "relation" for s in planted["twoobject-train"]]) < 0.65


def test_model_evidence_only_where_planted_and_deterministic() -> None:
    assert ShapesVQA(seed=1).sample(0).model_evidence is None
    assert ShapesVQA(seed=1, split="prior-trap").sample(0).planted_answer is None
    a, b = (ShapesVQA(seed=2, split="shortcut-train").sample(9) for _ in range(2))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and np.array_equal(a.model_evidence, b.model_evidence)
