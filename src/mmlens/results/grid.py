"""A typed, saveable table over two axes (layers x positions, layers x position-group pairs, ...)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmlens.errors import InputError
from mmlens.util.io import read_json, save_plot_or_json


@dataclass
class GridResult:
    """``values[r, c]`` for ``row_labels[r]`` x ``col_labels[c]`` with what is needed to reproduce it.

    >>> g = GridResult("demo", torch.eye(2), ["layer 0", "layer 1"], ["a", "b"], "example", "effect")
    >>> g.to_dict()["values"]
    [[1.0, 0.0], [0.0, 1.0]]
    """

    kind: str
    values: torch.Tensor
    row_labels: list[str]
    col_labels: list[str]
    title: str
    value_name: str
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "title": self.title,
            "value_name": self.value_name,
            "row_labels": list(self.row_labels),
            "col_labels": list(self.col_labels),
            "values": self.values.detach().cpu().float().tolist(),
            "meta": self.meta,
            "extras": self.extras,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GridResult:
        return cls(d["kind"], torch.tensor(d["values"]), d["row_labels"], d["col_labels"], d["title"],
                   d["value_name"], d.get("meta", {}), d.get("extras", {}))

    @classmethod
    def load(cls, path: str | Path) -> GridResult:
        fix = "pass a .json written by save()"
        data = read_json(path, "grid result", fix)
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"cannot read a result from {str(path)!r} ({type(err).__name__}): {fix}") from None

    def plot(self, ax: Any = None, cmap: str = "RdBu_r") -> Any:
        """Heatmap of the grid with labelled axes and a colour bar; returns the matplotlib figure."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        values = self.values.detach().cpu().float().numpy()
        if ax is None:
            width = min(18.0, 2.5 + 0.28 * len(self.col_labels))
            fig, ax = plt.subplots(figsize=(width, 1.5 + 0.35 * len(self.row_labels)))
        else:
            fig = ax.figure
        lim = float(np.nanmax(np.abs(values))) or 1.0
        signed = bool((values < 0).any())
        im = ax.imshow(values, aspect="auto", cmap=cmap if signed else "viridis",
                       vmin=-lim if signed else None, vmax=lim if signed else None)
        ax.set_yticks(range(len(self.row_labels)), self.row_labels, fontsize=7)
        step = max(1, len(self.col_labels) // 40)
        ax.set_xticks(range(0, len(self.col_labels), step), self.col_labels[::step], rotation=90, fontsize=7)
        ax.set_title(self.title, fontsize=9)
        fig.colorbar(im, ax=ax, label=self.value_name)
        fig.tight_layout()
        return fig

    def save(self, path: str | Path) -> Path:
        """Write ``.json`` (numbers + metadata) or ``.png`` (the plot); nothing is left on failure."""
        return save_plot_or_json(path, self.to_dict, self.plot)

    def _repr_html_(self) -> str:
        import matplotlib.pyplot as plt

        fig = self.plot()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        data = base64.b64encode(buf.getvalue()).decode()
        return f'<figure><img src="data:image/png;base64,{data}"/><figcaption>{html.escape(self.title)}</figcaption></figure>'
