"""Black-box perturbation methods: batched forwards, occlusion, RISE, KernelSHAP, MM-SHAP."""

import itertools
import math

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation, KernelShap
from conftest import subject_for
from PIL import Image

from mmlens.attribution.lime import lime
from mmlens.attribution.perturbation import occlusion, rise
from mmlens.attribution.perturbation_masks import cell_index_map, rise_grids, rise_mask
from mmlens.attribution.perturbation_shap import (
    WeightedLinearRegression,
    coalitions,
    exact_shapley,
    kernel_shap,
    mm_shap,
)
from mmlens.attribution.regions import Game, RegionFeatures, region_labels
from mmlens.catalog import get_method
from mmlens.errors import InputError
from mmlens.model.targets import resolve_targets
from mmlens.perturb.scoring import (
    Evaluator,
    forward_values,
    mask_token_id,
    masked_input_ids,
    perturbed_inputs,
    prompt_words,
)
from mmlens.testing.tiny_models import FAMILIES, tiny_images

PROMPT = "what color is the cat ?"
METHODS = {"occlusion": occlusion, "rise": rise, "kernel_shap": kernel_shap, "mm_shap": mm_shap, "lime": lime}



def _images(family: str) -> list[Image.Image]:
    """llava / paligemma: one image; llava_next: one 80x24 image (2 tiles); qwen: two images in one prompt."""
    if family == "llava_next":
        return tiny_images(family, 3)[:1]
    return tiny_images(family, 2 if family.startswith("qwen") else 1)


def _setup(family: str):
    lm = subject_for(family)
    batch = lm.prepare(_images(family), PROMPT, answer="red cat")
    return lm, batch, resolve_targets(lm.tokenizer, batch)


def _darken(img: Image.Image, x: int, y: int, size: int) -> Image.Image:
    arr = np.array(img)
    arr[y : y + size, x : x + size] = 0
    return Image.fromarray(arr)


@torch.no_grad()
def _single_values(lm, images, ids: torch.Tensor | None, batch, targets) -> torch.Tensor:
    """Target values of one prepare + forward (the hand-rolled reference)."""
    single = lm.prepare(images, PROMPT, answer=batch.answer_ids.tolist())
    if ids is not None:
        single.inputs["input_ids"] = ids[None]
    logits = lm.forward(single)
    return torch.stack([t.value(logits, single) for t in targets], 1)[0]


# -- batching -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_rows_equal_single_forwards(family):
    lm, batch, targets = _setup(family)
    sets = [list(batch.images)] + [[_darken(im, 4 * k, 2 * k, 12) for im in batch.images] for k in range(1, 4)]
    words = prompt_words(lm, batch)
    keep = torch.ones(len(sets), len(words), dtype=torch.bool)
    keep[2, 1] = keep[3, 0] = keep[3, 4] = False
    ids = masked_input_ids(batch, words, keep, mask_token_id(lm))
    inputs = perturbed_inputs(lm, batch, sets, ids)
    with torch.no_grad():
        logits = lm.model(**inputs, use_cache=False).logits
        for b, images in enumerate(sets):
            single = lm.prepare(images, PROMPT, answer=batch.answer_ids.tolist())
            single.inputs["input_ids"] = ids[b : b + 1]
            torch.testing.assert_close(logits[b], lm.forward(single)[0], atol=1e-4, rtol=0)
    values = forward_values(lm, batch, inputs, targets)
    assert values.shape == (len(sets), len(targets))
    assert (values[1:] - values[0]).abs().max() > 1e-4  # the perturbations change the answer's log-probs
    torch.testing.assert_close(values[0], lm.score(batch).log_probs, atol=1e-4, rtol=0)


def test_prompt_words_are_the_question_words(family):
    lm, batch, _ = _setup(family)
    words = prompt_words(lm, batch)
    tokens = [lm.tokenizer.convert_ids_to_tokens(batch.input_ids[0, w].tolist()) for w in words]
    assert tokens == [[w] for w in PROMPT.split()]


