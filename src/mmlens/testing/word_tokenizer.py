"""A real word-level tokenizer (``tokenizers`` WordLevel wrapped as ``PreTrainedTokenizerFast``).

Used by the bundled demo model and by the tiny test subjects, so that everything runs offline
through the same tokenizer / processor code paths as a hub model.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

#: LLaVA-1.5 style chat template: "USER: <image>\n{text} ASSISTANT: {answer}</s>".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% endif %}"
    "{% endfor %}{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] != 'user' %}</s>{% endif %} "
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

BASE_SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]


def build_word_tokenizer(
    words: Iterable[str],
    extra_special_tokens: Iterable[str] = (),
    chat_template: str | None = LLAVA_CHAT_TEMPLATE,
    model_max_length: int = 4096,
    named_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """Build a lower-casing word-level tokenizer over ``words``.

    Special tokens come first (ids 0..), in the order ``<pad> <unk> <s> </s>`` then ``extra_special_tokens``
    (e.g. ``<image>``); punctuation splits into its own tokens. ``named_tokens`` (e.g.
    ``{"image_token": "<image>"}``) become attributes ``tok.image_token`` / ``tok.image_token_id``, the way real
    multimodal tokenizers carry them. Padding is on the left (for batched generation), and survives
    ``save_pretrained``.

    >>> tok = build_word_tokenizer(["what", "color", "?"], ["<image>"])
    >>> tok("What color?").input_ids[-2:] == tok.convert_tokens_to_ids(["color", "?"])
    True
    """
    specials = list(dict.fromkeys([*BASE_SPECIAL_TOKENS, *extra_special_tokens]))
    vocab: dict[str, int] = {}
    for w in [*specials, *(w.lower() for w in words)]:
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[^\w<>|_]"), behavior="isolated")]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=model_max_length,
        padding_side="left",
        extra_special_tokens=[t for t in specials if t not in BASE_SPECIAL_TOKENS],
        **(named_tokens or {}),
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok
