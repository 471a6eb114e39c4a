"""Inputs of a dataset run, addressed by index so that any shard of a run can be read on its own.

- ``None`` / ``"shapes"``: ShapesVQA (``seed``, at ``image_size``);
- a ``.jsonl`` file (``image`` or ``file_name``, ``question`` or ``prompt``, optional ``answer``; image paths
  relative to the file), or a folder holding one (an image folder with its ``metadata.jsonl``);
- a ``.parquet`` file, a folder of them, or a Hugging Face ``datasets`` dataset saved with ``save_to_disk``
  (its ``.arrow`` files): an image column (``image``: ``{"bytes", "path"}``, bytes or a path), a question
  column (``question`` / ``prompt`` / ``text``) and optionally ``answer`` (a string or a list: its first item).

A row that cannot be read raises :class:`~mmlens.errors.InputError` naming the file and the row; the engine
records it as a failure and goes on (or stops, with ``strict``).

>>> src = open_source(None, n=3, seed=0, image_size=32)
>>> len(src), src.sample(1).question == src.sample(1).question
(3, True)
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from mmlens.errors import InputError

QUESTION_KEYS = ("question", "prompt", "text")
IMAGE_KEYS = ("image", "file_name")


@dataclass(frozen=True, eq=False)
class RowSample:
    """One row of a user dataset: the fields every dataset job reads."""

    image: Image.Image
    question: str
    answer: str | None
    index: int
    where: str


class Source:
    """Samples by index: ``len(source)``, ``source.sample(i)``, ``source.where(i)``, ``source.spec``."""

    description: str = ""
    spec: dict[str, Any]

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def sample(self, index: int) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def where(self, index: int) -> str:  # pragma: no cover - interface
        raise NotImplementedError


class ShapesSource(Source):
    def __init__(self, n: int, seed: int, image_size: int, split: str = "standard") -> None:
        from mmlens.data.shapes_vqa import ShapesVQA

        self.n, self.dataset = int(n), ShapesVQA(image_size=int(image_size), seed=int(seed), split=split)
        named = "" if split == "standard" else f", split {split}"
        self.description = f"{self.n} ShapesVQA samples ({int(image_size)} px{named})"
        self.spec = {"kind": "shapes", "seed": int(seed), "image_size": int(image_size), "n": self.n}
        if split != "standard":
            self.spec["split"] = split

    def __len__(self) -> int:
        return self.n

    def sample(self, index: int) -> Any:
        return self.dataset.sample(index)

    def where(self, index: int) -> str:
        return f"ShapesVQA sample {index}"


class ListSource(Source):
    """Samples already in memory (ShapesVQA samples, dicts or ``(image, prompt[, answer])`` tuples); ``spec``
    carries a fingerprint of their images and texts, so that a run resumes only on the same list.

    >>> from PIL import Image
    >>> src = ListSource([(Image.new("RGB", (8, 8)), "what is this?", "red")])
    >>> len(src), src.sample(0).answer
    (1, 'red')
    """

    def __init__(self, samples: list[Any]) -> None:
        import hashlib

        from mmlens.model.samples import sample_fields

        self.items = list(samples)
        digest = hashlib.sha1()
        for item in self.items:
            image, prompt, answer = sample_fields(item)
            digest.update(f"{prompt}\0{answer}\0".encode())
            digest.update(image.tobytes() if hasattr(image, "tobytes") else repr(image).encode())
        self.description = f"{len(self.items)} samples"
        self.spec = {"kind": "list", "n": len(self.items), "sha1": digest.hexdigest()}

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, index: int) -> Any:
        from mmlens.model.samples import sample_fields

        item = self.items[index]
        if hasattr(item, "image") and hasattr(item, "question"):
            return item
        image, prompt, answer = sample_fields(item)
        return RowSample(image, prompt, answer, index, self.where(index))

    def where(self, index: int) -> str:
        return f"sample {index}"


class DataFileSource(Source):
    """The benchmark's data file (checked whole up front, see :mod:`mmlens.evaluation.data_file`)."""

    def __init__(self, data_file: Any, n: int) -> None:
        self.file, self.n = data_file, min(int(n), len(data_file))
        self.description = f"{self.n} rows of {data_file.path.name}"
        self.spec = {"kind": "benchmark-jsonl", "path": str(Path(data_file.path).resolve()), "n": self.n}

    def __len__(self) -> int:
        return self.n

    def sample(self, index: int) -> Any:
        return self.file.sample(index)

    def where(self, index: int) -> str:
        return f"{self.file.path}, line {self.file.rows[index].line}"


