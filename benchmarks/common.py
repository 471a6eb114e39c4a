"""Shared helpers for the benchmark scripts: mid-size random models built from configs (LLaVA; Qwen3-VL and
Gemma 3 for issue 16), and timers."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from PIL import Image
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SiglipVisionConfig,
)
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

import mmlens
from mmlens.adapters.image_only import image_only_processor
from mmlens.testing.tiny_configs import QWEN_CHAT_TEMPLATE, QWEN_SPECIALS
from mmlens.testing.tiny_recent import GEMMA3_CHAT_TEMPLATE
from mmlens.testing.word_tokenizer import build_word_tokenizer

WORDS = ["what", "color", "is", "the", "shape", "object", "in", "image", "red", "green", "blue", "yellow", "circle",
         "square", "triangle", "a", "of"]


def mid_llava(layers: int = 12, hidden: int = 768, image_size: int = 336, patch: int = 14,
              dtype: torch.dtype = torch.float32, device: str = "cpu", heads: int | None = None,
              tiles: int = 0, vocab: int | None = None) -> mmlens.Subject:
    """A random LLaVA: CLIP tower (``image_size / patch``)^2 image tokens (576 by default) + Llama LM with
    ``heads`` heads (default ``hidden / 64``). ``tiles`` (a square: 4 = 2 x 2): a LLaVA-NeXT instead, whose
    images of ``sqrt(tiles) * image_size`` px give a base image + ``tiles`` tiles of that many tokens each
    (plus one newline token per tile row). ``vocab``: see :func:`vocab_size`."""
    tok = build_word_tokenizer(WORDS + [f"w{i}" for i in range(200)], ["<image>"])
    heads = heads or max(2, hidden // 64)
    vision = CLIPVisionConfig(hidden_size=hidden // 2, intermediate_size=hidden * 2, num_hidden_layers=max(2, layers // 3),
                              num_attention_heads=max(2, hidden // 128), image_size=image_size, patch_size=patch)
    text = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 4 * 2 // 3, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads,
                       vocab_size=vocab_size(tok, vocab), max_position_embeddings=4096,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    grid = round(tiles**0.5)
    if tiles and grid * grid != tiles:
        raise ValueError(f"tiles={tiles}: pass a square number (4 = a 2 x 2 grid)")
    next_ = {"image_grid_pinpoints": [[grid * image_size, grid * image_size]]} if tiles else {}
    classes = ((LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil, LlavaNextProcessor)
               if tiles else (LlavaConfig, LlavaForConditionalGeneration, CLIPImageProcessorPil, LlavaProcessor))
    config_cls, model_cls, image_processor_cls, processor_cls = classes
    cfg = config_cls(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                     vision_feature_select_strategy="default", vision_feature_layer=-2, **next_)
    torch.manual_seed(0)
    model = model_cls(cfg).eval().to(dtype=dtype, device=device)
    ip = image_processor_cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                             **next_)
    processor = processor_cls(ip, tok, patch_size=patch, vision_feature_select_strategy="default",
                              num_additional_image_tokens=1, chat_template=tok.chat_template)
    return mmlens.load(model, processor)


def vocab_size(tokenizer, vocab: int | None) -> int:
    """The LM's ``vocab_size``: the word tokenizer's size, or ``vocab`` rows (a real model's: LLaVA-1.5 32064,
    Qwen2-VL 151936, Gemma 3 262208) so that the LM head and the log-softmax cost what they do there; the
    rows beyond the tokenizer are never inputs."""
    if vocab is None:
        return len(tokenizer)
    if vocab < len(tokenizer):
        raise SystemExit(f"--vocab {vocab} is smaller than the benchmark tokenizer ({len(tokenizer)} tokens): "
                         f"pass at least {len(tokenizer)}")
    return vocab


def _tokenizer(specials: tuple[str, ...], named: dict[str, str], template: str):
    return build_word_tokenizer(WORDS + [f"w{i}" for i in range(200)], [*specials, *named.values()], template,
                                named_tokens=named)


def mid_qwen3_vl(layers: int = 12, hidden: int = 768, image_size: int = 336, device: str = "cpu",
                 vocab: int | None = None) -> mmlens.Subject:
    """A random Qwen3-VL about as long as :func:`mid_llava`: images resized to ``(image_size / 14 * 32)`` px
    squares, 16 px patches merged 2x2, so ``(image_size / 14)^2`` image tokens (576 by default); vision tower
    ``layers // 3`` blocks of ``hidden / 2`` with DeepStack from 3 of them; Qwen3 LM with interleaved M-RoPE.
    ``vocab``: see :func:`vocab_size`."""
    named = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
             "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
    tok = _tokenizer(QWEN_SPECIALS, named, QWEN_CHAT_TEMPLATE)
    side = image_size // 14 * 32
    ip = Qwen2VLImageProcessorPil(min_pixels=side * side, max_pixels=side * side, patch_size=16, merge_size=2,
                                  temporal_patch_size=2)
    processor = image_only_processor(Qwen3VLProcessor)(image_processor=ip, tokenizer=tok,
                                                       chat_template=QWEN_CHAT_TEMPLATE)
    heads, depth = max(2, hidden // 64), max(2, layers // 3)
    text = {"vocab_size": vocab_size(tok, vocab), "hidden_size": hidden, "intermediate_size": hidden * 4 * 2 // 3,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 2),
            "head_dim": 64, "max_position_embeddings": 8192, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [8, 12, 12],
                                "mrope_interleaved": True}}
    vision = {"depth": depth, "hidden_size": hidden // 2, "intermediate_size": hidden * 2,
              "num_heads": max(2, hidden // 128), "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "out_hidden_size": hidden, "num_position_embeddings": (side // 16) ** 2,
              "deepstack_visual_indexes": sorted({depth // 4, depth // 2, 3 * depth // 4})}
    ids = {name: getattr(tok, name) for name in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                 "vision_end_token_id")}
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=text, vision_config=vision, **ids))
    return mmlens.load(model.eval().to(device=device), processor)


def mid_gemma3(layers: int = 12, hidden: int = 768, image_size: int = 336, device: str = "cpu",
               vocab: int | None = None) -> mmlens.Subject:
    """A random Gemma 3 about as long as :func:`mid_llava`: SigLIP tower (``image_size`` px, patch 14, no
    pooling: ``(image_size / 14)^2`` image tokens between ``<start_of_image>`` / ``<end_of_image>``, attended
    bidirectionally), Gemma 3 LM with 5 sliding-window (512) layers per global one and grouped-query heads.
    ``vocab``: see :func:`vocab_size`."""
    named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    tok = _tokenizer(("<start_of_turn>", "<end_of_turn>"), named, GEMMA3_CHAT_TEMPLATE)
    tokens = (image_size // 14) ** 2
    ip = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=tokens,
                                chat_template=GEMMA3_CHAT_TEMPLATE)
    heads = max(2, hidden // 64)
    text = Gemma3TextConfig(
        vocab_size=vocab_size(tok, vocab), hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=64, query_pre_attn_scalar=64,
        sliding_window=512, max_position_embeddings=8192, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = SiglipVisionConfig(hidden_size=hidden // 2, intermediate_size=hidden * 2,
                                num_hidden_layers=max(2, layers // 3), num_attention_heads=max(2, hidden // 128),
                                image_size=image_size, patch_size=14, vision_use_head=False)
    config = Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=tokens,
                          boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                          image_token_index=tok.image_token_id)
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # transformers zero-initialises the projection: images would not reach the LM
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, hidden**-0.5)
    return mmlens.load(model.eval().to(device=device), processor)


#: ``--family`` of the benchmark scripts: builder(layers, hidden, image_size, device, vocab)
MID_MODELS = {"llava": mid_llava, "qwen3_vl": mid_qwen3_vl, "gemma3": mid_gemma3}


def mid_model(family: str, layers: int = 12, hidden: int = 768, image_size: int = 336,
              device: str = "cpu", vocab: int | None = None) -> mmlens.Subject:
    """A mid-size random model of ``family`` (one of :data:`MID_MODELS`)."""
    return MID_MODELS[family](layers, hidden, image_size, device=device, vocab=vocab)


def image(size: int = 336, seed: int = 0) -> Image.Image:
    gen = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size, size, 3, generator=gen) * 255).byte().numpy())


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class ForwardCounter:
    """Counts top-level forward calls of a model while active."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.calls, self.rows = model, 0, 0

    def __enter__(self) -> ForwardCounter:
        def hook(module, args, kwargs):
            self.calls += 1
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.rows += int(ids.shape[0]) if ids is not None else 0

        self.handle = self.model.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mb(fn: Callable[[], object], device: str = "cpu") -> float:
    """Peak memory (MB) that ``fn`` adds on top of what is alive before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the process's resident-set high-water mark, reset just
    before the call (Linux ``/proc/self/clear_refs``), minus the resident set at that moment.
    """
    import ctypes
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - base) / 1024


def run_fresh(module: str, mode: str, *extra: str) -> dict:
    """Run ``python -m module --one mode`` with this process's arguments (+ ``extra``) in a fresh process, so
    its peak memory is one job alone; the JSON its last output line holds."""
    cmd = [sys.executable, "-m", module, "--one", mode, *sys.argv[1:], *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)
