"""Train the bundled demo model on ShapesVQA (CPU; deterministic given ``--seed`` and ``--threads``).

Recipe: stage 1 trains the vision tower + projector alone to tell each patch's colour and shape
(from the ground-truth masks; it stands in for a real LLaVA's pretrained CLIP); stage 2 trains the
whole ``LlavaForConditionalGeneration`` with teacher forcing on ``processor`` outputs (loss on the
answer and ``</s>`` only), keeping the per-patch loss as an auxiliary term. The per-patch heads
are training-only; the saved model is a plain LLaVA.

Data split: training reads ``ShapesVQA(seed=TRAIN_SEED_BASE + seed)`` (seeds >= 1000), batch ``k``
being indices ``k * batch_size ...`` (stage 2 continues where stage 1 stopped); evaluation reads
``ShapesVQA(seed=s)`` with ``s`` in ``EVAL_SEEDS`` (0..9), never used for training.

``--bias cooccur`` / ``--bias prior`` trains on ``split="cooccur-train"`` / ``"prior-train"`` instead
(see :mod:`mmlens.data.shapes_splits`): the hallucinating variants ``demo:cooccur`` / ``demo:prior``.
Evaluation then also reports accuracy on the ``neutral`` split and, per bias, the hallucination rate
on the trap split and the accuracy on the matching "present" control split. ``--bias trigger`` /
``shortcut`` / ``twoobject`` train the planted-evidence variants (:mod:`mmlens.data.shapes_planted`;
``twoobject`` adds its words to the tokenizer); evaluation then reports their planted behaviour
(:func:`mmlens.demo.evaluation.evaluate_planted`; with ``--eval-only`` pass the same ``--bias``).

One thread is the default: on a shared 2-core machine, two threads slow down by an order of
magnitude as soon as another process wants a core.

    python -m mmlens.demo.train                      # train, evaluate, save to DEMO_MODEL_DIR
    python -m mmlens.demo.train --eval-only --n 1000 # evaluate the shipped model
    python -m mmlens.demo.train --variant clip       # the demo CLIP (recipe: mmlens.demo.clip_recipe)
    python -m mmlens.demo.train --vision-tower demo:clip --init demo --aux-weight 0 ...  # see demo.clip_llava
    python -m mmlens.demo.train --bias cooccur --init demo --vision-steps 0 --steps 300 --lr 3e-4 \
        --aux-weight 0 --out src/mmlens/demo/cooccur   # fine-tune the demo model on a biased split
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

from mmlens.data.shapes_planted import PLANTED_TESTS, PLANTED_WORDS
from mmlens.data.shapes_vqa import (
    COLORS,
    SHAPES,
    ShapesSample,
    ShapesVQA,
)
from mmlens.demo import DEMO_MODEL_DIR
from mmlens.demo.build import (
    DemoConfig,
    build_model,
    build_processor,
    chat_prompt,
    extend_vocabulary,
    save_demo,
)
from mmlens.demo.checkpoints import CheckpointSaver, TrainingSet
from mmlens.demo.evaluation import (  # noqa: F401  (re-exported: the script evaluates what it trains)
    EVAL_SEEDS,
    TRAIN_SEED_BASE,
    _format,
    evaluate,
    evaluate_biases,
    evaluate_planted,
    generate_answers,
)
from mmlens.errors import InputError
from mmlens.util.options import check_choice

BIASES = ("none", "cooccur", "prior", *PLANTED_TESTS)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    vision_steps: int = 600  # stage 1: vision tower + projector on per-patch colour/shape labels
    vision_lr: float = 2e-3
    steps: int = 1500  # stage 2: the whole model on the answers (teacher forcing)
    lr: float = 1e-3
    batch_size: int = 32
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    aux_weight: float = 0.5  # stage 2 keeps the per-patch loss with this weight
    seed: int = 0
    threads: int = 1
    log_every: int = 50
    bias: str = "none"  # "none" | "cooccur" | "prior" | "trigger" | "shortcut" | "twoobject": train on "{bias}-train"
    init: str = ""  # "" = from scratch; else a demo name ("demo") or model folder to fine-tune
    save_every: int = 0  # > 0: save a checkpoint every N steps into checkpoint_dir (mmlens.demo.checkpoints)
    checkpoint_dir: str = ""
    train_size: int = 0  # > 0: cycle over the first N training samples
    plant: int = 0  # give N of those a wrong colour answer (the TracIn planted-label test)
    vision_tower: str = ""  # a CLIP ("demo:clip"): frozen tower, stage 1 aligns a new projector (demo.clip_llava)


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


def patch_labels(samples: Sequence[ShapesSample], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch ``(color, shape)`` class ids (0 = background), row-major over a ``grid x grid`` grid.

    A patch takes the object covering most of it, if that covers at least a quarter of the patch.
    """
    colors, shapes = list(COLORS), list(SHAPES)
    color_ids = np.zeros((len(samples), grid * grid), dtype=np.int64)
    shape_ids = np.zeros_like(color_ids)
    for row, s in enumerate(samples):
        side = s.mask.shape[0] // grid
        best = np.zeros(grid * grid)
        for o in s.objects:
            cover = o["mask"][: grid * side, : grid * side].reshape(grid, side, grid, side).mean(axis=(1, 3)).ravel()
            take = (cover >= 0.25) & (cover > best)
            best[take] = cover[take]
            color_ids[row, take] = colors.index(o["color"]) + 1
            shape_ids[row, take] = shapes.index(o["shape"]) + 1
    return torch.from_numpy(color_ids), torch.from_numpy(shape_ids)


