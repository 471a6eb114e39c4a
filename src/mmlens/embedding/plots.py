"""Figures of the embedding methods (matplotlib; each returns a Figure for :func:`mmlens.util.io.save_plot_or_json`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmlens.embedding.decompose import Decomposition


def _fig(w: float, h: float, n: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, n, figsize=(w, h), squeeze=False)


def decomposition_figure(dec: Decomposition) -> Any:
    """Mean norm of each head's direct contribution (layers x heads) and of the other components."""
    fig, ax = _fig(11, 3.6, 2)
    norms = dec.contributions.norm(dim=-1).mean(0).numpy()
    if "L0.H0" in dec.names:
        grid = np.array([[norms[dec.head(lay, h)] for h in range(dec.n_heads)] for lay in range(dec.n_layers)])
        im = ax[0, 0].imshow(grid, cmap="viridis", aspect="auto")
        ax[0, 0].set(xlabel="head", ylabel="layer", title="heads: mean |direct contribution|")
        fig.colorbar(im, ax=ax[0, 0])
    rest = [i for i, n in enumerate(dec.names) if ".H" not in n]
    ax[0, 1].barh([dec.names[i] for i in rest], norms[rest], color="#4c72b0")
    ax[0, 1].set(title=f"other components (reconstruction error {dec.error():.1e})")
    fig.tight_layout()
    return fig


def curves_figure(x: Sequence[float], series: dict[str, Sequence[float]], xlabel: str, title: str) -> Any:
    fig, ax = _fig(6, 3.6)
    for name, ys in series.items():
        ax[0, 0].plot(list(x), list(ys), marker="o", label=name)
    ax[0, 0].set(xlabel=xlabel, ylabel="zero-shot accuracy", title=title, ylim=(0, 1.02))
    ax[0, 0].legend()
    fig.tight_layout()
    return fig


def spans_figure(spans: Sequence[dict], n_layers: int, n_heads: int) -> Any:
    """One cell per head: its top span texts, coloured by category."""
    colors = {"color": "#f6c3c3", "shape": "#c3d7f6", "other": "#eeeeee"}
    fig, ax = _fig(2.2 * n_heads + 1, 1.0 * n_layers + 1)
    a = ax[0, 0]
    a.set(xlim=(0, n_heads), ylim=(n_layers, 0), xticks=np.arange(n_heads) + 0.5, yticks=np.arange(n_layers) + 0.5,
          xticklabels=range(n_heads), yticklabels=range(n_layers), xlabel="head", ylabel="layer")
    for sp in spans:
        x, y = sp["head"], sp["layer"]
        a.add_patch(__import__("matplotlib.patches", fromlist=["Rectangle"]).Rectangle(
            (x, y), 1, 1, color=colors.get(sp.get("category", "other"), "#eeeeee")))
        a.text(x + 0.5, y + 0.5, "\n".join(t["text"] for t in sp["texts"][:3]), ha="center", va="center", fontsize=7)
    a.set_title("TextSpan: each head's top texts (red: colour, blue: shape)")
    fig.tight_layout()
    return fig


def bars_figure(labels: Sequence[str], values: Sequence[float], title: str, xlabel: str) -> Any:
    fig, ax = _fig(6, 0.35 * max(len(labels), 3) + 1.2)
    ax[0, 0].barh(list(labels)[::-1], list(values)[::-1], color="#55a868")
    ax[0, 0].set(title=title, xlabel=xlabel)
    fig.tight_layout()
    return fig
