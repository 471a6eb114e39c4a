"""Subject: a model + processor + family adapter, with the operations every method builds on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mmlens.adapters.base import Adapter, adapter_for
from mmlens.catalog import TIERS
from mmlens.errors import InputError
from mmlens.hooks.points import HookPoint
from mmlens.hooks.tracing import Tracer
from mmlens.model.batch import AnswerScore, Batch, Generation
from mmlens.model.images import ImageLike, to_rgb
from mmlens.model.targets import tail_rows
from mmlens.model.video import Video, video_frames
from mmlens.util.options import check_int


class Subject:
    """A multimodal model under study.

    >>> import mmlens
    >>> lm = mmlens.load("demo")                                  # doctest: +SKIP
    >>> out = lm.generate(image, "what color is the circle?")     # doctest: +SKIP
    >>> lm.score(out.batch).log_probs                             # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, processor: Any, model_id: str | None = None, adapter: Adapter | None = None,
                 access: str | Sequence[str] = "all"):
        self.access = access_tiers(access)
        self.model = model.eval()
        self.processor = processor
        self.adapter = adapter or adapter_for(model)(model, processor)
        self.model_id = model_id or getattr(model.config, "_name_or_path", None) or type(model).__name__
        self.load_notes: list[str] = []
        self._points: dict[str, HookPoint] | None = None

    def require(self, tier: str) -> None:
        """Raise a one-line InputError if this subject's ``access`` does not allow ``tier``."""
        if tier not in self.access:
            allowed = ", ".join(t for t in TIERS if t in self.access)
            raise InputError(f"this needs {tier!r} access but the subject allows only: {allowed}; "
                             "load it with access='all' or pick a black-box method")

    # -- basics -------------------------------------------------------------------------------------------
    def require_language_model(self, what: str | None = None) -> None:
        """One-line InputError for a method that reads the language model's attention (or, naming ``what``, an
        analysis that reads any part of the language model) when this subject has none."""
        if self.adapter.dual_encoder and what is not None:
            raise InputError(f"{what} reads a language model, and this {self.family} model is an image-text dual "
                             "encoder without one (its image and caption meet only in their similarity): use an "
                             "attribution method (mmlens.explain), zero_shot or the embedding tools "
                             "(decompose_embedding, text_spans, splice, modality_gap, train_cbm)")
        if self.adapter.dual_encoder:
            raise InputError("this method reads a language model's attention over the whole sequence, and a dual "
                             "encoder has none (its image and caption meet only in the similarity): use "
                             "saliency, input_x_gradient, integrated_gradients, smoothgrad, gradcam or a "
                             "perturbation method")

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def tokenizer(self) -> Any:
        return self.adapter.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_heads(self) -> int:
        """Attention heads per language-model block (query heads; the width of ``lm.blocks.*.attn.heads``)."""
        return int(self.model.config.get_text_config().num_attention_heads)

    @property
    def n_layers(self) -> int:
        return len(self.adapter.parts().lm_blocks)

    def __repr__(self) -> str:
        return f"Subject({self.model_id!r}, family={self.family!r}, layers={self.n_layers}, device={self.device})"

    # -- inputs -------------------------------------------------------------------------------------------
    def prepare(
        self,
        images: ImageLike | Sequence[ImageLike] | Video,
        prompt: str,
        answer: str | Sequence[int] | None = None,
        candidates: Sequence[str] | None = None,
    ) -> Batch:
        """Build model inputs for ``prompt`` about ``images`` (one or several), optionally followed by
        ``answer`` (text or token ids) for teacher forcing, with each image's geometry. A :class:`Video` (families
        with video input) gives a batch whose images are its frames, with one geometry per frame.

        ``candidates`` (dual encoders): other captions the prompt (a caption) competes with, so the answer
        ``<match>`` becomes the prompt's zero-shot class among them (see :func:`mmlens.zero_shot`)."""
        self._check_text("prompt", prompt)
        if isinstance(images, Video):
            if candidates is not None:
                raise InputError("candidates (zero-shot classes among captions) take an image, not a video: leave "
                                 "candidates out")
            batch = self._prepare_video(images, prompt)
            return self.with_answer(batch, answer) if answer is not None else batch
        image_list = list(images) if isinstance(images, (list, tuple)) else [images]
        if not image_list:
            raise InputError("no image given: pass at least one image path or PIL image")
        rgb, notes = [], []
        for i, img in enumerate(image_list):
            converted, note = to_rgb(img, name=f"image {i}" if len(image_list) > 1 else "image")
            rgb.append(converted)
            if note:
                notes.append(f"image {i}: {note}")
        text = self.adapter.prompt_text(prompt, len(rgb))
        try:
            inputs = self.adapter.processor_inputs(rgb, text)
        except ValueError as err:  # e.g. placeholders and images that do not match
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise InputError(f"the {self.family} processor rejected this prompt/images ({first}): pass one image "
                             "per placeholder, or a prompt without placeholders (mmlens adds them)") from None
        if candidates is not None:
            if isinstance(candidates, str) or not all(isinstance(c, str) for c in candidates):
                raise InputError(f"candidates={candidates!r}: pass a list of captions (strings)")
            for c in candidates:
                self._check_text("candidate", c)
            inputs = self.adapter.with_candidates(inputs, prompt, list(candidates))
        n_image_tokens = int(self.adapter.image_token_mask(inputs["input_ids"]).sum())
        if n_image_tokens == 0:
            raise InputError(
                "the processor put no image tokens in this prompt: leave image placeholders out of the prompt "
                "(mmlens adds them) or use the family's placeholder token"
            )
        geometry = self.adapter.geometry(inputs, rgb)
        prompt_len = int(inputs["input_ids"].shape[1])
        if self.adapter.dual_encoder:  # only the caption goes through the text tower
            self._check_length(prompt_len - n_image_tokens, "the caption")
        else:
            self._check_length(prompt_len, "the prompt with its image tokens")
        batch = Batch(inputs=inputs, images=rgb, prompt=prompt, text=text, geometry=geometry,
                      prompt_len=prompt_len, conversions=notes)
        return self.with_answer(batch, answer) if answer is not None else batch

    def _prepare_video(self, video: Video, prompt: str) -> Batch:
        """The batch of one video: ``images`` are its frames, one geometry per frame (see :mod:`mmlens.model.video`)."""
        self.adapter.require_video()
        frames, notes = video_frames(video)
        text = self.adapter.video_prompt_text(prompt)
        inputs = self.adapter.video_inputs(frames, float(video.fps), text)
        geometry = self.adapter.video_geometry(inputs, frames, float(video.fps))
        prompt_len = int(inputs["input_ids"].shape[1])
        self._check_length(prompt_len, "the prompt with its video tokens")
        return Batch(inputs=inputs, images=frames, prompt=prompt, text=text, geometry=geometry, prompt_len=prompt_len,
                     conversions=notes, video_fps=float(video.fps))

    def with_answer(self, batch: Batch, answer: str | Sequence[int]) -> Batch:
        """A copy of ``batch`` (prompt only) with ``answer`` appended for teacher forcing."""
        if isinstance(answer, str):
            self._check_text("answer", answer)
            ids = self.adapter.answer_ids(batch.text, answer)
            text = answer
        else:
            ids = self._check_ids(answer)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if not ids:
            raise InputError(f"answer {answer!r} tokenizes to nothing: pass words the tokenizer knows")
        if not self.adapter.dual_encoder:  # a dual encoder's answer slot is not a text-tower position
            self._check_length(batch.prompt_len + len(ids), "the prompt with its image tokens and the answer")
        base = {k: (v[:, : batch.prompt_len] if torch.is_tensor(v) and v.ndim == 2 and v.shape[1] == batch.seq_len else v)
                for k, v in batch.inputs.items()}
        inputs = self.adapter.extend_inputs(base, ids)
        return Batch(inputs=inputs, images=batch.images, prompt=batch.prompt, text=batch.text,
                     geometry=batch.geometry, prompt_len=batch.prompt_len, answer=text,
                     answer_ids=torch.tensor(ids, dtype=torch.long), conversions=batch.conversions,
                     video_fps=batch.video_fps)

    def _placeholders(self) -> list[str]:
        """Texts of the image / video placeholder tokens (mmlens inserts them; users must not)."""
        tok = self.tokenizer
        found = [tok.convert_ids_to_tokens(self.adapter.image_token_id)]
        for owner in (self.processor, tok):
            found += [getattr(owner, a, None) for a in ("image_token", "video_token", "boi_token")]
        return sorted({t for t in found if isinstance(t, str) and t.strip()}, key=len, reverse=True)

    def _check_text(self, what: str, text: Any) -> None:
        """One-line InputError for a prompt / answer that is not usable text (see :mod:`mmlens.util.limits`)."""
        from mmlens.util.limits import MAX_PROMPT_CHARS

        if not isinstance(text, str):
            hint = "the question as text" if what == "prompt" else "the answer as text or a list of token ids"
            raise InputError(f"{what} must be a string, not {type(text).__name__}: pass {hint}")
        if not text.strip():
            raise InputError(f"{what} is empty: pass " + ("a question or instruction about the image"
                                                          if what == "prompt" else "the answer text to score"))
        if len(text) > MAX_PROMPT_CHARS:
            raise InputError(f"{what} has {len(text):,} characters, over the {MAX_PROMPT_CHARS:,} limit: shorten it")
        for token in self._placeholders():
            if token in text:
                raise InputError(f"{what} contains the image placeholder {token!r}: leave it out (mmlens adds one "
                                 "per image)")

    def _check_ids(self, answer: Any) -> list[int]:
        """Answer token ids as ints inside the vocabulary, image placeholder excluded."""
        vocab = self.adapter.token_embedding().num_embeddings
        try:
            items = list(answer.tolist() if torch.is_tensor(answer) else answer)
        except TypeError:
            raise InputError(f"answer has type {type(answer).__name__}: pass text or a list of token ids") from None
        for t in items:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < vocab:
                raise InputError(f"answer token id {t!r} is not in the vocabulary: pass ids from 0 to {vocab - 1}")
            if int(t) == self.adapter.image_token_id:
                raise InputError(f"answer token id {int(t)} is the image placeholder: leave it out of the answer")
        return [int(t) for t in items]

    def _check_length(self, n_tokens: int, what: str) -> None:
        from mmlens.util.limits import context_length

        limit = context_length(self.model)
        if limit is not None and n_tokens > limit:
            raise InputError(f"{what} is {n_tokens:,} tokens, over the model's context length of {limit:,}: "
                             "shorten the prompt or answer, or use a smaller image")

    # -- running ------------------------------------------------------------------------------------------
    def model_inputs(self, batch: Batch | dict[str, Any]) -> dict[str, Any]:
        """``batch``'s inputs (or an inputs dict) on the model's device, floats in the model's dtype."""
        dtype = next(self.model.parameters()).dtype
        inputs = batch.inputs if isinstance(batch, Batch) else batch
        out = {}
        for k, v in inputs.items():
            if torch.is_tensor(v):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(dtype)
            out[k] = v
        return out

    def forward(self, batch: Batch, tail: int | None = None, **kwargs: Any) -> torch.Tensor:
        """Logits ``(1, seq, vocab)`` of a plain forward over ``batch``; with ``tail=K`` only those of the last
        ``K`` positions, ``(1, K, vocab)``, the LM head running on those alone. :meth:`Target.value
        <mmlens.model.targets.Target.value>` and :meth:`answer_log_probs` read either (``Target.tail`` says how
        many positions a target needs). A dual encoder's similarity readout always covers the whole sequence.

        >>> lm.forward(batch, tail=len(batch.answer_ids) + 1).shape[1]   # doctest: +SKIP
        """
        if tail is not None:
            tail = check_int("tail", tail, 1, batch.seq_len)
        inputs = self.model_inputs(batch)
        if not self.adapter.dual_encoder:  # a dual encoder's joint similarity readout takes no model kwargs
            inputs.update(kwargs)
        return self.adapter.joint_logits(inputs, tail)

    def answer_log_probs(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Differentiable per-token log-probs of ``batch``'s answer from ``logits`` (any leading batch dim; all
        positions, or the last ones as ``forward(batch, tail=len(answer) + 1)`` gives them)."""
        if batch.answer_ids.numel() == 0:
            raise InputError("this batch has no answer: pass answer=... to prepare() or use generate()")
        rows = logits[..., tail_rows(logits.shape[-2], batch.seq_len, batch.answer_positions - 1), :]
        rows = rows.float().log_softmax(-1)
        ids = batch.answer_ids.to(rows.device)
        return rows.gather(-1, ids.expand(*rows.shape[:-1])[..., None])[..., 0]

    @torch.no_grad()
    def score(self, batch: Batch, answer: str | Sequence[int] | None = None) -> AnswerScore:
        """Per-token log-probs of the answer under teacher forcing, in one forward pass."""
        if answer is not None:
            batch = self.with_answer(batch, answer)
        logits = self.forward(batch)
        lp = self.answer_log_probs(logits, batch)[0].cpu()
        ids = batch.answer_ids
        return AnswerScore(ids, self.tokenizer.convert_ids_to_tokens(ids.tolist()), lp, batch.answer_positions)

    @torch.no_grad()
    def generate(
        self, images: ImageLike | Sequence[ImageLike] | Video, prompt: str, max_new_tokens: int = 32,
        candidates: Sequence[str] | None = None, **kwargs: Any
    ) -> Generation:
        """Greedy answer to ``prompt`` about ``images``; the result carries the teacher-forced batch.

        The answer ends before the first stop token; if the model stops at once, the answer is empty (``""``,
        no tokens) and the batch holds the prompt only. Generation stops at the model's context length: a
        ``max_new_tokens`` that would pass it is cut to the positions left."""
        from mmlens.util.limits import OPTION_RANGES

        max_new_tokens = check_int("max_new_tokens", max_new_tokens, *OPTION_RANGES["max_new_tokens"])
        batch = self.prepare(images, prompt, candidates=candidates)
        if self.adapter.dual_encoder:  # nothing to generate: the answer is the image-caption match
            full = self.with_answer(batch, "<match>")
            return Generation(text="<match>", token_ids=full.answer_ids, tokens=["<match>"], batch=full)
        kwargs.setdefault("do_sample", False)
        out = self.model.generate(**self.model_inputs(batch), max_new_tokens=self.token_budget(batch, max_new_tokens),
                                  **kwargs)
        return self.generation(batch, out[0, batch.prompt_len :])

    def token_budget(self, batch: Batch, max_new_tokens: int) -> int:
        """``max_new_tokens`` cut to the positions left in the model's context after ``batch``'s prompt."""
        from mmlens.util.limits import context_length

        limit = context_length(self.model)
        if limit is None:
            return max_new_tokens
        if batch.prompt_len >= limit:
            raise InputError(f"the prompt is {batch.prompt_len:,} tokens, which fills the model's context "
                             f"length of {limit:,}: shorten the prompt or use a smaller image")
        return min(max_new_tokens, limit - batch.prompt_len)

    def generation(self, batch: Batch, new_ids: torch.Tensor | Sequence[int]) -> Generation:
        """The :class:`Generation` of ``new_ids`` (generated after ``batch``'s prompt), cut before the first stop
        token (or image placeholder: a teacher-forced batch would read it as an image slot), with the
        teacher-forced batch that reproduces it."""
        stop = self._stop_ids() | {self.adapter.image_token_id}
        ids = []
        for t in (new_ids.tolist() if torch.is_tensor(new_ids) else list(new_ids)):
            if t in stop:
                break
            ids.append(int(t))
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        full = self.with_answer(batch, ids) if ids else batch
        return Generation(text=text, token_ids=torch.tensor(ids, dtype=torch.long),
                          tokens=self.tokenizer.convert_ids_to_tokens(ids), batch=full)

    def _stop_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        return {int(t) for t in ids if t is not None}

    # -- inside -------------------------------------------------------------------------------------------
    def hook_point_map(self) -> dict[str, HookPoint]:
        if self._points is None:
            self._points = self.adapter.parts().hook_points()
        return self._points

    def hook_points(self, prefix: str = "") -> list[str]:
        """Canonical hook-point names (see :mod:`mmlens.hooks.tracing`)."""
        return [n for n in self.hook_point_map() if n.startswith(prefix)]

    def trace(self) -> Tracer:
        """Context manager for captures and interventions; every hook is removed on exit.

        >>> with lm.trace() as tr:                                   # doctest: +SKIP
        ...     tr.capture("lm.blocks.*.resid_post")
        ...     lm.forward(batch)
        """
        self.require("activations")
        return Tracer(self.hook_point_map(), self.adapter.trace_patches())


def access_tiers(access: str | Sequence[str]) -> frozenset[str]:
    """Tiers a subject may serve: ``"all"``, one tier name, or a list (``black-box`` is always allowed)."""
    tiers = set(TIERS) if access == "all" else {access} if isinstance(access, str) else set(access)
    unknown = tiers - set(TIERS)
    if unknown:
        raise InputError(f"unknown access tier {sorted(unknown)[0]!r}: use 'all' or tiers from {', '.join(TIERS)}")
    return frozenset(tiers | {"black-box"})
