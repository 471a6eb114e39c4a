"""The demo CLIP: a real tiny ``CLIPModel`` + ``CLIPProcessor`` trained contrastively on ShapesVQA.

Captions name every object of an image ("a photo of a red circle and a blue square", in a random
object order and one of a few phrasings). Besides the symmetric CLIP loss over (image, caption)
pairs, every step scores each image against one prompt per colour, per shape and per (colour,
shape) pair ("a red object", "a photo of a circle", "a green triangle", ...), with every prompt
whose concept is in the image as a positive, in both directions (image -> prompts of a group,
prompt -> images). That aligns single words with what the image shows, so zero-shot
classification and sparse concept decompositions work on the image embedding.

Trained by the one training script: ``python -m mmlens.demo.train --variant clip`` (the
optimizer, schedule, batching and seed split are train.py's).

>>> processor = build_clip_processor()
>>> processor.tokenizer.convert_ids_to_tokens(processor(text="a photo of a red circle").input_ids)
['<s>', 'a', 'photo', 'of', 'a', 'red', 'circle', '</s>']
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import processors
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPVisionConfig,
)

from mmlens.data.shapes_vqa import COLORS, SHAPES, VOCAB, ShapesSample, ShapesVQA
from mmlens.demo import DEMO_VARIANTS
from mmlens.demo.train import EVAL_SEEDS, TRAIN_SEED_BASE, TrainConfig, _batches, _optimizer, _step
from mmlens.errors import InputError
from mmlens.testing.word_tokenizer import build_word_tokenizer

#: Where ``mmlens.load("demo:clip")`` reads the shipped model.
CLIP_DIR = DEMO_VARIANTS["clip"]
#: Caption words besides the ShapesVQA vocabulary.
CAPTION_WORDS: tuple[str, ...] = ("and", "photo", "of", "an", "image", "picture", "with", "something", ",")
#: Full-caption phrasings; ``{}`` is the list of objects.
CAPTION_TEMPLATES: tuple[str, ...] = ("{}", "a photo of {}", "an image of {}", "there is {}", "a picture with {}")
COLOR_TEMPLATES: tuple[str, ...] = ("a {} object", "a photo of a {} object", "something {}", "{}")
SHAPE_TEMPLATES: tuple[str, ...] = ("a {}", "a photo of a {}", "a {} shape", "{}")
PAIR_TEMPLATES: tuple[str, ...] = ("a {} {}", "a photo of a {} {}")
#: The zero-shot prompts :func:`evaluate_clip` classifies with.
COLOR_PROMPT, SHAPE_PROMPT = "a photo of a {} object", "a photo of a {}"
#: Training-step defaults of the CLIP variant (train.py's TrainConfig fields it overrides).
CLIP_TRAIN_DEFAULTS = {"steps": 1500, "lr": 2e-3, "batch_size": 64, "warmup": 100}


@dataclass(frozen=True)
class ClipConfig:
    """Architecture of the demo CLIP."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 96
    vision_layers: int = 6  # 6 x 8 heads (was 3 x 4): more, smaller heads for the embedding-level methods
    vision_heads: int = 8
    vision_intermediate: int = 384
    text_hidden: int = 64
    text_layers: int = 3
    text_heads: int = 4
    text_intermediate: int = 256
    max_positions: int = 32
    projection_dim: int = 64
    min_objects: int = 1  # training images hold 1..4 objects (single ones help zero-shot on crops)
    #: the last this many vision layers have no MLP (its weights zero and frozen): attention-only blocks. With MLPs
    #: in every block the last MLP acting on the CLS token computes the shape (benchmarks/RESULTS.md); with one
    #: MLP block, heads carry both colour and shape into the embedding, as TextSpan finds in large CLIPs
    vision_attention_only: int = 5


def build_clip_processor(config: ClipConfig | None = None) -> CLIPProcessor:
    """``CLIPProcessor``: a PIL CLIP image processor and a word-level tokenizer adding ``<s> ... </s>``.

    >>> build_clip_processor().image_processor.crop_size["height"]
    64
    """
    config = config or ClipConfig()
    tok = build_word_tokenizer([*VOCAB, *CAPTION_WORDS], chat_template=None, model_max_length=config.max_positions)
    tok.padding_side = "right"  # CLIP's text tower is causal with learned positions: pad after </s>
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.bos_token_id), ("</s>", tok.eos_token_id)]
    )
    side = config.image_size
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return CLIPProcessor(image_processor=image_processor, tokenizer=tok)


