"""Steering vectors: the mean residual-stream difference between grounded and hallucinated cases at one layer.

``vector = mean(h_grounded) - mean(h_hallucinated)`` at the last prompt position of ``lm.blocks.{layer}
.resid_post``; :class:`mmlens.inference.decoding.Steering` adds ``scale * vector`` there while generating.
A vector records the model's hidden size and layer count, and is refused (one line) by another model.

>>> v = SteeringVector(torch.zeros(4), layer=1, model="m", hidden=4, n_layers=2)
>>> v.layer, tuple(v.vector.shape)
(1, (4,))
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmlens.errors import InputError
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.util.io import atomic_write
from mmlens.util.options import check_int
from mmlens.util.progress import progress


@dataclass(frozen=True)
class SteeringVector:
    """A direction in ``lm.blocks.{layer}.resid_post`` of a model with ``hidden`` units and ``n_layers`` blocks."""

    vector: torch.Tensor
    layer: int
    model: str
    hidden: int
    n_layers: int

    def check(self, subject: Subject) -> None:
        """One-line InputError unless this vector fits ``subject`` (size, layer, finite values)."""
        hidden = int(subject.model.config.get_text_config().hidden_size)
        if self.vector.ndim != 1 or self.vector.numel() != hidden:
            raise InputError(f"steering vector has shape {tuple(self.vector.shape)} but {subject.model_id!r} has "
                             f"hidden size {hidden}: compute the vector on this model (steering_vector)")
        if not 0 <= self.layer < subject.n_layers:
            raise InputError(f"steering layer {self.layer} is out of range: {subject.model_id!r} has layers "
                             f"0..{subject.n_layers - 1}")
        if not bool(torch.isfinite(self.vector).all()):
            raise InputError("steering vector has non-finite values: compute it again")

    def save(self, path: str | os.PathLike) -> Path:
        """A ``.safetensors`` file with the vector and its model's shape in the metadata."""
        from safetensors.torch import save_file

        meta = {"mmlens": json.dumps({"kind": "steering", "layer": self.layer, "model": self.model,
                                      "hidden": self.hidden, "n_layers": self.n_layers})}
        return atomic_write(path, lambda tmp: save_file({"vector": self.vector.float().contiguous()}, str(tmp), meta),
                            (".safetensors",))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SteeringVector:
        from safetensors import safe_open

        p = Path(path)
        if not p.is_file():
            raise InputError(f"steering vector {str(p)!r} not found: pass a .safetensors saved by SteeringVector.save")
        try:
            with safe_open(str(p), "pt") as f:
                meta = json.loads((f.metadata() or {}).get("mmlens", "{}"))
                vector = f.get_tensor("vector")
        except Exception as err:  # noqa: BLE001 - any unreadable file is one line
            raise InputError(f"{str(p)!r} is not a steering-vector file ({type(err).__name__}): save one with "
                             "SteeringVector.save") from None
        if meta.get("kind") != "steering":
            raise InputError(f"{str(p)!r} is not a steering-vector file: save one with SteeringVector.save")
        return cls(vector, int(meta["layer"]), str(meta["model"]), int(meta["hidden"]), int(meta["n_layers"]))


@torch.no_grad()
def last_prompt_states(subject: Subject, batches: Sequence[Batch], layer: int, show: bool | None = None) -> torch.Tensor:
    """``(len(batches), hidden)`` residual streams leaving ``layer`` at each batch's last prompt position."""
    rows = []
    for batch in progress(batches, f"activations at layer {layer}", enabled=show):
        with subject.trace() as tr:
            tr.capture(f"lm.blocks.{layer}.resid_post", reduce=lambda h, p=batch.prompt_len - 1: h[0, p].float().cpu())
            subject.forward(batch)
        rows.append(tr[f"lm.blocks.{layer}.resid_post"])
    return torch.stack(rows)


def steering_vector(subject: Subject, grounded: Sequence[Batch], hallucinated: Sequence[Batch], layer: int,
                    show: bool | None = None) -> SteeringVector:
    """``mean(grounded) - mean(hallucinated)`` of the residual stream leaving ``layer`` (last prompt position).

    >>> v = steering_vector(lm, grounded_batches, hallucinated_batches, layer=1)   # doctest: +SKIP
    """
    subject.require_language_model("steering_vector")
    subject.require("activations")
    layer = check_int("layer", layer, 0, subject.n_layers - 1)
    if not grounded or not hallucinated:
        raise InputError("steering_vector needs at least one grounded and one hallucinated case: pass both lists")
    diff = last_prompt_states(subject, grounded, layer, show).mean(0) - \
        last_prompt_states(subject, hallucinated, layer, show).mean(0)
    return SteeringVector(diff, layer, subject.model_id, int(diff.numel()), subject.n_layers)