def test_perturbed_inputs_rejects_resized_images():
    lm, batch, _ = _setup("llava")
    with pytest.raises(InputError, match="image sizes"):
        perturbed_inputs(lm, batch, [[batch.images[0].resize((10, 10))]])


def test_evaluator_counts_chunks():
    lm, batch, targets = _setup("llava")
    ev = Evaluator(lm, batch, targets, batch_size=4)
    values = ev.run(10, lambda lo, hi: ([list(batch.images)] * (hi - lo), None))
    assert values.shape == (10, len(targets)) and (ev.calls, ev.rows) == (3, 10)
    torch.testing.assert_close(values, ev.reference().expand(10, -1), atol=1e-5, rtol=0)


# -- occlusion ------------------------------------------------------------------------------------------
def test_occlusion_equals_hand_rolled_loop():
    lm, batch, targets = _setup("llava")
    img = batch.images[0]  # 48 x 32
    patch, stride = 16, 8
    out = occlusion(lm, batch, targets, patch=patch, stride=stride, baseline="black", batch_size=5)
    reference = _single_values(lm, [img], None, batch, targets)
    total, count = np.zeros((len(targets), 32, 48)), np.zeros((32, 48))
    corners = [(x, y) for y in range(0, 32 - patch + 1, stride) for x in range(0, 48 - patch + 1, stride)]
    for x, y in corners:  # one prepare + score per window
        drop = (reference - _single_values(lm, [_darken(img, x, y, patch)], None, batch, targets)).numpy()
        total[:, y : y + patch, x : x + patch] += drop[:, None, None]
        count[y : y + patch, x : x + patch] += 1
    for t in range(len(targets)):
        np.testing.assert_allclose(out.pixel_maps[t][0], total[t] / count, atol=1e-4)
    for positions in prompt_words(lm, batch):
        ids = batch.input_ids[0].clone()
        ids[positions] = lm.tokenizer.pad_token_id
        drop = reference - _single_values(lm, [img], ids, batch, targets)
        torch.testing.assert_close(out.position_scores[:, positions[0]], drop, atol=1e-4, rtol=0)
    rows = len(corners) + 6
    assert out.extras["rows"] == rows and out.extras["forward_calls"] == math.ceil(rows / 5) + 1
    assert np.abs(total).max() > 1e-3  # occlusion changed something


def _pixel_forward(lm, batch, targets, t: int):
    """Target ``t``'s value for a batch of ``(k, H, W, 3)`` pixel arrays (what Captum attributes)."""
    def forward(pixels):
        rows = [[Image.fromarray(np.clip(np.rint(p.numpy()), 0, 255).astype(np.uint8))] for p in pixels]
        return forward_values(lm, batch, perturbed_inputs(lm, batch, rows), targets)[:, t]

    return forward


