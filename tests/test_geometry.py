"""Image geometry: positions, grid sizes, and the position -> pixel-box mapping, for every family."""

import math

import numpy as np
import torch
from conftest import subject_for
from PIL import Image, ImageDraw

from mmlens.model.geometry import resize_crop_box


def test_positions_equal_placeholders_and_grids_multiply_out(subject, images):
    batch = subject.prepare(images, "what color is the cat?")
    placeholders = torch.nonzero(batch.input_ids[0] == subject.adapter.image_token_id).flatten()
    assert torch.equal(batch.image_positions(), placeholders)
    assert len(batch.geometry) == len(images)
    for geo, img in zip(batch.geometry, images):
        assert geo.size == img.size
        cells = sum(math.prod(g.shape) for g in geo.grids)
        assert cells + geo.separators.numel() == geo.n_tokens
        # grid cells and separators partition the image's positions
        both = torch.cat([geo.grid_positions(), geo.separators]).sort().values
        assert torch.equal(both, geo.positions)
    if subject.family == "llava_next":
        for geo in batch.geometry:
            rows, cols = geo.notes["tile_grid"]
            assert geo.separators.numel() == rows  # one newline per row of the tile grid
            assert [g.kind for g in geo.grids] == ["base", "tiles"]
        assert any(g.notes["tile_grid"][0] * g.notes["tile_grid"][1] > 16 for g in batch.geometry)  # >1 tile


#: families that cut an image into several grids (tiles / crops + a whole-image grid), and the fewest grids one of
#: the suite's images gets: the marking test below then covers several tiles per image
SEVERAL_GRIDS = {"llava_next": 2, "llava_next_video": 2, "llava_onevision": 2, "gemma3": 4, "idefics3": 3, "smolvlm": 3, "internvl": 3}


def test_tiling_families_give_the_suite_several_grids_per_image(subject, images):
    batch = subject.prepare(images, "what is this?")
    most = max(len(geo.grids) for geo in batch.geometry)
    assert most >= SEVERAL_GRIDS.get(subject.family, 1), (subject.family, most)
    assert len(batch.geometry) == len(images) >= 2  # several images in one prompt
    assert any(img.width != img.height for img in images)  # non-square


def _features(subject, batch):
    """LM-input features at every image position, with vision attention zeroed so each image token only
    sees its own patch(es): a change in a token's feature means its patch's pixels changed."""
    with subject.trace() as tr:
        tr.edit("vision.blocks.*.attn", torch.zeros_like)
        tr.capture("lm.blocks.0.resid_pre")
        subject.forward(batch)
    return tr["lm.blocks.0.resid_pre"][0]


def _mark(image: Image.Image, box, frac: float = 0.3) -> tuple[Image.Image, tuple[float, float, float, float]]:
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * frac / 2, (y1 - y0) * frac / 2
    mark = (cx - hw, cy - hh, cx + hw, cy + hh)
    out = image.copy()
    ImageDraw.Draw(out).rectangle([round(mark[0]), round(mark[1]), round(mark[2]) - 1, round(mark[3]) - 1], fill=(255, 0, 255))
    return out, mark