class JsonlSource(Source):
    """A JSONL file read row by row (byte offsets kept, not rows)."""

    def __init__(self, path: Path, n: int | None) -> None:
        self.path, self.offsets = path, []
        try:
            with open(path, "rb") as f:
                pos, number = 0, 0
                for raw in f:
                    number += 1
                    if raw.strip():
                        self.offsets.append((pos, number))
                    pos += len(raw)
                    if n is not None and len(self.offsets) >= n:
                        break
        except OSError as err:
            raise InputError(f"--data {str(path)!r} cannot be read ({err.strerror}): check its permissions") from None
        if not self.offsets:
            raise InputError(f"--data {str(path)!r} holds no rows: write one JSON object per line")
        self.description = f"{len(self.offsets)} rows of {path.name}"
        self.spec = {"kind": "jsonl", "path": str(path.resolve()), "n": len(self.offsets)}

    def __len__(self) -> int:
        return len(self.offsets)

    def where(self, index: int) -> str:
        return f"{self.path}, line {self.offsets[index][1]}"

    def sample(self, index: int) -> RowSample:
        where = self.where(index)
        with open(self.path, "rb") as f:
            f.seek(self.offsets[index][0])
            raw = f.readline()
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"{where}: not valid JSON ({err.__class__.__name__}): write one JSON object per "
                             "line") from None
        if not isinstance(obj, dict):
            raise InputError(f"{where}: not a JSON object: write {{\"image\": ..., \"question\": ...}}")
        image = _field(obj, IMAGE_KEYS, where)
        if not isinstance(image, str):
            raise InputError(f"{where}: the image must be a path string, got {image!r}")
        file = Path(image).expanduser()
        file = file if file.is_absolute() else self.path.parent / file
        return _row(obj, _open(file, where), index, where)


class ArrowSource(Source):
    """Parquet files or a ``datasets`` folder; one record batch in memory at a time."""

    def __init__(self, files: list[Path], kind: str, n: int | None, shown: Path) -> None:
        self.files, self.kind, self.shown = files, kind, shown
        self.counts = [self._rows(f) for f in files]
        total = sum(self.counts)
        if total == 0:
            raise InputError(f"--data {str(shown)!r} holds no rows: pass a dataset with at least one row")
        self.n = total if n is None else min(int(n), total)
        self.description = f"{self.n} rows of {shown.name}"
        self.spec = {"kind": kind, "path": str(shown.resolve()), "n": self.n}
        self._cache: tuple[int, Any] | None = None

    def _rows(self, file: Path) -> int:
        try:
            if self.kind == "parquet":
                import pyarrow.parquet as pq

                return pq.ParquetFile(file).metadata.num_rows
            return self._read(file).num_rows
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a broken file
            raise InputError(f"--data {str(file)!r} is not a readable {self.kind} file ({err.__class__.__name__}): "
                             "pass Parquet files or a folder written by datasets' save_to_disk") from None

    def _read(self, file: Path) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.kind == "parquet":
            return pq.read_table(file)
        with pa.memory_map(str(file)) as source:  # datasets writes the Arrow stream format
            return pa.ipc.open_stream(source).read_all()

    def __len__(self) -> int:
        return self.n

    def _locate(self, index: int) -> tuple[int, int]:
        for f, count in enumerate(self.counts):
            if index < count:
                return f, index
            index -= count
        raise IndexError(index)

    def where(self, index: int) -> str:
        f, row = self._locate(index)
        return f"{self.files[f]}, row {row}"

    def sample(self, index: int) -> RowSample:
        f, row = self._locate(index)
        if self._cache is None or self._cache[0] != f:  # one file's table at a time (memory-mapped for Arrow)
            self._cache = (f, self._read(self.files[f]))
        obj = self._cache[1].slice(row, 1).to_pylist()[0]
        where = self.where(index)
        image = _field(obj, IMAGE_KEYS, where)
        if isinstance(image, dict):
            image = image.get("bytes") or image.get("path")
        if isinstance(image, (bytes, bytearray)):
            return _row(obj, _open(io.BytesIO(image), where), index, where)
        if isinstance(image, str):
            file = Path(image)
            return _row(obj, _open(file if file.is_absolute() else self.shown / file, where), index, where)
        raise InputError(f"{where}: the image column holds {type(image).__name__}: store image bytes or a path")


