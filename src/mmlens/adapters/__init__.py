"""One adapter per model family; importing this package registers them all.

Shared helpers (not families): ``base`` (the contract), ``image_only`` (processors without a video processor: an
adapter names its transformers ``processor_class`` and ``Adapter.load_processor`` builds the image-only subclass
when the full processor needs torchvision), ``qwen_processor`` (Qwen2/2.5-VL's image-only subclasses),
``video`` (frames through the family's PIL image processor, no torchvision: Qwen2/2.5/3-VL, LLaVA-OneVision,
LLaVA-NeXT-Video), ``dual_encoder`` (CLIP / SigLIP: no language model; the answer is the image-text match).
``mllama`` (Llama 3.2 Vision) is the one family whose images are cross-attention keys, not sequence positions (its
geometry has ``space="keys"``).
"""

from mmlens.adapters import (  # noqa: F401
    clip,
    gemma3,
    idefics3,
    internvl,
    llava,
    llava_next,
    llava_next_video,
    llava_onevision,
    mllama,
    paligemma,
    qwen2_vl,
    qwen3_vl,
    siglip,
    smolvlm,
)
from mmlens.adapters.base import (
    ADAPTERS,
    Adapter,
    adapter_for,
    register_adapter,
    supported_families,
)

__all__ = ["ADAPTERS", "Adapter", "adapter_for", "register_adapter", "supported_families"]
