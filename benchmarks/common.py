"""Shared helpers for the benchmark scripts: a mid-size random LLaVA built from a config, and timers."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from PIL import Image
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
)

import mmlens
from mmlens.testing.word_tokenizer import build_word_tokenizer


def mid_llava(layers: int = 12, hidden: int = 768, image_size: int = 336, patch: int = 14,
              dtype: torch.dtype = torch.float32, device: str = "cpu", heads: int | None = None,
              tiles: int = 0) -> mmlens.Subject:
    """A random LLaVA: CLIP tower (``image_size / patch``)^2 image tokens (576 by default) + Llama LM with
    ``heads`` heads (default ``hidden / 64``). ``tiles`` (a square: 4 = 2 x 2): a LLaVA-NeXT instead, whose
    images of ``sqrt(tiles) * image_size`` px give a base image + ``tiles`` tiles of that many tokens each
    (plus one newline token per tile row)."""
    words = "what color is the shape object in image red green blue yellow circle square triangle a of".split()
    tok = build_word_tokenizer(words + [f"w{i}" for i in range(200)], ["<image>"])
    heads = heads or max(2, hidden // 64)
    vision = CLIPVisionConfig(hidden_size=hidden // 2, intermediate_size=hidden * 2, num_hidden_layers=max(2, layers // 3),
                              num_attention_heads=max(2, hidden // 128), image_size=image_size, patch_size=patch)
    text = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 4 * 2 // 3, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads,
                       vocab_size=len(tok), max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
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