def test_occlusion_equals_captum_feature_ablation_per_token():
    lm, batch, targets = _setup("llava")
    img = batch.images[0]  # 48 x 32: 3 x 2 windows of 16 px
    out = occlusion(lm, batch, targets, patch=16, baseline="mean", words=False)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32))[None]
    base = x.mean(dim=(1, 2), keepdim=True).expand_as(x).contiguous()
    mask = (torch.arange(32)[:, None] // 16 * 3 + torch.arange(48)[None] // 16)[None, :, :, None].expand_as(x)
    for t in range(len(targets)):
        attr = FeatureAblation(_pixel_forward(lm, batch, targets, t)).attribute(
            x, baselines=base, feature_mask=mask, perturbations_per_eval=4)
        np.testing.assert_allclose(out.pixel_maps[t][0], attr[0, :, :, 0].numpy(), atol=1e-5)
    assert out.extras["forward_calls"] == 2  # Captum: (1 + ceil(6 / 4)) per answer token


def test_superpixel_occlusion_equals_captum_feature_ablation_over_the_segments():
    lm, batch, targets = _setup("llava")
    img = batch.images[0]
    out = occlusion(lm, batch, targets, regions="slic", n_segments=12, baseline="black", words=False)
    labels = region_labels(img, "slic", n_segments=12)
    k = int(labels.max()) + 1
    assert out.extras["regions_per_image"] == [k] and k >= 3
    x = torch.from_numpy(np.asarray(img, dtype=np.float32))[None]
    mask = torch.from_numpy(labels)[None, :, :, None].expand_as(x)
    for t in range(len(targets)):
        attr = FeatureAblation(_pixel_forward(lm, batch, targets, t)).attribute(
            x, baselines=0.0, feature_mask=mask, perturbations_per_eval=4)
        np.testing.assert_allclose(out.pixel_maps[t][0], attr[0, :, :, 0].numpy(), atol=1e-5)
        for j in range(k):  # one value per superpixel
            assert np.ptp(out.pixel_maps[t][0][labels == j]) == 0
    assert out.extras["rows"] == k and np.abs(out.pixel_maps[0][0]).max() > 1e-4


# -- every method on every family -----------------------------------------------------------------------
_SMALL = {
    "occlusion": {"patch": 12},
    "rise": {"n_masks": 10, "cells": 3},
    "kernel_shap": {"cells": 3, "n_samples": 10},
    "mm_shap": {"n_samples": 10},
    "lime": {"n_segments": 6, "n_samples": 10},
}


def _expected_calls(name: str, out, batch_size: int) -> int:
    if name == "occlusion":
        return math.ceil(out.extras["rows"] / batch_size) + 1
    if name == "rise":
        return math.ceil(out.extras["n_masks"] / batch_size)
    return math.ceil(out.extras["n_samples"] / batch_size)  # distinct coalitions, one forward per Captum batch


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("family", FAMILIES)
def test_method_runs_on_every_family(name, family):
    lm, batch, targets = _setup(family)
    info = get_method(name)
    assert (info.leaf, info.tier) == ("data/input-output", "black-box")
    out = info.fn(lm, batch, targets, batch_size=4, **_SMALL[name])
    assert out.position_scores.shape == (len(targets), batch.seq_len)
    assert torch.isfinite(out.position_scores).all()
    assert len(out.pixel_maps) == len(targets)
    for maps in out.pixel_maps:
        assert [m.shape for m in maps] == [(img.height, img.width) for img in batch.images]
        assert all(np.isfinite(m).all() for m in maps)
    assert out.extras["forward_calls"] == _expected_calls(name, out, 4)
    assert out.extras["rows"] <= out.extras["forward_calls"] * 4
    # image-token positions carry the pooled pixel map, so the explainer can use either
    assert out.position_scores[:, batch.image_positions()].abs().sum() > 0


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl", "paligemma"])
@pytest.mark.parametrize("name, regions", [("occlusion", "felzenszwalb"), ("kernel_shap", "slic")])
def test_superpixel_maps_are_constant_on_each_region_of_each_image(family, name, regions):
    lm, batch, targets = _setup(family)
    out = METHODS[name](lm, batch, targets, regions=regions, n_segments=8, batch_size=8,
                        **({"n_samples": 16} if name == "kernel_shap" else {}))
    assert out.extras["regions"] == regions and len(out.extras["regions_per_image"]) == len(batch.images)
    for i, img in enumerate(batch.images):
        labels = region_labels(img, regions, n_segments=8)
        assert out.extras["regions_per_image"][i] == int(labels.max()) + 1
        for t in range(len(targets)):
            m = out.pixel_maps[t][i]
            assert m.shape == (img.height, img.width)
            assert all(np.ptp(m[labels == k]) == 0 for k in range(int(labels.max()) + 1))
    assert max(np.abs(m).max() for maps in out.pixel_maps for m in maps) > 1e-5


# -- RISE -----------------------------------------------------------------------------------------------
def test_rise_is_seeded_and_follows_the_formula():
    lm, batch, targets = _setup("llava")
    a = rise(lm, batch, targets, n_masks=6, cells=4, p=0.4, baseline="black", batch_size=4, seed=3)
    b = rise(lm, batch, targets, n_masks=6, cells=4, p=0.4, baseline="black", batch_size=4, seed=3)
    c = rise(lm, batch, targets, n_masks=6, cells=4, p=0.4, baseline="black", batch_size=4, seed=4)
    np.testing.assert_array_equal(a.pixel_maps[0][0], b.pixel_maps[0][0])
    assert np.abs(a.pixel_maps[0][0] - c.pixel_maps[0][0]).max() > 1e-3
    img = batch.images[0]
    grids, shifts = rise_grids(6, 1, 4, 0.4, 3)
    expected = np.zeros((len(targets), img.height, img.width))
    masks, values = [], []
    for m in range(6):
        mask = rise_mask(grids[m, 0], shifts[m, 0], img.size)
        assert mask.shape == (img.height, img.width) and 0 <= mask.min() and mask.max() <= 1
        masked = Image.fromarray(np.clip(np.rint(np.array(img) * mask[..., None]), 0, 255).astype(np.uint8))
        masks.append(mask)
        values.append(_single_values(lm, [masked], None, batch, targets).numpy())
        expected += values[-1][:, None, None] * mask
    raw = rise(lm, batch, targets, n_masks=6, cells=4, p=0.4, baseline="black", batch_size=4, seed=3, centered=False)
    mean = np.mean(values, axis=0)
    for t in range(len(targets)):
        np.testing.assert_allclose(raw.pixel_maps[t][0], expected[t] / (6 * 0.4), atol=1e-4)
        centred = (expected[t] - mean[t] * np.sum(masks, axis=0)) / (6 * 0.4)
        np.testing.assert_allclose(a.pixel_maps[t][0], centred, atol=1e-4)
    assert a.extras["forward_calls"] == 2 and a.extras["rows"] == 6


# -- SHAP -----------------------------------------------------------------------------------------------
def test_weighted_ridge_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    x, y, w = torch.rand(40, 5, generator=g), torch.rand(40, generator=g), torch.rand(40, generator=g) + 0.1
    for alpha in (0.0, 2.0):
        model = WeightedLinearRegression(alpha)
        model.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, w), batch_size=40))
        # reference: minimise sum w (y - b - x c)^2 + alpha |c|^2 with an unpenalised intercept
        xd, yd, wd = x.double(), y.double(), w.double()
        xm, ym = (wd[:, None] * xd).sum(0) / wd.sum(), (wd * yd).sum() / wd.sum()
        xc, yc = xd - xm, yd - ym
        coef = torch.linalg.solve(xc.T @ (wd[:, None] * xc) + alpha * torch.eye(5, dtype=torch.float64),
                                  xc.T @ (wd * yc))
        torch.testing.assert_close(model.representation().flatten().double(), coef, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.bias().double().reshape(()), ym - xm @ coef, atol=1e-5, rtol=0)


