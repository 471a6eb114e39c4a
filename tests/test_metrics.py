"""Map metrics on hand-made maps and masks with known answers."""

import numpy as np
import pytest

from mmlens import InputError
from mmlens.evaluation.registry import get_metric, metrics
from mmlens.evaluation.metrics.energy_pointing_game import energy_in_mask
from mmlens.evaluation.metrics.pointing_game import pointing_game
from mmlens.evaluation.metrics.sparseness import sparseness
from mmlens.evaluation.metrics.topk_iou import topk_iou


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
