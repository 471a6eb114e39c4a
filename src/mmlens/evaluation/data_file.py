"""User benchmark data: a JSONL file of images, questions, answers and evidence regions.

One JSON object per line (blank lines are skipped)::

    {"image": "images/cat.png", "question": "what is on the mat?", "answer": "cat", "mask": "masks/cat.png"}
    {"image": "images/dog.jpg", "question": "what animal is this?", "answer": "dog", "box": [12, 30, 80, 96]}

- ``image``: path to an image, relative to the JSONL file's folder (or absolute);
- ``question``, ``answer``: non-empty strings; the answer is teacher-forced;
- ``mask``: path to a PNG of the image's size, non-zero pixels = evidence; or ``box``: ``[x0, y0, x1, y1]`` in
  pixels with exclusive ends (``0 <= x0 < x1 <= width``, ``0 <= y0 < y1 <= height``). Readers that need no
  evidence region (``read_data_file(path, regions=False)``, e.g. POPE's yes / no probes) accept rows
  without one: their evidence is then the whole image;
- ``model_evidence`` (optional): the pixels the *model* uses for its answer (a PNG path or a box, as for
  ``mask``), when that is known, e.g. a planted trigger. ``mmlens benchmark --suite planted --data FILE`` scores
  maps against it and needs it on every row (``read_data_file(path, model_evidence=True)``).

:func:`read_data_file` checks the whole file up front (every image and mask is decoded once) and raises a
one-line :class:`~mmlens.errors.InputError` naming the file and the line; :class:`DataFile` then yields the
samples one at a time, loading each image only when it is reached (memory does not grow with the file).

>>> rows = read_data_file("data.jsonl")                     # doctest: +SKIP
>>> sample = next(iter(rows)); sample.mask.shape, sample.evidence   # doctest: +SKIP
((96, 128), 'object')
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mmlens.errors import InputError

REQUIRED = ("image", "question", "answer")


@dataclass(frozen=True, eq=False)
class DataSample:
    """One row of a data file, loaded: the fields the benchmark reads from a ShapesVQA sample too."""

    image: Image.Image
    question: str
    answer: str
    mask: np.ndarray = field(repr=False)
    box: tuple[int, int, int, int]
    index: int
    line: int
    evidence: str = "object"
    question_type: str = "user"
    model_evidence: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DataRow:
    """One checked row: paths and the box; the image and mask are read when the row is loaded."""

    line: int
    image: Path
    question: str
    answer: str
    mask: Path | None
    box: tuple[int, int, int, int] | None
    model_mask: Path | None = None
    model_box: tuple[int, int, int, int] | None = None


class DataFile:
    """The checked rows of a data file; iterating loads one :class:`DataSample` at a time."""

    def __init__(self, path: Path, rows: list[DataRow]) -> None:
        self.path, self.rows = path, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"DataFile({str(self.path)!r}, rows={len(self.rows)})"

    def sample(self, index: int) -> DataSample:
        row = self.rows[index]
        image = _open_image(self.path, row.line, row.image, "image")
        w, h = image.size
        if row.mask is None and row.box is None:  # no region (regions=False): the whole image
            box, mask = (0, 0, w, h), np.ones((h, w), dtype=bool)
            return DataSample(image=image, question=row.question, answer=row.answer, mask=mask, box=box,
                              index=index, line=row.line, evidence="image")
        model = (_open_mask(self.path, row.line, row.model_mask, (w, h)) if row.model_mask is not None else
                 _box_mask(row.model_box, (w, h)) if row.model_box is not None else None)
        if row.mask is not None:
            mask = _open_mask(self.path, row.line, row.mask, (w, h))
            ys, xs = np.nonzero(mask)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        else:
            assert row.box is not None
            box = row.box
            mask = _box_mask(box, (w, h))
        return DataSample(image=image, question=row.question, answer=row.answer, mask=mask, box=box,
                          index=index, line=row.line, model_evidence=model)

    def samples(self, n: int | None = None) -> Iterator[DataSample]:
        """The first ``n`` samples (all by default), loaded one at a time."""
        for i in range(len(self.rows) if n is None else min(n, len(self.rows))):
            yield self.sample(i)

    def __iter__(self) -> Iterator[DataSample]:
        return self.samples()


def read_data_file(path: str | os.PathLike, regions: bool = True, model_evidence: bool = False) -> DataFile:
    """Check every row of the JSONL data file ``path`` (see the module docstring) and return its rows.

    ``regions=False``: a row may omit ``mask`` / ``box`` (its evidence is then the whole image).
    ``model_evidence=True``: every row must carry ``model_evidence`` (scoring against the model's evidence)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"data file {str(path)!r} is a directory: pass the JSONL file inside it (one sample per "
                         "line with image, question, answer and mask or box)")
    if not path.is_file():
        raise InputError(f"data file {str(path)!r} not found: pass a JSONL file with image, question, answer "
                         "and mask or box per line")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot be read as UTF-8 text ({err.__class__.__name__}): pass a JSONL "
                         "file") from None
    rows = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            rows.append(_check_row(path, number, raw, regions, model_evidence))
    if not rows:
        raise InputError(f"{path}: the file holds no rows: write one JSON object per line")
    return DataFile(path, rows)