def build_clip_model(processor: CLIPProcessor, config: ClipConfig | None = None) -> CLIPModel:
    """A randomly initialised tiny ``CLIPModel`` whose text ids match ``processor.tokenizer``.

    >>> build_clip_model(build_clip_processor()).config.text_config.eos_token_id
    3
    """
    config = config or ClipConfig()
    tok = processor.tokenizer
    vision = CLIPVisionConfig(
        image_size=config.image_size, patch_size=config.patch_size, hidden_size=config.vision_hidden,
        intermediate_size=config.vision_intermediate, num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
    )
    text = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=config.text_hidden, intermediate_size=config.text_intermediate,
        num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
        max_position_embeddings=config.max_positions, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    clip = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=config.projection_dim)
    model = CLIPModel(clip)
    if not 0 <= config.vision_attention_only <= config.vision_layers:
        raise InputError(f"vision_attention_only={config.vision_attention_only}: pass 0..{config.vision_layers}")
    for layer in model.vision_model.encoder.layers[config.vision_layers - config.vision_attention_only :]:
        for p in layer.mlp.parameters():  # the block's MLP adds exactly 0 and is never trained
            p.data.zero_()
            p.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- captions


def object_phrase(objects: Sequence[dict]) -> str:
    """``"a red circle, a blue square and a green triangle"`` for the objects in the given order."""
    names = [f"a {o['color']} {o['shape']}" for o in objects]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def caption(sample: ShapesSample, rng: np.random.Generator | None = None) -> str:
    """A caption naming every object: left to right and plain without ``rng``, else a random order and phrasing.

    >>> caption(ShapesVQA(seed=0).sample(0)).count(" a ") >= 1
    True
    """
    if rng is None:
        return object_phrase(sorted(sample.objects, key=lambda o: (o["box"][0], o["box"][1])))
    objects = [sample.objects[i] for i in rng.permutation(len(sample.objects))]
    return CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))].format(object_phrase(objects))


def _object_key(sample: ShapesSample) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((o["color"], o["shape"]) for o in sample.objects))


def concept_prompts(rng: np.random.Generator) -> tuple[list[str], list[tuple[str, ...]]]:
    """One prompt per colour, shape and (colour, shape) pair, each in a random phrasing, with its concept."""
    pick = lambda templates: templates[int(rng.integers(len(templates)))]
    texts = [pick(COLOR_TEMPLATES).format(c) for c in COLORS] + [pick(SHAPE_TEMPLATES).format(s) for s in SHAPES]
    texts += [pick(PAIR_TEMPLATES).format(c, s) for c in COLORS for s in SHAPES]
    concepts = [(c,) for c in COLORS] + [(s,) for s in SHAPES] + [(c, s) for c in COLORS for s in SHAPES]
    return texts, concepts


def _presence(samples: Sequence[ShapesSample], concepts: Sequence[tuple[str, ...]]) -> torch.Tensor:
    """``(images, concepts)`` 0/1: does some object of the image carry every attribute of the concept?"""
    rows = [[float(any(set(c) <= {o["color"], o["shape"]} for o in s.objects)) for c in concepts] for s in samples]
    return torch.tensor(rows)


def _soft_ce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the uniform distribution over each row's positives (rows without any skipped)."""
    keep = positives.sum(1) > 0
    target = positives[keep] / positives[keep].sum(1, keepdim=True)
    return -(target * logits[keep].log_softmax(1)).sum(1).mean()


def clip_loss(model: CLIPModel, processor: CLIPProcessor, samples: Sequence[ShapesSample], rng: np.random.Generator
              ) -> tuple[torch.Tensor, float]:
    """Contrastive loss of one batch (captions + concept prompts) and the batch's image -> caption accuracy."""
    prompts, concepts = concept_prompts(rng)
    captions = [caption(s, rng) for s in samples]
    inputs = processor(text=[*captions, *prompts], images=[s.image for s in samples], return_tensors="pt",
                       padding=True)
    image = torch.nn.functional.normalize(model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output, dim=-1)
    text_out = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    text = torch.nn.functional.normalize(text_out.pooler_output, dim=-1)
    logits = model.logit_scale.exp().clamp(max=100) * image @ text.T
    n = len(samples)
    keys = [_object_key(s) for s in samples]
    same = torch.tensor([[float(a == b) for b in keys] for a in keys])  # repeated object sets are positives too
    pair = logits[:, :n]
    loss = 0.5 * (_soft_ce(pair, same) + _soft_ce(pair.T, same))
    present = _presence(samples, concepts)
    on_prompts = logits[:, n:]
    groups = (slice(0, len(COLORS)), slice(len(COLORS), len(COLORS) + len(SHAPES)), slice(len(COLORS) + len(SHAPES), None))
    loss = loss + sum(_soft_ce(on_prompts[:, g], present[:, g]) for g in groups) / 3 + _soft_ce(on_prompts.T, present.T)
    hits = (pair.argmax(1) == torch.arange(n)).float().mean().item()
    return loss, hits


