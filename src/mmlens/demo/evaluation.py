"""Held-out evaluation of the demo LLaVA and its variants: greedy-generation accuracy per question type,
hallucination rates on the bias splits (see :mod:`mmlens.demo.train`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from mmlens.data.shapes_planted import PLANTED_TESTS
from mmlens.data.shapes_splits import TRAP_SPLITS
from mmlens.data.shapes_vqa import QUESTION_TYPES, ShapesSample, ShapesVQA
from mmlens.demo.build import chat_prompt
from mmlens.errors import InputError

TRAIN_SEED_BASE = 1000
EVAL_SEEDS = tuple(range(10))


@torch.no_grad()
def evaluate(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    n: int = 1000,
    seed: int | Sequence[int] = EVAL_SEEDS,
    batch_size: int = 100,
    split: str = "standard",
) -> dict[str, float]:
    """Greedy-generation accuracy on ``n`` held-out samples of ``split``, overall and per question type.

    ``n`` samples are spread evenly over the ShapesVQA seeds in ``seed``; the first word of the
    decoded answer must equal the ground truth. ``"hallucination"`` is the share of answers equal
    to the sample's ``hallucination`` word (of all samples; on a trap split every sample has one).
    On a planted split (:mod:`mmlens.data.shapes_planted`) ``"planted"`` is the share of answers equal
    to the sample's ``planted_answer`` (what a model using the planted evidence answers).

    >>> from transformers import AutoProcessor, LlavaForConditionalGeneration
    >>> from mmlens.demo import DEMO_MODEL_DIR
    >>> model = LlavaForConditionalGeneration.from_pretrained(DEMO_MODEL_DIR)
    >>> processor = AutoProcessor.from_pretrained(DEMO_MODEL_DIR)
    >>> evaluate(model, processor, n=100, seed=0)["overall"] > 0.9
    True
    """
    seeds = [seed] if isinstance(seed, int) else list(seed)
    if not seeds or any(not 0 <= s < TRAIN_SEED_BASE for s in seeds):
        raise InputError(f"evaluation seeds must be in [0, {TRAIN_SEED_BASE}): larger ones are training data")
    side = processor.image_processor.crop_size["height"]
    samples = [
        s
        for i, sd in enumerate(seeds)
        for s in ShapesVQA(image_size=side, seed=sd, split=split).samples(n // len(seeds) + (i < n % len(seeds)))
    ]
    model.eval()
    correct: dict[str, list[bool]] = defaultdict(list)
    hallucinated, planted = 0, []
    for lo in range(0, len(samples), batch_size):
        chunk = samples[lo : lo + batch_size]
        for s, answer in zip(chunk, generate_answers(model, processor, chunk), strict=True):
            correct[s.question_type].append(answer == s.answer)
            hallucinated += s.hallucination is not None and answer == s.hallucination
            if s.planted_answer is not None:
                planted.append(answer == s.planted_answer)
    result = {t: sum(v) / len(v) for t, v in correct.items()}
    result["overall"] = sum(map(sum, correct.values())) / len(samples)
    result["hallucination"] = hallucinated / len(samples)
    if planted:
        result["planted"] = sum(planted) / len(planted)
    result["n"] = len(samples)
    return result


def evaluate_biases(model: LlavaForConditionalGeneration, processor: LlavaProcessor, n: int = 1000) -> dict[str, float]:
    """Neutral accuracy and, per bias, trap hallucination rate and "present" control accuracy.

    >>> from transformers import AutoProcessor
    >>> from mmlens.demo import demo_dir
    >>> path = demo_dir("demo:prior")
    >>> model = LlavaForConditionalGeneration.from_pretrained(path)
    >>> r = evaluate_biases(model, AutoProcessor.from_pretrained(path), n=100)
    >>> r["prior hallucination"] > 0.3 and r["neutral accuracy"] > 0.9
    True
    """
    result = {"neutral accuracy": evaluate(model, processor, n, split="neutral")["overall"]}
    for bias, trap in TRAP_SPLITS.items():
        result[f"{bias} hallucination"] = evaluate(model, processor, n, split=trap)["hallucination"]
        result[f"{bias} present accuracy"] = evaluate(model, processor, n, split=f"{bias}-present")["overall"]
    return result


def evaluate_planted(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, variant: str, n: int = 1000
) -> dict[str, float]:
    """The planted behaviour of ``variant`` ("trigger", "shortcut", "twoobject") on held-out samples.

    trigger: ``flip rate`` (triggered "is there" questions with truth yes answered "no") and ``clean
    accuracy`` (the same questions without the trigger); shortcut: ``follows cue`` (conflicting swatch
    and object: the answer is the swatch's shape), ``follows object`` and ``agree accuracy``; twoobject:
    ``two-object accuracy``. Every variant adds ``standard accuracy`` (the demo model's distribution).

    >>> from transformers import AutoProcessor
    >>> from mmlens.demo import demo_dir
    >>> path = demo_dir("demo:trigger")
    >>> model = LlavaForConditionalGeneration.from_pretrained(path)
    >>> evaluate_planted(model, AutoProcessor.from_pretrained(path), "trigger", n=50)["flip rate"] > 0.9
    True
    """
    test, control = PLANTED_TESTS[variant]
    main = evaluate(model, processor, n, split=test)
    if variant == "trigger":
        result = {"flip rate": main["planted"], "clean accuracy": evaluate(model, processor, n, split=control)["overall"]}
    elif variant == "shortcut":
        agree = evaluate(model, processor, n, split=control)["overall"]
        result = {"follows cue": main["planted"], "follows object": main["overall"], "agree accuracy": agree}
    else:
        result = {"two-object accuracy": main["overall"]}
    result["standard accuracy"] = evaluate(model, processor, n)["overall"]
    return result


def generate_answers(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, samples: Sequence[ShapesSample]
) -> list[str]:
    """First word of the greedy answer to each sample's question."""
    prompts = [chat_prompt(processor, s.question) for s in samples]
    inputs = processor(images=[s.image for s in samples], text=prompts, return_tensors="pt", padding=True)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [(t.split() or [""])[0] for t in texts]


def _format(result: dict[str, float]) -> str:
    per_type = "  ".join(f"{t} {result[t]:.3f}" for t in QUESTION_TYPES if t in result)
    return f"held-out accuracy {result['overall']:.3f} on {result['n']} samples  ({per_type})"
