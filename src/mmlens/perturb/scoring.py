"""Batched perturbation forwards: many perturbed copies of one teacher-forced batch in one model call.

Black-box methods (occlusion, RISE, SHAP) score every target of every perturbed copy from one
teacher-forced forward per chunk of rows: row ``b`` holds the same prompt and answer as the batch,
with its own images (same sizes, so the same token layout) and optionally some prompt words masked.
A contrast target whose foil has several tokens scores every row on both sequences: the forward holds each
row twice, once with the answer and once with the foil continuation (both padded at the end to one length,
which changes no earlier logit).

>>> from mmlens.testing import tiny_subject
>>> from mmlens.testing.tiny_models import tiny_images
>>> from mmlens.model.targets import resolve_targets
>>> lm = tiny_subject("llava")
>>> img = tiny_images("llava", 1)[0]
>>> batch = lm.prepare(img, "what color is the cat ?", answer="red")
>>> targets = resolve_targets(lm.tokenizer, batch)
>>> inputs = perturbed_inputs(lm, batch, [[img], [img.point(lambda v: 0)]])
>>> forward_values(lm, batch, inputs, targets).shape
torch.Size([2, 1])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image

from mmlens.errors import InputError
from mmlens.model.batch import Batch, cat_inputs
from mmlens.model.subject import Subject
from mmlens.model.targets import Target
from mmlens.util.options import check_int
from mmlens.util.progress import progress_bar

#: A chunk of perturbed rows: one image list per row, and optionally (rows, seq) input ids.
Rows = tuple[list[list[Image.Image]], "torch.Tensor | None"]


# -- inputs ---------------------------------------------------------------------------------------------
def perturbed_inputs(
    subject: Subject,
    batch: Batch,
    image_sets: Sequence[Sequence[Image.Image]],
    input_ids: torch.Tensor | None = None,
) -> dict[str, Any]:
    """One batched model input: row ``b`` = ``batch``'s prompt and answer with images ``image_sets[b]``.

    The family's processor is called once with ``text=[batch.text] * B`` and one image list per row;
    ``batch.answer_ids`` are appended to every row as :meth:`Subject.with_answer` does. ``input_ids``
    (``(B, batch.seq_len)``), when given, replaces the token ids (e.g. prompt words masked per row).

    >>> inputs = perturbed_inputs(lm, batch, [[img]] * 3)              # doctest: +SKIP
    >>> inputs["input_ids"].shape                                       # doctest: +SKIP
    torch.Size([3, 28])
    """
    rows = len(image_sets)
    if rows == 0:
        raise InputError("no image sets given: pass one list of images per perturbed row")
    _check_sizes(batch, image_sets)
    if batch.is_video:  # one video per row: the frames of the row (same size and count, so the same layout)
        out = cat_inputs([subject.adapter.video_inputs(list(s), float(batch.video_fps), batch.text) for s in image_sets])
    else:
        out = subject.adapter.rows_inputs([list(s) for s in image_sets], [batch.text] * rows)
    inputs = {k: v for k, v in out.items() if k in batch.inputs}
    for key in batch.inputs.keys() - out.keys():  # made beside the processor (a dual encoder's candidates)
        value = batch.inputs[key]
        inputs[key] = value.expand(rows, *value.shape[1:]) if torch.is_tensor(value) else value
    prompt_ids = batch.input_ids[:, : batch.prompt_len].expand(rows, -1)
    if not torch.equal(inputs["input_ids"], prompt_ids.to(inputs["input_ids"].device)):
        raise RuntimeError(f"the {subject.family} processor tokenized the perturbed rows differently from the batch")
    if batch.answer_ids.numel():
        inputs = subject.adapter.extend_inputs(inputs, batch.answer_ids.tolist())
    if input_ids is not None:
        if tuple(input_ids.shape) != (rows, batch.seq_len):
            raise InputError(f"input_ids has shape {tuple(input_ids.shape)}: pass ({rows}, {batch.seq_len})")
        inputs["input_ids"] = input_ids.to(inputs["input_ids"].dtype)
    return inputs


def _check_sizes(batch: Batch, image_sets: Sequence[Sequence[Image.Image]]) -> None:
    want = [img.size for img in batch.images]
    for b, images in enumerate(image_sets):
        got = [img.size for img in images]
        if got != want:
            raise InputError(f"perturbed row {b} has image sizes {got}: keep the batch's sizes {want}")


@torch.no_grad()
def forward_values(subject: Subject, batch: Batch, inputs: dict[str, Any], targets: Sequence[Target]) -> torch.Tensor:
    """Target values ``(B, n_targets)`` (float32, CPU) of one no-grad forward over batched ``inputs``.

    Only the logits of the answer's query positions are computed (``logits_to_keep``) when the model
    supports it, so a large vocabulary costs ``B x (answer length + 1) x V``, not ``B x seq x V``. Multi-token
    contrast foils add their rows to the same forward (see the module docstring).

    >>> forward_values(lm, batch, perturbed_inputs(lm, batch, [[img]]), targets)   # doctest: +SKIP
    tensor([[-4.1021]])
    """
    if batch.answer_ids.numel() == 0:
        raise InputError("this batch has no answer: pass answer=... to prepare() or use generate()")
    rows = int(inputs["input_ids"].shape[0])
    foils = list(dict.fromkeys(tuple(t.foil_continuation(batch)) for t in targets if t.needs_foil_forward))
    if foils:
        inputs = with_foils(subject, batch, inputs, [list(f) for f in foils])
    model_inputs = subject.model_inputs(inputs)
    seq = int(inputs["input_ids"].shape[1])
    logits = subject.adapter.joint_logits(model_inputs, tail=seq - batch.prompt_len + 1)  # prompt_len - 1 ... seq - 1
    first = seq - logits.shape[1]  # the sequence position of row 0; rows past a sequence's end (padding) are cut

    def value(t: Target) -> torch.Tensor:
        foil = None
        if t.needs_foil_forward:
            k = foils.index(tuple(t.foil_continuation(batch))) + 1
            foil = logits[k * rows : (k + 1) * rows, : t.foil_len(batch) - first]
        return t.value(logits[:rows, : batch.seq_len - first], batch, "log_prob", foil).float()

    return torch.stack([value(t) for t in targets], dim=1).cpu()


def with_foils(subject: Subject, batch: Batch, inputs: dict[str, Any], foils: list[list[int]]) -> dict[str, Any]:
    """``inputs`` (``B`` rows of ``batch``'s prompt + answer) followed by ``B`` rows per foil continuation
    (same prompt ids and images, the foil's tokens after the prompt); every row padded at the end to one
    length with :func:`mask_token_id`, which changes no logit before it."""
    b, seq = inputs["input_ids"].shape
    prompt = {k: (v[:, : batch.prompt_len] if torch.is_tensor(v) and v.ndim == 2 and tuple(v.shape) == (b, seq)
                  else v) for k, v in inputs.items()}
    sequences = [batch.answer_ids.tolist(), *foils]
    length = max(len(s) for s in sequences)
    fill = mask_token_id(subject)
    return cat_inputs([subject.adapter.extend_inputs(prompt, s + [fill] * (length - len(s))) for s in sequences])


# -- prompt words -----------------------------------------------------------------------------------------
def mask_token_id(subject: Subject) -> int:
    """Token id that replaces masked prompt words: pad, else unk, else eos."""
    tok = subject.tokenizer
    for name in ("pad_token_id", "unk_token_id", "eos_token_id"):
        value = getattr(tok, name, None)
        if value is not None:
            return int(value)
    raise InputError("the tokenizer has no pad, unk or eos token to mask words with: set tokenizer.pad_token")


def prompt_words(subject: Subject, batch: Batch) -> list[torch.Tensor]:
    """Sequence positions of each word of the user's prompt (one tensor of token positions per word).

    The prompt's own tokenization is located among the text positions (allowing the first token to
    differ, as tokenizers merge across the template seam); if it is not found, every non-special text
    position is its own word.

    >>> [p.tolist() for p in prompt_words(lm, batch)]                   # doctest: +SKIP
    [[18], [19], [20], [21], [22], [23]]
    """
    tok = subject.tokenizer
    text_pos = batch.text_positions()
    ids = batch.input_ids[0, text_pos].tolist()
    enc = tok(batch.prompt, add_special_tokens=False)
    want = list(enc.input_ids)
    word_ids = _word_ids(enc, len(want))
    for skip in (0, 1):
        start = _find_last(ids, want[skip:])
        if want[skip:] and start is not None and start >= skip:
            span = text_pos[start - skip : start + len(want) - skip]
            return _group(span, word_ids)
    special = set(getattr(tok, "all_special_ids", []))
    return [p[None] for p, t in zip(text_pos, ids) if t not in special]


def _word_ids(enc: Any, n: int) -> list[int]:
    try:
        words = enc.word_ids()
    except (ValueError, AttributeError):  # slow tokenizers
        words = None
    if not words or any(w is None for w in words):
        return list(range(n))
    return list(words)


def _find_last(seq: list[int], sub: list[int]) -> int | None:
    for start in range(len(seq) - len(sub), -1, -1):
        if seq[start : start + len(sub)] == sub:
            return start
    return None


def _group(positions: torch.Tensor, word_ids: list[int]) -> list[torch.Tensor]:
    groups: dict[int, list[int]] = {}
    for pos, word in zip(positions.tolist(), word_ids):
        groups.setdefault(word, []).append(pos)
    return [torch.tensor(g) for g in groups.values()]


def masked_input_ids(batch: Batch, words: Sequence[torch.Tensor], keep: torch.Tensor, fill_id: int) -> torch.Tensor:
    """``(B, seq)`` ids of ``batch`` where row ``b`` has word ``w`` replaced by ``fill_id`` if not ``keep[b, w]``.

    >>> masked_input_ids(batch, words, torch.tensor([[True] * 5 + [False]]), 0)   # doctest: +SKIP
    """
    keep = torch.as_tensor(keep, dtype=torch.bool)
    ids = batch.input_ids[:1].expand(keep.shape[0], -1).clone()
    for w, positions in enumerate(words):
        drop = ~keep[:, w]
        if drop.any():
            ids[drop.nonzero()[:, 0][:, None], positions[None]] = fill_id
    return ids


# -- chunked runs ---------------------------------------------------------------------------------------
class Evaluator:
    """Scores perturbed rows of one batch, ``batch_size`` rows per forward, counting forwards and rows.

    >>> ev = Evaluator(lm, batch, targets, batch_size=32)              # doctest: +SKIP
    >>> ev.reference().shape, ev.calls                                   # doctest: +SKIP
    (torch.Size([1]), 1)
    >>> ev.run(3, lambda lo, hi: ([[img]] * (hi - lo), None)).shape, ev.calls, ev.rows   # doctest: +SKIP
    (torch.Size([3, 1]), 2, 3)
    """

    def __init__(self, subject: Subject, batch: Batch, targets: Sequence[Target], batch_size: int = 32,
                 progress: bool | None = None, desc: str = "perturbations") -> None:
        if not targets:
            raise InputError("no targets to explain: pass at least one target")
        if batch.answer_ids.numel() == 0:
            raise InputError("this batch has no answer to score: pass answer=... to prepare() or use generate()")
        check_int("batch_size", batch_size, 1)
        self.subject, self.batch, self.targets = subject, batch, list(targets)
        self.batch_size, self.progress, self.desc = batch_size, progress, desc
        self.calls = 0
        self.rows = 0

    def reference(self) -> torch.Tensor:
        """Target values ``(n_targets,)`` of the unperturbed batch (one forward)."""
        values = forward_values(self.subject, self.batch, self.batch.inputs, self.targets)[0]
        self.calls += 1
        return values

    def values(self, image_sets: Sequence[Sequence[Image.Image]],
               input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Target values ``(B, n_targets)`` of B rows in one forward."""
        inputs = perturbed_inputs(self.subject, self.batch, image_sets, input_ids)
        out = forward_values(self.subject, self.batch, inputs, self.targets)
        self.calls += 1
        self.rows += len(image_sets)
        return out

    def chunks(self, n_rows: int, make_rows: Callable[[int, int], Rows]) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(lo, hi, values (hi - lo, n_targets))`` for rows built chunk by chunk:
        ``make_rows(lo, hi)`` returns ``(image_sets, input_ids or None)`` for rows ``lo:hi``."""
        with progress_bar(math.ceil(n_rows / self.batch_size), self.desc, self.progress) as bar:
            for lo in range(0, n_rows, self.batch_size):
                hi = min(lo + self.batch_size, n_rows)
                yield lo, hi, self.values(*make_rows(lo, hi))
                bar.update(1)

    def run(self, n_rows: int, make_rows: Callable[[int, int], Rows]) -> torch.Tensor:
        """Values ``(n_rows, n_targets)`` of all rows (see :meth:`chunks`)."""
        out = [values for _, _, values in self.chunks(n_rows, make_rows)]
        return torch.cat(out) if out else torch.zeros(0, len(self.targets))
