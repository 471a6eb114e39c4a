"""Build the (untrained) demo model: a real tiny LLaVA with a real tokenizer and processor.

The model is a ``transformers.LlavaForConditionalGeneration`` (tiny CLIP vision tower + tiny
Llama), the processor a ``transformers.LlavaProcessor`` (``CLIPImageProcessorPil`` + a word-level
``PreTrainedTokenizerFast`` with the LLaVA-1.5 chat template). Both load back with plain
``from_pretrained`` and go through exactly the same code paths as a hub LLaVA.

>>> processor = build_processor()
>>> model = build_model(processor.tokenizer)
>>> chat_prompt(processor, "what color is the triangle?")
'USER: <image>\\nwhat color is the triangle? ASSISTANT:'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from mmlens.data.shapes_vqa import VOCAB
from mmlens.testing.word_tokenizer import LLAVA_CHAT_TEMPLATE, build_word_tokenizer

#: Words of the chat template, besides the ShapesVQA vocabulary.
CHAT_WORDS: tuple[str, ...] = ("user", "assistant", ":")
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class DemoConfig:
    """Architecture of the demo model."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    vision_intermediate: int = 256
    vision_feature_layer: int = -1
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_intermediate: int = 384
    max_positions: int = 256
    init_std: float = 0.1  # text model / projector init; HF's 0.02 leaves a tiny model stuck on the prior


def build_tokenizer(extra_words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the ShapesVQA and chat words (then ``extra_words``), ``<image>`` special.

    >>> build_tokenizer().tokenize("USER: <image>\\nwhat color is the circle? ASSISTANT:")[:3]
    ['user', ':', '<image>']
    """
    words = [*CHAT_WORDS, *VOCAB, *extra_words]
    return build_word_tokenizer(words, extra_special_tokens=[IMAGE_TOKEN], chat_template=LLAVA_CHAT_TEMPLATE)


def build_processor(config: DemoConfig | None = None) -> LlavaProcessor:
    """``LlavaProcessor`` with a PIL-backed CLIP image processor at ``config.image_size``.

    >>> build_processor().image_processor.crop_size["height"]
    64
    """
    config = config or DemoConfig()
    side = config.image_size
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by the "default" strategy
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, config: DemoConfig | None = None) -> LlavaForConditionalGeneration:
    """A randomly initialised tiny LLaVA whose token ids match ``tokenizer``.

    >>> model = build_model(build_tokenizer())
    >>> model.config.image_token_id == build_tokenizer().convert_tokens_to_ids("<image>")
    True
    """
    config = config or DemoConfig()
    vision = CLIPVisionConfig(
        image_size=config.image_size,
        patch_size=config.patch_size,
        hidden_size=config.vision_hidden,
        intermediate_size=config.vision_intermediate,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        projection_dim=config.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden,
        intermediate_size=config.text_intermediate,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        num_key_value_heads=config.text_heads,
        max_position_embeddings=config.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        initializer_range=config.init_std,
    )
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(config.image_size // config.patch_size) ** 2,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlavaForConditionalGeneration(llava)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def extend_vocabulary(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, words: tuple[str, ...]
) -> LlavaProcessor:
    """Add ``words`` to a demo model's tokenizer (existing ids unchanged) and grow its embeddings to match.

    Returns the new processor; ``model`` is resized in place (new rows start at the mean embedding).

    >>> processor = build_processor()
    >>> model = build_model(processor.tokenizer)
    >>> new = extend_vocabulary(model, processor, ("left", "of"))
    >>> len(new.tokenizer) - len(processor.tokenizer), model.get_input_embeddings().num_embeddings == len(new.tokenizer)
    (2, True)
    """
    old = processor.tokenizer
    missing = tuple(w for w in words if w not in old.get_vocab())
    if not missing:
        return processor
    tokenizer = build_tokenizer((*[w for w in old.get_vocab() if w not in build_tokenizer().get_vocab()], *missing))
    if any(tokenizer.convert_tokens_to_ids(w) != i for w, i in old.get_vocab().items()):
        raise ValueError("the model's tokenizer is not a demo word tokenizer: cannot extend it")
    model.resize_token_embeddings(len(tokenizer))
    return LlavaProcessor(
        image_processor=processor.image_processor,
        tokenizer=tokenizer,
        patch_size=processor.patch_size,
        vision_feature_select_strategy=processor.vision_feature_select_strategy,
        num_additional_image_tokens=processor.num_additional_image_tokens,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def chat_prompt(processor: LlavaProcessor, question: str) -> str:
    """The LLaVA-1.5 prompt for one image and ``question``, ending with ``"ASSISTANT:"``."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def save_demo(model: LlavaForConditionalGeneration, processor: LlavaProcessor, out_dir: str | Path) -> Path:
    """Save ``model`` (safetensors) and ``processor`` into ``out_dir``; return the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out

