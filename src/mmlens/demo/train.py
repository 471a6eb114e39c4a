"""Train the bundled demo model on ShapesVQA (CPU, 2 threads, deterministic given ``--seed``).

Data split: training reads ``ShapesVQA(seed=TRAIN_SEED_BASE + seed)`` (seeds >= 1000), batch ``k``
being indices ``k * batch_size ...``; evaluation reads ``ShapesVQA(seed=s)`` with ``s`` in
``EVAL_SEEDS`` (0..9), never used for training.

    python -m mmlens.demo.train                      # train, evaluate, save to DEMO_MODEL_DIR
    python -m mmlens.demo.train --eval-only --n 1000 # evaluate the shipped model
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

from mmlens.data.shapes_vqa import QUESTION_TYPES, ShapesSample, ShapesVQA
from mmlens.demo import DEMO_MODEL_DIR
from mmlens.demo.build import DemoConfig, build_model, build_processor, chat_prompt, save_demo

TRAIN_SEED_BASE = 1000
EVAL_SEEDS = tuple(range(10))


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50


def make_batch(processor: LlavaProcessor, samples: Sequence[ShapesSample]) -> dict[str, torch.Tensor]:
    """Teacher-forcing inputs: ``prompt + " " + answer + "</s>"`` through the processor.

    ``labels`` are -100 everywhere except on the answer tokens and ``</s>`` (the tokenizer pads
    on the left, so those are the last tokens of every row).
    """
    tok = processor.tokenizer
    texts = [f"{chat_prompt(processor, s.question)} {s.answer}{tok.eos_token}" for s in samples]
    batch = processor(images=[s.image for s in samples], text=texts, return_tensors="pt", padding=True)
    labels = torch.full_like(batch["input_ids"], -100)
    for row, s in enumerate(samples):
        n_answer = len(tok(f"{s.answer}{tok.eos_token}", add_special_tokens=False).input_ids)
        labels[row, -n_answer:] = batch["input_ids"][row, -n_answer:]
    batch["labels"] = labels
    return dict(batch)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _answer_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: is the first labelled token (the answer) the argmax under teacher forcing?"""
    first = (labels[:, 1:] != -100).float().argmax(dim=1)  # logits at t predict token t + 1
    rows = torch.arange(labels.shape[0])
    return logits[rows, first].argmax(-1) == labels[rows, first + 1]


def train(cfg: TrainConfig = TrainConfig(), arch: DemoConfig = DemoConfig()) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Train a demo model from scratch and return it with its processor."""
    torch.manual_seed(cfg.seed)
    processor = build_processor(arch)
    model = build_model(processor.tokenizer, arch)
    model.train()
    data = ShapesVQA(image_size=arch.image_size, seed=TRAIN_SEED_BASE + cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    start, losses, hits = time.time(), [], []
    for step in range(cfg.steps):
        batch = make_batch(processor, list(data.samples(cfg.batch_size, start=step * cfg.batch_size)))
        out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        hits.extend(_answer_hits(out.logits.detach(), batch["labels"]).tolist())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            n = cfg.log_every * cfg.batch_size
            print(
                f"step {step + 1:5d}/{cfg.steps}  loss {sum(losses[-cfg.log_every:]) / len(losses[-cfg.log_every:]):.4f}"
                f"  train acc {sum(hits[-n:]) / len(hits[-n:]):.3f}  lr {scheduler.get_last_lr()[0]:.2e}"
                f"  {time.time() - start:6.0f}s",
                flush=True,
            )
    model.eval()
    return model, processor


@torch.no_grad()
def evaluate(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    n: int = 1000,
    seed: int | Sequence[int] = EVAL_SEEDS,
    batch_size: int = 100,
    image_size: int | None = None,
) -> dict[str, float]:
    """Greedy-generation accuracy on ``n`` held-out samples, overall and per question type.

    ``n`` samples are spread evenly over the ShapesVQA seeds in ``seed``; the first word of the
    decoded answer must equal the ground truth.

    >>> from transformers import AutoProcessor, LlavaForConditionalGeneration
    >>> model = LlavaForConditionalGeneration.from_pretrained(DEMO_MODEL_DIR)
    >>> processor = AutoProcessor.from_pretrained(DEMO_MODEL_DIR)
    >>> evaluate(model, processor, n=100, seed=0)["overall"] > 0.9
    True
    """
    seeds = [seed] if isinstance(seed, int) else list(seed)
    if any(s >= TRAIN_SEED_BASE for s in seeds):
        raise ValueError(f"evaluation seeds must be < {TRAIN_SEED_BASE} (larger ones are training data)")
    side = image_size or processor.image_processor.crop_size["height"]
    samples = [
        s
        for i, sd in enumerate(seeds)
        for s in ShapesVQA(image_size=side, seed=sd).samples(n // len(seeds) + (i < n % len(seeds)))
    ]
    model.eval()
    correct: dict[str, list[bool]] = defaultdict(list)
    for lo in range(0, len(samples), batch_size):
        chunk = samples[lo : lo + batch_size]
        for s, answer in zip(chunk, generate_answers(model, processor, chunk)):
            correct[s.question_type].append(answer == s.answer)
    result = {t: sum(v) / len(v) for t, v in correct.items()}
    result["overall"] = sum(map(sum, correct.values())) / len(samples)
    result["n"] = len(samples)
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


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: train (or only evaluate) the demo model."""
    parser = argparse.ArgumentParser(prog="python -m mmlens.demo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_DIR, help="folder to save to / evaluate")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate the model in --out")
    parser.add_argument("--n", type=int, default=1000, help="held-out samples to evaluate")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.eval_only:
        model = LlavaForConditionalGeneration.from_pretrained(args.out)
        processor = AutoProcessor.from_pretrained(args.out)
    else:
        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
        print(f"training {cfg} {DemoConfig()}", flush=True)
        start = time.time()
        model, processor = train(cfg)
        print(f"trained in {time.time() - start:.0f}s", flush=True)
        save_demo(model, processor, args.out)
        print(f"saved to {args.out}", flush=True)
    print(_format(evaluate(model, processor, n=args.n)), flush=True)


if __name__ == "__main__":
    main()
