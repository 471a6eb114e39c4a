"""Subject.prepare / score / generate, and one-line input errors."""

import numpy as np
import pytest
import torch
from PIL import Image

import mmlens
from mmlens import InputError


def test_score_equals_log_softmax_of_plain_forward(subject, images):
    batch = subject.prepare(images, "what color is the cat?", answer="red cat")
    assert batch.answer_ids.numel() == 2
    assert subject.tokenizer.convert_ids_to_tokens(batch.answer_ids.tolist()) == ["red", "cat"]
    scored = subject.score(batch)
    with torch.no_grad():
        logits = subject.model(**subject.model_inputs(batch)).logits[0]
    expected = logits.float().log_softmax(-1)[batch.answer_positions - 1, batch.answer_ids]
    torch.testing.assert_close(scored.log_probs, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(batch.input_ids[0, batch.answer_positions], batch.answer_ids)
    assert scored.total == pytest.approx(float(expected.sum()), abs=1e-4)


def test_generate_returns_text_ids_and_teacher_forced_batch(subject, images):
    out = subject.generate(images[:1], "what is this?", max_new_tokens=3)
    assert 1 <= out.token_ids.numel() <= 3
    assert torch.equal(out.batch.answer_ids, out.token_ids)
    assert torch.equal(out.positions, torch.arange(out.batch.prompt_len, out.batch.prompt_len + out.token_ids.numel()))
    # the answer the model chose is, token by token, its argmax under teacher forcing
    with torch.no_grad():
        logits = subject.forward(out.batch)[0]
    assert torch.equal(logits[out.positions - 1].argmax(-1), out.token_ids)


def test_non_rgb_images_are_converted_and_recorded(tmp_path):
    subject = mmlens.testing.tiny_subject("llava")
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 128))
    palette = Image.new("P", (40, 40))
    grey16 = Image.fromarray((np.arange(1600).reshape(40, 40) * 40).astype(np.uint16))
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 0, 0))
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path)
    batch = subject.prepare([rgba, palette, grey16, str(path)], "what is this?")
    assert all(img.mode == "RGB" for img in batch.images)
    assert [n.split(":")[0] for n in batch.conversions] == ["image 0", "image 1", "image 2", "image 3"]
    assert "RGBA" in batch.conversions[0] and "CMYK" in batch.conversions[3]
    assert batch.images[0].getpixel((0, 0)) == (255, 127, 127)  # alpha composited on white


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda tmp: str(tmp / "missing.png"), "not found"),
        (lambda tmp: (tmp / "bad.png").write_bytes(b"not an image") and str(tmp / "bad.png"), "not a readable image"),
        (lambda tmp: 42, "has type int"),
    ],
)
def test_bad_images_raise_one_line_input_errors(tmp_path, make, match):
    subject = mmlens.testing.tiny_subject("llava")
    with pytest.raises(InputError, match=match) as info:
        subject.prepare(make(tmp_path), "what is this?")
    assert "\n" not in str(info.value)


def test_bad_prompts_and_answers():
    subject = mmlens.testing.tiny_subject("llava")
    image = Image.new("RGB", (32, 32))
    with pytest.raises(InputError, match="prompt is empty"):
        subject.prepare(image, "  ")
    with pytest.raises(InputError, match="answer is empty"):
        subject.prepare(image, "what is this?", answer=" \n\t ")
    with pytest.raises(InputError, match="tokenizes to nothing"):
        subject.prepare(image, "what is this?", answer=[])
    with pytest.raises(InputError, match="has no answer"):
        subject.score(subject.prepare(image, "what is this?"))


def test_prompt_without_image_tokens_is_an_input_error():
    model, processor = mmlens.testing.tiny_models.tiny_model_and_processor("llava")
    processor.chat_template = "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
    subject = mmlens.load(model, processor)
    with pytest.raises(InputError, match="image") as info:
        subject.prepare(Image.new("RGB", (32, 32)), "what is this?")
    assert "\n" not in str(info.value)
