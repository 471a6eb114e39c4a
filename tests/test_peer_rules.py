"""The peers' relevancy rules re-implemented in benchmarks/peer_rules.py (Chefer et al. 2021, LVLM-Interpret)
give mmlens ``relevancy``'s numbers, so benchmarks/peer_cost.py compares the cost of equal outputs."""

import pytest
import torch
from benchmarks.peer_rules import answer_targets, chefer_rows, lvlm_interpret_maps

import mmlens
from mmlens.testing import tiny_subject
from mmlens.testing.tiny_models import tiny_images

ANSWER = "red circle blue square"


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_peer_rules_equal_mmlens_relevancy(family: str) -> None:
    subject = tiny_subject(family)
    image = tiny_images(family)[0]
    ex = mmlens.explain(subject, image, "what color is the cat ?", method="relevancy", answer=ANSWER)
    batch = subject.prepare(image, "what color is the cat ?", answer=ANSWER)
    targets = answer_targets(batch)
    assert len(targets) == ex.position_scores.shape[0] == 4
    saved = subject.model.config.get_text_config()._attn_implementation
    subject.model.set_attn_implementation("eager")
    try:
        chefer = chefer_rows(subject.model, subject.model_inputs(batch), targets)
        maps = lvlm_interpret_maps(subject.model, subject.model_inputs(batch), targets)
    finally:
        subject.model.set_attn_implementation(saved)
    eye = torch.eye(batch.seq_len)
    queries = [q for q, _ in targets]
    ours = torch.as_tensor(ex.position_scores)
    chefer = chefer - eye[queries]
    lvlm = torch.stack([m[q] for m, q in zip(maps, queries, strict=True)]) - eye[queries]
    assert ours.abs().max() > 1e-3  # a non-trivial map: equality below is not 0 == 0
    torch.testing.assert_close(chefer, ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(lvlm, ours, atol=1e-5, rtol=0)
    # each target's row is its own: the maps of different answer tokens differ
    assert (ours[0] - ours[-1]).abs().max() > 1e-4
