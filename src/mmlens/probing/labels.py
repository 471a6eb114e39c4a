"""What a probe predicts: a property from the collection's metadata (ShapesVQA: colour / shape of the object,
presence, location, question type, answer, or any metadata column) or a user labels file (CSV or JSONL with an
``index`` column naming the sample and a ``label`` column, or a column named like the property).

On image-token groups ``color`` / ``shape`` are the object under each token (``"none"`` on background); on
text groups, the evidence object's. Rows without a label (e.g. no evidence object) are left out.

>>> property_labels({"object_color": np.array(["red", "none"])}, "image", "color").tolist()
['red', 'none']
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from mmlens.errors import InputError

PROPERTIES = ("color", "shape", "present", "location", "question_type", "answer")
IMAGE_GROUPS = ("object", "image")
_CELL = {"color": "object_color", "shape": "object_shape"}


def property_column(group: str, prop: str) -> str:
    """The metadata column that holds ``prop`` for ``group``."""
    return _CELL.get(prop, prop) if group in IMAGE_GROUPS else prop


def property_labels(meta: dict[str, np.ndarray], group: str, prop: str) -> np.ndarray:
    """Per row: the property's label as a string, or None where the row has none."""
    column = property_column(group, prop)
    if column not in meta:
        known = ", ".join(PROPERTIES)
        raise InputError(f"unknown property {prop!r}: use one of {known}, a metadata column, or --labels FILE")
    values = meta[column]
    return np.asarray([None if v is None else str(v) for v in values.tolist()], dtype=object)


CONTROL_TYPES = ("object", "object+cell")


def control_types(meta: dict[str, np.ndarray], group: str, kind: str = "object") -> np.ndarray:
    """The control task's types per row: ``object``: the object's colour and shape (image groups; on the answer
    position the evidence object's), the token itself on the question (Hewitt & Liang's word types);
    ``object+cell``: the same with the token's grid cell (image groups; finer types, harder to memorise)."""
    if group == "question":
        return np.asarray([str(t) for t in meta["token"].tolist()], dtype=object)
    color, shape = (meta[property_column(group, p)] for p in ("color", "shape"))
    types = [f"{c} {s}" for c, s in zip(color.tolist(), shape.tolist())]
    if kind == "object+cell" and group in IMAGE_GROUPS:
        types = [f"{t} @{r},{c}" for t, r, c in zip(types, meta["cell_row"].tolist(), meta["cell_col"].tolist())]
    return np.asarray(types, dtype=object)


def read_labels_file(path: str | os.PathLike, n: int, prop: str = "label") -> dict[int, str]:
    """``{sample index: label}`` from a CSV / JSONL file; a row naming no sample of the ``n``-sample dataset, a
    repeated index or a missing label is one line naming the file and row."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"--labels {str(path)!r} does not exist: pass a CSV or JSONL file with index,label rows")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"--labels {str(path)!r} cannot be read ({err.__class__.__name__}): pass a UTF-8 text "
                         "file") from None
    rows = _jsonl(path, text) if path.suffix.lower() in (".jsonl", ".json") else _csv(path, text)
    out: dict[int, str] = {}
    bad: list[str] = []
    for where, row in rows:
        label = row.get("label", row.get(prop))
        raw = row.get("index", row.get("sample"))
        try:
            index = int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InputError(f"{where}: no sample index ({raw!r}): each row needs an integer 'index' column and "
                             "a 'label'") from None
        if label is None or str(label).strip() == "":
            raise InputError(f"{where}: no label: give each row a 'label' (or {prop!r}) value")
        if index in out:
            raise InputError(f"{where}: sample {index} is labelled twice: keep one row per sample")
        if not 0 <= index < n:
            bad.append(str(index))
        out[index] = str(label).strip()
    if bad:
        raise InputError(f"--labels {str(path)!r}: {len(bad)} of {len(out)} rows name samples the dataset does not "
                         f"have (index {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}; the dataset has samples "
                         f"0..{n - 1}): label the same samples you probe, or raise --n")
    if not out:
        raise InputError(f"--labels {str(path)!r} holds no rows: write index,label rows")
    return out


def _csv(path: Path, text: str) -> list[tuple[str, dict[str, str]]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "index" not in [f.strip() for f in reader.fieldnames]:
        raise InputError(f"--labels {str(path)!r} has no 'index' column in its header: write 'index,label' first")
    return [(f"{path}, line {k + 2}", {(key or "").strip(): v for key, v in row.items()}) for k, row in enumerate(reader)]


def _jsonl(path: Path, text: str) -> list[tuple[str, dict]]:
    out = []
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}, line {k}: not valid JSON: write one {{\"index\": ..., \"label\": ...}} per "
                             "line") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}, line {k}: not a JSON object: write {{\"index\": ..., \"label\": ...}}")
        out.append((f"{path}, line {k}", obj))
    return out


def file_labels(index: np.ndarray, mapping: dict[int, str]) -> np.ndarray:
    """Per row: its sample's label from ``mapping`` (None for an unlabelled sample)."""
    return np.asarray([mapping.get(int(i)) for i in np.asarray(index).tolist()], dtype=object)
