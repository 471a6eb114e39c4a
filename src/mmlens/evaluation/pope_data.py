"""POPE's user data: a JSONL file of images with their objects, or of yes / no questions.

Object rows (POPE's own setting: the probes and the negatives are built from the annotations)::

    {"image": "images/kitchen.jpg", "objects": ["cup", "dining table", "person"]}

Question rows (the probes are given; see :mod:`mmlens.evaluation.data_file`, no mask or box needed)::

    {"image": "images/kitchen.jpg", "question": "is there a fork in the image?", "answer": "no"}

The first row decides the kind; every row must then be of that kind. Paths are relative to the file's folder.
Images are opened one at a time when they are probed.

>>> rows = read_pope_file("probes.jsonl", n=100)          # doctest: +SKIP
>>> rows.kind, len(rows)                                  # doctest: +SKIP
('objects', 100)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mmlens.errors import InputError
from mmlens.evaluation.data_file import _fail, _open_image, _resolve, read_data_file


@dataclass(frozen=True)
class PopeRow:
    """One row: its line, image path, and either its objects or its question and yes / no answer."""

    line: int
    image: Path
    objects: tuple[str, ...] = ()
    question: str = ""
    answer: str = ""


@dataclass
class PopeFile:
    """The checked rows of a POPE file (``kind``: ``"objects"`` or ``"questions"``)."""

    path: Path
    kind: str
    rows: list[PopeRow]

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, index: int) -> Image.Image:
        row = self.rows[index]
        return _open_image(self.path, row.line, row.image, "image")


def read_pope_file(path: str | os.PathLike, n: int | None = None) -> PopeFile:
    """Check the first ``n`` rows (all by default) of a POPE JSONL file; one-line errors name file and line."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"data file {str(path)!r} is a directory: pass the JSONL file inside it")
    if not path.is_file():
        raise InputError(f"data file {str(path)!r} not found: pass a JSONL file with image and objects (or "
                         "question and yes / no answer) per line")
    try:
        lines = [(i, raw) for i, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if raw.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot be read as UTF-8 text ({err.__class__.__name__}): pass a JSONL file") \
            from None
    try:
        first = json.loads(lines[0][1]) if lines else None
    except json.JSONDecodeError:
        first = None
    if not (isinstance(first, dict) and "objects" in first):
        data = read_data_file(path, regions=False)
        rows = [PopeRow(r.line, r.image, question=r.question, answer=r.answer.lower()) for r in data.rows[:n]]
        bad = next((r for r in rows if r.answer not in ("yes", "no")), None)
        if bad is not None:
            raise _fail(path, bad.line, f"answer {bad.answer!r} is not yes or no: POPE rows ask yes / no "
                                        "questions (or give the image's objects)")
        return PopeFile(path, "questions", rows)
    rows = []
    for line, raw in lines[:n]:
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise _fail(path, line, f"not valid JSON ({err.msg}): write one JSON object per line") from None
        objects = obj.get("objects") if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or not isinstance(objects, list) \
                or not objects or not all(isinstance(o, str) and o.strip() for o in objects):
            raise _fail(path, line, "each row needs \"image\" (a path) and \"objects\" (a non-empty list of object "
                                    "names), like the first row")
        image = _resolve(path, obj["image"])
        _open_image(path, line, image, "image")
        rows.append(PopeRow(line, image, objects=tuple(dict.fromkeys(o.strip().lower() for o in objects))))
    return PopeFile(path, "objects", rows)
