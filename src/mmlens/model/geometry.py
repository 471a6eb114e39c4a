"""Image geometry: which sequence positions hold an image's tokens, and which pixels each one sees.

Video: one :class:`ImageGeometry` per frame (``frame``, ``time``), whose grid(s) name the frames their tokens
read (``ImageGrid.frames``): a token that covers two frames (Qwen2-VL) belongs to both frames' geometries.

Every family lays image tokens out differently (one square grid for LLaVA-1.5 and PaliGemma, a base grid
plus unpadded any-resolution tiles with a newline token per row for LLaVA-NeXT, 2x2-merged dynamic grids
for Qwen2-VL). Adapters describe that layout with :class:`ImageGrid` blocks; everything downstream turns
per-position scores into pixel heatmaps through :meth:`ImageGeometry.heatmap` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in original-image pixels (may extend past the image)


@dataclass(frozen=True)
class ImageGrid:
    """One block of image tokens laid out row-major on a ``rows x cols`` grid.

    ``positions[r, c]`` is the sequence position of the token for grid cell ``(r, c)``; ``box`` is the
    region of the original image that the whole grid covers (after resize / crop / pad / tiling).
    """

    positions: torch.Tensor  # (rows, cols) long
    box: Box
    kind: str = "image"  # "image" | "base" | "tiles" | "crop" (one grid per crop) | "frames" (video)
    #: video: the frame indices whose pixels these tokens read (Qwen2-VL: 2 frames per token), else ()
    frames: tuple[int, ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.positions.shape[0]), int(self.positions.shape[1])

    def cell_box(self, r: int, c: int) -> Box:
        """Pixel box of grid cell ``(r, c)`` in original-image coordinates."""
        rows, cols = self.shape
        x0, y0, x1, y1 = self.box
        w, h = (x1 - x0) / cols, (y1 - y0) / rows
        return (x0 + c * w, y0 + r * h, x0 + (c + 1) * w, y0 + (r + 1) * h)


@dataclass
class ImageGeometry:
    """Where one image's tokens sit in the sequence and how they map onto its pixels.

    ``positions``: every placeholder position of this image (sorted), including ``separators``
    (e.g. LLaVA-NeXT newline tokens or a CLS token) that belong to no grid cell.

    ``space``: what the positions index. ``"sequence"``: the language model's token sequence (image tokens are
    sequence positions, every family but one). ``"keys"``: the keys of the LM's cross-attention layers (Mllama:
    the images never enter the sequence; the LM cross-attends to the vision features, one key per patch of each
    tile plus the tile's CLS and padding tiles as separators). Scores for a key-space geometry are indexed by key.
    """

    image_index: int
    size: tuple[int, int]  # original (width, height)
    positions: torch.Tensor
    grids: list[ImageGrid]
    separators: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    notes: dict = field(default_factory=dict)
    #: video: this geometry is frame ``frame`` (``image_index`` too) of the video, shown at ``time`` seconds;
    #: its positions may be shared with other frames (see :attr:`ImageGrid.frames`)
    frame: int | None = None
    time: float | None = None
    space: str = "sequence"  # "sequence" | "keys"

    @property
    def n_tokens(self) -> int:
        return int(self.positions.numel())

    def grid_positions(self) -> torch.Tensor:
        """All positions that belong to a grid cell (no separators)."""
        return torch.cat([g.positions.flatten() for g in self.grids])

    def position_boxes(self) -> dict[int, list[Box]]:
        """Map each grid position to the original-image pixel box(es) it covers."""
        out: dict[int, list[Box]] = {}
        for g in self.grids:
            rows, cols = g.shape
            for r in range(rows):
                for c in range(cols):
                    out.setdefault(int(g.positions[r, c]), []).append(g.cell_box(r, c))
        return out

    def positions_at(self, x: float, y: float) -> list[int]:
        """Sequence positions whose cell covers original pixel ``(x, y)``."""
        hits = []
        for g in self.grids:
            x0, y0, x1, y1 = g.box
            if x0 <= x < x1 and y0 <= y < y1:
                rows, cols = g.shape
                c = int((x - x0) / (x1 - x0) * cols)
                r = int((y - y0) / (y1 - y0) * rows)
                hits.append(int(g.positions[min(r, rows - 1), min(c, cols - 1)]))
        return hits

    def grid_maps(self, scores: torch.Tensor) -> list[torch.Tensor]:
        """Per-grid ``rows x cols`` maps from per-position ``scores`` (indexed by sequence position)."""
        scores = torch.as_tensor(scores).detach().float().cpu()
        return [scores[g.positions] for g in self.grids]

    def heatmap(self, scores: torch.Tensor, kinds: tuple[str, ...] | None = None) -> np.ndarray:
        """Turn per-position scores into an ``(H, W)`` map over the original image's pixels.

        ``scores`` is indexed by sequence position (length >= max position + 1). Grids are resampled
        bilinearly onto their pixel box; where several grids cover a pixel (LLaVA-NeXT base + tiles), their
        values are averaged. ``kinds`` restricts to some grid kinds (e.g. ``("tiles",)``).
        """
        width, height = self.size
        total = torch.zeros(height, width)
        count = torch.zeros(height, width)
        for grid, values in zip(self.grids, self.grid_maps(scores)):
            if kinds is not None and grid.kind not in kinds:
                continue
            layer, cover = _paste(values, grid.box, width, height)
            total += layer
            count += cover
        return (total / count.clamp_min(1)).numpy()


def _paste(values: torch.Tensor, box: Box, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample a grid of values onto its pixel box inside a ``height x width`` canvas."""
    x0, y0, x1, y1 = box
    bw, bh = max(1, round(x1 - x0)), max(1, round(y1 - y0))
    up = F.interpolate(values[None, None], size=(bh, bw), mode="bilinear", align_corners=False)[0, 0]
    canvas = torch.zeros(height, width)
    cover = torch.zeros(height, width)
    ox, oy = round(x0), round(y0)
    # Intersect the box with the canvas (crop boxes lie inside; padded boxes extend past the image).
    cx0, cy0 = max(ox, 0), max(oy, 0)
    cx1, cy1 = min(ox + bw, width), min(oy + bh, height)
    if cx1 > cx0 and cy1 > cy0:
        canvas[cy0:cy1, cx0:cx1] = up[cy0 - oy : cy1 - oy, cx0 - ox : cx1 - ox]
        cover[cy0:cy1, cx0:cx1] = 1
    return canvas, cover


