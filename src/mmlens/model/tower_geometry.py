"""Vision-patch geometry: where each row of the vision tower's output lies in the original image, and which LM
image token it feeds.

The tower's rows are the ``vision.*`` hook points' rows (:mod:`mmlens.hooks.tracing`), flattened: row
``k * S + j`` is patch row ``j`` of tile ``k`` for towers that run ``(tiles, S, d)``, row ``j`` for Qwen's flat
``(patches, d)``. One generic rule covers every family: each LM-side :class:`ImageGrid` (already exact, see
:mod:`mmlens.model.geometry`) is subdivided into the tower's patch grid of that tile, and the adapter's
``tower_layout`` says how tower tiles pair with LM grids:

- ``"tiles"``: tower tile ``k`` = the ``k``-th LM grid (over all images, in order); its rows are ``p`` leading
  non-spatial rows (a CLS, ``p`` in 0 / 1) then an ``(r f) x (c f)`` patch grid row-major, where ``r x c`` is the
  LM grid and every LM cell is an ``f x f`` block of patches (``f = 1``: identity, LLaVA / PaliGemma / CLIP
  features; pixel shuffle: InternVL, Idefics3 / SmolVLM; average pooling: Gemma 3). ``p`` and ``f`` are read off
  the tower's shape.
- ``"merge_windows"``: one flat row list; each LM cell's ``f x f`` window (``f = spatial_merge_size``) is ``f^2``
  consecutive rows, row-major inside the window (Qwen2-VL, Qwen2.5-VL in canonical order, Qwen3-VL).
- ``"anyres"``: the base grid is a ``"tiles"`` pair with tile 0; the following tiles are stitched into one frame
  (the adapter's ``notes["tile_canvas"]``: tile rows, columns and the frame's pixel box, padding included) whose
  unpadded part is the LM's tile grid (LLaVA-NeXT, LLaVA-OneVision; patches of the padding feed no token).
- ``"joint"``: dual encoders: tower row ``j`` = joint-sequence position ``j`` (CLS / padding are separators).
- ``"keys"``: cross-attention families (geometry ``space == "keys"``, Mllama): every tower row of a tile *is* one
  cross-attention key (the projector maps rows to keys one to one), so the tower geometry is the key geometry
  re-indexed: key ``k = tile * P + j`` (``P`` = the adapter's ``keys_per_tile()``) is row ``tile * S + j``, where
  ``S >= P`` is the tower's rows per tile (rows ``P..S-1`` pad each tile, e.g. to a multiple of 8) and ``tile``
  counts every image's tiles, padding tiles included. ``token_of`` is then the *key* each row feeds (CLS rows
  included: the LM reads them too), so ``to_positions(scores, n_keys)`` gives per-key scores.

Which LM token a patch feeds (``token_of``) is the LM cell of the same grid holding the patch's centre.

>>> from mmlens.testing import tiny_subject
>>> from mmlens.testing.tiny_models import tiny_images
>>> s = tiny_subject("qwen2_vl"); b = s.prepare(tiny_images("qwen2_vl"), "what is this?")
>>> tg = tower_geometry(s.adapter, b.geometry, (24,))      # 24 patch rows, one 2x3 grid of LM tokens
>>> tg.images[0].grids[0].shape, tg.token_of[:5].tolist() == [int(b.geometry[0].positions[0])] * 4 + [
...     int(b.geometry[0].positions[1])]
((4, 6), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mmlens.errors import UnsupportedModelError
from mmlens.model.geometry import Box, ImageGeometry, ImageGrid

LAYOUTS = ("tiles", "merge_windows", "anyres", "joint", "keys")


@dataclass
class TowerGeometry:
    """Per image, an :class:`ImageGeometry` whose positions are tower rows (so ``heatmap`` maps per-row scores
    to pixels), and per tower row the LM sequence position it feeds (``token_of``, -1: none; layout ``"keys"``:
    the cross-attention key it is)."""

    images: list[ImageGeometry]
    token_of: torch.Tensor  # (n_rows,) long
    n_rows: int

    def image_rows(self, i: int) -> torch.Tensor:
        """Tower rows of image ``i``'s patch grids (no CLS / padding rows)."""
        return self.images[i].grid_positions()

    def to_positions(self, scores: torch.Tensor, seq_len: int) -> torch.Tensor:
        """``(T, n_rows)`` per-row scores -> ``(T, seq_len)``: each LM image token gets the mean of the rows
        feeding it."""
        out = torch.zeros(scores.shape[0], seq_len)
        fed = self.token_of >= 0
        tokens = self.token_of[fed]
        out.index_add_(1, tokens, scores[:, fed].float().cpu())
        count = torch.zeros(seq_len).index_add_(0, tokens, torch.ones(len(tokens)))
        return out / count.clamp_min(1)

    def to_rows(self, position_scores: torch.Tensor) -> torch.Tensor:
        """``(T, seq_len)`` LM-position scores -> ``(T, n_rows)``: each token's score split evenly over the
        rows that feed it (rows feeding no token get 0)."""
        fed = self.token_of >= 0
        tokens = self.token_of[fed]
        count = torch.zeros(position_scores.shape[1]).index_add_(0, tokens, torch.ones(len(tokens)))
        out = torch.zeros(position_scores.shape[0], self.n_rows)
        out[:, fed] = position_scores[:, tokens].float().cpu() / count[tokens]
        return out


