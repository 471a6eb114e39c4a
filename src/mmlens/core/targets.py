"""What to explain: an answer token, a word or phrase of the answer, the whole answer, or a contrast.

A :class:`Target` turns logits into one differentiable scalar per batch row, so every method (attention,
gradient, perturbation) explains the same quantity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmlens.core.batch import Batch
from mmlens.errors import InputError


@dataclass(frozen=True)
class Target:
    """Sum of the log-probs of answer tokens ``indices`` (indices into ``batch.answer_ids``), minus the
    log-probs of ``contrast_ids`` at the same positions when given (``logp("red") - logp("blue")``)."""

    label: str
    indices: tuple[int, ...]
    contrast_ids: tuple[int, ...] | None = None

    def query_positions(self, batch: Batch) -> torch.Tensor:
        """Sequence positions whose logits predict the target tokens."""
        return batch.answer_positions[list(self.indices)] - 1

    def value(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Differentiable target value, shape ``(logits.shape[0],)``."""
        rows = logits[:, self.query_positions(batch)].float().log_softmax(-1)  # (B, k, V)
        ids = batch.answer_ids[list(self.indices)].to(rows.device)
        out = rows.gather(-1, ids.expand(rows.shape[0], -1)[..., None])[..., 0].sum(-1)
        if self.contrast_ids is not None:
            cids = torch.tensor(self.contrast_ids, device=rows.device)
            out = out - rows.gather(-1, cids.expand(rows.shape[0], -1)[..., None])[..., 0].sum(-1)
        return out


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
    - a word or phrase of the answer: its sub-tokens merged;
    - ``("red", "blue")`` or ``"red - blue"``: the contrast logp(red) - logp(blue) where "red" is in the answer.
    """
    if batch.answer_ids.numel() == 0:
        raise InputError("nothing to explain: the batch has no answer (pass answer=... or let mmlens generate one)")
    tokens = _answer_tokens(tokenizer, batch)
    if target is None or target == "tokens":
        return [Target(tok or f"#{i}", (i,)) for i, tok in enumerate(tokens)]
    if target == "answer":
        return [Target(" ".join(tokens), tuple(range(len(tokens))))]
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
        if len(other_ids) != len(span):
            raise InputError(f"contrast {other!r} has {len(other_ids)} tokens but {word!r} has {len(span)}: "
                             "pass words with the same number of tokens")
        return [Target(f"{word} - {other}", span, tuple(other_ids))]
    span = _find_span(tokens, str(target))
    if span is None:
        raise InputError(f"target {target!r} is not in the answer; answer tokens: {tokens}")
    return [Target(str(target), span)]
