"""Activations for SAEs, captured with the Tracer: a stream of batches for training, and a labelled token table.

:func:`activation_batches` yields one ``(tokens, d)`` tensor per sample (streaming: nothing is kept), for
:func:`mmlens.neuron.sae.train.train_sae`. :func:`collect_tokens` keeps every token's activation with its
metadata (sample, position, image cell box) and, for ShapesVQA-like samples with ``objects``, which object's
colour / shape each image patch belongs to (the object's mask covers at least ``cover`` of the cell's pixels,
through the model's token -> pixel-box geometry).

>>> from mmlens.testing import tiny_subject                                                  # doctest: +SKIP
>>> lm = tiny_subject("llava"); items = [(lm.example_images()[0], "what is this?", "red")]    # doctest: +SKIP
>>> next(activation_batches(lm, items, "lm.blocks.0.resid_post")).shape[-1] == lm.model.config.text_config.hidden_size  # doctest: +SKIP
True
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmlens.errors import InputError
from mmlens.model.batch import Batch
from mmlens.model.samples import iter_batches
from mmlens.model.subject import Subject
from mmlens.util.options import check_choice

GROUPS = ("all", "image", "text")


def check_hook(subject: Subject, hook_name: str) -> str:
    """``hook_name`` if it is one capturable point of ``subject``, else one line listing examples."""
    if not isinstance(hook_name, str) or "*" in hook_name or "?" in hook_name:
        raise InputError(f"hook point {hook_name!r}: pass one name, e.g. 'lm.blocks.1.resid_post'")
    points = subject.hook_point_map()
    if hook_name not in points or points[hook_name].kind == "attn_weights":
        last = subject.n_layers - 1
        raise InputError(f"unknown hook point {hook_name!r}: use e.g. 'lm.blocks.{{0..{last}}}.resid_post', "
                         f"'lm.blocks.{last}.mlp.act' or 'projector.out' (Subject.hook_points() lists all)")
    return hook_name


def _rows(hook_name: str, batch: Batch, group: str) -> torch.Tensor | None:
    """Sequence positions of ``group`` (None = every row); only ``lm.*`` points are indexed by position."""
    if group == "all" or not hook_name.startswith("lm."):
        return None
    return batch.image_positions() if group == "image" else torch.cat([batch.text_positions(), batch.answer_positions])


def _capture(subject: Subject, batch: Batch, hook_name: str, rows: torch.Tensor | None) -> torch.Tensor:
    def keep(h: torch.Tensor) -> torch.Tensor:
        h = h[0] if hook_name.startswith("lm.") else h.reshape(-1, h.shape[-1])
        return (h if rows is None else h[rows.to(h.device)]).float().cpu()

    with torch.no_grad(), subject.trace() as tr:
        tr.capture(hook_name, reduce=keep)
        subject.forward(batch)
    return tr[hook_name]


def activation_batches(subject: Subject, samples: Iterable[Any], hook_name: str, positions: str = "all",
                       answer: str = "given", show_progress: bool | None = None) -> Iterator[torch.Tensor]:
    """One ``(tokens, d)`` float32 tensor per sample of ``hook_name`` at ``positions`` (all / image / text tokens
    of the teacher-forced prompt + answer; points outside the LM give all their rows)."""
    hook_name = check_hook(subject, hook_name)
    positions = check_choice("positions", positions, GROUPS)
    for _, batch in iter_batches(subject, samples, answer=answer, description=f"activations {hook_name}",
                                 show_progress=show_progress):
        yield _capture(subject, batch, hook_name, _rows(hook_name, batch, positions))


@dataclass
class TokenTable:
    """Activations of many tokens with where they come from.

    ``acts (n, d)``; per row: ``sample``, ``position`` (sequence position), ``image_token`` (bool), ``box`` (pixel
    box of an image token's cell, else NaN) and ``token_id``; ``labels[name]`` (bool, n) marks image patches that
    belong to an object of colour / shape ``name`` (empty without object masks). ``ids[s]``: sample ``s``'s ids.
    """

    acts: torch.Tensor
    sample: torch.Tensor
    position: torch.Tensor
    image_token: torch.Tensor
    box: torch.Tensor
    token_id: torch.Tensor
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    ids: list[list[int]] = field(default_factory=list)
    hook_name: str = ""

    def __len__(self) -> int:
        return int(self.acts.shape[0])


def patch_labels(batch: Batch, objects: list[dict[str, Any]], cover: float = 0.5) -> dict[int, tuple[str, str]]:
    """``position -> (colour, shape)`` of the object whose mask covers >= ``cover`` of the image cell's pixels."""
    out: dict[int, tuple[str, str]] = {}
    if not batch.geometry:
        return out
    for pos, boxes in batch.geometry[0].position_boxes().items():
        x0, y0, x1, y1 = (round(v) for v in boxes[0])
        for obj in objects:
            cell = np.asarray(obj["mask"])[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
            if cell.size and cell.mean() >= cover:
                out[pos] = (obj["color"], obj["shape"])
                break
    return out


@torch.no_grad()
def collect_tokens(subject: Subject, samples: Iterable[Any], hook_name: str, positions: str = "all",
                   answer: str = "given", cover: float = 0.5, show_progress: bool | None = None) -> TokenTable:
    """Every token of ``positions`` (see :func:`activation_batches`) with its metadata and object labels."""
    hook_name = check_hook(subject, hook_name)
    positions = check_choice("positions", positions, GROUPS)
    if not hook_name.startswith("lm."):
        raise InputError(f"collect_tokens labels sequence positions: use an 'lm.*' hook point, not {hook_name!r}")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("acts", "sample", "position", "image", "box", "tok")}
    names: list[tuple[str, str]] = []
    ids: list[list[int]] = []
    samples = list(samples)
    for i, batch in iter_batches(subject, samples, answer=answer, description=f"tokens {hook_name}",
                                 show_progress=show_progress):
        rows = _rows(hook_name, batch, positions)
        rows = torch.arange(batch.seq_len) if rows is None else rows
        parts["acts"].append(_capture(subject, batch, hook_name, rows))
        image = set(batch.image_positions().tolist())
        boxes = batch.geometry[0].position_boxes() if batch.geometry else {}
        labels = patch_labels(batch, getattr(samples[i], "objects", None) or [], cover)
        parts["sample"].append(torch.full((rows.numel(),), i))
        parts["position"].append(rows)
        parts["image"].append(torch.tensor([p in image for p in rows.tolist()]))
        parts["box"].append(torch.tensor([boxes[p][0] if p in boxes else (float("nan"),) * 4 for p in rows.tolist()]))
        parts["tok"].append(batch.input_ids[0, rows])
        names.extend(labels.get(p, ("", "")) for p in rows.tolist())
        ids.append(batch.input_ids[0].tolist())
    if not parts["acts"]:
        raise InputError("no tokens collected: pass at least one sample")
    table = TokenTable(torch.cat(parts["acts"]), torch.cat(parts["sample"]), torch.cat(parts["position"]),
                       torch.cat(parts["image"]), torch.cat(parts["box"]).float(), torch.cat(parts["tok"]), ids=ids,
                       hook_name=hook_name)
    for which in (0, 1):
        for value in sorted({n[which] for n in names} - {""}):
            table.labels[value] = torch.tensor([n[which] == value for n in names])
    return table
