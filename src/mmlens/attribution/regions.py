"""Image regions for the perturbation methods: a grid of cells, or superpixels that follow the image's edges.

Occlusion, KernelSHAP and LIME perturb an image one region at a time (or a coalition of regions). A grid
cuts objects wherever the grid lines fall; superpixels (scikit-image's SLIC or Felzenszwalb segmentation,
as in LIME's image explainer) follow colour edges, so a region tends to be one object or part of one and
the map takes its outline. The segmentation comes from the image alone, never from the model.

>>> import numpy as np
>>> from PIL import Image
>>> img = Image.new("RGB", (32, 32), (230, 230, 230))
>>> img.paste((220, 40, 40), (8, 8, 20, 20))
>>> labels = region_labels(img, "felzenszwalb", n_segments=4)
>>> int(labels.max()) + 1, len(np.unique(labels[8:20, 8:20]))
(2, 1)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from mmlens.attribution.output import MethodOutput
from mmlens.attribution.perturbation_masks import (
    baseline_array,
    blend,
    cell_index_map,
    image_array,
    position_scores,
)
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.perturb.scoring import (
    Evaluator,
    mask_token_id,
    masked_input_ids,
    prompt_words,
)
from mmlens.util.options import check_choice, check_int

#: Region kinds for KernelSHAP / LIME: a ``cells x cells`` grid or a superpixel segmentation.
REGIONS = ("grid", "slic", "felzenszwalb")
#: Segmentations (occlusion accepts these besides its sliding windows).
SEGMENTATIONS = ("slic", "felzenszwalb")


def region_labels(image: Image.Image, regions: str = "grid", cells: int = 8, n_segments: int = 50) -> np.ndarray:
    """``(H, W)`` int map of the region holding each pixel of ``image``, labels ``0 .. K-1``.

    - ``"grid"``: the ``cells x cells`` grid, row-major;
    - ``"slic"``: SLIC superpixels (k-means in colour + position), about ``n_segments`` of them;
    - ``"felzenszwalb"``: Felzenszwalb's graph segmentation, regions of at least ``H*W / (4 n_segments)``
      pixels (fewer regions on flat images: one per uniform area).

    Deterministic: the same image always gives the same regions. Superpixels need scikit-image (a
    dependency of mmlens).
    """
    check_choice("regions", regions, REGIONS)
    if regions == "grid":
        return cell_index_map(image.size, cells)
    n_segments = check_int("n_segments", n_segments, 1)
    arr = np.asarray(image.convert("RGB"))
    if regions == "slic":
        from skimage.segmentation import slic

        labels = slic(arr, n_segments=n_segments, compactness=10.0, start_label=0, channel_axis=-1)
    else:
        from skimage.segmentation import felzenszwalb

        min_size = max(1, arr.shape[0] * arr.shape[1] // (4 * n_segments))
        labels = felzenszwalb(arr, scale=100.0, sigma=0.5, min_size=min_size, channel_axis=-1)
    # consecutive labels in order of first appearance (row-major)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].reshape(labels.shape).astype(np.int64)


def paint(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32 map with ``values[k]`` on the pixels of region ``k``.

    >>> paint(np.array([[0, 1], [1, 1]]), np.array([2.0, 5.0])).tolist()
    [[2.0, 5.0], [5.0, 5.0]]
    """
    return np.asarray(values, dtype=np.float32)[labels]


# -- players: image regions and prompt words ------------------------------------------------------------------
class RegionFeatures:
    """Players: the regions of each image (:func:`region_labels`; image by image), then the prompt words.

    >>> feats = RegionFeatures(lm, batch, cells=2)                           # doctest: +SKIP
    >>> feats.n_players, feats.n_image_players                               # doctest: +SKIP
    (10, 4)
    """

    def __init__(self, subject: Subject, batch: Batch, cells: int = 8, baseline: str = "mean", words: bool = True,
                 regions: str = "grid", n_segments: int = 50):
        self.batch, self.regions, self.cells = batch, regions, cells
        self.maps = [region_labels(img, regions, cells, n_segments) for img in batch.images]
        self.counts = [int(m.max()) + 1 for m in self.maps]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(int)
        self.arrays = [image_array(img) for img in batch.images]
        self.bases = [baseline_array(img, baseline) for img in batch.images]
        self.words = prompt_words(subject, batch) if words else []
        self.fill = mask_token_id(subject) if self.words else 0
        self.n_image_players = int(self.offsets[-1])

    @property
    def n_players(self) -> int:
        return self.n_image_players + len(self.words)

    def rows(self, z: torch.Tensor) -> tuple[list[list[Image.Image]], torch.Tensor | None]:
        """Perturbed rows for coalitions ``z`` ``(k, n_players)`` (1 = present)."""
        z = (z > 0.5).cpu()
        sets = []
        for row in z:
            images = []
            for i, img in enumerate(self.batch.images):
                present = row[self.offsets[i] : self.offsets[i + 1]].numpy()
                images.append(img if present.all() else
                              blend(self.arrays[i], self.bases[i], paint(self.maps[i], present)))
            sets.append(images)
        keep = z[:, self.n_image_players :]
        ids = masked_input_ids(self.batch, self.words, keep, self.fill) if self.words and not keep.all() else None
        return sets, ids

    def output(self, phi: torch.Tensor, extras: dict[str, Any]) -> MethodOutput:
        """MethodOutput from player values ``phi`` ``(T, n_players)``: region values painted on their pixels,
        word values on the words' token positions."""
        phi_np = phi.double().numpy()
        pixel_maps = [[paint(m, phi_np[t, self.offsets[i] : self.offsets[i + 1]]) for i, m in enumerate(self.maps)]
                      for t in range(phi.shape[0])]
        scores = position_scores(self.batch, phi.shape[0], pixel_maps, self.words, phi[:, self.n_image_players :])
        layout = {"cells": self.cells} if self.regions == "grid" else {}
        extras = {**extras, "phi": phi.tolist(), "regions": self.regions, **layout,
                  "regions_per_image": self.counts, "words": len(self.words), "image_players": self.n_image_players}
        return MethodOutput(scores, pixel_maps, extras)


class Game:
    """Coalition values ``v(z)`` ``(k, n_targets)`` for binary ``z`` ``(k, n_players)``; one forward per call
    over the coalitions not seen before (the Captum forward function)."""

    def __init__(self, evaluator: Evaluator, features: RegionFeatures, bar: Any = None):
        self.ev, self.features, self.bar = evaluator, features, bar
        self.cache: dict[bytes, torch.Tensor] = {}

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        keys = [bytes(row) for row in (z > 0.5).to(torch.uint8).cpu().numpy()]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            missing = torch.tensor(np.stack([np.frombuffer(k, dtype=np.uint8) for k in todo]))
            for key, value in zip(todo, self.ev.values(*self.features.rows(missing))):
                self.cache[key] = value
            if self.bar is not None:
                self.bar.update(1)
        return torch.stack([self.cache[k] for k in keys]).to(z.device)
