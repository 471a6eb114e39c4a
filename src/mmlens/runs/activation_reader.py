"""Read an activation collection (:func:`~mmlens.runs.activations.collect_activations`) back in batches of
``(activations, metadata)``, one shard in memory at a time, for probes and sparse autoencoders.

>>> reader = ActivationReader("acts/")                                           # doctest: +SKIP
>>> reader.points, reader.width("lm.blocks.0.resid_post"), reader.n_rows          # doctest: +SKIP
(['lm.blocks.0.resid_post', ...], 128, 2154)
>>> for x, meta in reader.batches("lm.blocks.0.resid_post", batch_size=256, shuffle=True, seed=0):  # doctest: +SKIP
...     train_step(x)                       # x: float32 (256, 128); meta: {"index": ..., "object_color": ...}
>>> x, meta = reader.load("lm.blocks.0.resid_post", columns=["index", "object_color"])             # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.errors import InputError
from mmlens.runs.store import MANIFEST, RunStore, _read_manifest


class ActivationReader:
    """A finished (or partly finished) activation-collection folder: its points, widths and rows."""

    def __init__(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise InputError(f"{str(folder)!r} holds no activation collection: pass the --out folder of a "
                             "collect_activations run")
        manifest = _read_manifest(folder / MANIFEST)
        if manifest["config"].get("job") != "activations":
            raise InputError(f"{str(folder)!r} holds a {manifest['config'].get('job')!r} run, not an activation "
                             "collection: pass the folder collect_activations wrote")
        self.store = RunStore(folder, manifest)
        self.config: dict[str, Any] = manifest["config"]
        self.points: list[str] = list(self.config["points"])
        self.group: str = self.config["group"]
        self._shards = sorted((int(k) for k in manifest["shards"]), key=int)
        self._widths: dict[str, int] = {}

    @property
    def folder(self) -> Path:
        return self.store.folder

    @property
    def n_rows(self) -> int:
        return sum(self.store.manifest["shards"][str(k)]["rows"] for k in self._shards)

    def check_point(self, point: str) -> str:
        if point not in self.points:
            raise InputError(f"point {point!r} was not collected in {str(self.folder)!r}: use one of "
                             f"{', '.join(self.points)}")
        return point

    def width(self, point: str) -> int:
        """The activation width of ``point`` (read from the first shard that holds rows)."""
        self.check_point(point)
        if point not in self._widths:
            for x, _ in self.batches(point, batch_size=1):
                self._widths[point] = int(x.shape[1])
                break
            else:
                raise InputError(f"{str(self.folder)!r} holds no rows: collect more samples")
        return self._widths[point]

    # -- streaming --------------------------------------------------------------------------------------------
    def shards(self, point: str, columns: list[str] | None = None) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Per shard: its activations of ``point`` (float32, one row per metadata row) and its metadata columns."""
        import pyarrow.parquet as pq
        from safetensors import safe_open

        self.check_point(point)
        for k in self._shards:
            table = pq.read_table(self.store.shard_path(k), columns=_with_keys(columns))
            if table.num_rows == 0:
                continue
            index, row = table.column("index").to_numpy(), table.column("row").to_numpy()
            starts = np.flatnonzero(row == 0)
            with safe_open(str(self.store.shard_path(k, ".safetensors")), framework="numpy") as f:
                parts = [f.get_tensor(f"{int(index[s])}/{point}") for s in starts]
            x = np.concatenate(parts).astype(np.float32, copy=False)
            if x.shape[0] != table.num_rows:  # pragma: no cover - written together by the job
                raise InputError(f"shard {k} of {str(self.folder)!r} is inconsistent: collect it again")
            meta = {name: _column(table, name) for name in table.column_names if columns is None or name in columns}
            yield x, meta

    def batches(self, point: str, batch_size: int = 1024, columns: list[str] | None = None, shuffle: bool = False,
                seed: int = 0, rows: Any = None) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Batches of ``batch_size`` rows ``(x, meta)`` across shards (the last one may be smaller).

        ``shuffle``: shards in a seeded random order, rows shuffled within each pair of consecutive shards (an
        approximate shuffle that keeps memory at two shards). ``rows``: a function ``meta -> bool mask`` keeping
        some rows (e.g. the training split: ``lambda m: np.isin(m["index"], train)``)."""
        rng = np.random.default_rng(seed)
        order = list(self._shards)
        if shuffle:
            rng.shuffle(order)
        buf_x: list[np.ndarray] = []
        buf_m: list[dict[str, np.ndarray]] = []
        held = 0
        for x, meta in self._ordered(point, columns, order):
            if rows is not None:
                keep = np.asarray(rows(meta), dtype=bool)
                x, meta = x[keep], {k: v[keep] for k, v in meta.items()}
            buf_x.append(x)
            buf_m.append(meta)
            held += len(x)
            if held >= batch_size * 2 or not shuffle:
                x_all, m_all = _join(buf_x, buf_m)
                if shuffle:
                    perm = rng.permutation(len(x_all))
                    x_all, m_all = x_all[perm], {k: v[perm] for k, v in m_all.items()}
                full = (len(x_all) // batch_size) * batch_size
                for s in range(0, full, batch_size):
                    yield x_all[s:s + batch_size], {k: v[s:s + batch_size] for k, v in m_all.items()}
                buf_x, buf_m = [x_all[full:]], [{k: v[full:] for k, v in m_all.items()}]
                held = len(x_all) - full
        if held:
            x_all, m_all = _join(buf_x, buf_m)
            yield x_all, m_all

    def _ordered(self, point: str, columns: list[str] | None, order: list[int]) -> Iterator[Any]:
        saved, self._shards = self._shards, order
        try:
            yield from self.shards(point, columns)
        finally:
            self._shards = saved

    def load(self, point: str, columns: list[str] | None = None, rows: Any = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Every (kept) row of ``point`` at once: ``(x (n, width) float32, {column: (n,) array})``."""
        xs, metas = [], []
        for x, meta in self.shards(point, columns):
            if rows is not None:
                keep = np.asarray(rows(meta), dtype=bool)
                x, meta = x[keep], {k: v[keep] for k, v in meta.items()}
            xs.append(x)
            metas.append(meta)
        if not xs:
            raise InputError(f"{str(self.folder)!r} holds no rows for group {self.group!r}: collect more samples")
        return _join(xs, metas)

    def metadata(self, columns: list[str] | None = None) -> dict[str, np.ndarray]:
        """Every row's metadata (no activations)."""
        parts = [{n: _column(t, n) for n in t.column_names} for t in self.store.iter_tables(columns)]
        if not parts:
            return {}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _with_keys(columns: list[str] | None) -> list[str] | None:
    return None if columns is None else list(dict.fromkeys(["index", "row", *columns]))


def _column(table: Any, name: str) -> np.ndarray:
    col = table.column(name)
    import pyarrow as pa

    if pa.types.is_string(col.type) or pa.types.is_boolean(col.type) and col.null_count:
        return np.asarray(col.to_pylist(), dtype=object)
    return col.to_numpy(zero_copy_only=False)


def _join(xs: list[np.ndarray], metas: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    if len(xs) == 1:
        return xs[0], metas[0]
    return np.concatenate(xs), {k: np.concatenate([m[k] for m in metas]) for k in metas[0]}