def _field(obj: dict[str, Any], keys: tuple[str, ...], where: str) -> Any:
    for key in keys:
        if obj.get(key) is not None:
            return obj[key]
    raise InputError(f"{where}: no {' / '.join(keys)} field: each row needs an image and a question")


def _row(obj: dict[str, Any], image: Image.Image, index: int, where: str) -> RowSample:
    question = _field(obj, QUESTION_KEYS, where)
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"{where}: the question must be a non-empty string, got {question!r}")
    answer = obj.get("answer", obj.get("answers"))
    if isinstance(answer, list):
        answer = answer[0] if answer else None
    if answer is not None and (not isinstance(answer, str) or not answer.strip()):
        raise InputError(f"{where}: the answer must be a non-empty string when given, got {answer!r}")
    return RowSample(image, question.strip(), answer.strip() if answer else None, index, where)


def _open(file: Any, where: str) -> Image.Image:
    try:
        with Image.open(file) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"{where}: image {str(file)!r} not found: paths are relative to the data") from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{where}: the image is not readable ({err.__class__.__name__})") from None


def open_source(data: str | os.PathLike | None, n: int | None = None, seed: int = 0,
                image_size: int = 64) -> Source:
    """The source for ``--data`` (see the module docstring); a path that does not exist is one InputError line."""
    if data is None or str(data) == "shapes":
        if n is None:
            raise InputError("ShapesVQA needs a sample count: pass --n")
        return ShapesSource(n, seed, image_size)
    path = Path(data).expanduser()
    if not path.exists():
        raise InputError(f"--data {str(path)!r} does not exist: pass a .jsonl file, a folder of images with a "
                         "metadata.jsonl, Parquet files or a datasets folder (or leave it out for ShapesVQA)")
    if path.is_file():
        if path.suffix.lower() == ".parquet":
            return ArrowSource([path], "parquet", n, path)
        if path.suffix.lower() == ".arrow":
            return ArrowSource([path], "arrow", n, path)
        return JsonlSource(path, n)
    for pattern, kind in (("*.parquet", "parquet"), ("*.arrow", "arrow")):
        files = sorted(path.glob(pattern)) or sorted(path.glob(f"*/{pattern}"))
        if files:
            return ArrowSource(files, kind, n, path)
    jsonl = sorted(path.glob("*.jsonl"))
    if len(jsonl) == 1 or (path / "metadata.jsonl").is_file():
        return JsonlSource(path / "metadata.jsonl" if (path / "metadata.jsonl").is_file() else jsonl[0], n)
    raise InputError(f"--data {str(path)!r} holds no .parquet, .arrow or single .jsonl file: pass a dataset "
                     "folder, a data file, or an image folder with a metadata.jsonl")
