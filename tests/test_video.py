"""Video input: frames -> the family's video tensors without torchvision, per-frame geometry, per-frame maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import subject_for
from PIL import Image, ImageDraw

import mmlens
from mmlens import count_hooks
from mmlens.adapters.base import video_families
from mmlens.errors import InputError
from mmlens.model.video import Video
from mmlens.testing.tiny_models import FAMILIES, tiny_video
from mmlens.util import limits

VIDEO = [f for f in FAMILIES if f in video_families()]


def test_the_video_families_are_the_ones_whose_transformers_class_takes_video():
    assert set(VIDEO) >= {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision"}
    assert not {"llava", "llava_next", "paligemma", "gemma3", "idefics3", "smolvlm", "internvl"} & set(VIDEO)


@pytest.fixture(params=VIDEO)
def vfamily(request) -> str:
    return request.param


def _features(subject, batch):
    """LM-input features at every position with vision attention zeroed: a token moves only when its own
    patch(es) changed."""
    with subject.trace() as tr:
        tr.edit("vision.blocks.*.attn", torch.zeros_like)
        tr.capture("lm.blocks.0.resid_pre")
        subject.forward(batch)
    return tr["lm.blocks.0.resid_pre"][0]


def _mark(frame: Image.Image, box) -> tuple[Image.Image, tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * 0.15, (y1 - y0) * 0.15
    out = frame.copy()
    ImageDraw.Draw(out).rectangle([round(cx - hw), round(cy - hh), round(cx + hw) - 1, round(cy + hh) - 1],
                                  fill=(255, 0, 255))
    return out, (cx, cy)


def test_marking_one_cell_of_one_frame_moves_exactly_that_cells_tokens(vfamily):
    """3 non-square frames; a mark in one cell of frame k moves exactly the tokens the geometry gives for frame
    k at that pixel (Qwen: a token shared with the other frame of its temporal pair), and nothing else (no token
    of another temporal group, no separator)."""
    subject = subject_for(vfamily)
    video = tiny_video(vfamily, 3)
    assert video.frames[0].width != video.frames[0].height
    base = subject.prepare(video, "what is this?")
    assert [g.frame for g in base.geometry] == [0, 1, 2] and [g.time for g in base.geometry] == [0.0, 0.5, 1.0]
    ref = _features(subject, base)
    everything = {int(p) for g in base.geometry for p in g.positions}
    for k, (r, c) in [(0, (0, 0)), (1, (1, 1)), (2, (0, 1))]:
        geo = base.geometry[k]
        grid = geo.grids[0]
        frames = list(video.frames)
        frames[k], (x, y) = _mark(frames[k], grid.cell_box(r, c))
        got = _features(subject, subject.prepare(Video(frames, video.fps), "what is this?"))
        moved = {p for p in everything if (got[p] - ref[p]).abs().max() > 1e-4}
        expected = set(geo.positions_at(x, y))
        assert expected == {int(grid.positions[r, c])}
        assert moved == expected, (vfamily, k, moved, expected)
        # the token is listed by exactly the frames it reads
        owners = [g.frame for g in base.geometry if int(grid.positions[r, c]) in g.positions.tolist()]
        assert owners == list(grid.frames)
    pairs = [g.grids[0].frames for g in base.geometry]
    if vfamily.startswith("qwen"):  # temporal_patch_size 2: frames (0, 1) share tokens, frame 2 (padded) alone
        assert pairs == [(0, 1), (0, 1), (2,)]
    else:
        assert pairs == [(0,), (1,), (2,)]


def test_video_forward_is_the_plain_hf_forward_and_traced_is_bit_identical(vfamily):
    subject = subject_for(vfamily)
    batch = subject.prepare(tiny_video(vfamily, 4), "what is this?", answer="red")
    inputs = subject.model_inputs(batch)
    assert "pixel_values_videos" in inputs and "pixel_values" not in inputs
    plain = subject.model(**inputs, use_cache=False).logits
    with subject.trace() as tr:
        tr.capture("*")
        traced = subject.forward(batch)
    assert torch.equal(plain, traced)
    assert count_hooks(subject.model) == 0
    # as many video tokens as the model's video features have rows
    with torch.no_grad():
        feats = subject.model.get_video_features(**{k: v for k, v in inputs.items() if k in (
            "pixel_values_videos", "video_grid_thw")}).pooler_output
    rows = sum(f.shape[0] for f in feats) if isinstance(feats, (list, tuple)) else feats.flatten(0, -2).shape[0]
    assert rows == int((batch.input_ids == _video_token_id(subject)).sum())


def _video_token_id(subject) -> int:
    cfg = subject.model.config
    return int(getattr(cfg, "video_token_id", None) or cfg.video_token_index)


@pytest.mark.parametrize("method", ["attention", "saliency", "relevancy"])
def test_methods_give_per_frame_maps_and_a_frame_curve(method, tmp_path):
    subject = subject_for("qwen2_vl")
    video = tiny_video("qwen2_vl", 3)
    ex = mmlens.explain(subject, video, "what is this?", method=method, answer="red")
    assert len(ex.images) == 3 and ex.metadata["video"]["frame_times"] == [0.0, 0.5, 1.0]
    w, h = video.frames[0].size
    assert all(ex.image_map(image=k).shape == (h, w) for k in range(3))
    curve = ex.frame_curve()
    row = ex.position_scores[0]
    assert curve.shape == (3,)
    for k in range(3):
        assert curve[k] == pytest.approx(float(row[ex.image_positions[k]].sum()), rel=1e-6)  # no separators
    assert curve[0] == curve[1]  # one token per two frames: the pair shares its score
    assert count_hooks(subject.model) == 0
    if method != "attention":  # drawing is the same for every method: once is enough
        return
    fig = ex.plot()  # one panel per frame (at most MAX_STRIP_FRAMES of a long video)
    assert len([a for a in fig.axes if a.get_title()]) == 3
    path = ex.save_strip(tmp_path / "strip.png")
    with Image.open(path) as strip:
        assert strip.width > strip.height > 0
    html = tmp_path / "r.html"
    ex.save(html)
    assert html.read_text().count("data:image/png;base64") == 2  # the heatmaps + the frame strip


def test_explanation_of_a_video_round_trips(tmp_path):
    subject = subject_for("llava_onevision")
    ex = mmlens.explain(subject, tiny_video("llava_onevision", 3), "what is this?", method="attention",
                        answer="red")
    back = mmlens.Explanation.load(ex.save(tmp_path / "v.safetensors"))
    assert back.metadata["video"] == ex.metadata["video"]
    assert (back.frame_curve() == ex.frame_curve()).all()
    # the closing newline token is the last frame's separator and counts for no frame
    newline = ex.image_positions[-1][-1]
    assert all(newline not in p for p in ex.metadata["video"]["frame_positions"])
    row = ex.position_scores[0]
    assert ex.frame_curve()[-1] == pytest.approx(float(row[ex.image_positions[-1][:-1]].sum()), rel=1e-6)


def test_perturbation_methods_perturb_each_frame(vfamily):
    """RISE masks every frame on its own (one video per perturbed row): per-frame maps that differ between the
    two frames of a Qwen token pair, and a shared token's score is the mean of its frames' pooled maps."""
    subject = subject_for(vfamily)
    video = tiny_video(vfamily, 3)
    ex = mmlens.explain(subject, video, "what is this?", method="rise", answer="red", n_masks=16)
    maps = [ex.image_map(image=k) for k in range(3)]
    assert all(m.shape == (video.frames[0].height, video.frames[0].width) and np.isfinite(m).all() for m in maps)
    assert not np.array_equal(maps[0], maps[1])
    assert count_hooks(subject.model) == 0
    from mmlens.attribution.perturbation_masks import pool_to_positions

    batch = subject.prepare(video, "what is this?", answer="red")
    pooled = []
    for k in (0, 1):
        row = torch.zeros(batch.seq_len)
        pool_to_positions(batch.geometry[k], maps[k], row)
        pooled.append(row)
    p = int(batch.geometry[0].grids[0].positions[0, 0])
    expected = (pooled[0][p] + pooled[1][p]) / 2 if vfamily.startswith("qwen") else pooled[0][p]
    assert float(ex.position_scores[0, p]) == pytest.approx(float(expected), rel=1e-5, abs=1e-9)


def test_bad_video_inputs_get_one_line_each():
    qwen = subject_for("qwen2_vl")
    frame = tiny_video("qwen2_vl", 1).frames[0]
    cases = {
        "takes no video": (subject_for("llava"), Video([frame, frame])),
        "no frames": (qwen, Video([])),
        f"{limits.MAX_VIDEO_FRAMES}-frame limit": (qwen, Video([frame] * (limits.MAX_VIDEO_FRAMES + 1))),
        "frames of one size": (qwen, Video([frame, frame.resize((56, 56))])),
        "fps=": (qwen, Video([frame], fps=0)),
        "list of frames": (qwen, Video("clip.gif")),
    }
    for needle, (subject, video) in cases.items():
        with pytest.raises(InputError) as err:
            subject.prepare(video, "what is this?")
        message = str(err.value)
        assert needle in message and "\n" not in message, message
    with pytest.raises(InputError, match="qwen2_vl"):  # the refusal names the families with video
        subject_for("llava").prepare(Video([frame]), "what is this?")


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_qwen_video_of_one_still_frame_is_that_image_for_the_vision_tower(family):
    """An image is a still video to Qwen (its patches hold the frame twice): a video of two copies of a frame
    must give the vision tower the image's exact pixel patches and features; a video (a, b) holds a in the
    first temporal slot of every patch and b in the second."""
    subject = subject_for(family)
    a, b = tiny_video(family, 2).frames
    still = subject.prepare(Video([a, a]), "what is this?").inputs
    image = subject.prepare([a], "what is this?").inputs
    assert torch.equal(still["pixel_values_videos"], image["pixel_values"])
    assert torch.equal(still["video_grid_thw"], image["image_grid_thw"])
    model = subject.model
    with torch.no_grad():
        v = model.get_video_features(pixel_values_videos=still["pixel_values_videos"],
                                     video_grid_thw=still["video_grid_thw"]).pooler_output[0]
        i = model.get_image_features(pixel_values=image["pixel_values"],
                                     image_grid_thw=image["image_grid_thw"]).pooler_output[0]
    assert torch.equal(v, i)
    pair = subject.prepare(Video([a, b]), "what is this?").inputs["pixel_values_videos"]
    p = subject.model.config.vision_config.patch_size
    slots = pair.reshape(pair.shape[0], 3, 2, p, p)
    only_b = subject.prepare([b], "what is this?").inputs["pixel_values"].reshape(pair.shape[0], 3, 2, p, p)
    assert torch.equal(slots[:, :, 0], image["pixel_values"].reshape(pair.shape[0], 3, 2, p, p)[:, :, 0])
    assert torch.equal(slots[:, :, 1], only_b[:, :, 0])


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next_video"])
def test_cli_explains_a_gif_from_a_saved_model(tmp_path, family):
    """Saved and reloaded through mmlens.load (the processor falls back to image-only without torchvision), the
    model still takes the video; the CLI writes the strip, and a family without video exits 2 in one line."""
    from typer.testing import CliRunner

    from mmlens.cli import app
    from mmlens.testing.tiny_models import tiny_model_and_processor

    model, processor = tiny_model_and_processor(family)
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    frames = list(tiny_video(family, 3).frames)
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:], duration=250, loop=0)
    loaded = Video.load(tmp_path / "clip.gif")
    assert loaded.n_frames == 3 and loaded.fps == pytest.approx(4.0)
    runner = CliRunner()
    out = tmp_path / "strip.png"
    result = runner.invoke(app, ["explain", str(tmp_path / "clip.gif"), "what is this?", "--model", str(tmp_path / "m"),
                                 "--answer", "red", "--method", "attention", "--video", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as strip:
        assert strip.width > strip.height
    result = runner.invoke(app, ["explain", str(tmp_path / "clip.gif"), "what is this?", "--model", "demo",
                                 "--answer", "red", "--video", "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "takes no video" in result.output and not (tmp_path / "x.png").exists()


def test_a_saved_video_processor_config_sizes_qwen_frames(tmp_path):
    """Loaded without torchvision, the processor reads the saved video processor's per-frame pixel bounds: with
    28x28 pixels per frame, each pair of frames becomes one merged token (the image bounds keep 84x56)."""
    import json

    from mmlens.testing.tiny_models import tiny_model_and_processor

    model, processor = tiny_model_and_processor("qwen2_vl")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    video = tiny_video("qwen2_vl", 4)
    default = mmlens.load(str(tmp_path)).prepare(video, "what is this?")
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(
        {"video_processor_type": "Qwen2VLVideoProcessor", "min_pixels": 28 * 28, "max_pixels": 28 * 28,
         "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}))
    small = mmlens.load(str(tmp_path)).prepare(video, "what is this?")
    assert default.inputs["video_grid_thw"].tolist() == [[2, 4, 6]]  # the image bounds: 84x56 kept
    assert small.inputs["video_grid_thw"].tolist() == [[2, 2, 2]]  # 28x28 per frame
    assert [g.grids[0].shape for g in small.geometry] == [(1, 1)] * 4


def test_video_load_reads_a_folder_in_name_order_and_checks_it(tmp_path):
    frames = tiny_video("qwen2_vl", 3).frames
    for k, f in enumerate(frames):
        f.save(tmp_path / f"f{k:02d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    video = Video.load(tmp_path, fps=5)
    assert [p.name for p in video.frames] == ["f00.png", "f01.png", "f02.png"] and video.times() == [0.0, 0.2, 0.4]
    batch = subject_for("qwen2_vl").prepare(video, "what is this?")
    assert batch.is_video and [g.time for g in batch.geometry] == [0.0, 0.2, 0.4]
    for bad, needle in [(tmp_path / "nothing", "not found"), (tmp_path / "notes.txt", "not a readable")]:
        with pytest.raises(InputError, match=needle):
            Video.load(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no .png"):
        Video.load(empty)


def test_generation_signals_keep_a_video_a_video():
    subject = subject_for("qwen2_vl")
    video = tiny_video("qwen2_vl", 3)
    plain = subject.generate(video, "what is this?", max_new_tokens=3)
    grounded = mmlens.generate_explained(subject, video, "what is this?", max_new_tokens=3)
    assert grounded.answer == plain.text
    assert count_hooks(subject.model) == 0


def test_projector_out_and_the_feature_cache_see_video_features(vfamily):
    """``projector.out`` on a video is the video features, one row per video token, as the LM receives them;
    the feature cache computes them once for repeated forwards."""
    from mmlens.model.feature_cache import cached_image_features

    subject = subject_for(vfamily)
    batch = subject.prepare(tiny_video(vfamily, 3), "what is this?", answer="red")
    video = batch.image_positions()
    with subject.trace() as tr:
        tr.capture("projector.out")
        tr.capture("lm.blocks.0.resid_pre")
        subject.forward(batch)
    assert torch.equal(tr["projector.out"], tr["lm.blocks.0.resid_pre"][0, video])
    with cached_image_features(subject) as counts:
        first, second = subject.forward(batch), subject.forward(batch)
    assert counts == {"computed": 1, "reused": 1} and torch.equal(first, second)
    assert count_hooks(subject.model) == 0


def test_a_projector_edit_applies_once_to_a_video():
    """Qwen3-VL's get_video_features calls get_image_features: an additive edit at projector.out must still be
    added once."""
    subject = subject_for("qwen3_vl")
    batch = subject.prepare(tiny_video("qwen3_vl", 2), "what is this?")
    with subject.trace() as tr:
        tr.capture("projector.out")
        subject.forward(batch)
    plain = tr["projector.out"]
    with subject.trace() as tr:
        tr.edit("projector.out", lambda t: t + 1.0)
        tr.capture("lm.blocks.0.resid_pre")
        subject.forward(batch)
    assert torch.allclose(tr["lm.blocks.0.resid_pre"][0, batch.image_positions()], plain + 1.0)