def _intersects(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_marking_a_patch_moves_exactly_its_image_tokens(subject, images):
    """Paint a mark inside the pixel box that the geometry assigns to a cell; the features that move must
    be those of the cells whose boxes hold the mark (in every grid: base and tiles), and nothing else."""
    rng = np.random.default_rng(0)
    prompt = "what is this?"
    for image in images:
        base = subject.prepare([image], prompt)
        geo = base.geometry[0]
        ref = _features(subject, base)
        boxes = geo.position_boxes()
        inside = [p for p, bs in boxes.items() if all(b[0] >= 0 and b[1] >= 0 and b[2] <= image.width and b[3] <= image.height for b in bs)]
        for p in rng.choice(inside, size=min(3, len(inside)), replace=False):
            p = int(p)
            cell = boxes[p][0]
            marked_img, mark = _mark(image, cell)
            got = _features(subject, subject.prepare([marked_img], prompt))
            moved = {int(q) for q in geo.positions if (got[q] - ref[q]).abs().max() > 1e-4}
            cx, cy = (mark[0] + mark[2]) / 2, (mark[1] + mark[3]) / 2
            expected = set(geo.positions_at(cx, cy))
            assert p in expected
            # a small halo for resampling filters: half a cell around the mark
            w, h = cell[2] - cell[0], cell[3] - cell[1]
            halo = (mark[0] - w / 2, mark[1] - h / 2, mark[2] + w / 2, mark[3] + h / 2)
            allowed = {q for q, bs in boxes.items() if any(_intersects(b, halo) for b in bs)}
            assert expected <= moved, (subject.family, p, expected - moved)
            assert moved <= allowed, (subject.family, p, moved - allowed)
            assert not moved & {int(s) for s in geo.separators}


def test_heatmap_has_image_size_and_puts_scores_in_their_box(subject, images):
    batch = subject.prepare(images[:1], "what is this?")
    geo = batch.geometry[0]
    grid = geo.grids[-1]
    p = int(grid.positions[0, 0])
    scores = torch.zeros(batch.seq_len)
    scores[p] = 1.0
    heat = geo.heatmap(scores, kinds=(grid.kind,))
    assert heat.shape == (images[0].height, images[0].width)
    x0, y0, x1, y1 = grid.cell_box(0, 0)
    ys, xs = np.unravel_index(np.argmax(heat), heat.shape)
    assert max(x0, 0) - 1 <= xs <= x1 + 1 and max(y0, 0) - 1 <= ys <= y1 + 1


def test_resize_crop_box_inverts_a_centre_crop():
    # 200x100 image, shortest edge -> 224 (448x224), centre crop 224: the middle 100x100 of the original
    assert resize_crop_box((200, 100), (448, 224), (224, 224)) == (50.0, 0.0, 150.0, 100.0)
    assert resize_crop_box((30, 60), (30, 60), None) == (0.0, 0.0, 30.0, 60.0)


# -- LLaVA-NeXT: the tile box follows the processor's rounding and the model's unpadding -----------------

LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llava-v1.6, tile 336


def _reference_tile_box(size_wh, tile, patch, pinpoints, image_processor):
    """The tile grid's box from transformers' own functions: the processor's fit (``get_patch_output_size``)
    and padding (``_get_padding_size``), and the feature rows / columns the model's ``unpad_image`` keeps."""
    from transformers.image_processing_utils import (
        get_patch_output_size,
        select_best_resolution,
    )
    from transformers.image_utils import ChannelDimension
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    w, h = size_wh
    th, tw = select_best_resolution((h, w), pinpoints)
    nh, nw = get_patch_output_size(np.broadcast_to(np.zeros(()), (1, h, w)), (th, tw), ChannelDimension.FIRST)
    (paste_y, _), (paste_x, _) = image_processor._get_padding_size((nh, nw), (th, tw))
    per_tile = tile // patch
    frame = torch.arange((th // tile * per_tile) * (tw // tile * per_tile)).reshape(1, th // tile * per_tile, -1)
    kept = unpad_image(frame, (h, w))[0]
    r0, c0 = divmod(int(kept[0, 0]), frame.shape[2])
    rows, cols = kept.shape
    px = tile / per_tile
    box = ((c0 * px - paste_x) * w / nw, (r0 * px - paste_y) * h / nh,
           ((c0 + cols) * px - paste_x) * w / nw, ((r0 + rows) * px - paste_y) * h / nh)
    return rows, cols, box


def test_llava_next_tile_box_matches_transformers_on_a_size_sweep():
    """Every size from 16 to 200 px per side (34k sizes; the old ``ceil(h * tw / w)`` rounding was off by
    one pixel of fit on 77 of them, boxes by up to 0.52 px): rows, columns and box equal the reference
    built from transformers' functions."""
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    from mmlens.adapters.llava_next import tile_layout

    ip = LlavaNextImageProcessorPil()
    worst, wrong = 0.0, []
    for h in range(16, 201):
        for w in range(16, 201):
            rows, cols, box = tile_layout((w, h), 336, 14, LLAVA_NEXT_PINPOINTS)
            ref_rows, ref_cols, ref_box = _reference_tile_box((w, h), 336, 14, LLAVA_NEXT_PINPOINTS, ip)
            err = max(abs(a - b) for a, b in zip(box, ref_box))
            worst = max(worst, err)
            if (rows, cols) != (ref_rows, ref_cols) or err > 1e-9:
                wrong.append((w, h, box, ref_box))
    assert not wrong, (len(wrong), worst, wrong[:3])


def test_llava_next_tile_box_matches_the_processed_pixels():
    """A white 364x273 image: the tiny processor fits it to 64x49 (``ceil`` of a float scale), not 64x48, and
    centres it at row 7. The geometry's tile box must map the kept feature rows through those pixels."""
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    subject = subject_for("llava_next")
    image = Image.new("RGB", (364, 273), (255, 255, 255))
    batch = subject.prepare([image], "what is this?")
    pv = batch.inputs["pixel_values"][0]  # (1 + tiles, 3, 32, 32)
    frame = torch.cat([torch.cat(list(pv[1:][r * 2:(r + 1) * 2]), dim=-1) for r in range(2)], dim=-2)  # (3, 64, 64)
    content = (frame - frame[:, :1, :1]).abs().amax(0) > 1e-3
    ys, xs = torch.nonzero(content.any(1)).flatten(), torch.nonzero(content.any(0)).flatten()
    paste_y, nh = int(ys[0]), int(ys[-1]) - int(ys[0]) + 1
    paste_x, nw = int(xs[0]), int(xs[-1]) - int(xs[0]) + 1
    assert (nh, nw, paste_y, paste_x) == (49, 64, 7, 0)
    kept = unpad_image(torch.arange(64).reshape(1, 8, 8), (273, 364))[0]
    r0, rows = int(kept[0, 0]) // 8, kept.shape[0]
    tiles = batch.geometry[0].grids[1]
    assert tiles.shape == tuple(kept.shape)
    expected = (0.0, (r0 * 8 - paste_y) * 273 / nh, 364.0, ((r0 + rows) * 8 - paste_y) * 273 / nh)
    assert max(abs(a - b) for a, b in zip(tiles.box, expected)) < 1e-9, (tiles.box, expected)
