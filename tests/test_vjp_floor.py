"""The benchmarks' plain-PyTorch floor (benchmarks/vjp_floor.py) computes what mmlens' gradient methods do:
every answer token's input-embedding gradient, both variants, on a random LLaVA with a larger vocabulary."""

import pytest
import torch
from benchmarks.attribution_cost import answer_words
from benchmarks.common import image, mid_llava, mid_model
from benchmarks.vjp_floor import check_floor, floor_functions, plain_embeddings

import mmlens


def test_floor_equals_per_token_autograd_and_input_x_gradient() -> None:
    torch.manual_seed(0)
    subject = mid_llava(layers=2, hidden=64, image_size=56, vocab=1000)
    assert subject.model.config.text_config.vocab_size == 1000
    assert subject.model.lm_head.weight.shape[0] == 1000
    img, answer = image(56), answer_words(4)
    batch = subject.prepare(img, "what color is the shape?", answer=answer)
    ex = mmlens.explain(subject, img, batch.prompt, method="input_x_gradient", answer=answer)
    grads = {name: fn() for name, fn in floor_functions(subject, batch).items()}
    assert grads["batched"].shape == (4, 1, batch.seq_len, 64)
    assert check_floor(subject, batch, grads) < 1e-5  # raises above 1e-4
    embeds = plain_embeddings(subject.model, subject.model_inputs(batch))
    scores = (grads["batched"][:, 0] * embeds[0]).sum(-1)  # (K, N)
    n = ex.position_scores.shape[1]
    assert float(scores[:, :n].abs().max()) > 0
    torch.testing.assert_close(scores[:, :n], torch.as_tensor(ex.position_scores).float(), atol=1e-5, rtol=1e-4)


def test_vocab_too_small_is_one_clear_line() -> None:
    with pytest.raises(SystemExit, match="--vocab 10 is smaller than the benchmark tokenizer"):
        mid_model("gemma3", layers=2, hidden=64, image_size=56, vocab=10)