def test_lime_equals_direct_captum_call():
    from captum.attr import Lime
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    lm, batch, targets = _setup("qwen2_vl")  # two images, superpixels on each, + 6 words
    out = lime(lm, batch, targets, n_segments=5, n_samples=40, batch_size=8, seed=5)
    features = RegionFeatures(lm, batch, regions="slic", n_segments=5)
    assert out.extras["regions_per_image"] == features.counts and out.extras["regions"] == "slic"
    game = Game(Evaluator(lm, batch, targets, batch_size=8), features)
    n = features.n_players
    for t in range(len(targets)):
        explainer = Lime(game, interpretable_model=WeightedLinearRegression(1.0),
                         similarity_func=get_exp_kernel_similarity_function("cosine", 0.25))
        torch.manual_seed(5)
        direct = explainer.attribute(torch.ones(1, n), baselines=torch.zeros(1, n), target=t,
                                     feature_mask=torch.arange(n)[None], n_samples=40, perturbations_per_eval=8)[0]
        torch.testing.assert_close(torch.tensor(out.extras["phi"][t]), direct, atol=1e-5, rtol=0)
        first = features.counts[0]
        np.testing.assert_allclose(out.pixel_maps[t][1], direct.numpy()[first + features.maps[1]], atol=1e-6)
    assert np.abs(np.array(out.extras["phi"])).max() > 1e-4
    assert out.extras["forward_calls"] == 5  # all targets from the forwards of the first


