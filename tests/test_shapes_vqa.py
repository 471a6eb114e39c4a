"""ShapesVQA: determinism, exact ground truth, balance, vocabulary and input errors."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from mmlens.data import QUESTION_TYPES, ShapesSample, ShapesVQA
from mmlens.data.shapes_vqa import COLORS, SHAPES, VOCAB
from mmlens.errors import InputError

N = 300


@pytest.fixture(scope="module")
def samples() -> list[ShapesSample]:
    return list(ShapesVQA(seed=5).samples(N))


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_same_seed_same_sample() -> None:
    a, b = ShapesVQA(seed=11).sample(42), ShapesVQA(seed=11).sample(42)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert (a.question, a.answer, a.box, a.question_type) == (b.question, b.answer, b.box, b.question_type)
    assert np.array_equal(a.mask, b.mask)
    assert (a.seed, a.index) == (11, 42)


def test_different_seed_or_index_differs() -> None:
    base = np.asarray(ShapesVQA(seed=1).sample(0).image)
    assert not np.array_equal(base, np.asarray(ShapesVQA(seed=2).sample(0).image))
    assert not np.array_equal(base, np.asarray(ShapesVQA(seed=1).sample(1).image))


def test_samples_matches_sample() -> None:
    ds = ShapesVQA(seed=3)
    got = list(ds.samples(4, start=10))
    assert [s.index for s in got] == [10, 11, 12, 13]
    assert got[2].question == ds.sample(12).question


@pytest.mark.parametrize("size", [32, 64, 448])
def test_image_format(size: int) -> None:
    s = ShapesVQA(image_size=size, seed=0).sample(0)
    assert s.image.mode == "RGB" and s.image.size == (size, size)
    assert s.mask.dtype == bool and s.mask.shape == (size, size)


def test_mask_is_exactly_the_evidence_object(samples: list[ShapesSample]) -> None:
    for s in samples:
        pixels = np.asarray(s.image)
        if s.evidence == "image":
            assert s.question_type == "exists" and s.answer == "no"
            assert s.mask.all() and s.box == (0, 0, *s.image.size)
            continue
        assert s.evidence == "object"
        target = [o for o in s.objects if np.array_equal(o["mask"], s.mask)]
        assert len(target) == 1
        assert (pixels[s.mask] == COLORS[target[0]["color"]]).all()
        assert s.box == _bbox(s.mask) == target[0]["box"]
        if s.question_type == "color":
            assert s.answer == target[0]["color"]
        elif s.question_type == "shape":
            assert s.answer == target[0]["shape"]
        else:
            assert s.answer == "yes"


def test_objects_do_not_overlap_and_have_exact_boxes(samples: list[ShapesSample]) -> None:
    for s in samples:
        assert 2 <= len(s.objects) <= 4
        count = np.zeros(s.mask.shape, dtype=int)
        for o in s.objects:
            assert o["shape"] in SHAPES and o["color"] in COLORS
            assert o["box"] == _bbox(o["mask"])
            count += o["mask"]
        assert count.max() == 1


def test_answers_depend_on_one_object(samples: list[ShapesSample]) -> None:
    for s in samples:
        combos = [(o["color"], o["shape"]) for o in s.objects]
        words = s.question.rstrip("?").split()
        if s.question_type == "color":
            assert sum(shape == words[-1] for _, shape in combos) == 1
        elif s.question_type == "shape":
            assert sum(color == words[-2] for color, _ in combos) == 1
        else:
            asked = (words[-2], words[-1])
            assert combos.count(asked) == (1 if s.answer == "yes" else 0)


def test_balance(samples: list[ShapesSample]) -> None:
    types = Counter(s.question_type for s in samples)
    assert set(types) == set(QUESTION_TYPES)
    assert min(types.values()) > N / len(QUESTION_TYPES) * 0.7
    yes_no = Counter(s.answer for s in samples if s.question_type == "exists")
    assert abs(yes_no["yes"] - yes_no["no"]) <= 0.3 * sum(yes_no.values())


def test_vocabulary_covers_every_word(samples: list[ShapesSample]) -> None:
    for s in samples:
        for word in re.findall(r"\w+|[^\w\s]", f"{s.question} {s.answer}"):
            assert word in VOCAB, word


def test_question_types_filter() -> None:
    got = {s.question_type for s in ShapesVQA(seed=0, question_types=("shape",)).samples(30)}
    assert got == {"shape"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 31},
        {"image_size": 449},
        {"question_types": ("colour",)},
        {"question_types": ()},
        {"min_objects": 0},
        {"max_objects": 5},
        {"min_objects": 3, "max_objects": 2},
        {"seed": -1},
    ],
)
def test_bad_constructor_input(kwargs: dict) -> None:
    with pytest.raises(InputError) as err:
        ShapesVQA(**kwargs)
    assert "\n" not in str(err.value)


def test_unknown_question_type_lists_valid_ones() -> None:
    with pytest.raises(InputError, match="color, shape, exists"):
        ShapesVQA(question_types=["size"])


@pytest.mark.parametrize("n", [-1, 10_000_001])
def test_bad_sample_count(n: int) -> None:
    with pytest.raises(InputError) as err:
        ShapesVQA().samples(n)
    assert "\n" not in str(err.value)


def test_bad_index() -> None:
    with pytest.raises(InputError):
        ShapesVQA().sample(-3)