def tower_geometry(adapter: Any, geometry: list[ImageGeometry], shape: tuple[int, ...]) -> TowerGeometry:
    """The :class:`TowerGeometry` of a batch with LM ``geometry`` whose tower output has ``shape`` (without the
    feature axis: ``(tiles, S)`` or ``(patches,)``)."""
    layout = getattr(adapter, "tower_layout", "tiles")
    n_rows = math.prod(shape)
    if layout == "joint":
        images = [ImageGeometry(g.image_index, g.size, g.positions, list(g.grids), g.separators) for g in geometry]
        token_of = torch.full((n_rows,), -1, dtype=torch.long)
        rows = torch.cat([g.grid_positions() for g in geometry])
        token_of[rows] = rows
        return TowerGeometry(images, token_of, n_rows)
    if layout == "keys":
        return _key_rows(adapter, geometry, shape)
    builder = _Builder(shape, n_rows, adapter.family)
    for g in geometry:
        grids: list[ImageGrid] = []
        for lm in g.grids:
            if layout == "merge_windows":
                grids.append(builder.windows(lm, int(adapter.model.config.vision_config.spatial_merge_size)))
            elif layout == "anyres" and lm.kind == "tiles":
                grids += builder.canvas(lm, g.notes["tile_canvas"])
            elif layout in ("tiles", "anyres"):
                grids.append(builder.tile(lm))
            else:
                raise UnsupportedModelError(f"tower layout {layout!r} is not one of {', '.join(LAYOUTS)}")
        positions = torch.cat([t.positions.flatten() for t in grids]).sort().values
        builder.images.append(ImageGeometry(g.image_index, g.size, positions, grids))
    builder.check_used()
    return TowerGeometry(builder.images, builder.token_of, n_rows)


