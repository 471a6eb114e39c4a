"""``mmlens probe``: collect activations (a dataset run), then probe a property at every collected hook point,
over seeded splits by image, with the control task, optionally on a randomised copy of the model too.

The output folder holds ``activations/`` (the collection, resumable; ``activations-randomised/`` for the
baseline), ``probes.json``, ``probes.safetensors`` and ``layer_curve.png``.

>>> r = run_probes("demo", "lm.blocks.*.resid_post", "object", "color", n=300, out="probe-out")   # doctest: +SKIP
>>> r.best("logistic")["accuracy"]                                                                # doctest: +SKIP
0.99
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.errors import InputError
from mmlens.model.positions import GROUPS
from mmlens.probing.fit import KINDS
from mmlens.probing.labels import CONTROL_TYPES, control_types, file_labels, property_labels, read_labels_file
from mmlens.probing.result import ProbeResult
from mmlens.probing.splits import check_classes, split_by_image
from mmlens.probing.train import pool_by_sample, probe_point
from mmlens.runs.activation_reader import ActivationReader
from mmlens.runs.activations import collect_activations
from mmlens.util.io import check_output_folder
from mmlens.util.options import check_choice, check_int

POOLS = ("token", "mean")
MAX_SEEDS = 100


def check_kinds(kinds: str | Sequence[str]) -> list[str]:
    items = [k.strip() for k in kinds.split(",")] if isinstance(kinds, str) else list(kinds)
    for k in items:
        check_choice("probe kind", k, KINDS)
    if not items:
        raise InputError(f"no probe kind given: pass some of {', '.join(KINDS)}")
    return list(dict.fromkeys(items))


def run_probes(model: Any, points: str = "lm.blocks.*.resid_post", group: str = "object", prop: str = "color",
               n: int = 300, out: str | os.PathLike = "probes", *, data: Any = None, seed: int = 0,
               labels: str | os.PathLike | None = None, kinds: str | Sequence[str] = ("logistic", "ridge", "mlp"),
               seeds: int = 5, control: bool = True, control_type: str = "object", randomised: bool = False,
               pool: str = "token", select: str = "accuracy",
               dtype: str = "float32", min_overlap: float = 0.5, batch_size: int = 8,
               show_progress: bool | None = None, command: str | None = None) -> ProbeResult:
    """Probe ``prop`` (a metadata property or, with ``labels``, a user labels file) at ``points`` / ``group``
    over ``n`` samples with ``seeds`` seeded splits by image; results saved in ``out`` and returned."""
    check_choice("group", group, GROUPS)
    check_choice("pool", pool, POOLS)
    check_choice("select", select, ("accuracy", "selectivity"))
    check_choice("control_type", control_type, CONTROL_TYPES)
    kinds = check_kinds(kinds)
    seeds = check_int("seeds", seeds, 1, MAX_SEEDS)
    from mmlens.util.limits import MAX_SAMPLES

    n = check_int("n", n, 3, MAX_SAMPLES)
    out = check_output_folder(out, "--out")
    mapping = read_labels_file(labels, n, prop) if labels is not None else None  # checked before the model loads
    subject = model
    if isinstance(model, str):
        from mmlens.model.loading import load

        subject = load(model)
    common = {"data": data, "n": n, "seed": seed, "dtype": dtype, "min_overlap": min_overlap,
              "batch_size": batch_size, "show_progress": show_progress}
    collect_activations(subject, points, group, Path(out) / "activations", **common)
    reader = ActivationReader(Path(out) / "activations")
    result = ProbeResult(prop if mapping is None else f"{prop} (labels file)", group, [], reader.points)
    data_for = {p: _rows(reader, p, group, prop, mapping, pool, control_type) for p in reader.points}
    _, y0, idx0, _ = data_for[reader.points[0]]
    result.classes = [str(c) for c in check_classes(y0, f"property {prop!r} on {group} tokens")]
    split_by_image(idx0, 0)  # enough images for a split: one line before any fit
    models = ["trained", "randomised"] if randomised else ["trained"]
    from mmlens.util.progress import progress_bar

    with progress_bar(len(reader.points) * seeds * len(kinds) * len(models), "probes", show=show_progress,
                      rate=True) as bar:
        _fit_all(result, data_for, kinds, seeds, control, "trained", bar.update, select)
        if randomised:
            rreader = _randomised_collection(subject, points, group, Path(out) / "activations-randomised", common,
                                             seed)
            rdata = {p: _rows(rreader, p, group, prop, mapping, pool, control_type) for p in rreader.points}
            _fit_all(result, rdata, kinds, seeds, control, "randomised", bar.update, select)
            _transfer(result, rdata, kinds, seeds)
    values, counts = np.unique(y0, return_counts=True)
    result.info.update(model=getattr(subject, "model_id", str(model)), n_samples=n, data_seed=seed,
                       rows=len(y0), images=len(np.unique(idx0)), seeds=list(range(seeds)), pool=pool,
                       class_counts={str(v): int(c) for v, c in zip(values, counts)}, control=bool(control),
                       control_type=control_type, select=select,
                       min_overlap=min_overlap, command=command, splits="60/20/20 by image")
    result.save(out)
    return result


def _rows(reader: ActivationReader, point: str, group: str, prop: str, mapping: dict[int, str] | None,
          pool: str, control_type: str = "object") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, labels, sample index, control types)`` of the rows that carry a label."""
    x, meta = reader.load(point)
    if pool == "mean":
        x, meta = pool_by_sample(x, meta)
    y = file_labels(meta["index"], mapping) if mapping is not None else property_labels(meta, group, prop)
    keep = np.asarray([v is not None for v in y.tolist()], dtype=bool)
    if mapping is not None and not keep.any():
        raise InputError("no collected row belongs to a labelled sample: the labels file's indices must name the "
                         "probed samples (0..n-1)")
    types = control_types(meta, group, control_type)
    return x[keep], y[keep].astype(str), np.asarray(meta["index"])[keep], types[keep]


