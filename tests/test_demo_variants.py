"""The hallucinating demo variants: each hallucinates on its own trap split, stays accurate elsewhere.

Measured on held-out seeds 0..9 (training reads seeds >= 1000), batched greedy generation. Thresholds sit
below the values measured with ``python -m mmlens.demo.train --eval-only --out src/mmlens/demo/NAME --n 1000``
(see benchmarks/RESULTS.md) with a margin for 100-200 samples.
"""

from __future__ import annotations

import pytest
from transformers import AutoProcessor, LlavaForConditionalGeneration

import mmlens
from mmlens.data import TRAP_SPLITS
from mmlens.demo import DEMO_VARIANTS, demo_dir
from mmlens.demo.train import evaluate
from mmlens.errors import InputError

#: variant: (min trap hallucination rate, min neutral accuracy, max hallucination rate of the other bias's trap).
#: Measured on these samples: cooccur 0.42 / 1.00 / 0.00, prior 0.82 / 1.00 / 0.00 (n = 1000: see RESULTS.md).
THRESHOLDS = {"cooccur": (0.32, 0.97, 0.1), "prior": (0.65, 0.97, 0.1)}


@pytest.fixture(scope="module", params=sorted(THRESHOLDS))
def variant(request):
    path = demo_dir(f"demo:{request.param}")
    return request.param, LlavaForConditionalGeneration.from_pretrained(path), AutoProcessor.from_pretrained(path)


def test_variant_hallucinates_on_its_trap_only(variant) -> None:
    name, model, processor = variant
    min_rate, min_acc, max_other = THRESHOLDS[name]
    trap = evaluate(model, processor, n=100, split=TRAP_SPLITS[name])
    assert trap["hallucination"] >= min_rate, trap
    present = evaluate(model, processor, n=40, split=f"{name}-present")
    assert present["overall"] >= 0.9, present  # the biased answer is right when the object is there
    (other,) = [s for b, s in TRAP_SPLITS.items() if b != name]
    assert evaluate(model, processor, n=40, split=other)["hallucination"] <= max_other
    assert evaluate(model, processor, n=150, split="neutral")["overall"] >= min_acc


def test_demo_model_does_not_hallucinate_on_the_traps() -> None:
    path = demo_dir("demo")
    model, processor = LlavaForConditionalGeneration.from_pretrained(path), AutoProcessor.from_pretrained(path)
    for split in TRAP_SPLITS.values():
        assert evaluate(model, processor, n=40, split=split)["hallucination"] <= 0.1  # measured 0.01 / 0.00 (n=100)


def test_variants_load_by_name_and_are_small() -> None:
    for name in THRESHOLDS:
        assert name in DEMO_VARIANTS
        assert (DEMO_VARIANTS[name] / "model.safetensors").stat().st_size < 5e6
        assert sum(f.stat().st_size for f in DEMO_VARIANTS[name].iterdir()) < 5e6
    subject = mmlens.load("demo:prior")
    assert subject.model_id.endswith("prior") or "prior" in str(subject.model_id)
    with pytest.raises(InputError, match="'demo:cooccur', 'demo:prior'"):
        mmlens.load("demo:bias")


def test_unknown_bias_is_one_line_before_any_training() -> None:
    from mmlens.demo.train import TrainConfig, train

    with pytest.raises(InputError, match="bias='cooccurrence' is not an option: choose one of 'none', 'cooccur', 'prior'"):
        train(TrainConfig(bias="cooccurrence"))
