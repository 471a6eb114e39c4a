"""Image-only processors for families whose transformers processor insists on a video processor.

Every transformers video processor needs torchvision, which mmlens does not use. ``ProcessorMixin`` reads a
processor's sub-processors from its ``__init__`` signature; :func:`image_only_processor` makes a subclass whose
signature names only ``image_processor`` and ``tokenizer`` and otherwise runs the parent's code unchanged (the
parent's positional ``video_processor=None`` is dropped because no attribute is left for it).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from transformers.processing_utils import ProcessorMixin


@functools.cache
def image_only_processor(parent: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """A subclass of ``parent`` built from an image processor and a tokenizer alone; videos are refused."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        parent.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    params = [p for n, p in inspect.signature(parent.__init__).parameters.items() if "video" not in n]
    __init__.__signature__ = inspect.Signature(params)  # what ProcessorMixin reads: sub-processors, saved kwargs

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        if videos is not None and getattr(self, "video_processor", None) is None:  # mmlens.adapters.video sets one
            raise ValueError(f"{type(self).__name__} is image-only (video processors need torchvision)")
        return parent.validate_inputs(self, images=images, text=text, videos=videos, audio=audio, **kwargs)

    @classmethod
    def from_args_and_dict(cls, args, processor_dict, **kwargs):  # HF reads __code__, which **kwargs hides
        kwargs.pop("return_unused_kwargs", None)
        names = set(__init__.__signature__.parameters) - set(cls.get_attributes())
        return cls(*args, **{k: v for k, v in (processor_dict | kwargs).items() if k in names})

    def to_dict(self, *args, **kwargs):  # saved as the parent class, which AutoProcessor knows
        return parent.to_dict(self, *args, **kwargs) | {"processor_class": parent.__name__}

    body = {"__init__": __init__, "validate_inputs": validate_inputs, "to_dict": to_dict, "__module__": __name__,
            "from_args_and_dict": from_args_and_dict}
    return type(f"ImageOnly{parent.__name__}", (parent,), body)


def load_image_only(parent: type[ProcessorMixin], path: str, image_only: type[ProcessorMixin] | None = None,
                    **kwargs: Any) -> ProcessorMixin:
    """``AutoProcessor.from_pretrained(path)``; where that needs a video processor (no torchvision), the
    image-only subclass of ``parent`` (or ``image_only``) loaded from the same folder, with a note saying so."""
    from transformers import AutoProcessor

    reason = "its saved processor has no image processor"
    try:
        processor = AutoProcessor.from_pretrained(path, **kwargs)
        if hasattr(processor, "image_processor"):
            return processor
    except (ImportError, OSError, ValueError, TypeError, AttributeError) as err:
        reason = f"the full processor needs a video processor ({type(err).__name__})"
    kwargs.pop("trust_remote_code", None)
    processor = (image_only or image_only_processor(parent)).from_pretrained(path, backend="pil", **kwargs)
    processor._mmlens_notes = [f"using an image-only {parent.__name__}: {reason}"]
    from mmlens.adapters.video import saved_video_settings

    processor._mmlens_video_settings = saved_video_settings(path, **kwargs)  # video frames (adapters.video)
    return processor
