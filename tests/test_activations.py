"""Activation collection (mmlens.runs.activations) and its reader: the stored rows are the model's activations at
the right positions, batching changes nothing, the reader streams every row once, bad points are one line."""

import numpy as np
import pytest
import torch

import mmlens
from mmlens.data.shapes_vqa import ShapesVQA
from mmlens.errors import InputError
from mmlens.model.positions import cell_overlaps
from mmlens.runs.activation_reader import ActivationReader
from mmlens.runs.activations import collect_activations, resolve_points


@pytest.fixture(scope="module")
def demo():
    return mmlens.load("demo")


@pytest.fixture(scope="module")
def collected(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("acts") / "run"
    collect_activations(demo, "lm.blocks.*.resid_post,projector.out", "object", out, n=12, shard_size=5,
                        batch_size=4, show_progress=False)
    return ActivationReader(out)


def test_rows_are_the_models_activations_at_the_object(demo, collected):
    x, meta = collected.load("lm.blocks.1.resid_post")
    assert x.shape == (collected.n_rows, 128) and collected.n_rows > 12
    ds = ShapesVQA(image_size=64, seed=0)
    for index in (0, 5, 11):  # recompute one sample at a time: equal to the batched collection
        sample = ds.sample(index)
        batch = demo.prepare(sample.image, sample.question)
        with demo.trace() as tr:
            tr.capture("lm.blocks.1.resid_post")
            demo.forward(batch)
        keep = meta["index"] == index
        if sample.evidence != "object":
            assert not keep.any()
            continue
        positions = meta["position"][keep]
        np.testing.assert_allclose(x[keep], tr["lm.blocks.1.resid_post"][0, positions].numpy(), atol=1e-4)
        # every stored cell overlaps the evidence mask by at least half (or is the best cell of a small object)
        geometry = batch.geometry[0]
        boxes = geometry.position_boxes()
        shares = [cell_overlaps(sample.mask, boxes[int(p)][0]) for p in positions]
        assert min(shares) >= 0.5 or len(set(shares)) == 1
        assert set(meta["object_color"][keep]) == {sample.answer if sample.question_type == "color" else meta["color"][keep][0]}


def test_projector_rows_match_the_first_block_input(demo, collected):
    x_proj, meta = collected.load("projector.out", columns=["index", "position"])
    assert x_proj.shape[0] == collected.n_rows
    sample = ShapesVQA(image_size=64, seed=0).sample(int(meta["index"][0]))
    batch = demo.prepare(sample.image, sample.question)
    with demo.trace() as tr:
        tr.capture("lm.blocks.0.resid_pre")
        demo.forward(batch)
    keep = meta["index"] == meta["index"][0]
    np.testing.assert_allclose(x_proj[keep], tr["lm.blocks.0.resid_pre"][0, meta["position"][keep]].numpy(), atol=1e-5)


def test_reader_streams_every_row_once(collected):
    x_all, meta_all = collected.load("lm.blocks.0.resid_post", columns=["index", "row"])
    for shuffle in (False, True):
        seen, sizes = [], []
        for x, meta in collected.batches("lm.blocks.0.resid_post", batch_size=7, columns=["index", "row"],
                                         shuffle=shuffle, seed=3):
            sizes.append(len(x))
            seen += [(int(i), int(r)) for i, r in zip(meta["index"], meta["row"])]
            pos = {(int(i), int(r)): k for k, (i, r) in enumerate(zip(meta_all["index"], meta_all["row"]))}
            np.testing.assert_array_equal(x, x_all[[pos[(int(i), int(r))] for i, r in zip(meta["index"], meta["row"])]])
        assert sorted(seen) == sorted(zip(meta_all["index"].tolist(), meta_all["row"].tolist()))
        assert all(s == 7 for s in sizes[:-1]) and 0 < sizes[-1] <= 7
        assert (seen != sorted(seen)) == shuffle
    kept, _ = collected.load("lm.blocks.0.resid_post", rows=lambda m: m["index"] < 4)
    assert 0 < len(kept) < len(x_all)


def test_groups_float16_and_text_positions(demo, tmp_path):
    collect_activations(demo, "lm.blocks.2.resid_post", "question", tmp_path / "q", n=3, dtype="float16",
                        show_progress=False)
    reader = ActivationReader(tmp_path / "q")
    x, meta = reader.load("lm.blocks.2.resid_post")
    first = meta["index"] == 0
    assert "".join(meta["token"][first]).replace(" ", "") == ShapesVQA(image_size=64, seed=0).sample(0).question.replace(" ", "")
    from safetensors import safe_open

    with safe_open(str(reader.store.shard_path(0, ".safetensors")), framework="numpy") as f:
        assert f.get_tensor("0/lm.blocks.2.resid_post").dtype == np.float16
    collect_activations(demo, "lm.norm.out", "answer", tmp_path / "a", n=3, show_progress=False)
    x, meta = ActivationReader(tmp_path / "a").load("lm.norm.out")
    assert x.shape == (3, 128) and (meta["position"] == meta["position"].max()).any()
    collect_activations(demo, "lm.blocks.0.mlp.out", "image", tmp_path / "i", n=2, show_progress=False)
    _, meta = ActivationReader(tmp_path / "i").load("lm.blocks.0.mlp.out")
    assert len(meta["index"]) == 2 * 64 and set(meta["object_color"]) - {"none"}


def test_unknown_point_lists_the_valid_ones_in_one_line(demo, tmp_path):
    with pytest.raises(InputError) as err:
        resolve_points(demo, "lm.blocks.7.resid_post")
    text = str(err.value)
    assert "\n" not in text and "does not exist" in text and "lm.blocks.{0..2}.resid_post" in text
    assert "projector.out" in text
    with pytest.raises(InputError, match="no per-token rows"):
        resolve_points(demo, "vision.blocks.0.resid_post")
    with pytest.raises(InputError, match="only for image tokens"):
        collect_activations(demo, "projector.out", "answer", tmp_path / "x", n=2)
    assert not (tmp_path / "x").exists()
    assert resolve_points(demo, "lm.blocks.*.resid_post") == [f"lm.blocks.{i}.resid_post" for i in range(3)]
    with pytest.raises(InputError, match="was not collected"):
        collect_activations(demo, "lm.logits", "answer", tmp_path / "y", n=1, show_progress=False)
        ActivationReader(tmp_path / "y").load("lm.blocks.0.resid_post")
    torch.set_num_threads(1)
