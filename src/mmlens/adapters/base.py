"""What an adapter is: a family's module paths, prompt format and image-token geometry.

Adding a family = one file with an :class:`Adapter` subclass decorated with :func:`register_adapter`,
plus a tiny-model parity / geometry test.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from mmlens.errors import InputError, UnsupportedModelError
from mmlens.hooks.points import ModelParts
from mmlens.model.geometry import ImageGeometry

ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make ``cls`` the adapter for each ``config.model_type`` in ``cls.model_types``."""
    for model_type in cls.model_types:
        ADAPTERS[model_type] = cls
    return cls


def supported_families() -> list[str]:
    return sorted({cls.family for cls in ADAPTERS.values()})


def video_families() -> list[str]:
    """Families that take video (frames) input."""
    return sorted({cls.family for cls in ADAPTERS.values() if cls.supports_video})


def adapter_for(model_or_config: Any) -> type[Adapter]:
    """The adapter class for a model's (or config's) ``model_type``."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported families: {', '.join(supported_families())}"
        )
    return ADAPTERS[model_type]


class Adapter:
    """Base adapter. Subclasses set ``family`` / ``model_types`` and implement ``parts`` and ``geometry``."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    #: name of the transformers class that loads this family's checkpoints
    model_class: ClassVar[str] = ""
    #: value that per-token type inputs (e.g. PaliGemma's ``token_type_ids``) take for answer tokens
    answer_token_type: ClassVar[int] = 0

    def __init__(self, model: nn.Module, processor: Any) -> None:
        self.model = model
        self.processor = processor

    #: the transformers processor class of families whose saved processor also needs a video processor (which
    #: needs torchvision): without one, :meth:`load_processor` builds its image-only subclass
    processor_class: ClassVar[type | None] = None
    #: that image-only subclass where the generic one (:func:`mmlens.adapters.image_only.image_only_processor`)
    #: needs changes
    image_only_class: ClassVar[type | None] = None

    @classmethod
    def load_processor(cls, path: str, **kwargs: Any) -> Any:
        """The family's processor from a local folder or hub id (PIL image processors: no torchvision)."""
        if cls.processor_class is not None:
            from mmlens.adapters.image_only import load_image_only

            return load_image_only(cls.processor_class, path, cls.image_only_class, **kwargs)
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, **kwargs)

    # -- modules ------------------------------------------------------------------------------------------
    def parts(self) -> ModelParts:
        raise NotImplementedError

    def trace_patches(self) -> list[Any]:
        """``(owner, method name, make_wrapper)`` triples a trace installs and removes with its hooks (see
        :class:`mmlens.hooks.tracing.Tracer`); none for most families."""
        return []

    # -- tokens -------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def image_token_id(self) -> int:
        cfg = self.model.config
        for name in ("image_token_id", "image_token_index"):
            value = getattr(cfg, name, None)
            if value is not None:
                return int(value)
        raise UnsupportedModelError(f"{type(self.model).__name__} config names no image token id")

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids == self.image_token_id

    # -- prompts ------------------------------------------------------------------------------------------
    def prompt_text(self, prompt: str, n_images: int) -> str:
        """The text handed to the processor: the chat template with ``n_images`` image slots + ``prompt``."""
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        for owner in (self.processor, self.tokenizer):
            if getattr(owner, "chat_template", None):
                return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        raise InputError(
            f"the {self.family} processor has no chat template: pass a processor with `chat_template` set, "
            "or a prompt that already holds the image placeholders"
        )

    def processor_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments of every processor call (e.g. Gemma 3's pan & scan settings)."""
        return {}

    def processor_inputs(self, images: list[Image.Image], text: str) -> dict[str, torch.Tensor]:
        return dict(self.processor(images=images, text=text, return_tensors="pt", **self.processor_kwargs()))

    def rows_inputs(self, image_sets: list[list[Image.Image]], texts: list[str]) -> dict[str, torch.Tensor]:
        """One processor call for several rows (one image list and one prompt text each)."""
        return dict(self.processor(images=image_sets, text=texts, return_tensors="pt", **self.processor_kwargs()))

    #: how the vision tower's output patches map onto the LM's image grids (see :mod:`mmlens.model.tower_geometry`):
    #: ``"tiles"`` (tower tile k = grid k, CLS first if any, each grid cell a square block of patches: identity,
    #: pixel shuffle, average pooling), ``"merge_windows"`` (one flat row list, grouped by merge window),
    #: ``"anyres"`` (base tile + tiles stitched and unpadded), ``"joint"`` (dual encoders: rows = joint positions),
    #: ``"keys"`` (cross-attention families: tower rows are the LM's cross-attention keys, see ``keys_per_tile``)
    tower_layout: ClassVar[str] = "tiles"

    #: how the image processor lays pixels out, for the differentiable copy in :mod:`mmlens.model.pixels`:
    #: "stack" (resize / crop / normalise, one (3, H, W) array per image), "patches" (rows of merged patches),
    #: "padded_patches" (patch rows padded to max_num_patches),
    #: "tiles" (a base view + any-resolution tiles), "grid_tiles" (a grid of tiles + a thumbnail), "views"
    #: (the adapter's :meth:`pixel_views`, padded into one row), "image_tiles" (its views as each image's tiles),
    #: None (tiles or crops not re-implemented: pixel-level methods refuse)
    pixel_layout: ClassVar[str | None] = None

    def pixel_views(self, x: torch.Tensor, resize_to: Any) -> list[torch.Tensor]:
        """For ``pixel_layout = "views"`` / ``"image_tiles"``: the processor's views (tiles, a global image) of one
        ``(3, H, W)`` image on the 0..255 scale, resized with the differentiable ``resize_to(t, (h, w))``."""
        raise NotImplementedError

    def pixel_resize(self, height: int, width: int) -> tuple[int, int] | None:
        """``(height, width)`` the image processor resizes a ``height x width`` image to, where the family has
        its own rule (None: the generic rule of :func:`mmlens.model.pixels.generic_resize_size`)."""
        return None

    #: True for adapters without a language model (CLIP, SigLIP): see :mod:`mmlens.adapters.dual_encoder`
    dual_encoder: ClassVar[bool] = False
    #: the hook point whose tensor gradient methods differentiate: the input embeddings of the whole sequence
    input_point: ClassVar[str] = "lm.blocks.0.resid_pre"

    def input_width(self) -> int:
        """Width of the :attr:`input_point` tensor."""
        return int(self.model.config.get_text_config().hidden_size)

    def token_embedding(self) -> nn.Module:
        """The module that embeds token ids (its ``weight`` rows: :meth:`embedding_row`)."""
        return self.model.get_input_embeddings()

    def embedding_row(self, token_id: int) -> int:
        """Row of ``model.get_input_embeddings()`` that embeds tokenizer id ``token_id``."""
        return int(token_id)

    def joint_logits(self, inputs: dict[str, Any], tail: int | None = None) -> torch.Tensor:
        """Logits ``(B, seq, V)`` of one forward over prepared ``inputs`` (on the model's device); with ``tail=K``
        those of the last ``K`` positions, ``(B, K, V)``: the LM head then runs on those alone (transformers'
        ``logits_to_keep``), which saves its share of the time and the ``seq x V`` logits' memory."""
        if tail is None:
            return self.model(**inputs, use_cache=False).logits
        if self.keeps_logits:
            return self.model(**inputs, use_cache=False, logits_to_keep=tail).logits
        return self.model(**inputs, use_cache=False).logits[:, -tail:]

    @functools.cached_property
    def keeps_logits(self) -> bool:
        """Whether the model's forward takes ``logits_to_keep`` (every family's transformers class does)."""
        return "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def answer_ids(self, prompt_text: str, answer: str) -> list[int]:
        """Token ids of ``answer`` as they follow the prompt (tokenizers that merge across the seam are
        handled by tokenizing prompt + answer together and taking the tail)."""
        tok = self.tokenizer
        joined = tok(prompt_text + " " + answer, add_special_tokens=False).input_ids
        alone = tok(prompt_text, add_special_tokens=False).input_ids
        if joined[: len(alone)] == alone and len(joined) > len(alone):
            return list(joined[len(alone) :])
        return list(tok(answer, add_special_tokens=False).input_ids)

    def extend_inputs(self, inputs: dict[str, Any], ids: list[int]) -> dict[str, Any]:
        """Append answer tokens ``ids`` to every per-token input (ids, mask, token types) of each row
        (inputs of shape ``(rows, seq)``: every row gets the same answer)."""
        n = len(ids)
        rows, seq = inputs["input_ids"].shape
        out = dict(inputs)
        for key, value in inputs.items():
            if not (torch.is_tensor(value) and value.ndim == 2 and value.shape == (rows, seq)):
                continue
            if key == "input_ids":
                tail = torch.tensor([ids], dtype=value.dtype).expand(rows, n)
            elif key == "attention_mask":
                tail = torch.ones(rows, n, dtype=value.dtype)
            else:
                tail = torch.full((rows, n), self.answer_token_type, dtype=value.dtype)
            out[key] = torch.cat([value, tail.to(value.device)], dim=1)
        return out

    def with_candidates(self, inputs: dict[str, Any], caption: str, candidates: list[str]) -> dict[str, Any]:
        """``inputs`` that score the caption against other ``candidates`` (zero-shot classes): dual encoders."""
        raise InputError(f"candidates (zero-shot classes among captions) need an image-text dual encoder, and this "
                         f"{self.family} model has no text tower aligned with its images: leave candidates out")

    # -- video --------------------------------------------------------------------------------------------
    #: True for families whose transformers class takes video; they implement the three methods below (see
    #: :mod:`mmlens.adapters.video`)
    supports_video: ClassVar[bool] = False

    def require_video(self) -> None:
        """One-line InputError when this family takes no video."""
        if not self.supports_video:
            raise InputError(f"the {self.family} model takes no video: pass images, or load a model of a family with "
                             f"video input ({', '.join(video_families())})")

    def video_prompt_text(self, prompt: str) -> str:
        """The chat template with one video slot + ``prompt``."""
        self.require_video()
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
        for owner in (self.processor, self.tokenizer):
            if getattr(owner, "chat_template", None):
                return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        raise InputError(f"the {self.family} processor has no chat template: pass a processor with `chat_template` set")

    def video_inputs(self, frames: list[Image.Image], fps: float, text: str) -> dict[str, torch.Tensor]:
        """Model inputs for ``text`` (one video slot) with ``frames`` (RGB, one size) at ``fps``."""
        self.require_video()
        raise NotImplementedError

    def video_geometry(self, inputs: dict[str, torch.Tensor], frames: list[Image.Image],
                       fps: float) -> list[ImageGeometry]:
        """One :class:`ImageGeometry` per frame (``frame``, ``time`` set; grids name their frames)."""
        raise NotImplementedError

    # -- geometry -----------------------------------------------------------------------------------------
    def geometry(self, inputs: dict[str, torch.Tensor], images: list[Image.Image]) -> list[ImageGeometry]:
        """One :class:`ImageGeometry` per image, in prompt order."""
        raise NotImplementedError

    def split_image_positions(self, input_ids: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
        """Split the image-token positions of row 0 into consecutive chunks of ``counts`` tokens."""
        positions = torch.nonzero(self.image_token_mask(input_ids[0])).flatten()
        if positions.numel() != sum(counts):
            raise InputError(
                f"the prompt holds {positions.numel()} image tokens but the images need {sum(counts)}: "
                "give one image placeholder per image (or let mmlens build the prompt)"
            )
        return list(torch.split(positions, counts))
