"""Dual encoders (CLIP, SigLIP, SigLIP 2): an image tower and a text tower meeting in one similarity.

They have no language model and no answer to generate, so mmlens gives them the same interface as an MLLM
through a *joint sequence*: positions ``0 .. n_vision - 1`` are the vision tower's tokens (CLS first where
the tower has one), then the caption's text tokens, then one answer slot. The "answer" is ``"<match>"`` and
its logits at the last caption position are ``[r, s]`` with ``s`` the image-caption similarity logit
(``logit_scale * cos``, plus SigLIP's ``logit_bias``) and ``r`` the reference of :meth:`nomatch_logit`: the
``"logit"`` objective explains ``s`` itself, ``"log_prob"`` is ``log sigmoid(s - r)`` (SigLIP's own match
log-probability). Perturbation methods (batched perturbed forwards) then explain that similarity, with image
positions mapped to pixels by the geometry and text positions being the caption's tokens (masked words).
Gradient methods differentiate it w.r.t. the joint input embeddings (``joint.embed``: both towers' input
embeddings in one tensor, see :mod:`mmlens.adapters.joint_embedding`).

Token ids in the joint sequence are shifted by :data:`OFFSET` so the three virtual tokens (``<nomatch>``,
``<match>``, ``<image>``) never collide with the tokenizer's own; :class:`JointTokenizer` decodes both.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch import nn

from mmlens.adapters.base import Adapter
from mmlens.adapters.embedding_parts import EmbeddingParts
from mmlens.adapters.joint_embedding import JointEmbed, embeddings_from, expand_rows, join, tower_embeddings
from mmlens.errors import InputError
from mmlens.model.geometry import ImageGeometry, ImageGrid

NOMATCH, MATCH, IMAGE = 0, 1, 2
OFFSET = 3
VIRTUAL_TOKENS = ("<nomatch>", "<match>", "<image>")


class JointTokenizer:
    """The text tower's tokenizer with its ids shifted by :data:`OFFSET` and the joint sequence's virtual tokens
    in front (``<nomatch>`` 0, ``<match>`` 1, ``<image>`` 2); everything else is the wrapped tokenizer's."""

    def __init__(self, tokenizer: Any) -> None:
        self.inner = tokenizer

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        if name.endswith("_token_id") and isinstance(value, int):
            return value + OFFSET
        return value

    def __len__(self) -> int:
        return len(self.inner) + OFFSET

    @property
    def all_special_ids(self) -> list[int]:
        return [NOMATCH, MATCH, IMAGE, *(i + OFFSET for i in self.inner.all_special_ids)]

    def __call__(self, text: Any, **kwargs: Any) -> Any:
        enc = self.inner(text, **kwargs)
        ids = enc["input_ids"]
        enc["input_ids"] = [[i + OFFSET for i in row] for row in ids] if ids and isinstance(ids[0], list) else \
            [i + OFFSET for i in ids]
        return enc

    def convert_ids_to_tokens(self, ids: Any) -> Any:
        if isinstance(ids, int):
            return VIRTUAL_TOKENS[ids] if ids < OFFSET else self.inner.convert_ids_to_tokens(ids - OFFSET)
        return [self.convert_ids_to_tokens(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens: Any) -> Any:
        if isinstance(tokens, str):
            return VIRTUAL_TOKENS.index(tokens) if tokens in VIRTUAL_TOKENS else \
                self.inner.convert_tokens_to_ids(tokens) + OFFSET
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def decode(self, ids: Any, skip_special_tokens: bool = False, **kwargs: Any) -> str:
        ids = ids.tolist() if torch.is_tensor(ids) else list(ids)
        words, run = [], []
        for i in [*ids, None]:
            if i is None or i < OFFSET:
                if run:
                    words.append(self.inner.decode(run, skip_special_tokens=skip_special_tokens, **kwargs))
                    run = []
                if i is not None and not skip_special_tokens:
                    words.append(VIRTUAL_TOKENS[i])
            else:
                run.append(i - OFFSET)
        return " ".join(w for w in words if w)


class DualEncoderAdapter(Adapter):
    """Shared behaviour of dual encoders; subclasses name the towers (``vision_tower`` / ``text_tower``) and
    lay out the vision tokens (``geometry`` / ``n_vision_tokens``)."""

    dual_encoder = True
    tower_layout = "joint"
    input_point = "joint.embed"

    def __init__(self, model: nn.Module, processor: Any) -> None:
        super().__init__(model, processor)
        self.joint = JointEmbed()

    @property
    def tokenizer(self) -> JointTokenizer:
        return JointTokenizer(self.processor.tokenizer)

    @property
    def image_token_id(self) -> int:
        return IMAGE

    def prompt_text(self, prompt: str, n_images: int) -> str:
        if n_images != 1:
            raise InputError(f"a {self.family} dual encoder scores one image against a caption, got {n_images} "
                             "images: pass one image")
        return prompt

    def n_vision_tokens(self, inputs: dict[str, Any]) -> int:
        """Vision tokens of one image (the joint sequence's first positions)."""
        raise NotImplementedError

    def processor_inputs(self, images: list[Image.Image], text: str) -> dict[str, torch.Tensor]:
        return self.rows_inputs([images], [text])

    def rows_inputs(self, image_sets: list[list[Image.Image]], texts: list[str]) -> dict[str, torch.Tensor]:
        """Joint inputs of several rows (one image and one caption each): vision slots, then the caption ids."""
        if any(len(images) != 1 for images in image_sets):
            raise InputError(f"a {self.family} dual encoder takes one image per row: pass one image")
        kwargs = {"padding": True, **self.processor_kwargs()}
        enc = dict(self.processor(images=[images[0] for images in image_sets], text=list(texts), return_tensors="pt",
                                  **kwargs))
        ids = enc.pop("input_ids")
        mask = enc.pop("attention_mask", None)
        rows, n = ids.shape[0], self.n_vision_tokens(enc)
        enc["input_ids"] = torch.cat([torch.full((rows, n), IMAGE, dtype=ids.dtype), ids + OFFSET], dim=1)
        enc["attention_mask"] = torch.cat([torch.ones(rows, n, dtype=torch.long), torch.ones_like(ids) if mask is None
                                           else mask.long()], dim=1)
        return enc

    def answer_ids(self, prompt_text: str, answer: str) -> list[int]:
        if answer.strip() not in ("<match>", "match"):
            raise InputError(f"a {self.family} dual encoder has no answer {answer!r} to explain: its answer is the "
                             "image-caption similarity (leave answer out, or pass answer='<match>')")
        return [MATCH]

    def extend_inputs(self, inputs: dict[str, Any], ids: list[int]) -> dict[str, Any]:
        if ids != [MATCH]:
            raise InputError(f"a {self.family} dual encoder's answer is the single '<match>' slot, not {ids}")
        return super().extend_inputs(inputs, ids)

    # -- the similarity --------------------------------------------------------------------------------
    def image_embeds(self, inputs: dict[str, Any]) -> torch.Tensor:
        """Image embeddings ``(B, D)`` (projected, not normalised) of the joint inputs' images."""
        raise NotImplementedError

    def text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text embeddings ``(B, D)`` (projected, not normalised) of the text tower's own ids."""
        raise NotImplementedError

    def text_kwargs(self) -> dict[str, Any]:
        """Tokenizer keyword arguments for plain texts (padding / truncation as the text tower was trained)."""
        raise NotImplementedError

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings ``(B, D)`` (projected, not normalised) of plain texts (the embedding methods' side), as
        the joint sequence's caption and :meth:`with_candidates` embed them: the tokenizer's ids and attention mask."""
        enc = self.processor.tokenizer(list(texts), return_tensors="pt", **self.text_kwargs())
        device = next(self.model.parameters()).device
        mask = enc.get("attention_mask")
        return self.text_embeds(enc["input_ids"].to(device), mask.to(device) if mask is not None else None)

    def with_candidates(self, inputs: dict[str, Any], caption: str, candidates: list[str]) -> dict[str, Any]:
        """``inputs`` plus ``candidate_embeds`` ``(1, K, D)``: the text embeddings of the ``candidates`` other than
        ``caption`` (constants, embedded as the caption is), whose similarities join the caption's in the
        readout: ``log_prob`` of ``<match>`` is then the caption's zero-shot class log-probability."""
        others = list(dict.fromkeys(c.strip() for c in candidates if c.strip() != caption.strip()))
        if not others or any(not c for c in others):
            raise InputError(f"candidates {list(candidates)!r} hold no caption other than {caption!r} (or an empty "
                             "one): pass at least one other non-empty caption")
        enc = self.processor.tokenizer(others, return_tensors="pt", **{"padding": True, **self.text_kwargs()})
        device = next(self.model.parameters()).device
        mask = enc.get("attention_mask")
        with torch.no_grad():
            emb = self.text_embeds(enc["input_ids"].to(device), mask.to(device) if mask is not None else None)
        return {**inputs, "candidate_embeds": emb[None].cpu()}

    def embedding_parts(self) -> EmbeddingParts:
        """The towers as the embedding methods read them (see :mod:`mmlens.adapters.embedding_parts`)."""
        raise NotImplementedError

    def similarity_logits(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``logit_scale.exp() * cos`` (+ ``logit_bias`` where the model has one), row by row."""
        cos = (nn.functional.normalize(image, dim=-1) * nn.functional.normalize(text, dim=-1)).sum(-1)
        out = self.model.logit_scale.exp() * cos
        bias = getattr(self.model, "logit_bias", None)
        return out + bias if bias is not None else out

    def joint_logits(self, inputs: dict[str, Any], tail: int | None = None) -> torch.Tensor:
        """``(B, seq, 2)`` logits of the joint sequence: ``[r, s]`` at the last caption position, 0 elsewhere;
        with candidates ``(B, seq, 2 + K)``: ``[-inf, s, s_1 .. s_K]`` there (:meth:`with_candidates`).
        ``tail`` is ignored: these logits are cheap and always cover the whole sequence.

        Both towers run from the joint input embeddings (``joint.embed``, see
        :mod:`mmlens.adapters.joint_embedding`); an edit there that makes ``k`` rows of a one-row batch
        scores ``k`` rows."""
        ids = inputs["input_ids"]
        n = self.n_vision_tokens(inputs)
        end = ids.shape[1] - int(bool((ids[:, -1] == MATCH).all()))
        if end <= n:
            raise InputError("the caption is empty: pass a caption to score against the image")
        text_ids = ids[:, n:end] - OFFSET
        mask = inputs.get("attention_mask")
        text_mask = mask[:, n:end] if mask is not None else torch.ones_like(text_ids)
        parts = self.parts()
        v = tower_embeddings(parts.vision_embed, lambda: self.image_embeds(inputs))
        t = tower_embeddings(parts.text_embed, lambda: self.text_embeds(text_ids, text_mask))
        if v.shape[1] != n:
            raise RuntimeError(f"the vision tower embeds {v.shape[1]} rows, the joint sequence has {n} vision slots")
        x = self.joint(join(v, t, ids.shape[1] - end))
        if x.shape[0] != ids.shape[0]:
            if ids.shape[0] != 1:
                raise RuntimeError(f"joint.embed was edited to {x.shape[0]} rows from {ids.shape[0]}, not from 1")
            inputs = expand_rows(inputs, x.shape[0])
            text_ids, text_mask = (u.expand(x.shape[0], -1) for u in (text_ids, text_mask))
        with embeddings_from(parts.vision_embed, x[:, :n, : v.shape[-1]]), \
                embeddings_from(parts.text_embed, x[:, n:end, : t.shape[-1]]):
            image = self.image_embeds(inputs)
            s = self.similarity_logits(image, self.text_embeds(text_ids, text_mask))
        others = inputs.get("candidate_embeds")
        if others is None:
            row = torch.stack([self.nomatch_logit().to(s).expand_as(s), s], dim=1)
        else:  # zero-shot among the candidates: <nomatch> drops out of the softmax
            sims = self.similarity_logits(image[:, None], others.to(image))  # (B, K)
            row = torch.cat([torch.full_like(s[:, None], float("-inf")), s[:, None], sims], dim=1)
        out = row.new_zeros(row.shape[0], ids.shape[1], row.shape[1])
        return torch.cat([out[:, : end - 1], row[:, None], out[:, end:]], dim=1)

    def input_width(self) -> int:
        """Width of ``joint.embed``: the wider tower's."""
        cfg = self.model.config
        return max(int(cfg.vision_config.hidden_size), int(cfg.text_config.hidden_size))

    def token_embedding(self) -> nn.Module:
        """The text tower's token embedding."""
        return self.parts().text_embed.token_embedding

    def embedding_row(self, token_id: int) -> int:
        """The text tower's embedding row of a joint-sequence token id."""
        return int(token_id) - OFFSET

    def nomatch_logit(self) -> torch.Tensor:
        """The ``<nomatch>`` logit: 0 for SigLIP (``log_prob`` = its sigmoid match log-probability); CLIP's
        ``logit_scale.exp()`` (``log_prob`` = ``log sigmoid(scale * (cos - 1))``, about linear in ``cos`` where a
        fixed 0 would saturate at CLIP's large similarity logits)."""
        if getattr(self.model, "logit_bias", None) is not None:
            return torch.zeros(())
        return self.model.logit_scale.exp().detach()

    def geometry(self, inputs: dict[str, torch.Tensor], images: list[Image.Image]) -> list[ImageGeometry]:
        n = self.n_vision_tokens(inputs)
        positions = torch.arange(n)
        grids, separators = self.vision_grids(inputs, images[0], positions)
        return [ImageGeometry(image_index=0, size=images[0].size, positions=positions, grids=grids,
                              separators=separators)]

    def vision_grids(self, inputs: dict[str, Any], image: Image.Image,
                     positions: torch.Tensor) -> tuple[list[ImageGrid], torch.Tensor]:
        """The patch grid(s) over the vision positions and the separator (CLS / padding) positions."""
        raise NotImplementedError
