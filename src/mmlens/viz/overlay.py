"""Heatmap over an image."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image


def overlay(image: Image.Image | np.ndarray, heat: np.ndarray, ax: Any, alpha: float = 0.6, cmap: str = "jet",
            scale: tuple[float, float] | None = None) -> Any:
    """Draw ``image`` on matplotlib axes ``ax`` with ``heat`` (``(H, W)``, same size) blended on top,
    more opaque where the score is high.

    The colour scale spans ``heat``'s own range, or ``scale = (low, high)`` (one scale for several panels, e.g.
    a video's frames); returns the heat layer (pass it to ``fig.colorbar``).

    >>> from matplotlib.figure import Figure
    >>> ax = Figure().subplots()
    >>> m = overlay(Image.new("RGB", (4, 3)), np.arange(12.0).reshape(3, 4), ax)
    >>> m.get_clim()
    (0.0, 11.0)
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != pixels.shape[:2]:
        raise ValueError(f"heatmap {heat.shape} and image {pixels.shape[:2]} differ in size")
    finite = heat[np.isfinite(heat)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if scale is not None:
        lo, hi = float(scale[0]), float(scale[1])
    if hi <= lo:
        hi = lo + 1e-12
    ax.imshow(pixels)
    # opacity follows the score, so low-scored regions keep the image readable
    strength = np.clip((np.nan_to_num(heat, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    layer = ax.imshow(heat, cmap=cmap, alpha=alpha * (0.1 + 0.9 * strength), vmin=lo, vmax=hi,
                      interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return layer