class _Builder:
    """Consumes the tower's tiles (or flat rows) in order while LM grids are paired with them."""

    def __init__(self, shape: tuple[int, ...], n_rows: int, family: str) -> None:
        self.shape, self.family, self.next = shape, family, 0
        self.token_of = torch.full((n_rows,), -1, dtype=torch.long)
        self.images: list[ImageGeometry] = []

    def _fail(self, what: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"the {self.family} vision tower's output {tuple(self.shape)} does not match "
                                     f"its image grids ({what}): vision-tower maps cannot place its patches")

    def _take_tile(self) -> int:
        if len(self.shape) != 2 or self.next >= self.shape[0]:
            raise self._fail(f"no tower tile left for grid {self.next}")
        self.next += 1
        return self.next - 1

    def tile(self, lm: ImageGrid) -> ImageGrid:
        k, (r, c) = self._take_tile(), lm.shape
        S = self.shape[1]
        for prefix in (0, 1):
            f = math.isqrt(max(S - prefix, 0) // (r * c))
            if f and f * f * r * c == S - prefix:
                rows = (k * S + prefix + torch.arange(S - prefix)).reshape(r * f, c * f)
                self._feed(rows, lm.box, lm)
                return ImageGrid(rows, lm.box, lm.kind)
        raise self._fail(f"tile {k} has {S} rows for a {r}x{c} grid")

    def windows(self, lm: ImageGrid, f: int) -> ImageGrid:
        (r, c), n = lm.shape, lm.positions.numel() * f * f
        if len(self.shape) != 1 or self.next + n > self.shape[0]:
            raise self._fail(f"{n} rows needed past row {self.next}")
        j = torch.arange(n)
        cell, sub = j // (f * f), j % (f * f)
        rr, cc = (cell // c) * f + sub // f, (cell % c) * f + sub % f
        rows = torch.empty(r * f, c * f, dtype=torch.long)
        rows[rr, cc] = self.next + j
        self.token_of[self.next + j] = lm.positions.flatten()[cell]
        self.next += n
        return ImageGrid(rows, lm.box, lm.kind)

    def canvas(self, lm: ImageGrid, tile_canvas: tuple[int, int, Box]) -> list[ImageGrid]:
        tiles_r, tiles_c, frame = tile_canvas
        out = []
        for t in range(tiles_r * tiles_c):
            k, S = self._take_tile(), self.shape[1]
            side = math.isqrt(S)
            prefix = S - side * side
            if prefix not in (0, 1):
                raise self._fail(f"tile {k} has {S} rows, not a square grid")
            tr, tc = divmod(t, tiles_c)
            fx0, fy0, fx1, fy1 = frame
            tw, th = (fx1 - fx0) / tiles_c, (fy1 - fy0) / tiles_r
            box = (fx0 + tc * tw, fy0 + tr * th, fx0 + (tc + 1) * tw, fy0 + (tr + 1) * th)
            rows = (k * S + prefix + torch.arange(side * side)).reshape(side, side)
            out.append(ImageGrid(rows, box, "tiles"))
            self._feed(rows, box, lm)
        return out

    def _feed(self, rows: torch.Tensor, box: Box, lm: ImageGrid) -> None:
        """Each row of ``rows`` (a grid over ``box``) feeds the ``lm`` cell holding its centre, if any."""
        R, C = rows.shape
        r, c = lm.shape
        x0, y0, x1, y1 = lm.box
        for i in range(R):
            for j in range(C):
                bx0, by0, bx1, by1 = _sub(box, R, C, i, j)
                cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
                if x0 <= cx < x1 and y0 <= cy < y1:
                    ci, cj = min(int((cy - y0) / (y1 - y0) * r), r - 1), min(int((cx - x0) / (x1 - x0) * c), c - 1)
                    self.token_of[rows[i, j]] = lm.positions[ci, cj]

    def check_used(self) -> None:
        if self.next != self.shape[0]:
            raise self._fail(f"{self.next} of {self.shape[0]} {'rows' if len(self.shape) == 1 else 'tiles'} placed")


def _sub(box: Box, rows: int, cols: int, i: int, j: int) -> Box:
    x0, y0, x1, y1 = box
    w, h = (x1 - x0) / cols, (y1 - y0) / rows
    return (x0 + j * w, y0 + i * h, x0 + (j + 1) * w, y0 + (i + 1) * h)


def _key_rows(adapter: Any, geometry: list[ImageGeometry], shape: tuple[int, ...]) -> TowerGeometry:
    """The ``"keys"`` layout (module doc): key geometry re-indexed from keys to tower rows."""
    n_rows, per = math.prod(shape), int(adapter.keys_per_tile())
    n_keys = max(int(g.positions.max()) + 1 for g in geometry)
    tiles, spare = divmod(n_keys, per)
    S = n_rows // tiles if tiles else 0
    if spare or not tiles or S * tiles != n_rows or S < per:
        raise UnsupportedModelError(f"the {adapter.family} vision tower's output {tuple(shape)} does not hold "
                                    f"{n_keys} cross-attention keys in tiles of {per}: vision-tower maps cannot "
                                    "place its patches")

    def row(keys: torch.Tensor) -> torch.Tensor:
        return keys // per * S + keys % per

    keys = torch.arange(n_keys)
    token_of = torch.full((n_rows,), -1, dtype=torch.long)
    token_of[row(keys)] = keys
    images = [ImageGeometry(g.image_index, g.size, row(g.positions),
                            [ImageGrid(row(t.positions), t.box, t.kind) for t in g.grids], row(g.separators),
                            dict(g.notes)) for g in geometry]
    return TowerGeometry(images, token_of, n_rows)
