"""Prepared inputs and answers: what every method consumes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image

from mmlens.model.geometry import ImageGeometry


@dataclass
class Batch:
    """Model inputs for one prompt (with its images), plus where everything sits in the sequence.

    ``answer_positions[j]`` is the sequence position holding answer token ``j``; its log-prob is read
    from the logits at ``answer_positions[j] - 1``.
    """

    inputs: dict[str, Any]
    images: list[Image.Image]
    prompt: str
    text: str
    geometry: list[ImageGeometry]
    prompt_len: int
    answer: str | None = None
    answer_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    conversions: list[str] = field(default_factory=list)
    #: frames per second when ``images`` are the frames of one :class:`~mmlens.model.video.Video` (else None)
    video_fps: float | None = None

    @property
    def is_video(self) -> bool:
        return self.video_fps is not None

    def visual_input(self, images: list[Image.Image] | None = None) -> Any:
        """``images`` (default: this batch's) in the form :meth:`Subject.prepare` takes for this batch: the
        frames of a :class:`~mmlens.model.video.Video` at this batch's rate, or the image list."""
        images = list(self.images if images is None else images)
        if self.video_fps is None:
            return images
        from mmlens.model.video import Video

        return Video(images, self.video_fps)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def answer_positions(self) -> torch.Tensor:
        return torch.arange(self.prompt_len, self.prompt_len + self.answer_ids.numel())

    @property
    def in_key_space(self) -> bool:
        """True when the images enter through cross-attention keys, not sequence positions (see
        :class:`~mmlens.model.geometry.ImageGeometry` ``space``)."""
        return any(g.space == "keys" for g in self.geometry)

    def require_sequence_images(self, what: str | None = None, instead: str | None = None) -> None:
        """One-line InputError when the images are cross-attention keys (no sequence position holds them): what a
        method that reads or edits image tokens in the language model's sequence calls first (an analysis other
        than an attribution method names itself, ``what``, and what to use ``instead``)."""
        if self.in_key_space:
            from mmlens.errors import InputError

            if what is not None:
                raise InputError(f"{what} needs image tokens in the language model's sequence, and this model's "
                                 f"images enter only through cross-attention keys: {instead}")
            raise InputError("this needs image tokens in the language model's sequence, and this model's images "
                             "enter only through cross-attention keys: use attention, relevancy, attention_x_gradient, "
                             "saliency, gradcam, input_x_gradient, integrated_gradients, smoothgrad or a perturbation "
                             "method (occlusion, ...)")

    def image_positions(self) -> torch.Tensor:
        """Every image-token position of every image (separators included), sorted, each once (video frames
        that share tokens, e.g. Qwen2-VL's two frames per token, list them once); see
        :meth:`require_sequence_images`."""
        self.require_sequence_images()
        if not self.geometry:
            return torch.zeros(0, dtype=torch.long)
        return torch.unique(torch.cat([g.positions for g in self.geometry]))

    def key_positions(self) -> torch.Tensor:
        """Every cross-attention key of every image (separators included), sorted; empty for sequence images."""
        keys = [g.positions for g in self.geometry if g.space == "keys"]
        return torch.cat(keys).sort().values if keys else torch.zeros(0, dtype=torch.long)

    def text_positions(self) -> torch.Tensor:
        """Prompt positions that hold no image token (template, question)."""
        keep = torch.ones(self.prompt_len, dtype=torch.bool)
        if not self.in_key_space:
            img = self.image_positions()
            keep[img[img < self.prompt_len]] = False
        return torch.nonzero(keep).flatten()

    def to(self, device: torch.device | str) -> Batch:
        moved = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.inputs.items()}
        return replace(self, inputs=moved)


def cat_inputs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One batched model input from several one-prompt inputs of equal sequence length, for every family.

    Per-token tensors ``(1, seq)`` stack along the batch axis; image tensors (``pixel_values`` in any family's
    layout, ``image_sizes``, ``image_grid_thw``) concatenate along their first axis, which is how every
    processor lays out the images of consecutive prompts.

    >>> a = {"input_ids": torch.ones(1, 5, dtype=torch.long), "pixel_values": torch.ones(2, 3, 8, 8)}
    >>> cat_inputs([a, a, a])["pixel_values"].shape
    torch.Size([6, 3, 8, 8])
    """
    lengths = {int(r["input_ids"].shape[1]) for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"inputs of different lengths {sorted(lengths)} cannot share a batch")
    return {k: (torch.cat([r[k] for r in rows], dim=0) if torch.is_tensor(v) else v) for k, v in rows[0].items()}


def repeat_inputs(inputs: dict[str, Any], n: int) -> dict[str, Any]:
    """Model inputs for ``n`` identical rows of a one-prompt batch (see :func:`cat_inputs`)."""
    return cat_inputs([inputs] * n)


@dataclass
class AnswerScore:
    """Per-token log-probs of an answer under teacher forcing."""

    token_ids: torch.Tensor
    tokens: list[str]
    log_probs: torch.Tensor
    positions: torch.Tensor

    @property
    def total(self) -> float:
        return float(self.log_probs.sum())


@dataclass
class Generation:
    """A generated answer and the teacher-forced batch that reproduces it."""

    text: str
    token_ids: torch.Tensor
    tokens: list[str]
    batch: Batch

    @property
    def positions(self) -> torch.Tensor:
        return self.batch.answer_positions

    def __str__(self) -> str:
        return self.text
