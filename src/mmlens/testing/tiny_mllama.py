"""Tiny Mllama (Llama 3.2 Vision): images reach the language model through cross-attention layers only.

Vision tower: 32 px tiles in 8 px patches (4 x 4 patches + CLS = 17 keys per tile), at most 4 tiles per image
(``MllamaImageProcessorPil``: aspect-preserving resize into the best ``rows x cols`` canvas of 32 px tiles, zero
padding right / bottom), 2 local layers + 1 gated global layer, features of local layer 0 concatenated
(``vision_output_dim`` 64). Text model: 3 layers, layer 1 a cross-attention layer; its tanh gates are set to
0.5 (transformers initialises them to 0, which would cut the images off).

The prompt holds one ``<|image|>`` text token per image; the cross-attention states are ``(1, images * 4 * 17,
32)``: key ``(i * 4 + t) * 17 + j`` is image ``i``, tile ``t`` (row-major; tiles past the image's count are
padding, masked by ``cross_attention_mask``), patch ``j - 1`` row-major (``j = 0``: the tile's CLS).

    80x40 -> 1x2 tiles (64x32 canvas, no padding); 40x100 -> 3x1 tiles (resized 32x80 in a 32x96 canvas, 16 px
    padding below); 48x48 -> 2x2 tiles (resized 64x64).
"""

from __future__ import annotations

import torch
from transformers import (
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessorPil,
    MllamaProcessor,
)

from mmlens.testing.tiny_configs import HEADS, HIDDEN, special_ids, tiny_tokenizer

IMAGE_SIZES = {"mllama": ((80, 40), (40, 100), (48, 48))}

MLLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image|>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def build_mllama():
    specials = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|image|>", "<|python_tag|>")
    tok = tiny_tokenizer(specials, {"image_token": "<|image|>"}, MLLAMA_CHAT_TEMPLATE)
    image_processor = MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=4)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=MLLAMA_CHAT_TEMPLATE)
    vision = {"hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": 2, "num_global_layers": 1,
              "attention_heads": HEADS, "image_size": 32, "patch_size": 8, "max_num_tiles": 4,
              "intermediate_layers_indices": [0], "vision_output_dim": 2 * HIDDEN}
    text = {"vocab_size": len(tok), "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": 3,
            "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "cross_attention_layers": [1],
            "max_position_embeddings": 512, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            **special_ids(tok)}
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=tok.image_token_id)
    model = MllamaForConditionalGeneration(config)
    with torch.no_grad():  # open the zero-initialised gates so that images reach the logits
        for layer in model.model.language_model.layers:
            if hasattr(layer, "cross_attn"):
                layer.cross_attn_attn_gate.fill_(0.5)
                layer.cross_attn_mlp_gate.fill_(0.5)
        vm = model.model.vision_model  # tile / position embedding gates likewise start at 0
        for gate in (vm.pre_tile_positional_embedding.gate, vm.post_tile_positional_embedding.gate,
                     vm.gated_positional_embedding.gate):
            gate.fill_(0.5)
    return model, processor


BUILDERS = {"mllama": build_mllama}
