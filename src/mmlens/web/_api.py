"""What the web page takes from below the public API (``mmlens``, ``mmlens.layer``, ``mmlens.data``): the
image loader with its limits, the video checks, and which frames a video strip draws. One place to fix if
those internals move."""

from __future__ import annotations

from mmlens.model.images import to_rgb
from mmlens.model.video import video_frames
from mmlens.results.video_strip import shown_frames

__all__ = ["shown_frames", "to_rgb", "video_frames"]
