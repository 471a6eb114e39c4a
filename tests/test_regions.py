"""Image regions for perturbation methods: grid cells and superpixels (mmlens.attribution.regions)."""

import numpy as np
import pytest

from mmlens.attribution.perturbation_masks import cell_index_map
from mmlens.attribution.regions import REGIONS, paint, region_labels
from mmlens.data import ShapesVQA
from mmlens.errors import InputError


def _purity(labels: np.ndarray, mask: np.ndarray) -> float:
    """Share of the object's pixels that lie in regions at least 90% inside the object."""
    pure = 0
    for k in np.unique(labels[mask]):
        region = labels == k
        if mask[region].mean() >= 0.9:
            pure += int((region & mask).sum())
    return pure / mask.sum()


@pytest.fixture(scope="module")
def samples():
    ds = ShapesVQA(image_size=64, seed=11)
    return [s for s in ds.samples(40) if s.evidence == "object"][:20]


def test_grid_regions_are_the_cells():
    img = ShapesVQA(image_size=48, seed=0).sample(0).image
    np.testing.assert_array_equal(region_labels(img, "grid", cells=4), cell_index_map(img.size, 4))


@pytest.mark.parametrize("kind", REGIONS)
def test_labels_are_consecutive_and_deterministic(kind, samples):
    for s in samples[:5]:
        labels = region_labels(s.image, kind, n_segments=30)
        assert labels.shape == (64, 64) and labels.dtype == np.int64
        assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
        np.testing.assert_array_equal(labels, region_labels(s.image, kind, n_segments=30))


def test_more_segments_asked_gives_more_slic_regions(samples):
    few = [region_labels(s.image, "slic", n_segments=10).max() + 1 for s in samples]
    many = [region_labels(s.image, "slic", n_segments=80).max() + 1 for s in samples]
    assert np.mean(many) > 3 * np.mean(few)


@pytest.mark.parametrize("kind", ["slic", "felzenszwalb"])
def test_superpixels_follow_the_object_outline_and_the_grid_does_not(kind, samples):
    seg = np.mean([_purity(region_labels(s.image, kind, n_segments=50), s.mask) for s in samples])
    grid = np.mean([_purity(region_labels(s.image, "grid", cells=8), s.mask) for s in samples])
    print(kind, round(seg, 3), "grid", round(grid, 3))
    assert seg >= 0.9 and grid <= 0.6


def test_paint_puts_each_value_on_its_region():
    labels = np.array([[0, 0, 1], [2, 2, 1]])
    np.testing.assert_array_equal(paint(labels, np.array([1.0, -2.0, 3.0])), [[1, 1, -2], [3, 3, -2]])


@pytest.mark.parametrize("kwargs, words", [({"regions": "voronoi"}, "regions='voronoi'"),
                                           ({"regions": "slic", "n_segments": 0}, "n_segments=0")])
def test_bad_region_options_are_one_line(kwargs, words, samples):
    with pytest.raises(InputError) as err:
        region_labels(samples[0].image, **kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)
