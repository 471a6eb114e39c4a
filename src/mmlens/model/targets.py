"""What to explain: an answer token, a word or phrase of the answer, the whole answer, or a contrast.

A :class:`Target` turns logits into one differentiable scalar per batch row, so every method (attention,
gradient, perturbation) explains the same quantity. ``objective`` picks that scalar: the summed
log-probabilities of the target tokens (``"log_prob"``), their summed logits (``"logit"``), or their joint
probability (``"prob"``).

A contrast ``"red cat - blue dog"`` is ``value(answer span) - value(foil span)``, each under its own
teacher-forced prefix: the foil sequence is the prompt, the answer tokens before the span, then the foil's
tokens (:func:`foil_batch`). Its first token is scored at a position it shares with the answer, so a
one-token foil needs no forward of its own; a longer one does (``foil_logits``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from mmlens.errors import InputError
from mmlens.model.batch import Batch
from mmlens.util.options import check_choice

OBJECTIVES = ("logit", "log_prob", "prob")


def check_objective(objective: Any) -> str:
    """``objective`` if it is one of :data:`OBJECTIVES`, else a one-line InputError."""
    return check_choice("objective", objective, OBJECTIVES)


def tail_rows(kept: int, seq_len: int, positions: torch.Tensor) -> torch.Tensor:
    """Rows of logits that cover the last ``kept`` of ``seq_len`` positions (``Subject.forward(batch, tail=kept)``;
    ``kept == seq_len``: all) holding sequence ``positions``."""
    first = seq_len - kept
    if first < 0 or (positions.numel() and int(positions.min()) < first):
        raise RuntimeError(f"logits of the last {kept} of {seq_len} positions do not cover position "
                           f"{int(positions.min())}: run the forward with a larger tail (Target.tail)")
    return positions - first


def _span_value(logits: torch.Tensor, query: torch.Tensor, ids: torch.Tensor, objective: str,
                seq_len: int) -> torch.Tensor:
    """Per row of ``logits`` ``(B, L, V)`` (the last ``L`` of ``seq_len`` positions): the objective of tokens
    ``ids`` read at positions ``query``."""
    rows = logits[:, tail_rows(logits.shape[1], seq_len, query).to(logits.device)].float()  # (B, k, V)
    if objective != "logit":
        rows = rows.log_softmax(-1)
    picked = rows.gather(-1, ids.to(rows.device).expand(rows.shape[0], -1)[..., None])[..., 0].sum(-1)
    return picked.exp() if objective == "prob" else picked


@dataclass(frozen=True)
class Target:
    """Answer tokens ``indices`` (indices into ``batch.answer_ids``, contiguous), optionally contrasted with
    ``contrast_ids``: the foil tokens that replace them (``value(answer span) - value(foil span)``, each under
    its own prefix; see :func:`foil_batch`)."""

    label: str
    indices: tuple[int, ...]
    contrast_ids: tuple[int, ...] | None = None

    def query_positions(self, batch: Batch) -> torch.Tensor:
        """Sequence positions whose logits predict the target tokens."""
        return batch.answer_positions[list(self.indices)] - 1

    def tail(self, batch: Batch) -> int:
        """How many of the sequence's last positions :meth:`value` reads logits of (the answer span, and a
        one-token foil, which shares its position): ``Subject.forward(batch, tail=...)``."""
        return batch.seq_len - int(self.query_positions(batch).min())

    @property
    def foil_tail(self) -> int:
        """Like :meth:`tail` for the foil sequence's own forward (:func:`foil_batch`): its span and the position after."""
        return len(self.contrast_ids or ()) + 1

    def foil_len(self, batch: Batch) -> int:
        """Length of the foil sequence (:func:`foil_batch`): the prompt, the answer before the span, the foil."""
        return batch.prompt_len + self.indices[0] + len(self.contrast_ids or ())

    @property
    def needs_foil_forward(self) -> bool:
        """A contrast whose foil has more than one token: its later tokens need the foil's own forward."""
        return self.contrast_ids is not None and len(self.contrast_ids) > 1

    def foil_continuation(self, batch: Batch) -> list[int]:
        """Token ids after the prompt in the foil sequence: the answer before the span, then the foil."""
        if self.contrast_ids is None:
            raise ValueError(f"target {self.label!r} is not a contrast")
        return batch.answer_ids[: self.indices[0]].tolist() + list(self.contrast_ids)

    def foil_positions(self, batch: Batch) -> torch.Tensor:
        """Positions (in the foil sequence) whose logits predict the foil tokens."""
        start = batch.prompt_len + self.indices[0] - 1
        return torch.arange(start, start + len(self.contrast_ids or ()))

    def value(self, logits: torch.Tensor, batch: Batch, objective: str = "log_prob",
              foil_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Differentiable target value, shape ``(logits.shape[0],)``.

        ``logits`` cover all of ``batch``'s positions or its last ones (``Subject.forward(batch, tail=...)``, at
        least :meth:`tail`). For a contrast, ``foil_logits`` are those of the foil sequence's forward (same rows;
        all positions or at least the last :attr:`foil_tail`); a one-token foil may omit them (its position is
        shared).
        """
        ids = batch.answer_ids[list(self.indices)]
        out = _span_value(logits, self.query_positions(batch), ids, objective, batch.seq_len)
        if self.contrast_ids is None:
            return out
        foil_len = self.foil_len(batch)
        if foil_logits is None:
            if self.needs_foil_forward:
                raise InputError(f"contrast {self.label!r} has a foil of {len(self.contrast_ids)} tokens, which "
                                 "needs its own forward that this method does not run: pass a one-token foil or "
                                 "use a gradient or perturbation attribution method")
            foil_logits, foil_len = logits, batch.seq_len
        foil = _span_value(foil_logits, self.foil_positions(batch), torch.tensor(self.contrast_ids), objective, foil_len)
        return out - foil


def targets_tail(targets: list[Target], batch: Batch) -> int:
    """How many of ``batch``'s last positions the ``targets`` read logits of: ``Subject.forward(batch, tail=...)``
    then runs the LM head on those alone."""
    return max(t.tail(batch) for t in targets)


def foil_batch(subject: Any, batch: Batch, target: Target) -> Batch:
    """The teacher-forced foil sequence of contrast ``target``: ``batch``'s prompt, the answer tokens before the
    span, then the foil tokens (``subject``: a :class:`~mmlens.model.subject.Subject`)."""
    return subject.with_answer(batch, target.foil_continuation(batch))


def _answer_tokens(tokenizer, batch: Batch) -> list[str]:
    return [tokenizer.decode([t]).strip() for t in batch.answer_ids.tolist()]


def _find_span(tokens: list[str], phrase: str) -> tuple[int, ...] | None:
    """Indices of the shortest run of answer tokens whose joined text equals ``phrase`` (case/space-insensitive)."""
    want = "".join(phrase.lower().split())
    for start in range(len(tokens)):
        text = ""
        for end in range(start, len(tokens)):
            text += "".join(tokens[end].lower().split())
            if text == want:
                return tuple(range(start, end + 1))
            if not want.startswith(text):
                break
    return None


def resolve_targets(tokenizer, batch: Batch, target: str | tuple[str, str] | None = None) -> list[Target]:
    """Targets for ``target``:

    - ``None`` / ``"tokens"``: one target per answer token;
    - ``"answer"``: the whole answer (sum of its log-probs);
    - a word or phrase of the answer: its sub-tokens merged (the first place it occurs);
    - ``"#i"`` / ``"#i-j"``: answer tokens ``i`` .. ``j`` by index (e.g. the second "red" of "red and red");
    - ``("red", "blue")`` or ``"red - blue"``: the contrast value("red") - value("blue") where "red" is in the
      answer, each under its own prefix (the foil may have another number of tokens: "red cat - blue").
    """
    if batch.answer_ids.numel() == 0:
        raise InputError("nothing to explain: the batch has no answer (none given, or the generated one is empty): "
                         "pass answer=...")
    tokens = _answer_tokens(tokenizer, batch)
    if target is None or target == "tokens":
        return [Target(tok or f"#{i}", (i,)) for i, tok in enumerate(tokens)]
    if target == "answer":
        return [Target(" ".join(tokens), tuple(range(len(tokens))))]
    by_index = re.fullmatch(r"#(\d+)(?:-(\d+))?", target) if isinstance(target, str) else None
    if by_index:
        a, b = int(by_index[1]), int(by_index[2] or by_index[1])
        if not a <= b < len(tokens):
            raise InputError(f"target {target!r} is not a span of the {len(tokens)} answer tokens: pass #i or #i-j "
                             f"with 0 <= i <= j < {len(tokens)}")
        return [Target(" ".join(tokens[a:b + 1]).strip() or target, tuple(range(a, b + 1)))]
    if isinstance(target, str) and " - " in target:
        target = tuple(part.strip() for part in target.split(" - ", 1))  # type: ignore[assignment]
    if isinstance(target, tuple):
        if len(target) != 2:
            raise InputError(f"a contrast target takes two words, got {target!r}: pass ('red', 'blue')")
        word, other = target
        span = _find_span(tokens, word)
        if span is None:
            raise InputError(f"target {word!r} is not in the answer; answer tokens: {tokens}")
        other_ids = tokenizer(other, add_special_tokens=False).input_ids
        if not other_ids:
            raise InputError(f"contrast {other!r} tokenizes to nothing: pass words the tokenizer knows")
        return [Target(f"{word} - {other}", span, tuple(other_ids))]
    span = _find_span(tokens, str(target))
    if span is None:
        raise InputError(f"target {target!r} is not in the answer; answer tokens: {tokens}")
    return [Target(str(target), span)]
