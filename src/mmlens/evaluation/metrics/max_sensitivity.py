"""Max-sensitivity (Yeh et al. 2019): how much the map moves under small input noise.

The same method (same answer tokens, target, seed and options) runs again on ``n`` noisy copies of the image,
drawn as Yeh et al. define it: uniformly from the L-infinity ball of radius ``radius`` around the image (each
pixel and channel moves by ``U(-radius, radius)`` in 0-255 intensity units, seeded), then rounded and clipped to
valid pixels (both stay inside the ball). The score is the Monte Carlo maximum over the copies of
``||map_j - map|| / ||map||`` (Frobenius norms over the pixel map): 0 for a map that does not move; lower is
better.

Departure from Yeh et al.: they take the raw norm ``||map_j - map||``; here it is divided by ``||map||``, so
methods whose maps live on different scales can share one column. Degenerate maps: an all-zero map has no
scale, so it scores NaN (left out of the benchmark's mean and counted in its NaN column); a constant non-zero
map is scored like any other.

Read it next to the faithfulness columns: a map that ignores the input (the random and uniform baselines)
is perfectly "robust".

>>> max_sensitivity(lm, ex, n=5, radius=4.0).score              # doctest: +SKIP
0.12
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmlens.errors import InputError
from mmlens.evaluation.registry import register_metric
from mmlens.model.subject import Subject
from mmlens.perturb.scoring import check_int
from mmlens.results.explanation import Explanation, TargetKey


@dataclass
class SensitivityScore:
    """Relative map change under each noisy copy; ``score`` = the maximum."""

    ratios: list[float]
    radius: float

    @property
    def score(self) -> float:
        return float(max(self.ratios)) if self.ratios and not np.isnan(self.ratios).any() else float("nan")

    def __float__(self) -> float:
        return self.score


def noisy_image(image: Image.Image, radius: float, rng: np.random.Generator) -> Image.Image:
    """A uniform draw from the L-inf ball of radius ``radius`` around ``image``: ``U(-radius, radius)`` per pixel
    and channel, rounded and clipped to uint8 (no pixel moves by more than ``radius``)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    out = np.clip(np.rint(arr + rng.uniform(-radius, radius, arr.shape)), 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="RGB")


def relative_change(new: np.ndarray, ref: np.ndarray) -> float:
    """``||new - ref|| / ||ref||`` (NaN when ``ref`` is all zeros or a map is not finite).

    >>> relative_change(np.array([1.0, 1.0]), np.array([1.0, 0.0]))
    1.0
    """
    new, ref = np.asarray(new, np.float64), np.asarray(ref, np.float64)
    norm = np.linalg.norm(ref)
    if norm == 0 or not np.isfinite(norm) or not np.isfinite(new).all():
        return float("nan")
    return float(np.linalg.norm(new - ref) / norm)


@register_metric("max_sensitivity", "robustness", higher_is_better=False, needs_model=True,
                 summary="max relative change ||map' - map|| / ||map|| over a few seeded copies of the image "
                         "drawn uniformly from the L-inf ball of radius r (Yeh et al.; divided by ||map||)",
                 degenerate="nan", degenerate_note="an all-zero map has no scale: NaN, counted; a constant "
                                                   "non-zero map is scored")
def max_sensitivity(
    subject: Subject,
    ex: Explanation,
    *,
    target: TargetKey = None,
    image: int = 0,
    n: int = 5,
    radius: float = 4.0,
    seed: int = 0,
) -> SensitivityScore:
    """Max over ``n`` copies of image ``image`` drawn uniformly from the L-inf ball of radius ``radius``
    intensity levels (from ``default_rng(seed)``) of the relative change of the map of ``target`` (lower is
    better)."""
    from mmlens.evaluation.baselines import reexplain

    n = check_int("n", n, 1)
    if not float(radius) > 0:
        raise InputError(f"radius={radius}: pass an L-inf radius > 0 (in 0-255 intensity units)")
    t, i = ex._index(target), ex._image(image)
    ref = ex.image_map(t, i)
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(n):
        images = list(ex.images)
        images[i] = noisy_image(images[i], float(radius), rng)
        ratios.append(relative_change(reexplain(subject, ex, images).image_map(t, i), ref))
    return SensitivityScore(ratios, float(radius))
