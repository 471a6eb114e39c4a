"""The benchmark's table: streaming accumulators per method and :class:`BenchmarkResult` (rich table, CSV, JSON,
Markdown, deletion / insertion curves PNG, written all-or-nothing).

>>> result = run_benchmark(mmlens.load("demo"), methods=["rise"], n=20)     # doctest: +SKIP
>>> print(result.to_markdown())                                            # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.errors import InputError
from mmlens.evaluation.benchmark_notes import _REFERENCE_NOTES, _SAMPLES, _label
from mmlens.results.explanation import jsonable
from mmlens.util.io import write_files_together

OUTPUT_FILES = ("results.csv", "results.json", "results.md", "curves.png")


# -- streaming accumulators ---------------------------------------------------------------------------------
@dataclass
class Mean:
    """Streaming mean of scalars that skips NaN (and counts them)."""

    total: float = 0.0
    count: int = 0
    nan: int = 0

    def add(self, value: float) -> None:
        value = float(value)
        if math.isnan(value):
            self.nan += 1
        else:
            self.total += value
            self.count += 1

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")


@dataclass
class CurveMean:
    """Streaming point-wise mean of equally long curves (NaN curves skipped)."""

    total: np.ndarray | None = None
    count: int = 0

    def add(self, values: Sequence[float]) -> None:
        arr = np.asarray(values, dtype=np.float64)
        if not np.isfinite(arr).all():
            return
        self.total = arr.copy() if self.total is None else self.total + arr
        self.count += 1

    @property
    def mean(self) -> list[float]:
        return [] if self.total is None else (self.total / self.count).tolist()


@dataclass
class MethodStats:
    """Everything the table needs about one method, accumulated sample by sample."""

    method: str
    kind: str  # "method" | "baseline"
    scores: dict[str, Mean] = field(default_factory=dict)
    curves: dict[str, CurveMean] = field(default_factory=dict)
    fractions: dict[str, list[float]] = field(default_factory=dict)  # x values of the first curve per metric
    seconds: Mean = field(default_factory=Mean)
    explained: int = 0
    failures: int = 0
    first_error: str = ""
    sanity_passes: int = 0
    sanity_checked: int = 0
    boots: dict[str, Any] = field(default_factory=dict)  # name -> BootstrapMean (when the run asked for CIs)

    def score(self, name: str) -> Mean:
        return self.scores.setdefault(name, Mean())

    def boot(self, name: str) -> Any:
        from mmlens.evaluation.bootstrap import BootstrapMean

        return self.boots.setdefault(name, BootstrapMean())

    def curve(self, name: str) -> CurveMean:
        return self.curves.setdefault(name, CurveMean())

    def fail(self, where: str, err: BaseException) -> None:
        self.failures += 1
        if not self.first_error:
            self.first_error = f"{where}: {err.__class__.__name__}: {' '.join(str(err).split())[:300]}"


# -- result -------------------------------------------------------------------------------------------------
@dataclass
class BenchmarkResult:
    """The benchmark table (``rows``: one dict per method, baselines last), the mean deletion / insertion curves
    and the per-step randomisation correlations, with what is needed to reproduce them (``meta``)."""

    rows: list[dict[str, Any]]
    metrics: list[dict[str, Any]]  # name, category, higher_is_better, summary, samples ("all" | "object" | "sanity")
    curves: dict[str, dict[str, list[float]]]  # method -> {"deletion": [...], "insertion": [...]}
    fractions: dict[str, list[float]]  # mode -> share of patches removed / revealed at each curve point
    randomisation: dict[str, dict[str, Any]]  # method -> {"steps": [...], "correlations": [...]}
    meta: dict[str, Any]

    # -- views ----------------------------------------------------------------------------------------------
    def columns(self) -> list[tuple[str, str]]:
        """(row key, header) of every column of the table."""
        cols = [("method", "method")]
        for m in self.metrics:
            arrow = "↑" if m["higher_is_better"] else "↓"
            cols.append((m["name"], f"{_label(m['name'])} {arrow}"))
            for key in self.suffixed(m["name"]):
                mark = "" if key.endswith(":random_drop") else "↑" if key.endswith(("@gap", ":drop")) else arrow
                cols.append((key, f"{_label(key)} {mark}".rstrip()))
        if any(m["name"] == "randomisation" for m in self.metrics):
            cols.append(("sanity", "sanity check"))
        cols += [("seconds_per_explanation", "s / explanation"), ("n", "n")]
        if any(any((r.get("nan_counts") or {}).values()) for r in self.rows):
            cols.append(("nan", "NaN scores (left out)"))
        if any(r["failures"] for r in self.rows):
            cols.append(("failures", "failures"))
        return cols

    def suffixed(self, name: str) -> list[str]:
        """The row keys scored beside metric ``name``: against the model's evidence (``name@model``), the gap to
        the object's score (``name@gap``), parts of the score (``road:drop``), when some row holds them."""
        from mmlens.evaluation.benchmark_notes import SUFFIX_LABELS

        keys = [name + suffix for suffix in SUFFIX_LABELS]
        return [k for k in keys if any(k in r for r in self.rows)]

    def score_keys(self) -> list[str]:
        """Every score column: the metrics and their suffixed scores."""
        return [k for m in self.metrics for k in (m["name"], *self.suffixed(m["name"]))]

    def table(self) -> Any:
        """A rich :class:`~rich.table.Table` of the results."""
        from rich.table import Table

        table = Table(title=f"mmlens benchmark: {self.meta['model']} ({self.meta['data_description']})",
                      caption=self._caption(markdown=False), caption_justify="left")
        for key, header in self.columns():
            table.add_column(header, justify="left" if key in ("method", "sanity") else "right",
                             no_wrap=key == "method")
        for row in self.rows:
            table.add_row(*[_cell(_value(row, key)) for key, _ in self.columns()])
        return table

    def to_csv(self) -> str:
        keys = ["method", "kind", "n", "n_localisation", "n_sanity"]
        for m in self.metrics:
            keys += [m["name"], f"{m['name']}_ci_low", f"{m['name']}_ci_high", f"{m['name']}_nan"]
            for key in self.suffixed(m["name"]):
                keys += [key, f"{key}_ci_low", f"{key}_ci_high"]
            if m["name"] == "randomisation":
                keys += ["randomisation_pass_rate", "sanity"]
        keys += ["seconds_per_explanation", "failures"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            nan = {f"{k}_nan": v for k, v in (row.get("nan_counts") or {}).items()}
            ci = {f"{k[:-3]}_ci_{side}": v for k, pair in row.items() if k.endswith("_ci")
                  for side, v in zip(("low", "high"), pair)}
            writer.writerow({k: _csv_value({**row, **nan, **ci}.get(k)) for k in keys})
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"format": "mmlens.benchmark", "format_version": 1, "meta": self.meta,
                         "metrics": self.metrics, "rows": self.rows, "fractions": self.fractions,
                         "curves": self.curves, "randomisation": self.randomisation})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkResult:
        """The result saved by :meth:`to_json` (``null`` scores read back as NaN)."""
        def nan(v: Any) -> Any:
            return float("nan") if v is None else [nan(x) for x in v] if isinstance(v, list) else v

        scores = {m["name"] for m in data["metrics"]}
        rows = [{k: nan(v) if (k.split("@")[0].split(":")[0] in scores or k.endswith("_ci")) else v
                 for k, v in r.items()} for r in data["rows"]]
        return cls(rows, data["metrics"], data["curves"], data["fractions"], data["randomisation"], data["meta"])

    def to_json(self) -> str:
        return json.dumps(_nan_to_none(self.to_dict()), indent=2)

    def to_markdown(self) -> str:
        cols = self.columns()
        lines = [f"# mmlens benchmark: {self.meta['model']}", "",
                 f"{self.meta['data_description']}; seed {self.meta['seed']}.", ""]
        lines.append("| " + " | ".join(h for _, h in cols) + " |")
        lines.append("|" + "|".join("---" if k in ("method", "sanity") else "---:" for k, _ in cols) + "|")
        scores = set(self.score_keys())
        for row in self.rows:
            lines.append("| " + " | ".join((_ci_cell(row, k) if k in scores else _cell(_value(row, k)))
                                           .replace("|", "\\|") for k, _ in cols) + " |")
        lines += ["", self._caption(markdown=True), "", ("Metrics (↑ higher is better, ↓ lower is better; "
                                                          "[low, high]: 95% bootstrap interval over samples, "
                                                          "seeded):"), ""]
        for m in self.metrics:
            direction = "higher is better" if m["higher_is_better"] else "lower is better"
            degenerate = (f" Degenerate (all-zero / constant) map: {m['degenerate']}: {m['degenerate_note']}."
                          if m.get("degenerate") else "")
            lines.append(f"- **{_label(m['name'])}** ({m['category']}, {direction}; {_SAMPLES[m['samples']]}): "
                         f"{m['summary']}.{degenerate}")
        lines.append("- **s / explanation**: seconds per call of the method (the warm-up call not counted); "
                     "timings vary between runs, every other number is reproducible.")
        if any(k == "nan" for k, _ in cols):
            lines.append("- **NaN scores (left out)**: per metric, samples whose score is undefined (see each "
                         "metric's degenerate-map treatment); the metric's mean covers the other samples only.")
        notes = self.reference_notes()
        if notes:
            lines += ["", "Departures from the reference definitions:", ""] + [f"- {line}" for line in notes]
        failed = self.failures()
        if failed:
            lines += ["", "Failures (counted, not scored; the method's means cover the other samples):", ""]
            lines += [f"- {line}" for line in failed]
        if self.meta.get("command"):
            lines += ["", "Regenerate with:", "", "```", self.meta["command"], "```"]
        return "\n".join(lines) + "\n"

    def reference_notes(self) -> list[str]:
        """One line per chosen metric whose definition here differs from its reference paper, with the
        options of this run."""
        out = []
        for m in self.metrics:
            note = _REFERENCE_NOTES.get(m["name"])
            if note:
                out.append(f"{_label(m['name'])}: " + note(m.get("options") or {}, self.meta))
        return out

    def failures(self) -> list[str]:
        """One line per method that failed on some sample or metric: count and first error."""
        return [f"{r['method']}: {r['failures']} failure(s); first: {r.get('first_error', '')}"
                for r in self.rows if r.get("failures")]

    def _caption(self, markdown: bool) -> str:
        meta = self.meta
        parts = [f"n = {meta['n']} samples; localisation metrics on the {meta['n_localisation']} whose "
                 + "evidence is one object"]
        if meta.get("n_model_evidence"):
            parts.append(f"'(model evidence)' columns against the evidence the model uses, on the "
                         f"{meta['n_model_evidence']} samples that define it; 'gap (model - object)' on the "
                         f"{meta.get('n_conflict', 0)} conflicting ones (some of the model's evidence lies outside "
                         "the object)")
        if meta.get("n_sanity"):
            parts.append(f"randomisation and max-sensitivity on the first {meta['n_sanity']}")
        text = "; ".join(parts) + "."
        if any(m["name"] == "randomisation" for m in self.metrics):
            thr = meta.get("randomisation_threshold", 0.5)
            text += (f" Sanity check: pass = the mean Spearman correlation between the map and the map of the "
                     f"fully cascade-randomised model is below {thr}; baselines ignore the model, so they fail "
                     "by design.")
        return text

    def plot_curves(self) -> Any:
        """Matplotlib figure: mean deletion and insertion curves, one line per method (baselines dashed)."""
        from matplotlib.figure import Figure

        modes = [m for m in ("deletion", "insertion") if any(m in c for c in self.curves.values())]
        fig = Figure(figsize=(6.2 * max(1, len(modes)), 4.8), layout="constrained")
        axes = fig.subplots(1, max(1, len(modes)), squeeze=False)[0]
        kinds = {r["method"]: r["kind"] for r in self.rows}
        cmap = _colours(len(self.curves))
        for ax, mode in zip(axes, modes):
            for colour, (method, curves) in zip(cmap, self.curves.items()):
                if mode not in curves or not curves[mode]:
                    continue
                values, xs = curves[mode], self.fractions[mode]
                auc = float(np.trapezoid(values, xs))
                ax.plot(xs, values, color=colour,
                        linestyle="--" if kinds.get(method) == "baseline" else "-", label=f"{method} ({auc:.3f})")
            removed = "removed" if mode == "deletion" else "revealed"
            better = "lower" if mode == "deletion" else "higher"
            ax.set_title(f"{mode} (AUC in legend, {better} is better)", fontsize=10)
            ax.set_xlabel(f"share of patches {removed}")
            ax.set_ylabel("mean probability of the answer")
            ax.set_xlim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncols=2 if len(self.curves) > 8 else 1)
        if not modes:
            axes[0].text(0.5, 0.5, "no deletion / insertion metric was run", ha="center", va="center")
            axes[0].axis("off")
        fig.suptitle(f"{self.meta['model']}: {self.meta['data_description']}", fontsize=10)
        return fig

    def save(self, out: str | os.PathLike) -> list[Path]:
        """Write results.csv, results.json, results.md and curves.png into folder ``out`` (created if needed).
        Every file is written to a temporary name first, and the four are renamed only once all succeeded."""
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"--out {str(folder)!r} is a file: pass a folder for results.csv, results.json, "
                             "results.md and curves.png")
        folder.mkdir(parents=True, exist_ok=True)
        writers = {
            "results.csv": lambda p: p.write_text(self.to_csv(), encoding="utf-8"),
            "results.json": lambda p: p.write_text(self.to_json(), encoding="utf-8"),
            "results.md": lambda p: p.write_text(self.to_markdown(), encoding="utf-8"),
            "curves.png": lambda p: self.plot_curves().savefig(p, format="png", dpi=120),
        }
        return write_files_together(folder, writers)


def _value(row: dict[str, Any], key: str) -> Any:
    """The table cell of ``key``: NaN counts as ``"max-sensitivity 2/5"`` (NaN samples / scored + NaN)."""
    if key != "nan":
        return row.get(key)
    counts, scored = row.get("nan_counts") or {}, row.get("scored") or {}
    return ", ".join(f"{_label(k)} {v}/{v + scored.get(k, 0)}" for k, v in counts.items() if v)


def _ci_cell(row: dict[str, Any], key: str) -> str:
    """``0.512 [0.481, 0.547]``: the mean and its bootstrap interval (the mean alone without one)."""
    text = _cell(row.get(key))
    ci = row.get(f"{key}_ci")
    if ci and all(isinstance(v, float) and math.isfinite(v) for v in ci) and text not in ("", "n/a"):
        return f"{text} [{_cell(ci[0])}, {_cell(ci[1])}]"
    return text


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]
