"""Position groups of an activation collection: which sequence positions of one prepared sample are read, and
what each row is (its grid cell, the object under it, the sample's labels).

Groups:

- ``object``: the image tokens whose cell overlaps the evidence object's mask (ShapesVQA) by at least
  ``min_overlap`` of the cell (the most-overlapping cell when none does); none for a sample without an evidence
  object (an "is there ...?" question answered "no");
- ``image``: every image token on a grid (separators left out), each labelled with the object under it;
- ``question``: the question's tokens (the text after the image, before the chat template's answer cue);
- ``answer``: the last prompt position, whose logits give the answer's first token;
- ``all``: every position (with a teacher-forced answer: its tokens too), image tokens as in ``image``;
- ``text``: every position that is not an image token.

Row metadata: ``index`` (sample), ``row`` (k-th row of the sample), ``position`` (sequence position), ``grid``,
``cell_row``, ``cell_col`` (-1 off the image), ``box`` (the cell's pixel box, empty off the image), ``token``, ``overlap`` (share of the cell inside the evidence
object), ``object`` (the object covering most of the cell, -1 for background), ``object_color``,
``object_shape`` (that object's, ``"none"`` for background; on text rows: the evidence object's), the
sample's ``color`` / ``shape`` (evidence object, None without one), ``present`` (the asked object exists),
``location`` (the evidence object's centre: ``top-left`` ... ``bottom-right``), ``question_type``,
``question`` and ``answer``.

>>> GROUPS
('object', 'image', 'question', 'answer', 'all', 'text')
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmlens.errors import InputError

GROUPS = ("object", "image", "question", "answer", "all", "text")
IMAGE_GROUPS = ("object", "image")
NONE = "none"


def _schema_fields() -> list[tuple[str, Any]]:
    import pyarrow as pa

    return [("index", pa.int64()), ("row", pa.int32()), ("position", pa.int32()), ("grid", pa.int16()),
            ("cell_row", pa.int16()), ("cell_col", pa.int16()), ("box", pa.list_(pa.float32())),
            ("token", pa.string()), ("overlap", pa.float32()),
            ("object", pa.int16()), ("object_color", pa.string()), ("object_shape", pa.string()),
            ("color", pa.string()), ("shape", pa.string()), ("present", pa.bool_()), ("location", pa.string()),
            ("question_type", pa.string()), ("question", pa.string()), ("answer", pa.string())]


def cell_overlaps(mask: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Share of the pixel box ``(x0, y0, x1, y1)`` inside ``mask`` (0 when the box misses the image).

    >>> m = np.zeros((8, 8), bool); m[:4, :4] = True
    >>> cell_overlaps(m, (0, 0, 4, 4)), cell_overlaps(m, (2, 2, 6, 6))
    (1.0, 0.25)
    """
    h, w = mask.shape
    x0, y0, x1, y1 = (round(v) for v in box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    return float(mask[y0:y1, x0:x1].mean())


def _location(box: tuple[int, int, int, int], size: tuple[int, int]) -> str:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return f"{'top' if cy < size[1] / 2 else 'bottom'}-{'left' if cx < size[0] / 2 else 'right'}"


def sample_labels(sample: Any) -> dict[str, Any]:
    """The sample-level labels of a ShapesVQA sample (None for fields a user row does not have)."""
    objects = getattr(sample, "objects", None)
    if objects is None:
        return {"color": None, "shape": None, "present": None, "location": None, "question_type": None,
                "question": sample.question, "answer": getattr(sample, "answer", None)}
    evidence = _evidence(sample)
    obj = objects[evidence] if evidence is not None else None
    return {"color": obj["color"] if obj else None, "shape": obj["shape"] if obj else None,
            "present": not (sample.question_type == "exists" and sample.answer == "no"),
            "location": _location(obj["box"], sample.image.size) if obj else None,
            "question_type": sample.question_type, "question": sample.question, "answer": sample.answer}


def _evidence(sample: Any) -> int | None:
    """Index of the evidence object in ``sample.objects`` (None when the whole image is the evidence)."""
    if getattr(sample, "evidence", None) != "object":
        return None
    for k, obj in enumerate(sample.objects):
        if obj["mask"] is sample.mask or np.array_equal(obj["mask"], sample.mask):
            return k
    return None  # pragma: no cover - ShapesVQA's mask is one of its objects'


def question_positions(tokenizer: Any, batch: Any, question: str) -> torch.Tensor:
    """Positions of the question's tokens: the text positions after the last image token, less the chat
    template's tokens after the question (counted by tokenizing that tail)."""
    text = batch.text
    at = text.rfind(question)
    if batch.in_key_space:  # images as cross-attention keys: the text is the sequence, no placeholder expanded
        start = len(tokenizer(text[:at], add_special_tokens=False)["input_ids"]) if at > 0 else 0
    else:
        after = batch.image_positions()
        start = int(after.max()) + 1 if after.numel() else 0
    positions = batch.text_positions()
    positions = positions[positions >= start]
    if at < 0:
        return positions
    tail = text[at + len(question):]
    n_tail = len(tokenizer(tail, add_special_tokens=False)["input_ids"]) if tail.strip() else 0
    return positions[: max(1, positions.numel() - n_tail)]


def group_rows(group: str, sample: Any, batch: Any, tokenizer: Any, min_overlap: float = 0.5) -> list[dict[str, Any]]:
    """The rows (metadata dicts with ``position``) of ``group`` for one prepared ``sample``, in row order."""
    labels = sample_labels(sample)
    keys = batch.in_key_space  # images as cross-attention keys: no sequence position holds an image token
    if group in IMAGE_GROUPS:
        batch.require_sequence_images(f"position group {group!r}", "use group question, answer, text or all")
        rows = _image_rows(group, sample, batch, min_overlap)
    elif group == "question":
        rows = [_text_row(int(p)) for p in question_positions(tokenizer, batch, sample.question)]
    elif group == "answer":
        rows = [_text_row(batch.prompt_len - 1)]
    else:  # all / text: every position, image-grid ones as in "image"
        cells = {} if group == "text" or keys else {
            c["position"]: c for c in _image_rows("image", sample, batch, min_overlap)}
        grid = set() if group == "all" or keys else set(batch.image_positions().tolist())
        rows = [cells.get(p) or _text_row(p) for p in range(batch.seq_len) if p not in grid]
    ids = batch.input_ids[0]
    for k, row in enumerate(rows):
        if row["grid"] < 0:
            row.update(object_color=labels["color"] or NONE, object_shape=labels["shape"] or NONE)
        row.update(row=k, token=tokenizer.decode([int(ids[row["position"]])]), **labels)
    return rows


def _text_row(position: int) -> dict[str, Any]:
    return {"position": position, "grid": -1, "cell_row": -1, "cell_col": -1, "box": [], "overlap": 0.0,
            "object": -1}


def grid_positions(batch: Any) -> list[int]:
    """The sequence positions of every image-grid cell of ``batch`` (separators left out), in order."""
    return sorted(int(p) for geometry in batch.geometry for p in geometry.grid_positions().tolist())


def object_cells(batch: Any, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every image-grid cell of ``batch``: ``position``, ``grid``, ``cell_row``, ``cell_col``, ``box`` and
    ``shares`` (the share of the cell inside each of ``objects``' masks), the one home of "which object does this
    image token belong to".

    >>> object_cells(batch, sample.objects)[0]["shares"]                # doctest: +SKIP
    [0.0, 0.75]
    """
    cells = []
    for geometry in batch.geometry:
        for g, grid in enumerate(geometry.grids):
            rows, cols = grid.shape
            for r in range(rows):
                for c in range(cols):
                    box = grid.cell_box(r, c)
                    cells.append({"position": int(grid.positions[r, c]), "grid": g, "cell_row": r, "cell_col": c,
                                  "box": [float(v) for v in box],
                                  "shares": [cell_overlaps(obj["mask"], box) for obj in objects]})
    return cells


def _image_rows(group: str, sample: Any, batch: Any, min_overlap: float) -> list[dict[str, Any]]:
    objects = getattr(sample, "objects", None)
    if objects is None:
        if group == "object":
            raise InputError("position group 'object' needs ShapesVQA samples (object masks): use --group image, "
                             "question or answer on other data")
        objects = []
    evidence = _evidence(sample) if objects else None
    cells = object_cells(batch, objects)
    for cell in cells:
        shares = cell.pop("shares")
        best = int(np.argmax(shares)) if shares and max(shares) >= min_overlap else -1
        cell.update(overlap=shares[evidence] if evidence is not None else 0.0, object=best,
                    object_color=objects[best]["color"] if best >= 0 else NONE,
                    object_shape=objects[best]["shape"] if best >= 0 else NONE)
    if group == "image":
        return cells
    if evidence is None:
        return []
    chosen = [cell for cell in cells if cell["overlap"] >= min_overlap]
    if not chosen:  # a small object: the cell(s) it covers most
        top = max(cell["overlap"] for cell in cells)
        chosen = [cell for cell in cells if top > 0 and cell["overlap"] == top]
        for cell in chosen:
            cell.update(object=evidence, object_color=objects[evidence]["color"],
                        object_shape=objects[evidence]["shape"])
    return chosen


def sequence_positions(group: str, batch: Any) -> torch.Tensor:
    """The sequence positions of ``group`` ``all`` / ``image`` / ``text`` in ``batch`` (as :func:`group_rows`
    reads them, without labels), for edits that splice at a group's positions.

    >>> sequence_positions("all", batch).numel() == batch.seq_len    # doctest: +SKIP
    True
    """
    if group == "all":
        return torch.arange(batch.seq_len)
    image = batch.image_positions()
    if group == "image":
        return torch.tensor(grid_positions(batch), dtype=torch.long) if batch.geometry else image
    if group == "text":
        keep = torch.ones(batch.seq_len, dtype=torch.bool)
        keep[image] = False
        return torch.nonzero(keep).flatten()
    raise InputError(f"position group {group!r}: use all, image or text")
