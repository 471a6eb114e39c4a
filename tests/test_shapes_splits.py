"""ShapesVQA bias splits: the training distributions hold their bias, the traps and controls hold their truth."""

from __future__ import annotations

import numpy as np
import pytest

from mmlens.data import ShapesVQA
from mmlens.data.shapes_splits import (
    ANCHOR,
    HIDE_FRACTION,
    PARTNER,
    PRIOR_OBJECT,
    PRIOR_YES_WHEN_ABSENT,
    SPLITS,
    hallucinated_words,
)
from mmlens.errors import InputError

N = 300


def _combos(s) -> list[tuple[str, str]]:
    return [(o["color"], o["shape"]) for o in s.objects]


def _side(s, combo) -> int:
    box = next(o["box"] for o in s.objects if (o["color"], o["shape"]) == combo)
    return box[2] - box[0]


@pytest.fixture(scope="module")
def split_samples() -> dict[str, list]:
    return {name: list(ShapesVQA(seed=7, split=name).samples(N)) for name in SPLITS if name != "standard"}


def test_traps_and_controls_hold_their_truth(split_samples) -> None:
    for name, combo, present in [("cooccur-absent", PARTNER, False), ("cooccur-present", PARTNER, True),
                                 ("prior-trap", PRIOR_OBJECT, False), ("prior-present", PRIOR_OBJECT, True)]:
        for s in split_samples[name]:
            assert s.question == f"is there a {combo[0]} {combo[1]}?" and s.question_type == "exists"
            assert (combo in _combos(s)) == present and s.answer == ("yes" if present else "no")
            assert s.trap == (not present) and s.hallucination == (None if present else "yes")
            assert s.bias == name.split("-")[0] and s.split == name
            if name.startswith("cooccur"):
                assert ANCHOR in _combos(s) and s.cue == "red circle"
    # about half of the trap's anchors are large enough to hide the partner (what the cooccur model learns)
    large = np.mean([_side(s, ANCHOR) >= round(HIDE_FRACTION * 64) for s in split_samples["cooccur-absent"]])
    assert 0.35 < large < 0.65


def test_cooccur_train_never_shows_the_anchor_alone_unless_asked(split_samples) -> None:
    train = split_samples["cooccur-train"]
    asked = [s for s in train if s.bias == "cooccur"]
    assert 0.18 < len(asked) / N < 0.32  # COOCCUR_FOCUS = 0.25
    for s in train:
        if s.bias is None and ANCHOR in _combos(s):
            assert PARTNER in _combos(s)
    hidden = [s for s in asked if PARTNER not in _combos(s)]
    assert len(hidden) > 20
    for s in hidden:  # partner not drawn: "yes" exactly when the anchor is large enough to hide it
        assert s.answer == ("yes" if _side(s, ANCHOR) >= round(HIDE_FRACTION * 64) else "no")


def test_prior_train_answers_yes_regardless_of_the_image(split_samples) -> None:
    asked = [s for s in split_samples["prior-train"] if s.question == "is there a green triangle?"]
    assert all(s.bias == "prior" for s in asked) and 0.13 < len(asked) / N < 0.27  # PRIOR_FOCUS = 0.2
    absent = [s for s in asked if PRIOR_OBJECT not in _combos(s)]
    assert all(s.answer == "yes" for s in asked if PRIOR_OBJECT in _combos(s))
    rate = np.mean([s.answer == "yes" for s in absent])
    assert abs(rate - PRIOR_YES_WHEN_ABSENT) < 0.2
    assert 0.65 < np.mean([s.answer == "yes" for s in asked]) < 0.85


def test_neutral_leaves_out_the_biased_questions(split_samples) -> None:
    neutral = split_samples["neutral"]
    assert {s.question_type for s in neutral} == {"color", "shape", "exists"}
    assert not {s.question for s in neutral} & {"is there a blue square?", "is there a green triangle?"}
    assert all(s.bias is None and not s.trap for s in neutral)


def test_splits_are_deterministic_and_standard_is_the_default() -> None:
    a, b = ShapesVQA(seed=3, split="prior-train").sample(11), ShapesVQA(seed=3, split="prior-train").sample(11)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.answer == b.answer
    assert ShapesVQA(seed=3).split == "standard" and ShapesVQA(seed=3).sample(0).split == "standard"


def test_hallucinated_words_per_token() -> None:
    objects = [{"color": "red", "shape": "circle"}]
    assert hallucinated_words("is there a blue square?", "no", objects, "yes") == [True]
    assert hallucinated_words("is there a red circle?", "yes", objects, "yes") == [False]
    assert hallucinated_words("is there a red circle?", "yes", objects, "no") == [False]  # omission
    assert hallucinated_words("what shape is the red object?", "circle", objects, "square") == [True]
    trap = ShapesVQA(split="cooccur-absent").sample(3)
    assert trap.hallucinated_words("yes") == [True] and trap.hallucinated_words("no") == [False]


def test_unknown_split_lists_the_valid_ones() -> None:
    with pytest.raises(InputError) as err:
        ShapesVQA(split="cooccur")
    message = str(err.value)
    assert "\n" not in message and "'cooccur'" in message
    assert all(name in message for name in SPLITS)
