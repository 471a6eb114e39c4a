"""The planted suite's leaderboard figure: per run (rows) and score (columns), methods ranked best first with
their 95% bootstrap intervals as error bars; baselines in grey, so a method's bar reads against chance.

>>> leaderboard_figure(result).savefig("leaderboard.svg")          # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mmlens.evaluation.benchmark_notes import label


def _panels(result: Any, res: Any, reference: bool) -> list[tuple[str, bool]]:
    """(score key, higher is better) of one run's panels."""
    head = result.localisation()[0]
    keys = [(head, True)] if reference else [(head + "@model", True), (head + "@gap", True)]
    keys += [(m + "@weakest", True) for m in result.localisation() if not reference]  # several evidence parts
    keys += [("road", True), ("randomisation", False)]
    return [(k, hib) for k, hib in keys if any(isinstance(r.get(k), float) and math.isfinite(r[k]) for r in res.rows)]


def leaderboard_figure(result: Any) -> Any:
    """A matplotlib Figure (no pyplot state) ranking the methods of every run by each headline score."""
    from matplotlib.figure import Figure

    runs = [(f"{name}: {res.meta['model']}", res, False) for name, res in result.variants.items()]
    if result.reference is not None:
        runs.append((f"reference: {result.reference.meta['model']} (object masks)", result.reference, True))
    panels = [_panels(result, res, ref) for _, res, ref in runs]
    ncols = max([len(p) for p in panels] + [1])
    n_rows = max(len(res.rows) for _, res, _ in runs)
    fig = Figure(figsize=(3.6 * ncols, (0.2 * n_rows + 1.1) * len(runs)), layout="constrained")
    axes = fig.subplots(len(runs), ncols, squeeze=False)
    for (title, res, _), keys, row_axes in zip(runs, panels, axes):
        for ax, (key, higher) in zip(row_axes, keys):
            _panel(ax, res, key, higher)
        for ax in row_axes[len(keys):]:
            ax.axis("off")
        row_axes[0].annotate(title, (0, 1.18), xycoords="axes fraction", fontsize=9, fontweight="bold")
    fig.suptitle("mmlens planted-evidence leaderboard (95% bootstrap intervals)", fontsize=10)
    return fig


def _panel(ax: Any, res: Any, key: str, higher: bool) -> None:
    rows = [r for r in res.rows if isinstance(r.get(key), float) and math.isfinite(r[key])]
    rows.sort(key=lambda r: -r[key] if higher else r[key])
    means = np.array([r[key] for r in rows])
    ci = np.array([r.get(f"{key}_ci") or [v, v] for r, v in zip(rows, means)], dtype=float).reshape(-1, 2)
    ci = np.where(np.isfinite(ci), ci, means[:, None])
    err = np.abs(np.stack([means - ci[:, 0], ci[:, 1] - means]))
    colours = ["#9e9e9e" if r["kind"] == "baseline" else "#1f77b4" for r in rows]
    ys = np.arange(len(rows))
    ax.barh(ys, means, xerr=err, color=colours, error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.set_yticks(ys, [r["method"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_title(f"{label(key)} {'↑' if higher else '↓'}", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
