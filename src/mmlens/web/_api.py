"""What the web page takes from below the public API (``mmlens``, ``mmlens.layer``, ``mmlens.data``): the
image loader with its limits. One place to fix if those internals move."""

from __future__ import annotations

from mmlens.model.images import to_rgb

__all__ = ["to_rgb"]
