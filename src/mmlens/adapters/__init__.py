"""One adapter per model family; importing this package registers them all."""

from mmlens.adapters import (  # noqa: F401
    gemma3,
    idefics3,
    internvl,
    llava,
    llava_next,
    llava_onevision,
    paligemma,
    qwen2_vl,
    qwen3_vl,
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
