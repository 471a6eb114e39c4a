"""Map metrics on hand-made maps and masks with known answers."""

import numpy as np
import pytest

from mmlens import InputError
from mmlens.evaluation.metrics.energy_pointing_game import energy_in_mask
from mmlens.evaluation.metrics.pointing_game import pointing_game
from mmlens.evaluation.metrics.sparseness import sparseness
from mmlens.evaluation.metrics.topk_iou import topk_iou
from mmlens.evaluation.registry import get_metric, metrics


@pytest.fixture
def mask():
    m = np.zeros((32, 32), bool)
    m[4:12, 20:30] = True  # 80 of 1024 pixels
    return m


def test_map_equal_to_mask_scores_perfectly(mask):
    heat = mask.astype(float)
    assert pointing_game(heat, mask) == 1.0
    assert energy_in_mask(heat, mask) == 1.0
    assert topk_iou(heat, mask) == 1.0


def test_inverted_map_scores_zero(mask):
    heat = (~mask).astype(float)
    assert pointing_game(heat, mask) == 0.0
    assert energy_in_mask(heat, mask) == 0.0
    assert topk_iou(heat, mask) == 0.0


def test_random_maps_score_near_chance(mask):
    rng = np.random.default_rng(0)
    share = mask.mean()
    points = [pointing_game(rng.random(mask.shape), mask) for _ in range(2000)]
    energy = [energy_in_mask(rng.random(mask.shape), mask) for _ in range(200)]
    assert abs(np.mean(points) - share) < 0.025
    assert abs(np.mean(energy) - share) < 0.005
    flat = np.ones(mask.shape)
    assert pointing_game(flat, mask) == pytest.approx(share)
    assert energy_in_mask(flat, mask) == pytest.approx(share)


def test_pointing_tolerance_and_peak_just_outside(mask):
    heat = np.zeros(mask.shape)
    heat[3, 25] = 1.0  # one pixel above the mask
    assert pointing_game(heat, mask) == 0.0
    assert pointing_game(heat, mask, tolerance=1) == 1.0


def test_pointing_tolerance_is_euclidean_and_scale_aware(mask):
    """Zhang et al.'s tolerance is a Euclidean radius (15 px at ~500 px). A peak diagonally off the mask's
    corner by (2, 2) px is 2.83 px away: a hit at tolerance 3 (an L1 / diamond dilation puts it 4 px away: a
    miss), a miss at tolerance 2.8."""
    heat = np.zeros(mask.shape)
    heat[4 - 2, 20 - 2] = 1.0  # mask's top-left corner is (4, 20)
    assert pointing_game(heat, mask, tolerance=3) == 1.0
    assert pointing_game(heat, mask, tolerance=2.8) == 0.0
    # scale-aware: the same geometry at 2x and 4x the resolution scores the same with one tolerance_share
    share = 3 / 32  # 3 px at 32 px
    for scale in (1, 2, 4):
        big_mask = np.kron(mask, np.ones((scale, scale), bool))
        big = np.zeros(big_mask.shape)
        big[(4 - 2) * scale, (20 - 2) * scale] = 1.0  # 2.83 * scale px from the mask
        assert pointing_game(big, big_mask, tolerance_share=share) == 1.0
        assert pointing_game(big, big_mask, tolerance_share=2.7 / 32) == 0.0
    from mmlens.evaluation.metrics.pointing_game import (
        REFERENCE_TOLERANCE_SHARE,
        tolerance_pixels,
    )

    assert tolerance_pixels((375, 500), tolerance_share=REFERENCE_TOLERANCE_SHARE) == pytest.approx(15.0)
    with pytest.raises(InputError, match="tolerance_share"):
        pointing_game(heat, mask, tolerance_share=2)


def test_topk_iou_breaks_ties_at_random_not_in_reading_order():
    """A constant map carries no ranking: its top-k pixels are a random set (chance level), not the first rows
    (reading order scored a mask on the top row as a perfect hit: IoU 1.0)."""
    top_row = np.zeros((16, 16), bool)
    top_row[0] = True  # 16 of 256 pixels
    flat = np.ones((16, 16))
    scores = [topk_iou(flat, top_row, seed=s) for s in range(200)]
    # 16 random pixels: about one in the mask, so IoU ~ 1 / 31; never close to 1
    assert max(scores) < 0.3 and np.mean(scores) == pytest.approx(1 / 31, abs=0.02)
    assert topk_iou(flat, top_row) == topk_iou(flat, top_row, seed=0)  # seeded
    # ties only among the pixels at the cut: a map with 8 clear winners keeps them
    heat = np.zeros((16, 16))
    heat[0, :8] = 1.0
    assert min(topk_iou(heat, top_row, seed=s) for s in range(20)) >= 8 / 24


def test_sparseness_orders_maps():
    flat, peaked = np.ones((8, 8)), np.zeros((8, 8))
    peaked[0, 0] = 1
    mid = np.zeros((8, 8))
    mid[:4] = 1
    assert sparseness(flat) == 0.0
    assert sparseness(peaked) == pytest.approx(1 - 1 / 64)
    assert sparseness(flat) < sparseness(mid) < sparseness(peaked)


def test_catalog_declares_category_and_direction():
    names = {m.name: m for m in metrics()}
    assert {"pointing_game", "energy_in_mask", "topk_iou", "sparseness"} <= set(names)
    assert names["pointing_game"].category == "localisation" and names["pointing_game"].higher_is_better
    with pytest.raises(InputError, match="unknown metric"):
        get_metric("accuracy")


def test_bad_maps(mask):
    with pytest.raises(InputError, match="differs from mask shape"):
        pointing_game(np.ones((8, 8)), mask)
    with pytest.raises(InputError, match="empty"):
        energy_in_mask(np.ones((8, 8)), np.zeros((8, 8), bool))
