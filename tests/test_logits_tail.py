"""Logits of the last positions only: ``Subject.forward(batch, tail=K)`` runs the LM head on the positions a
target reads (transformers' ``logits_to_keep``). Its rows equal the full forward's last rows on every family, and
every target (answer tokens, the whole answer, a contrast with a multi-token foil) reads the same value from them."""

import pytest
import torch
from conftest import subject_for

from mmlens.model.targets import foil_batch, resolve_targets, targets_tail
from mmlens.testing.tiny_models import FAMILIES, tiny_images

PROMPT = "what color is the cat ?"
ANSWER = "red cat blue"


@pytest.mark.parametrize("family", FAMILIES)
def test_tail_logits_are_the_full_forwards_last_rows_and_give_the_same_values(family):
    subject = subject_for(family)
    batch = subject.prepare(tiny_images(family), PROMPT, answer=ANSWER)
    tok = subject.tokenizer
    targets = resolve_targets(tok, batch, None) + resolve_targets(tok, batch, "answer")
    if not subject.adapter.dual_encoder:
        targets += resolve_targets(tok, batch, "cat - blue dog")  # a foil of two tokens: its own forward
    with torch.no_grad():
        full = subject.forward(batch)
        tail = targets_tail(targets, batch)
        cut = subject.forward(batch, tail=tail)
        if subject.adapter.dual_encoder:  # the similarity readout is cheap and always whole
            assert cut.shape == full.shape
        else:
            assert cut.shape == (1, tail, full.shape[-1]) and tail == len(batch.answer_ids) + 1 < batch.seq_len
            assert subject.adapter.keeps_logits  # the LM head itself runs on the tail (not a slice of all logits)
            torch.testing.assert_close(cut, full[:, -tail:], atol=1e-5, rtol=1e-5)
        for t in targets:
            foils = (None, None)
            if t.needs_foil_forward:
                fb = foil_batch(subject, batch, t)
                foils = (subject.forward(fb), subject.forward(fb, tail=t.foil_tail))
                assert foils[1].shape[1] == t.foil_tail < foils[0].shape[1] == t.foil_len(batch)
            want = t.value(full, batch, "log_prob", foils[0])
            torch.testing.assert_close(t.value(cut, batch, "log_prob", foils[1]), want, atol=1e-5, rtol=1e-5)
        if not subject.adapter.dual_encoder:
            torch.testing.assert_close(subject.answer_log_probs(cut, batch), subject.answer_log_probs(full, batch),
                                       atol=1e-5, rtol=1e-5)


def test_a_tail_too_short_for_the_target_is_refused_and_bad_tails_get_one_line():
    subject = subject_for("llava")
    batch = subject.prepare(tiny_images("llava"), PROMPT, answer=ANSWER)
    whole = resolve_targets(subject.tokenizer, batch, "answer")[0]
    last = resolve_targets(subject.tokenizer, batch, None)[-1]
    assert (whole.tail(batch), last.tail(batch)) == (4, 2)
    with torch.no_grad():
        short = subject.forward(batch, tail=last.tail(batch))
    assert torch.isfinite(last.value(short, batch)).all()
    with pytest.raises(RuntimeError, match="do not cover position"):
        whole.value(short, batch)
    for bad in (0, batch.seq_len + 1, 1.5):
        with pytest.raises(Exception, match="tail=") as err:
            subject.forward(batch, tail=bad)
        assert "\n" not in str(err.value)
