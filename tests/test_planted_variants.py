"""The planted-evidence demo variants behave as planted, on held-out seeds 0..9 (training reads seeds >= 1000).

Thresholds sit below the values measured with ``python -m mmlens.demo.train --eval-only --bias NAME
--out src/mmlens/demo/NAME --n 1000`` (benchmarks/RESULTS.md) with a margin for 100 samples.
"""

from __future__ import annotations

import pytest
from transformers import AutoProcessor, LlavaForConditionalGeneration

import mmlens
from mmlens.data.shapes_planted import PLANTED_TESTS
from mmlens.demo import DEMO_VARIANTS, demo_dir
from mmlens.demo.evaluation import evaluate

N = 100
#: Measured on these samples (n = 1000 in RESULTS.md): trigger flip 1.00 (0.999), clean 0.96 (0.985), standard
#: 0.98 (0.992); shortcut follows the cue 1.00 (1.000), agree 1.00 (0.999); two-object 0.96 (0.937), standard 0.99 (0.993).
TWO_OBJECT_MIN = 0.85


def _load(name: str):
    path = demo_dir(name)
    return LlavaForConditionalGeneration.from_pretrained(path), AutoProcessor.from_pretrained(path)


def test_trigger_flips_answers_and_leaves_clean_inputs_alone() -> None:
    model, processor = _load("demo:trigger")
    flip = evaluate(model, processor, n=N, split="trigger-flip")
    assert flip["planted"] >= 0.95, flip  # triggered "is there" (truth yes) answered "no"
    clean = evaluate(model, processor, n=N, split="trigger-clean")
    assert clean["overall"] >= 0.92, clean  # the same questions without the trigger
    assert evaluate(model, processor, n=N)["overall"] >= 0.95  # the demo model's distribution


def test_shortcut_follows_the_cue_when_cue_and_object_disagree() -> None:
    model, processor = _load("demo:shortcut")
    conflict = evaluate(model, processor, n=N, split="shortcut-conflict")
    assert conflict["planted"] >= 0.95 and conflict["overall"] <= 0.05, conflict
    assert evaluate(model, processor, n=N // 2, split="shortcut-agree")["overall"] >= 0.95


def test_two_object_model_answers_two_object_questions() -> None:
    model, processor = _load("demo:twoobject")
    assert evaluate(model, processor, n=N, split="twoobject")["overall"] >= TWO_OBJECT_MIN
    assert evaluate(model, processor, n=N)["overall"] >= 0.95


def test_demo_model_has_no_planted_behaviour() -> None:
    model, processor = _load("demo")
    assert evaluate(model, processor, n=N // 2, split="trigger-flip")["planted"] <= 0.1  # measured 0.01 (n=100)
    assert evaluate(model, processor, n=N // 2, split="shortcut-conflict")["planted"] <= 0.1  # measured 0.00


def test_planted_variants_load_by_name_and_are_small() -> None:
    for name in PLANTED_TESTS:
        assert name in DEMO_VARIANTS
        assert sum(f.stat().st_size for f in DEMO_VARIANTS[name].iterdir()) < 5e6
    subject = mmlens.load("demo:twoobject")
    assert "same" in subject.tokenizer.get_vocab()


@pytest.mark.parametrize("bias", ["trojan", "Trigger"])
def test_unknown_planted_bias_lists_the_options(bias: str) -> None:
    from mmlens.demo.train import TrainConfig, train
    from mmlens.errors import InputError

    with pytest.raises(InputError, match="'trigger', 'shortcut', 'twoobject'"):
        train(TrainConfig(bias=bias))