def _fail(path: Path, line: int, message: str) -> InputError:
    return InputError(f"{path}, line {line}: {message}")


def _check_row(path: Path, line: int, raw: str, regions: bool = True, model_evidence: bool = False) -> DataRow:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as err:
        raise _fail(path, line, f"not valid JSON ({err.msg}): write one JSON object per line") from None
    if not isinstance(obj, dict):
        raise _fail(path, line, "not a JSON object: write {\"image\": ..., \"question\": ..., \"answer\": ..., "
                                "\"mask\" or \"box\": ...}")
    missing = [k for k in REQUIRED if k not in obj]
    if regions and "mask" not in obj and "box" not in obj:
        missing.append("mask or box")
    if missing:
        raise _fail(path, line, f"missing field(s) {', '.join(missing)}: each row needs image, question, answer "
                                "and a mask or a box")
    if "mask" in obj and "box" in obj:
        raise _fail(path, line, "both mask and box given: give one evidence region")
    for key in REQUIRED:
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise _fail(path, line, f"field {key!r} must be a non-empty string, got {obj[key]!r}")
    image_path = _resolve(path, obj["image"])
    image = _open_image(path, line, image_path, "image")
    box, mask_path = None, None
    if "mask" in obj:
        if not isinstance(obj["mask"], str) or not obj["mask"].strip():
            raise _fail(path, line, f"field 'mask' must be a path to a PNG, got {obj['mask']!r}")
        mask_path = _resolve(path, obj["mask"])
        _open_mask(path, line, mask_path, image.size)
    elif "box" in obj:
        box = _check_box(path, line, obj["box"], image.size)
    model_mask, model_box = _model_evidence(path, line, obj, image.size, model_evidence)
    return DataRow(line, image_path, obj["question"].strip(), obj["answer"].strip(), mask_path, box, model_mask,
                   model_box)


def _model_evidence(path: Path, line: int, obj: dict, size: tuple[int, int],
                    required: bool) -> tuple[Path | None, tuple[int, int, int, int] | None]:
    """The row's ``model_evidence``: a mask PNG path or a box (checked now), or neither."""
    value = obj.get("model_evidence")
    if value is None:
        if required:
            raise _fail(path, line, "no model_evidence: scoring against the model's evidence needs the pixels the "
                                    "model uses on every row; add \"model_evidence\": \"masks/row.png\" (or a "
                                    "[x0, y0, x1, y1] box), or run the default suite")
        return None, None
    if isinstance(value, list):
        return None, _check_box(path, line, value, size)
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, line, f"field 'model_evidence' must be a path to a PNG or a box, got {value!r}")
    file = _resolve(path, value)
    _open_mask(path, line, file, size)
    return file, None


def _box_mask(box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), dtype=bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    return mask


def _resolve(path: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else path.parent / p


def _open_image(path: Path, line: int, file: Path, what: str) -> Image.Image:
    try:
        with Image.open(file) as im:
            im.load()
            return im.convert("RGB") if what == "image" else im.copy()
    except FileNotFoundError:
        raise _fail(path, line, f"{what} {str(file)!r} not found: paths are relative to the data file's "
                                "folder") from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise _fail(path, line, f"{what} {str(file)!r} is not a readable image ({err.__class__.__name__})") from None


def _open_mask(path: Path, line: int, file: Path, size: tuple[int, int]) -> np.ndarray:
    im = _open_image(path, line, file, "mask")
    if im.size != size:
        raise _fail(path, line, f"mask {str(file)!r} is {im.size[0]}x{im.size[1]} but its image is "
                                f"{size[0]}x{size[1]}: pass a mask of the image's size")
    mask = np.asarray(im.convert("L")) != 0
    if not mask.any():
        raise _fail(path, line, f"mask {str(file)!r} is empty (no non-zero pixel): mark the evidence with "
                                "non-zero pixels")
    return mask


def _check_box(path: Path, line: int, box: object, size: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = size
    ok = (isinstance(box, list) and len(box) == 4
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box))
    if not ok:
        raise _fail(path, line, f"box {box!r} is not [x0, y0, x1, y1]: pass four pixel coordinates")
    x0, y0, x1, y1 = (round(v) for v in box)  # type: ignore[union-attr]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise _fail(path, line, f"box {box} lies outside the {w}x{h} image or is empty: pass "
                                f"0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}")
    return x0, y0, x1, y1