def resize_crop_box(
    size: tuple[int, int], resized: tuple[int, int], crop: tuple[int, int] | None
) -> Box:
    """Original-pixel box seen by a processor that resizes ``size`` -> ``resized`` then centre-crops.

    Sizes are ``(width, height)``. Crop offsets follow the HF image processors' ``int((h - ch) / 2)``.

    >>> resize_crop_box((200, 100), (448, 224), (224, 224))
    (50.0, 0.0, 150.0, 100.0)
    """
    (w, h), (rw, rh) = size, resized
    if crop is None:
        return (0.0, 0.0, float(w), float(h))
    cw, ch = crop
    left, top = int((rw - cw) / 2.0), int((rh - ch) / 2.0)
    return (left * w / rw, top * h / rh, (left + cw) * w / rw, (top + ch) * h / rh)


def runs(positions: torch.Tensor) -> list[torch.Tensor]:
    """Split sorted positions into maximal runs of consecutive integers.

    >>> [r.tolist() for r in runs(torch.tensor([3, 4, 5, 9, 10]))]
    [[3, 4, 5], [9, 10]]
    """
    if positions.numel() == 0:
        return []
    breaks = torch.nonzero(positions[1:] != positions[:-1] + 1).flatten() + 1
    return list(torch.tensor_split(positions, breaks.tolist()))