class PatchProbe(torch.nn.Module):
    """Training-only heads that read colour and shape from each projected image token."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.color = torch.nn.Linear(hidden, len(COLORS) + 1)
        self.shape = torch.nn.Linear(hidden, len(SHAPES) + 1)

    def loss(self, features: torch.Tensor, color_ids: torch.Tensor, shape_ids: torch.Tensor) -> torch.Tensor:
        features = features.reshape(*color_ids.shape, -1)
        ce = torch.nn.functional.cross_entropy
        return ce(self.color(features).flatten(0, 1), color_ids.flatten()) + ce(
            self.shape(features).flatten(0, 1), shape_ids.flatten()
        )


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _answer_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: is the first labelled token (the answer) the argmax under teacher forcing?"""
    first = (labels[:, 1:] != -100).float().argmax(dim=1)  # logits at t predict token t + 1
    rows = torch.arange(labels.shape[0])
    return logits[rows, first].argmax(-1) == labels[rows, first + 1]


def _optimizer(
    named: list[tuple[str, torch.nn.Parameter]], lr: float, total: int, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no decay on biases, norms and embeddings) with warm-up + cosine decay."""
    decayed = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    groups = [{"params": decayed, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))
    warmup = min(cfg.warmup, max(1, total // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, cfg.min_lr_ratio))
    return optimizer, schedule


def _step(
    loss: torch.Tensor,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
    clip: float,
) -> None:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)


def _batches(data: ShapesVQA | TrainingSet, batch_size: int, first: int, count: int) -> Iterator[list[ShapesSample]]:
    for k in range(first, first + count):
        yield list(data.samples(batch_size, start=k * batch_size))


def pretrain_vision(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    probe: PatchProbe,
    data: ShapesVQA | TrainingSet,
    cfg: TrainConfig,
    saver: CheckpointSaver | None = None,
) -> None:
    """Stage 1: train vision tower + projector to tell each patch's colour and shape.

    This stands in for the pretrained CLIP of a real LLaVA; the text model is not run.
    """
    config = model.config
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    named = [*tower.named_parameters(), *projector.named_parameters(), *probe.named_parameters()]
    params = [p for _, p in named]
    optimizer, schedule = _optimizer(named, cfg.vision_lr, cfg.vision_steps, cfg)
    grid = config.vision_config.image_size // config.vision_config.patch_size
    start = time.time()
    for step, samples in enumerate(_batches(data, cfg.batch_size, 0, cfg.vision_steps)):
        pixels = processor.image_processor([s.image for s in samples], return_tensors="pt")["pixel_values"]
        hidden = tower(pixels, output_hidden_states=True).hidden_states[config.vision_feature_layer]
        loss = probe.loss(projector(hidden[:, 1:]), *patch_labels(samples, grid))  # [:, 1:] drops CLS
        lr = schedule.get_last_lr()[0]
        _step(loss, params, optimizer, schedule, cfg.grad_clip)
        if saver is not None:
            saver.after_step(model, processor, "vision", step, cfg.vision_steps, step,
                             [s.index for s in samples], lr)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.vision_steps:
            elapsed = time.time() - start
            print(f"vision {step + 1:5d}/{cfg.vision_steps}  patch loss {loss.item():.4f}  {elapsed:6.0f}s", flush=True)


def train_llava(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    probe: PatchProbe,
    data: ShapesVQA | TrainingSet,
    cfg: TrainConfig,
    saver: CheckpointSaver | None = None,
) -> None:
    """Stage 2: train the whole model to answer (teacher forcing), keeping the patch loss."""
    named = [*model.named_parameters(), *probe.named_parameters()]
    params = [p for _, p in named]
    optimizer, schedule = _optimizer(named, cfg.lr, cfg.steps, cfg)
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    projected: list[torch.Tensor] = []
    hook = model.model.multi_modal_projector.register_forward_hook(lambda _m, _i, out: projected.append(out))
    start, losses, hits = time.time(), [], []
    try:
        for step, samples in enumerate(_batches(data, cfg.batch_size, cfg.vision_steps, cfg.steps)):
            batch = make_batch(processor, samples)
            projected.clear()
            out = model(**batch)
            loss = out.loss
            if cfg.aux_weight:
                loss = loss + cfg.aux_weight * probe.loss(projected[0], *patch_labels(samples, grid))
            lr = schedule.get_last_lr()[0]
            _step(loss, params, optimizer, schedule, cfg.grad_clip)
            if saver is not None:
                saver.after_step(model, processor, "llava", step, cfg.steps, cfg.vision_steps + step,
                                 [s.index for s in samples], lr)
            losses.append(out.loss.item())
            hits.extend(_answer_hits(out.logits.detach(), batch["labels"]).tolist())
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                recent = hits[-cfg.log_every * cfg.batch_size :]
                print(
                    f"llava  {step + 1:5d}/{cfg.steps}  loss {np.mean(losses[-cfg.log_every :]):.4f}"
                    f"  train acc {np.mean(recent):.3f}  lr {schedule.get_last_lr()[0]:.2e}"
                    f"  {time.time() - start:6.0f}s",
                    flush=True,
                )
    finally:
        hook.remove()


def train(
    cfg: TrainConfig | None = None, arch: DemoConfig | None = None
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Train a demo model from scratch (stage 1: vision, stage 2: all) and return it with its processor.

    >>> model, processor = train(TrainConfig(vision_steps=2, steps=2, batch_size=4))  # doctest: +ELLIPSIS
    vision ...
    """
    cfg, arch = cfg or TrainConfig(), arch or DemoConfig()
    split = "standard" if check_choice("bias", cfg.bias, BIASES) == "none" else f"{cfg.bias}-train"
    if cfg.save_every < 0 or (cfg.checkpoint_dir and cfg.save_every <= 0):
        raise InputError(f"--save-every {cfg.save_every}: pass a number of steps >= 1")
    if cfg.save_every and not cfg.checkpoint_dir:
        raise InputError("--save-every needs --checkpoint-dir DIR: the folder to save the checkpoints in")
    torch.manual_seed(cfg.seed)
    if cfg.vision_tower:  # LLaVA recipe on a contrastive CLIP; the language model comes from --init
        from mmlens.demo import clip_llava

        model, processor = clip_llava.build_clip_llava(cfg.vision_tower, cfg.init or "demo")
    elif cfg.init:  # fine-tune a saved model (its own architecture; ``arch`` only sets the image size)
        from mmlens.demo import demo_dir

        path = demo_dir(cfg.init) if cfg.init.startswith("demo") else Path(cfg.init)
        model, processor = LlavaForConditionalGeneration.from_pretrained(path), AutoProcessor.from_pretrained(path)
    else:
        processor = build_processor(arch)
        model = build_model(processor.tokenizer, arch)
    if cfg.bias == "twoobject":  # its questions use words the demo tokenizer lacks
        processor = extend_vocabulary(model, processor, PLANTED_WORDS)
    probe = PatchProbe(model.config.text_config.hidden_size)  # training-only: not part of the saved model
    data = TrainingSet(ShapesVQA(image_size=arch.image_size, seed=TRAIN_SEED_BASE + cfg.seed, split=split),
                       cfg.train_size, cfg.plant)
    saver = None
    if cfg.checkpoint_dir:
        info = {"seed": cfg.seed, "split": split, "data_seed": TRAIN_SEED_BASE + cfg.seed, "image_size":
                arch.image_size, "batch_size": cfg.batch_size, "train_size": cfg.train_size, "planted": data.planted,
                "init": cfg.init}
        saver = CheckpointSaver(cfg.checkpoint_dir, cfg.save_every, info)
    model.train()
    if cfg.vision_tower:
        clip_llava.align_projector(model, processor, data, cfg)
    else:
        pretrain_vision(model, processor, probe, data, cfg, saver)
    train_llava(model, processor, probe, data, cfg, saver)
    model.eval()
    return model, processor


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: train (or only evaluate) the demo model, or with ``--variant clip`` the demo CLIP."""
    parser = argparse.ArgumentParser(prog="python -m mmlens.demo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=("llava", "clip"), default="llava", help="which demo model")
    parser.add_argument("--out", type=Path, default=None, help="folder to save to / evaluate (default: shipped)")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate the model in --out")
    parser.add_argument("--n", type=int, default=1000, help="held-out samples to evaluate")
    train_defaults = {f.name: getattr(TrainConfig(), f.name) for f in fields(TrainConfig)}
    arch_defaults: dict = {}  # architecture options of both variants (default: the variant's own)
    for defaults in (DemoConfig(), _clip().ClipConfig()):
        arch_defaults.update({f.name: getattr(defaults, f.name) for f in fields(defaults)})
    for name, value in {**train_defaults, **arch_defaults}.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None)
    args = parser.parse_args(argv)
    if args.variant == "clip":  # the CLIP recipe's own step defaults
        train_defaults.update(_clip().CLIP_TRAIN_DEFAULTS)
    for name, value in train_defaults.items():
        setattr(args, name, value if getattr(args, name) is None else getattr(args, name))
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    arch_cls = _clip().ClipConfig if args.variant == "clip" else DemoConfig
    arch = arch_cls(**{f.name: getattr(args, f.name) for f in fields(arch_cls) if getattr(args, f.name) is not None})
    try:
        (_main_clip if args.variant == "clip" else _main_llava)(args, cfg, arch)
    except InputError as err:
        parser.exit(2, f"error: {err}\n")


def _clip():
    from mmlens.demo import clip_recipe

    return clip_recipe


def _main_llava(args: argparse.Namespace, cfg: TrainConfig, arch: DemoConfig) -> None:
    out = args.out or DEMO_MODEL_DIR
    if args.eval_only:
        model = LlavaForConditionalGeneration.from_pretrained(out)
        processor = AutoProcessor.from_pretrained(out)
    else:
        print(f"training {cfg} {arch}", flush=True)
        start = time.time()
        model, processor = train(cfg, arch)
        print(f"trained in {time.time() - start:.0f}s", flush=True)
        save_demo(model, processor, out)
        print(f"saved to {out}", flush=True)
    print(_format(evaluate(model, processor, n=args.n)), flush=True)
    rates = evaluate_planted(model, processor, args.bias, args.n) if args.bias in PLANTED_TESTS else {}
    rates = rates or evaluate_biases(model, processor, n=args.n)
    print("  ".join(f"{k} {v:.3f}" for k, v in rates.items()), flush=True)


def _main_clip(args: argparse.Namespace, cfg: TrainConfig, arch) -> None:
    from transformers import CLIPModel, CLIPProcessor

    recipe = _clip()
    out = args.out or recipe.CLIP_DIR
    if args.eval_only:
        model, processor = CLIPModel.from_pretrained(out), CLIPProcessor.from_pretrained(out)
    else:
        print(f"training {cfg} {arch}", flush=True)
        start = time.time()
        model, processor = recipe.train_clip(cfg, arch)
        print(f"trained in {time.time() - start:.0f}s", flush=True)
        save_demo(model, processor, out)
        print(f"saved to {out}", flush=True)
    print(recipe.format_clip(recipe.evaluate_clip(model, processor, n=args.n)), flush=True)


if __name__ == "__main__":
    main()