def test_kernel_shap_equals_direct_captum_call():
    lm, batch, targets = _setup("qwen2_vl")  # two images: 2 x 9 cells + 6 words
    out = kernel_shap(lm, batch, targets, cells=3, n_samples=40, batch_size=8, seed=5)
    features = RegionFeatures(lm, batch, 3)
    game = Game(Evaluator(lm, batch, targets, batch_size=8), features)
    n = features.n_players
    assert n == 2 * 9 + 6
    for t in range(len(targets)):
        ks = KernelShap(game)
        ks.interpretable_model = WeightedLinearRegression()  # scikit-learn's LinearRegression fits the same
        torch.manual_seed(5)
        direct = ks.attribute(torch.ones(1, n), baselines=torch.zeros(1, n), target=t,
                              feature_mask=torch.arange(n)[None], n_samples=40, perturbations_per_eval=8)[0]
        torch.testing.assert_close(torch.tensor(out.extras["phi"][t]), direct, atol=1e-5, rtol=0)
        cells = cell_index_map(batch.images[1].size, 3)
        np.testing.assert_allclose(out.pixel_maps[t][1], direct.numpy()[9 + cells], atol=1e-6)
        for w, positions in enumerate(features.words):
            assert torch.allclose(out.position_scores[t, positions], direct[18 + w])
    # all targets from the forwards of the first: one forward per Captum batch of distinct coalitions
    assert out.extras["forward_calls"] == 5 and out.extras["rows"] <= 40


def test_weighted_least_squares_matches_numpy():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(30, 5, generator=g) > 0.5).float()
    y = torch.randn(30, generator=g)
    w = torch.rand(30, generator=g) + 0.1
    model = WeightedLinearRegression()
    model.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, w), batch_size=30))
    design = np.c_[x.numpy(), np.ones(30)] * np.sqrt(w.numpy())[:, None]
    coef = np.linalg.lstsq(design, y.numpy() * np.sqrt(w.numpy()), rcond=None)[0]
    np.testing.assert_allclose(model.representation().numpy(), coef[:5], atol=1e-5)
    np.testing.assert_allclose(model.bias().numpy(), coef[5:], atol=1e-5)


def test_exact_shapley_matches_permutation_definition():
    n = 4
    g = torch.Generator().manual_seed(1)
    table = torch.randn(2**n, 2, generator=g, dtype=torch.float64)
    phi = exact_shapley(table)
    code = lambda players: sum(1 << j for j in players)  # noqa: E731
    brute = torch.zeros(2, n, dtype=torch.float64)
    for order in itertools.permutations(range(n)):
        for k, j in enumerate(order):
            brute[:, j] += table[code(order[: k + 1])] - table[code(order[:k])]
    torch.testing.assert_close(phi.double(), brute / math.factorial(n), atol=1e-6, rtol=0)
    assert coalitions(n).shape == (16, n)


