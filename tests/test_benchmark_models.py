"""The benchmarks' mid-size random models (``--family`` of benchmarks/attribution_cost.py), built small here:
each family's image-token count follows ``(image_size / 14)^2`` like the LLaVA one, and explaining works."""

import pytest
from benchmarks.attribution_cost import answer_words
from benchmarks.common import MID_MODELS, image, mid_model

import mmlens


@pytest.mark.parametrize("family", sorted(MID_MODELS))
def test_mid_model_image_tokens_and_answer(family: str) -> None:
    subject = mid_model(family, layers=2, hidden=128, image_size=112)
    assert subject.family == family
    img = image(112)
    batch = subject.prepare(img, "what color is the shape?", answer=answer_words(10))
    assert int(batch.image_positions().numel()) == (112 // 14) ** 2
    assert subject.tokenizer.decode(batch.answer_ids) == answer_words(10)  # every answer word in the vocabulary
    ex = mmlens.explain(subject, img, batch.prompt, method="attention", answer=answer_words(3))
    assert ex.position_scores.shape == (3, batch.seq_len - 7)  # the same prompt, 3 of the 10 answer tokens
    assert ex.position_scores[:, batch.image_positions().numpy()].sum() > 0
