"""``ProbeResult``: probe accuracy, control accuracy and selectivity per hook point (layer) x probe kind, over
seeded splits; saved as ``probes.json`` + ``probes.safetensors`` (the linear probes' weights) + a layer-curve PNG.

>>> r = ProbeResult("color", "object", ["red", "blue"], ["lm.blocks.0.resid_post"], rows=[
...     {"model": "trained", "point": "lm.blocks.0.resid_post", "kind": "logistic", "accuracy": [1.0, 0.9],
...      "control": [0.5, 0.6], "param": [1.0, 1.0]}])
>>> r.summary()[0]["selectivity"]
0.4
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.errors import InputError
from mmlens.util.io import atomic_write, check_output_folder, read_json

FORMAT, FORMAT_VERSION = "mmlens.probes", 1
JSON, WEIGHTS, PLOT = "probes.json", "probes.safetensors", "layer_curve.png"


def short_point(point: str) -> str:
    """``lm.blocks.3.resid_post`` -> ``L3 resid_post`` (plot ticks)."""
    parts = point.split(".")
    if len(parts) >= 4 and parts[1] == "blocks":
        return f"{parts[0][0].upper()}{parts[2]} {'.'.join(parts[3:])}"
    return point


@dataclass
class ProbeResult:
    """``rows``: one per (model, point, kind) with per-seed lists ``accuracy``, ``control`` (None without a
    control task), ``param`` (chosen regularisation), and optionally ``transfer`` (the trained model's probe
    applied to this model's activations). ``weights``: ``"{model}|{point}|{kind}|{seed}|{name}"`` arrays."""

    property: str
    group: str
    classes: list[str]
    points: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def chance(self) -> float:
        """Accuracy of always answering the most frequent class (from ``info['class_counts']``), else 1/classes."""
        counts = self.info.get("class_counts")
        if counts:
            return max(counts.values()) / sum(counts.values())
        return 1.0 / max(1, len(self.classes))

    # -- summaries ------------------------------------------------------------------------------------------
    def summary(self) -> list[dict[str, Any]]:
        """Per row: mean / std over seeds of accuracy, control, selectivity (= accuracy - control)."""
        out = []
        for row in self.rows:
            acc = np.asarray(row["accuracy"], float)
            item = {"model": row["model"], "point": row["point"], "kind": row["kind"],
                    "accuracy": _r(acc.mean()), "accuracy_std": _r(acc.std()), "seeds": len(acc)}
            if row.get("control") is not None:
                ctl = np.asarray(row["control"], float)
                item.update(control=_r(ctl.mean()), selectivity=_r((acc - ctl).mean()),
                            selectivity_std=_r((acc - ctl).std()))
            if row.get("transfer") is not None:
                item["transfer"] = _r(np.mean(row["transfer"]))
            item["param"] = _r(float(np.median(row["param"])))
            out.append(item)
        return out

    def best(self, kind: str = "logistic", model: str = "trained") -> dict[str, Any]:
        """The summary row of ``kind`` with the highest mean accuracy."""
        rows = [r for r in self.summary() if r["kind"] == kind and r["model"] == model]
        if not rows:
            raise InputError(f"no {kind!r} probes on the {model} model in this result: probe kinds "
                             f"{sorted({r['kind'] for r in self.rows})}")
        return max(rows, key=lambda r: r["accuracy"])

    def table(self) -> str:
        """A Markdown table of :meth:`summary`."""
        head = "| model | point | probe | accuracy | control | selectivity | transfer | reg. |"
        lines = [head, "|" + "---|" * 8]
        for r in self.summary():
            lines.append(f"| {r['model']} | {r['point']} | {r['kind']} | {r['accuracy']:.3f} ± {r['accuracy_std']:.3f} "
                         f"| {_f(r.get('control'))} | {_f(r.get('selectivity'))} | {_f(r.get('transfer'))} "
                         f"| {r['param']:g} |")
        return "\n".join(lines)

    # -- persistence ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "property": self.property, "group": self.group,
                "classes": self.classes, "points": self.points, "chance": _r(self.chance), "info": self.info,
                "summary": self.summary(), "rows": self.rows}

    def save(self, folder: str | os.PathLike, plot: bool = True) -> Path:
        """Write ``probes.json``, ``probes.safetensors`` (when weights are kept) and ``layer_curve.png``."""
        folder = check_output_folder(folder, "out")
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1, default=_plain)
        if self.weights:
            from safetensors.numpy import save_file

            arrays = {k: np.ascontiguousarray(v) for k, v in self.weights.items()}
            atomic_write(folder / WEIGHTS, lambda tmp: save_file(arrays, str(tmp)))
        if plot:
            self.plot(folder / PLOT)
        return atomic_write(folder / JSON, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ProbeResult:
        folder = Path(folder)
        path = folder / JSON if folder.is_dir() else folder
        data = read_json(path, "mmlens probe result", "pass the folder `mmlens probe` wrote", format=FORMAT)
        weights: dict[str, np.ndarray] = {}
        if (path.parent / WEIGHTS).is_file():
            from safetensors.numpy import load_file

            weights = load_file(str(path.parent / WEIGHTS))
        return cls(data["property"], data["group"], data["classes"], data["points"], data["rows"], weights,
                   data.get("info", {}))

    def predict(self, x: np.ndarray, point: str, kind: str = "logistic", seed: int = 0, model: str = "trained") -> np.ndarray:
        """Class names predicted for activations ``x`` (rows, width) by a saved linear probe."""
        key = f"{model}|{point}|{kind}|{seed}|"
        if key + "coef" not in self.weights:
            raise InputError(f"no saved {kind} probe for {point!r} (seed {seed}): linear probes are saved per seed")
        z = (np.asarray(x, np.float64) - self.weights[key + "mean"]) / self.weights[key + "scale"]
        scores = z @ self.weights[key + "coef"].T.astype(np.float64) + self.weights[key + "intercept"]
        classes = np.asarray(self.info.get("fit_classes", {}).get(f"{model}|{point}|{kind}|{seed}", self.classes))
        if scores.shape[1] == 1:  # a binary scikit-learn probe: one column, positive = the second class
            return classes[(scores[:, 0] > 0).astype(int)]
        return classes[scores.argmax(1)]

    # -- plot -----------------------------------------------------------------------------------------------
    def plot(self, path: str | os.PathLike) -> Path:
        """Layer curve: accuracy per point for each probe kind, its control accuracy (dashed) and chance."""
        from matplotlib.figure import Figure

        summary = self.summary()
        fig = Figure(figsize=(max(5.0, 0.9 * len(self.points) + 2.5), 3.8), layout="constrained")
        ax = fig.subplots()
        xs = np.arange(len(self.points))
        colors = {"logistic": "tab:blue", "ridge": "tab:green", "mlp": "tab:purple"}
        for model, style in (("trained", "-"), ("randomised", ":")):
            for kind in dict.fromkeys(r["kind"] for r in summary):
                rows = {r["point"]: r for r in summary if r["kind"] == kind and r["model"] == model}
                if not rows:
                    continue
                acc = [rows[p]["accuracy"] if p in rows else np.nan for p in self.points]
                label = kind if model == "trained" else f"{kind} (randomised model)"
                ax.plot(xs, acc, style, marker="o", color=colors.get(kind), label=label)
                if model == "trained" and all("control" in rows.get(p, {}) for p in self.points):
                    ax.plot(xs, [rows[p]["control"] for p in self.points], "--", color=colors.get(kind), alpha=0.6,
                            label=f"{kind} control task")
        ax.axhline(self.chance, color="grey", lw=1, label="chance (majority)")
        ax.set_xticks(xs, [short_point(p) for p in self.points], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("test accuracy")
        ax.set_title(f"probe: {self.property} from {self.group} tokens", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100), suffixes=(".png",))


def _r(x: float) -> float:
    return round(float(x), 4)


def _f(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def _plain(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x).__name__)