def test_mm_shap_exact_shares_and_efficiency():
    lm, batch, targets = _setup("llava")
    out = mm_shap(lm, batch, targets, cells=2, baseline="black", batch_size=64)  # 4 cells + 6 words = 10
    assert out.extras["estimator"] == "exact" and out.extras["rows"] == 1024 and out.extras["forward_calls"] == 16
    phi = torch.tensor(out.extras["phi"])
    full = _single_values(lm, batch.images, None, batch, targets)
    empty_ids = batch.input_ids[0].clone()
    for positions in prompt_words(lm, batch):
        empty_ids[positions] = lm.tokenizer.pad_token_id
    black = Image.new("RGB", batch.images[0].size)
    empty = _single_values(lm, [black], empty_ids, batch, targets)
    torch.testing.assert_close(phi.sum(1), full - empty, atol=1e-4, rtol=0)  # efficiency
    text, image = phi[:, 4:].abs().sum(1), phi[:, :4].abs().sum(1)
    torch.testing.assert_close(torch.tensor(out.extras["t_shap"]), text / (text + image), atol=1e-6, rtol=0)
    assert all(abs(a + b - 1) < 1e-9 for a, b in zip(out.extras["t_shap"], out.extras["i_shap"]))
    perm = mm_shap(lm, batch, targets, cells=2, baseline="black", estimator="permutation", n_samples=2)
    torch.testing.assert_close(torch.tensor(perm.extras["phi"]).sum(1), full - empty, atol=1e-4, rtol=0)


# -- bad options ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, options, words",
    [
        ("occlusion", {"patch": 0}, "patch=0"),
        ("occlusion", {"patch": 33}, "patch=33"),  # the llava image is 48 x 32
        ("occlusion", {"patch": 8, "stride": 9}, "stride=9"),
        ("occlusion", {"baseline": "grey"}, "baseline='grey'"),
        ("occlusion", {"batch_size": 0}, "batch_size=0"),
        ("rise", {"n_masks": 0}, "n_masks=0"),
        ("rise", {"p": 0}, "p=0"),
        ("rise", {"p": 1.0}, "p=1.0"),
        ("rise", {"cells": 0}, "cells=0"),
        ("kernel_shap", {"n_samples": 0}, "n_samples=0"),
        ("kernel_shap", {"cells": 40}, "cells=40"),
        ("mm_shap", {"n_samples": -1}, "n_samples=-1"),
        ("mm_shap", {"estimator": "magic"}, "estimator='magic'"),
        ("mm_shap", {"cells": 8, "estimator": "exact"}, "estimator='exact'"),
        ("rise", {"seed": -1}, "seed=-1"),
        ("occlusion", {"regions": "grid"}, "regions='grid'"),  # occlusion's grid is its windows
        ("occlusion", {"regions": "slic", "n_segments": 0}, "n_segments=0"),
        ("kernel_shap", {"regions": "voronoi"}, "regions='voronoi'"),
        ("lime", {"regions": "voronoi"}, "regions='voronoi'"),
        ("lime", {"kernel_width": 0}, "kernel_width=0"),
        ("lime", {"alpha": -1.0}, "alpha=-1.0"),
    ],
)
def test_bad_options_raise_one_line_input_error(name, options, words):
    lm, batch, targets = _setup("llava")
    with pytest.raises(InputError) as err:
        METHODS[name](lm, batch, targets, **options)
    message = str(err.value)
    assert words in message and "\n" not in message


def test_batch_without_answer_is_refused():
    lm, batch, targets = _setup("llava")
    bare = lm.prepare(batch.images, PROMPT)
    with pytest.raises(InputError, match="no answer"):
        occlusion(lm, bare, targets)


def test_unseeded_runs_follow_torch_rng():
    lm, batch, targets = _setup("llava")
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(rise(lm, batch, targets, n_masks=4, cells=3))
    assert runs[0].extras["seed"] == runs[1].extras["seed"]
    np.testing.assert_array_equal(runs[0].pixel_maps[0][0], runs[1].pixel_maps[0][0])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_methods_plug_into_explain(name):
    import mmlens

    lm = subject_for("llava")
    options = {**_SMALL[name], "batch_size": 8}
    ex = mmlens.explain(lm, _images("llava"), PROMPT, method=name, answer="red cat", seed=3, **options)
    again = mmlens.explain(lm, _images("llava"), PROMPT, method=name, answer="red cat", seed=3, **options)
    assert ex.image_map(0).shape == (32, 48) and np.isfinite(ex.image_map(0)).all()
    np.testing.assert_array_equal(ex.image_map(0), again.image_map(0))  # explain's seed decides