def train_clip(cfg: TrainConfig, arch: ClipConfig | None = None) -> tuple[CLIPModel, CLIPProcessor]:
    """Train the demo CLIP from scratch on ShapesVQA training seeds (>= 1000); return it with its processor.

    >>> model, processor = train_clip(TrainConfig(steps=2, batch_size=4))  # doctest: +ELLIPSIS
    clip ...
    """
    arch = arch or ClipConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([TRAIN_SEED_BASE, cfg.seed])
    processor = build_clip_processor(arch)
    model = build_clip_model(processor, arch)
    data = ShapesVQA(image_size=arch.image_size, seed=TRAIN_SEED_BASE + cfg.seed, min_objects=arch.min_objects)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer, schedule = _optimizer(named, cfg.lr, cfg.steps, cfg)
    model.train()
    start, losses, hits = time.time(), [], []
    for step, samples in enumerate(_batches(data, cfg.batch_size, 0, cfg.steps)):
        loss, hit = clip_loss(model, processor, samples, rng)
        _step(loss, params, optimizer, schedule, cfg.grad_clip)
        losses.append(loss.item())
        hits.append(hit)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            print(f"clip   {step + 1:5d}/{cfg.steps}  loss {np.mean(losses[-cfg.log_every:]):.4f}  batch R@1 "
                  f"{np.mean(hits[-cfg.log_every:]):.3f}  scale {model.logit_scale.exp().item():.1f}  "
                  f"{time.time() - start:6.0f}s", flush=True)
    model.eval()
    return model, processor


# --------------------------------------------------------------------------- evaluation


def _held_out(n: int, seeds: Sequence[int], side: int, **kwargs: int) -> list[ShapesSample]:
    if not seeds or any(not 0 <= s < TRAIN_SEED_BASE for s in seeds):
        raise InputError(f"evaluation seeds must be in [0, {TRAIN_SEED_BASE}): larger ones are training data")
    return [
        s
        for i, sd in enumerate(seeds)
        for s in ShapesVQA(image_size=side, seed=sd, **kwargs).samples(n // len(seeds) + (i < n % len(seeds)))
    ]


@torch.no_grad()
def _embed(model: CLIPModel, processor: CLIPProcessor, images=None, texts=None) -> torch.Tensor:
    if images is not None:
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        out = model.get_image_features(pixel_values=pixels).pooler_output
    else:
        out = model.get_text_features(**processor(text=list(texts), return_tensors="pt", padding=True)).pooler_output
    return torch.nn.functional.normalize(out, dim=-1)


@torch.no_grad()
def evaluate_clip(
    model: CLIPModel, processor: CLIPProcessor, n: int = 1000, seed: int | Sequence[int] = EVAL_SEEDS,
    candidates: int = 100,
) -> dict[str, float]:
    """Held-out retrieval and zero-shot accuracy of a CLIP on ShapesVQA.

    ``r@1``: image -> caption recall at 1 among ``candidates`` captions (groups of ``candidates`` held-out
    images, each captioned left to right; a hit when the best caption names the image's objects).
    ``color`` / ``shape``: zero-shot accuracy on single-object images with the prompts
    :data:`COLOR_PROMPT` / :data:`SHAPE_PROMPT`. ``n`` samples of each kind, spread over ``seed``.

    >>> model, processor = CLIPModel.from_pretrained(CLIP_DIR), CLIPProcessor.from_pretrained(CLIP_DIR)
    >>> evaluate_clip(model, processor, n=100, seed=0)["r@1"] > 0.5
    True
    """
    seeds = [seed] if isinstance(seed, int) else list(seed)
    side = processor.image_processor.crop_size["height"]
    model.eval()
    samples = _held_out(n, seeds, side)
    hits = []
    for lo in range(0, len(samples) - candidates + 1, candidates):
        group = samples[lo : lo + candidates]
        sims = _embed(model, processor, images=[s.image for s in group]) @ _embed(
            model, processor, texts=[caption(s) for s in group]).T
        keys = [_object_key(s) for s in group]
        hits += [keys[int(j)] == keys[i] for i, j in enumerate(sims.argmax(1))]
    if not hits:
        raise InputError(f"n={n} gives no group of {candidates} candidates: pass n >= {candidates}")
    singles = _held_out(n, seeds, side, min_objects=1, max_objects=1)
    image = _embed(model, processor, images=[s.image for s in singles])
    result = {"r@1": float(np.mean(hits)), "n": len(hits)}
    for name, names, prompt in (("color", list(COLORS), COLOR_PROMPT), ("shape", list(SHAPES), SHAPE_PROMPT)):
        guess = (image @ _embed(model, processor, texts=[prompt.format(w) for w in names]).T).argmax(1)
        truth = [names.index(s.objects[0][name]) for s in singles]
        result[name] = float((guess == torch.tensor(truth)).float().mean())
    return result


def format_clip(result: dict[str, float]) -> str:
    """One line: retrieval and zero-shot accuracy."""
    return (f"held-out image->caption R@1 {result['r@1']:.3f} on {result['n']} images (100 candidates)  "
            f"zero-shot color {result['color']:.3f}  shape {result['shape']:.3f}")
