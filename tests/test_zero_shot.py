"""Zero-shot classification among given captions with dual encoders, and explaining why a caption won."""

from __future__ import annotations

import pytest
import torch

import mmlens
from mmlens.errors import InputError
from mmlens.testing import tiny_subject
from mmlens.testing.tiny_dual import DUAL_FAMILIES, tiny_dual_subject
from mmlens.testing.tiny_models import tiny_images

torch.set_num_threads(1)
TEXTS = ["a red cat", "a blue dog", "a green cat and a red dog"]


@pytest.fixture(scope="module", params=DUAL_FAMILIES)
def subject(request):
    return tiny_dual_subject(request.param)


def _image():
    return tiny_images("llava")[0]


def _similarity(subject, text: str) -> float:
    """The caption's own similarity logit (one joint forward without candidates)."""
    batch = subject.prepare(_image(), text, answer="<match>")
    with torch.no_grad():
        return float(subject.forward(batch)[0, batch.prompt_len - 1, 1])


def test_zero_shot_is_the_softmax_of_each_captions_similarity(subject):
    r = mmlens.zero_shot(subject, _image(), TEXTS)
    alone = torch.tensor([_similarity(subject, t) for t in TEXTS])
    assert torch.allclose(torch.tensor(r.logits), alone, atol=1e-5)
    assert torch.allclose(torch.tensor(r.probs), alone.softmax(-1), atol=1e-6)
    assert r.label == TEXTS[int(alone.argmax())] and r.to_dict()["label"] == r.label
    # the explained answer's log-prob is the winner's zero-shot log-probability
    batch = subject.prepare(_image(), r.label, answer="<match>", candidates=TEXTS)
    assert abs(subject.score(batch).total - float(torch.tensor(r.probs).log()[r.index])) < 1e-5


def test_explaining_the_winner_against_the_others(subject):
    """Caption tokens only reach the winner's own similarity: their log-prob gradient is (1 - p) times it."""
    r = mmlens.zero_shot(subject, _image(), TEXTS)
    p = r.probs[r.index]
    with_others = mmlens.explain(subject, _image(), r.label, method="saliency", candidates=TEXTS)
    alone = mmlens.explain(subject, _image(), r.label, method="saliency", objective="logit")
    text = with_others.text_positions
    assert 0.05 < 1 - p < 0.95
    assert torch.allclose(torch.as_tensor(with_others.position_scores[0][text]),
                          (1 - p) * torch.as_tensor(alone.position_scores[0][text]), rtol=1e-4, atol=1e-6)
    occ = mmlens.explain(subject, _image(), r.label, method="occlusion", candidates=TEXTS)
    occ_alone = mmlens.explain(subject, _image(), r.label, method="occlusion")
    assert abs(occ.position_scores).max() > 0 and not (occ.position_scores == occ_alone.position_scores).all()
    assert occ.metadata["candidates"] == TEXTS


def test_bad_candidates_and_models_without_a_text_tower_refuse_in_one_line():
    s = tiny_dual_subject("clip")
    calls = [
        (lambda: mmlens.zero_shot(tiny_subject("llava"), _image(), TEXTS), "no text tower"),
        (lambda: mmlens.explain(tiny_subject("llava"), _image(), "what is it ?", method="occlusion", answer="red",
                                candidates=TEXTS), "no text tower"),
        (lambda: mmlens.zero_shot(s, _image(), ["a red cat"]), "at least 2 distinct"),
        (lambda: mmlens.zero_shot(s, _image(), ["a red cat", " a red cat"]), "at least 2 distinct"),
        (lambda: mmlens.zero_shot(s, _image(), "a red cat"), "list of captions"),
        (lambda: s.prepare(_image(), "a red cat", candidates=["a red cat"]), "no caption other than"),
        (lambda: s.prepare(_image(), "a red cat", candidates=["a blue dog", "  "]), "empty"),
    ]
    for call, match in calls:
        with pytest.raises(InputError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
