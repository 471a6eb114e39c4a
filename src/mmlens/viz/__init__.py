"""Figures: heatmap overlays (used by :meth:`mmlens.Explanation.plot`)."""

from mmlens.viz.overlay import overlay

__all__ = ["overlay"]
