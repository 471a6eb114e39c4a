"""Logit lens: decode every layer's residual stream through the final norm and unembedding.

Note: the plain lens reads early layers through the *final* norm and unembedding, which they were not
trained for, so early-layer decodings are biased (tuned-lens translators correct this; later work).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.model.batch import Batch
from mmlens.model.labels import position_labels
from mmlens.model.subject import Subject
from mmlens.results.grid import GridResult
from mmlens.util.options import select_indices


def check_layers(subject: Subject, layers: Sequence[int] | None) -> list[int]:
    """Validate layer indices (negative ones count from the end); default all layers."""
    return select_indices("layers", layers, subject.n_layers)


def check_positions(batch: Batch, positions: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    if positions is None:
        return torch.arange(batch.seq_len)
    pos = torch.as_tensor(positions, dtype=torch.long).flatten()
    if pos.numel() == 0:
        raise InputError("the position group is empty: pass at least one sequence position")
    if int(pos.min()) < -batch.seq_len or int(pos.max()) >= batch.seq_len:
        raise InputError(f"positions must lie in 0..{batch.seq_len - 1} for this input")
    return pos % batch.seq_len


@dataclass
class LogitLens(GridResult):
    """``values[layer, position]`` = probability of the target word; ``extras["topk"]`` the top words."""

    def image_map(self, batch: Batch, image: int = 0, layer: int = -1) -> np.ndarray:
        """The target word's probability at each image token of ``layer``, as a map over the image pixels."""
        batch.require_sequence_images(  # images as cross-attention keys have no residual stream to decode
            "the logit lens' image map", "read its grid over the sequence (values), or use an attribution method")
        positions = torch.tensor(self.extras["positions"])
        scores = torch.zeros(batch.seq_len)
        scores[positions] = self.values[layer].float()
        return batch.geometry[image].heatmap(scores)


@register_method("logit_lens", leaf="model/layer/workflow", tier="activations",
                 summary="decode each layer's residual stream (image tokens too) through the final norm + unembedding",
                 kind="analysis")
@torch.no_grad()
def logit_lens(
    subject: Subject,
    batch: Batch,
    target: str | None = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    top_k: int = 5,
    tuned: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> LogitLens:
    """Logit lens over ``layers`` x ``positions`` (default: all x all).

    ``target``: the word whose probability fills the grid (default: the first answer token, else the model's
    top prediction at the last position). ``tuned``: a tuned lens (``tuned(layer, h)`` translates layer ``layer``'s
    residual stream before decoding; :class:`mmlens.inference.tuned_lens.TunedLens`).

    >>> lens = logit_lens(lm, batch, target="red")        # doctest: +SKIP
    >>> lens.save("lens.png")                              # doctest: +SKIP
    """
    subject.require_language_model("the logit lens")
    layers_ = check_layers(subject, layers)
    pos = check_positions(batch, positions)
    if top_k < 1:
        raise InputError(f"top_k={top_k}: pass 1 or more")
    parts = subject.adapter.parts()
    target_id = _target_id(subject, batch, target)

    def decode(h: torch.Tensor, layer: int) -> dict:
        h = h[0, pos.to(h.device)]
        h = tuned(layer, h) if tuned is not None else h
        probs = parts.unembed(parts.lm_norm(h)).float().softmax(-1)
        top = probs.topk(top_k, dim=-1)
        return {"target": probs[:, target_id].cpu(), "top_ids": top.indices.cpu(), "top_p": top.values.cpu()}

    with subject.trace() as tr:
        for layer in layers_:
            tr.capture(f"lm.blocks.{layer}.resid_post", reduce=lambda h, layer=layer: decode(h, layer))
        subject.forward(batch)
    rows = [tr[f"lm.blocks.{layer}.resid_post"] for layer in layers_]
    tok = subject.tokenizer
    topk = [[[(tok.convert_ids_to_tokens(int(i)), round(float(p), 5)) for i, p in zip(r["top_ids"][j], r["top_p"][j])]
             for j in range(pos.numel())] for r in rows]
    labels = position_labels(tok, batch)
    word = tok.convert_ids_to_tokens(target_id)
    return LogitLens(
        kind="logit_lens",
        values=torch.stack([r["target"] for r in rows]),
        row_labels=[f"layer {layer}" for layer in layers_],
        col_labels=[labels[p] for p in pos.tolist()],
        title=f"{'tuned' if tuned is not None else 'logit'} lens: p({word!r}) per layer x position",
        value_name=f"p({word})",
        meta={"model": subject.model_id, "method": "logit_lens", "target": word, "target_id": target_id,
              "layers": layers_, "top_k": top_k, "tuned": tuned is not None},
        extras={"positions": pos.tolist(), "topk": topk},
    )


def _target_id(subject: Subject, batch: Batch, target: str | None) -> int:
    if target is None:
        if batch.answer_ids.numel():
            return int(batch.answer_ids[0])
        logits = subject.forward(batch)
        return int(logits[0, -1].argmax())
    ids = subject.tokenizer(target, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise InputError(f"target {target!r} is {len(ids)} tokens: the lens tracks one token; pass a single word")
    return int(ids[0])
