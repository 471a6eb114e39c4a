"""PaliGemma (``PaliGemmaForConditionalGeneration``): SigLIP square grid, image tokens first.

The processor resizes each image to a square (no crop) and puts ``image_seq_length`` image tokens per
image before ``<bos>`` and the prompt; prompt tokens are a bidirectional prefix, answer tokens
(``token_type_ids`` = 1) are causal.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from mmlens.adapters.base import Adapter, register_adapter
from mmlens.adapters.llava import (
    processed_box,
    square_grid_geometry,
    tower_projector_lm_parts,
)
from mmlens.hooks.points import ModelParts
from mmlens.model.geometry import ImageGeometry


@register_adapter
class PaliGemmaAdapter(Adapter):
    family = "paligemma"
    model_types = ("paligemma",)
    pixel_layout = "stack"
    model_class = "PaliGemmaForConditionalGeneration"
    answer_token_type = 1

    def parts(self) -> ModelParts:
        return tower_projector_lm_parts(self.model)

    def prompt_text(self, prompt: str, n_images: int) -> str:
        """PaliGemma has no chat template: image tokens, then the prompt (the processor adds bos / newline)."""
        return self.processor.image_token * n_images + prompt

    def processor_inputs(self, images: list[Image.Image], text: str) -> dict[str, Any]:
        inputs = super().processor_inputs(images, text)
        inputs.pop("labels", None)
        return inputs

    def answer_ids(self, prompt_text: str, answer: str) -> list[int]:
        return list(self.tokenizer(answer, add_special_tokens=False).input_ids)

    def geometry(self, inputs: dict[str, torch.Tensor], images: list[Image.Image]) -> list[ImageGeometry]:
        n = int(self.model.config.text_config.num_image_tokens if hasattr(self.model.config.text_config, "num_image_tokens")
                else self.processor.image_seq_length)
        chunks = self.split_image_positions(inputs["input_ids"], [n] * len(images))
        ip = self.processor.image_processor
        return [square_grid_geometry(i, img, pos, processed_box(ip, img.size)) for i, (img, pos) in enumerate(zip(images, chunks))]
