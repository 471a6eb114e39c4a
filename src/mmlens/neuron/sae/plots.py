"""Figures of an SAE: its training curve, and one row per feature with its top image patches, texts and logit effect."""

from __future__ import annotations

from typing import Any

import numpy as np


def training_figure(history: list[dict[str, float]], title: str = "SAE training") -> Any:
    """Normalised MSE, L0 and dead fraction against activations seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    xs = [h["activations"] for h in history]
    for ax, key in zip(axes, ("nmse", "l0", "dead_fraction")):
        ax.plot(xs, [h[key] for h in history])
        ax.set_title(key)
        ax.set_xlabel("activations")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def features_figure(rows: list[dict[str, Any]], crops: list[list[np.ndarray]]) -> Any:
    """One row per feature: its top-activating patches (original image around the cell, cell outlined) and a
    text panel with its concept match, top texts and the tokens its decoder direction promotes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_img = max([len(c) for c in crops] + [1])
    fig, axes = plt.subplots(len(rows), n_img + 2, figsize=(1.3 * n_img + 5, 1.4 * len(rows) + 0.4), squeeze=False)
    for r, (row, imgs) in enumerate(zip(rows, crops)):
        for c in range(n_img + 2):
            axes[r, c].axis("off")
        for c, img in enumerate(imgs):
            axes[r, c].imshow(img)
            axes[r, c].set_title(f"{row['patches'][c]['activation']:.1f}", fontsize=7)
        label = f"feature {row['feature']}" + (f"\n{row['concept']} (AUROC {row['auroc']:.2f})" if row.get("concept") else "")
        texts = "\n".join(t["text"] for t in row["texts"][:3])
        up = ", ".join(w for w, _ in row.get("logit_effect", {}).get("up", [])[:4])
        axes[r, n_img].text(0, 0.5, label, fontsize=8, va="center")
        axes[r, n_img + 1].text(0, 0.5, f"{texts}\nlogits up: {up}", fontsize=7, va="center")
    fig.tight_layout()
    return fig