def _fit_all(result: ProbeResult, data: dict[str, tuple], kinds: list[str], seeds: int, control: bool, model: str,
             tick: Any, select: str = "accuracy") -> None:
    for point, (x, y, index, types) in data.items():
        rows, weights, classes = probe_point(x, y, index, types if control else None, kinds, range(seeds), point,
                                             model, tick, select)
        result.rows += rows
        result.weights.update(weights)
        result.info.setdefault("fit_classes", {}).update(classes)


def _transfer(result: ProbeResult, data: dict[str, tuple], kinds: list[str], seeds: int) -> None:
    """The trained model's linear probes applied to the randomised model's test rows (same images, same splits)."""
    for row in result.rows:
        if row["model"] != "randomised" or row["kind"] not in ("logistic", "ridge"):
            continue
        x, y, index, _ = data[row["point"]]
        row["transfer"] = []
        for seed in range(seeds):
            test = split_by_image(index, seed)[2]
            pred = result.predict(x[test], row["point"], row["kind"], seed, "trained")
            row["transfer"].append(float(np.mean(pred == y[test])))


def _randomised_collection(subject: Any, points: str, group: str, folder: Path, common: dict[str, Any],
                           seed: int) -> ActivationReader:
    """The same collection on a fully randomised copy of the weights (every block of the randomisation cascade,
    see :mod:`mmlens.evaluation.metrics.randomisation`); the weights are restored afterwards."""
    from mmlens.evaluation.metrics.randomisation import cascade_blocks, randomise_block, restored_weights

    with restored_weights(subject.model) as saved:
        for step, (_, block) in enumerate(cascade_blocks(subject)):
            randomise_block(block, saved, seed * 1_000_003 + step)
        collect_activations(subject, points, group, folder, tag=f"randomised weights, seed {seed}", **common)
    return ActivationReader(folder)
