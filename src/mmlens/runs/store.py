"""A run's folder: ``manifest.json`` (config, versions, seed, done shards) and the Parquet shards it lists.

A shard is written whole (temporary name, then renamed) and only then recorded in the manifest, which is itself
rewritten atomically: after a crash the manifest names exactly the shards that are complete, and a re-run
redoes only the others. Rows are read back shard by shard, so nothing holds every result in memory.

>>> import tempfile, pyarrow as pa
>>> store = RunStore.open(tempfile.mkdtemp(), {"job": "demo"}, n=4, shard_size=2, seed=0)
>>> store.write_shard(0, pa.table({"index": [0, 1]}))
>>> store.todo()
[1]
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmlens.errors import InputError
from mmlens.util.io import atomic_write, check_output_folder, read_json

FORMAT, FORMAT_VERSION = "mmlens.run", 1
MANIFEST = "manifest.json"
SHARDS = "shards"


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` sample ranges of the shards of an ``n``-sample run."""
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


def _versions() -> dict[str, str]:
    from mmlens.explain import versions

    out = versions()
    try:
        import pyarrow

        out["pyarrow"] = pyarrow.__version__
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pass
    return out


class RunStore:
    """The folder of one run. :meth:`open` creates it or resumes it (same config only)."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder, self.manifest = folder, manifest

    # -- opening ----------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | os.PathLike, config: dict[str, Any], n: int, shard_size: int, seed: int,
             what: str = "--out") -> RunStore:
        """Create the run in ``folder`` or resume the run already there; a different run there is an error."""
        folder = Path(folder)
        check_output_folder(folder, what)
        config = json.loads(json.dumps(config, sort_keys=True, default=str))
        wanted = {"config": config, "n": int(n), "shard_size": int(shard_size), "seed": int(seed)}
        path = folder / MANIFEST
        if path.is_file():
            manifest = _read_manifest(path)
            old = {k: manifest.get(k) for k in wanted}
            if old != wanted:
                raise InputError(f"{what} {str(folder)!r} holds a different run ({_difference(old, wanted)}): choose "
                                 "another folder, or delete that one to start again")
            return cls(folder, manifest)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **wanted, "versions": _versions(),
                    "shards": {}, "complete": False}
        (folder / SHARDS).mkdir(parents=True, exist_ok=True)
        store = cls(folder, manifest)
        store._save()
        return store

    # -- state ------------------------------------------------------------------------------------------------
    @property
    def ranges(self) -> list[tuple[int, int]]:
        return shard_ranges(self.manifest["n"], self.manifest["shard_size"])

    def todo(self) -> list[int]:
        """Shards not yet complete, in order."""
        return [k for k in range(len(self.ranges)) if str(k) not in self.manifest["shards"]]

    def done_samples(self) -> int:
        return sum(self.ranges[int(k)][1] - self.ranges[int(k)][0] for k in self.manifest["shards"])

    def shard_path(self, k: int, suffix: str = ".parquet") -> Path:
        return self.folder / SHARDS / f"part-{k:05d}{suffix}"

    # -- writing ----------------------------------------------------------------------------------------------
    def write_shard(self, k: int, table: Any, tensors: bytes | None = None,
                    failures: list[dict[str, Any]] | None = None) -> None:
        """Write shard ``k`` (a pyarrow table, and optionally its tensors as safetensors bytes), then record it."""
        import pyarrow.parquet as pq

        if tensors:
            atomic_write(self.shard_path(k, ".safetensors"), lambda tmp: tmp.write_bytes(tensors))
        atomic_write(self.shard_path(k), lambda tmp: pq.write_table(table, str(tmp)))
        self.manifest["shards"][str(k)] = {"rows": int(table.num_rows), "samples": list(self.ranges[k]),
                                           "tensors": bool(tensors), "failures": list(failures or [])}
        self._save()

    def mark_complete(self) -> None:
        self.manifest["complete"] = True
        self._save()

    def _save(self) -> None:
        text = json.dumps(self.manifest, indent=1, sort_keys=True)
        atomic_write(self.folder / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    # -- reading ----------------------------------------------------------------------------------------------
    def failures(self) -> list[dict[str, Any]]:
        """Rows that could not be read, in sample order."""
        out = [f for k in sorted(self.manifest["shards"], key=int) for f in self.manifest["shards"][k]["failures"]]
        return sorted(out, key=lambda f: f["index"])

    def iter_tables(self, columns: list[str] | None = None) -> Iterator[Any]:
        """The done shards' tables in sample order, one at a time."""
        import pyarrow.parquet as pq

        for k in sorted(self.manifest["shards"], key=int):
            yield pq.read_table(self.shard_path(int(k)), columns=columns)

    def iter_tables_of(self, k: int, columns: list[str] | None = None) -> list[dict[str, Any]]:
        """The rows of shard ``k`` as dicts."""
        import pyarrow.parquet as pq

        return pq.read_table(self.shard_path(k), columns=columns).to_pylist()

    def iter_rows(self, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every row as a dict, in sample order, one shard in memory at a time."""
        for table in self.iter_tables(columns):
            yield from table.to_pylist()


def _read_manifest(path: Path) -> dict[str, Any]:
    return read_json(path, "mmlens run manifest", "delete the folder to start again, or choose another one",
                     format=FORMAT, version=FORMAT_VERSION, format_fix="choose another output folder")


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first setting that differs, as ``key 'a' vs 'b'`` (the folder's value first)."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    for key in sorted(set(flat_old) | set(flat_new)):
        if flat_old.get(key) != flat_new.get(key):
            return f"{key} {_short(flat_old.get(key))} there, {_short(flat_new.get(key))} now"
    return "different settings"  # pragma: no cover


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = k if prefix in ("", "config") else f"{prefix}.{k}"
        out.update(_flatten(v, name) if isinstance(v, dict) and v else {name: v})
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def temporary_folder() -> tempfile.TemporaryDirectory:
    """A folder for a run whose shards are not kept (removed with the object)."""
    return tempfile.TemporaryDirectory(prefix="mmlens-run-")


def _done_shards(folder: Path) -> int:
    try:
        return len(json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("shards", {}))
    except (OSError, ValueError, AttributeError):
        return 0


@contextmanager
def cleanup_on_failure(run_folder: str | os.PathLike, root: str | os.PathLike | None = None) -> Iterator[None]:
    """A run that fails before its first shard is complete leaves nothing behind: its ``run_folder`` is removed,
    and so is the folder this call's run created on the way (``root`` and its missing parents)."""
    run_folder = Path(run_folder)
    root = Path(root) if root is not None else run_folder
    missing = [p for p in (root, *root.parents) if not p.exists()]
    created = missing[-1] if missing else None
    existed = run_folder.exists()
    try:
        yield
    except BaseException:
        if _done_shards(run_folder) == 0:
            if not existed:
                shutil.rmtree(run_folder, ignore_errors=True)
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
        raise
