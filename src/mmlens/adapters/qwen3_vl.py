"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): Qwen2-VL's dynamic-resolution layout with 16 px patches,
learned position embeddings interpolated per image, and DeepStack.

Geometry is Qwen2-VL's (``image_grid_thw`` -> a row-major merged grid per image). DeepStack: the outputs of the
vision blocks in ``deepstack_visual_indexes``, each through its own merger, are added to the LM's hidden states at
the image positions after the first LM blocks. ``projector.out`` is the main merger's output (the LM's input
image embeddings); a patch / ablation there does not reach the DeepStack features. They are added after block
``i``'s output hook, so for those blocks ``lm.blocks.{i}.resid_post`` and ``lm.blocks.{i+1}.resid_pre`` differ at
the image positions (measured on the tiny model: exactly there). DeepStack indexes hidden states with a one-row mask of
image positions; an edit that turns the LM input into several rows (Integrated Gradients' path points) gets the
mask and the features repeated per row while a trace is open (:meth:`Qwen3VLAdapter.trace_patches`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import Qwen3VLProcessor

from mmlens.adapters.base import register_adapter
from mmlens.adapters.qwen2_vl import Qwen2VLAdapter


@register_adapter
class Qwen3VLAdapter(Qwen2VLAdapter):
    family = "qwen3_vl"
    model_types = ("qwen3_vl",)
    model_class = "Qwen3VLForConditionalGeneration"
    processor_class = Qwen3VLProcessor
    image_only_class = None  # the generic image-only subclass
    video_layout = "qwen3"  # one pixel budget for all of a video's frames

    def trace_patches(self) -> list[Any]:
        return [(self.model.model.language_model, "_deepstack_process", _rows_broadcast)]


def _rows_broadcast(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """DeepStack on ``k`` rows of hidden states with the single row's mask / features repeated ``k`` times."""

    def deepstack(hidden_states: torch.Tensor, visual_pos_masks: torch.Tensor, visual_embeds: torch.Tensor):
        rows = hidden_states.shape[0]
        if visual_pos_masks.shape[0] == 1 and rows > 1:
            visual_pos_masks = visual_pos_masks.expand(rows, -1)
            visual_embeds = visual_embeds.repeat(rows, 1)
        return original(hidden_states, visual_pos_masks, visual_embeds)

    return deepstack
