"""Mllama (Llama 3.2 Vision): images enter through cross-attention keys, not sequence positions.

Geometry over the keys (several tiles, padding, non-square images, several images per prompt), traced-forward
parity, cross-attention capture during generation, and patching the cross-attention states. The methods and
internals over the keys: tests/test_mllama_methods.py.
"""

import numpy as np
import pytest
import torch
from conftest import subject_for
from PIL import Image, ImageDraw
from transformers.models.mllama.image_processing_pil_mllama import get_all_supported_aspect_ratios

import mmlens
from mmlens import InputError
from mmlens.hooks.tracing import count_hooks
from mmlens.testing.tiny_models import tiny_images

PROMPT = "what color is the cat ?"
KEYS_PER_TILE, MAX_TILES = 17, 4  # 4 x 4 patches + CLS, up to 4 tiles (see mmlens.testing.tiny_mllama)


@pytest.fixture(scope="module")
def lm():
    return subject_for("mllama")


def _states(lm, batch, isolate: bool = False) -> torch.Tensor:
    """The cross-attention states ``(keys, d)``; ``isolate``: vision attention zeroed, so each key sees only its
    own patch's pixels."""
    with torch.no_grad(), lm.trace() as tr:
        if isolate:
            tr.edit("vision.blocks.*.attn", torch.zeros_like)
        tr.capture("xattn.states")
        lm.forward(batch)
    return tr["xattn.states"][0]


def _eager(lm, batch):
    impl = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = lm.model(**lm.model_inputs(batch), output_attentions=True, use_cache=False)
    finally:
        lm.model.set_attn_implementation(impl)
    return out


def test_geometry_is_over_the_keys_and_matches_the_processor(lm):
    images = tiny_images("mllama", n=3)
    assert any(i.width != i.height for i in images)
    batch = lm.prepare(images, PROMPT)
    states = _states(lm, batch)
    assert states.shape[0] == len(images) * MAX_TILES * KEYS_PER_TILE == batch.key_positions().numel()
    ratios = get_all_supported_aspect_ratios(MAX_TILES)
    tiles = []
    for i, geo in enumerate(batch.geometry):
        assert geo.space == "keys" and geo.size == images[i].size
        assert torch.equal(geo.positions, torch.arange(i * 68, (i + 1) * 68))
        assert torch.equal(torch.cat([geo.grid_positions(), geo.separators]).sort().values, geo.positions)
        rows, cols = geo.notes["tile_grid"]
        assert len(geo.grids) == rows * cols == int(batch.inputs["aspect_ratio_mask"][0, i].sum())
        assert (rows, cols) == tuple(ratios[int(batch.inputs["aspect_ratio_ids"][0, i]) - 1])
        cls = geo.positions[::KEYS_PER_TILE]
        assert torch.isin(cls, geo.separators).all()  # every tile's CLS (and every padding tile) is a separator
        tiles.append(rows * cols)
    assert sorted(tiles) == [2, 3, 4]  # 1x2, 3x1 (padded below), 2x2
    with pytest.raises(InputError, match="cross-attention keys") as err:
        batch.image_positions()
    assert "\n" not in str(err.value)
    assert torch.equal(batch.text_positions(), torch.arange(batch.prompt_len))  # <|image|> is a text token


def _mark(image, box, frac=0.3):
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * frac / 2, (y1 - y0) * frac / 2
    out = image.copy()
    ImageDraw.Draw(out).rectangle([round(cx - hw), round(cy - hh), round(cx + hw) - 1, round(cy + hh) - 1],
                                  fill=(255, 0, 255))
    return out, (cx - hw, cy - hh, cx + hw, cy + hh)


def _intersects(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_marking_a_cell_moves_exactly_its_keys_with_several_images_and_tiles(lm):
    """Paint a mark into one cell's original-pixel box of one image of a three-image prompt: the keys that move
    are that cell's (a half-cell halo for the resize filter), in that image's key range, never a CLS / padding key."""
    rng = np.random.default_rng(0)
    images = tiny_images("mllama", n=3)
    base = lm.prepare(images, PROMPT)
    ref = _states(lm, base, isolate=True)
    for i, geo in enumerate(base.geometry):
        boxes = geo.position_boxes()
        w, h = images[i].size
        inside = [p for p, (b,) in boxes.items() if b[0] >= 0 and b[1] >= 0 and b[2] <= w and b[3] <= h]
        for p in rng.choice(inside, size=2, replace=False):
            cell = boxes[int(p)][0]
            marked, mark = _mark(images[i], cell)
            got = _states(lm, lm.prepare([*images[:i], marked, *images[i + 1:]], PROMPT), isolate=True)
            moved = set(torch.nonzero((got - ref).abs().amax(-1) > 1e-4).flatten().tolist())
            expected = set(geo.positions_at((mark[0] + mark[2]) / 2, (mark[1] + mark[3]) / 2))
            cw, ch = cell[2] - cell[0], cell[3] - cell[1]
            halo = (mark[0] - cw / 2, mark[1] - ch / 2, mark[2] + cw / 2, mark[3] + ch / 2)
            allowed = {q for q, bs in boxes.items() if any(_intersects(b, halo) for b in bs)}
            assert int(p) in expected <= moved <= allowed, (i, int(p), moved)
            assert not moved & set(geo.separators.tolist())


def test_heatmap_of_key_scores_lands_in_the_cells_box(lm):
    image = tiny_images("mllama", n=2)[1]  # 40x100: 3x1 tiles, the last one half padding
    geo = lm.prepare([image], PROMPT).geometry[0]
    grid = geo.grids[1]
    scores = torch.zeros(int(geo.positions.max()) + 1)
    scores[int(grid.positions[1, 2])] = 1.0
    heat = geo.heatmap(scores)
    assert heat.shape == (image.height, image.width)
    x0, y0, x1, y1 = grid.cell_box(1, 2)
    ys, xs = np.unravel_index(np.argmax(heat), heat.shape)
    assert x0 - 1 <= xs <= x1 + 1 and y0 - 1 <= ys <= y1 + 1


def test_traced_forward_is_bit_identical_and_attention_equals_eager(lm):
    batch = lm.prepare(tiny_images("mllama", n=2), PROMPT, answer="red cat")
    plain = lm.forward(batch)
    with torch.no_grad(), lm.trace() as tr:
        tr.capture("xattn.states")
        tr.capture("lm.blocks.*.resid_post")
        tr.capture_attention("lm.blocks.*.weights")  # self- and cross-attention layers
        traced = lm.forward(batch)
    assert torch.equal(plain, traced)
    eager = _eager(lm, batch)
    torch.testing.assert_close(eager.logits, plain, atol=1e-5, rtol=0)
    for layer, want in enumerate(eager.attentions):
        kind = "xattn" if layer == 1 else "attn"
        got = tr[f"lm.blocks.{layer}.{kind}.weights"]
        assert got.shape == want.shape
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=0)
    assert tr["lm.blocks.1.xattn.weights"].shape[-1] == batch.key_positions().numel() == 136
    assert count_hooks(lm.model) == 0
    with pytest.raises(RuntimeError, match="boom"), lm.trace() as tr:
        tr.capture_attention("lm.blocks.1.xattn.weights")
        tr.ablate("xattn.states", positions=[0, 1])
        raise RuntimeError("boom")
    assert count_hooks(lm.model) == 0


def test_patching_cross_attention_states_transplants_the_image(lm):
    """The images reach the text only through the cross-attention states: patching B's states into A's run gives
    B's logits (same tile layout), and ablating them moves the logits."""
    a, b = tiny_images("mllama", n=1, seed=0), tiny_images("mllama", n=1, seed=1)
    batch_a, batch_b = (lm.prepare(x, PROMPT, answer="red cat") for x in (a, b))
    states_b = _states(lm, batch_b)[None]
    with torch.no_grad(), lm.trace() as tr:
        tr.patch("xattn.states", states_b)
        patched = lm.forward(batch_a)
    logits_a, logits_b = lm.forward(batch_a), lm.forward(batch_b)
    assert (logits_a - logits_b).abs().max() > 1e-3
    torch.testing.assert_close(patched, logits_b, atol=1e-5, rtol=0)
    with torch.no_grad(), lm.trace() as tr:
        tr.ablate("xattn.states", positions=batch_a.geometry[0].grid_positions())
        ablated = lm.forward(batch_a)
    assert (ablated - logits_a)[0, batch_a.prompt_len:].abs().max() > 1e-4


def test_generation_and_answer_rows_see_the_images(lm):
    out = lm.generate(tiny_images("mllama", n=2), PROMPT, max_new_tokens=3)
    mask, n = out.batch.inputs["cross_attention_mask"], out.batch.prompt_len
    assert mask.shape[:2] == (1, out.batch.seq_len)
    assert torch.equal(mask[0, n:], mask[0, n - 1].expand(mask.shape[1] - n, -1, -1))  # answers see the images
    if out.token_ids.numel():  # teacher forcing reproduces the greedy tokens
        logits = lm.forward(out.batch)[0, out.batch.prompt_len - 1: -1]
        assert logits.argmax(-1).tolist() == out.token_ids.tolist()
    blank = lm.forward(lm.prepare([Image.new("RGB", (80, 40))], PROMPT))
    assert (blank - lm.forward(lm.prepare(tiny_images("mllama"), PROMPT))).abs().max() > 1e-4


def test_cross_attention_rows_during_cached_generation_equal_teacher_forcing(lm):
    batch = lm.prepare(tiny_images("mllama", n=1), PROMPT)
    row = batch.prompt_len + 1  # the second generated token's query
    with lm.trace() as tr:
        tr.capture_attention("lm.blocks.1.xattn.weights", rows=[row])
        out = lm.model.generate(**lm.model_inputs(batch), max_new_tokens=3, do_sample=False)
    (cached,) = tr.all("lm.blocks.1.xattn.weights")  # one decode step holds that row
    full = lm.with_answer(batch, out[0, batch.prompt_len:].tolist())
    with lm.trace() as tr:
        tr.capture_attention("lm.blocks.1.xattn.weights", rows=[row])
        lm.forward(full)
    assert cached.shape == (1, lm.n_heads, 1, MAX_TILES * KEYS_PER_TILE)
    torch.testing.assert_close(cached, tr["lm.blocks.1.xattn.weights"], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_real_size_tiles_marking_moves_exactly_one_key():
    """Llama 3.2 Vision's tile geometry (560 px tiles, 14 px patches: 1601 keys per tile, 6404 per image) on a
    1-layer random model: a 4 px mark in a cell's centre moves that key and no other (no downscaling here)."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor

    from mmlens.model.subject import Subject
    from mmlens.testing.tiny_configs import special_ids, tiny_tokenizer
    from mmlens.testing.tiny_mllama import MLLAMA_CHAT_TEMPLATE

    specials = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|image|>", "<|python_tag|>")
    tok = tiny_tokenizer(specials, {"image_token": "<|image|>"}, MLLAMA_CHAT_TEMPLATE)
    processor = MllamaProcessor(image_processor=MllamaImageProcessorPil(size={"height": 560, "width": 560},
                                                                        max_image_tiles=4),
                                tokenizer=tok, chat_template=MLLAMA_CHAT_TEMPLATE)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_global_layers": 1,
              "attention_heads": 2, "image_size": 560, "patch_size": 14, "max_num_tiles": 4,
              "intermediate_layers_indices": [0], "vision_output_dim": 64}
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "cross_attention_layers": [1],
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, **special_ids(tok)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MllamaForConditionalGeneration(MllamaConfig(vision_config=vision, text_config=text,
                                                            image_token_index=tok.image_token_id)).eval()
    s = Subject(model, processor, model_id="mid-mllama")
    rng = np.random.default_rng(0)
    for size, tiles in (((1000, 600), (2, 2)), ((300, 900), (2, 1)), ((640, 480), (1, 2))):
        img = Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8))
        batch = s.prepare([img], PROMPT)
        geo = batch.geometry[0]
        assert geo.notes["tile_grid"] == tiles and batch.key_positions().numel() == 4 * 1601
        ref = _states(s, batch, isolate=True)
        boxes = geo.position_boxes()
        inside = [p for p, (b,) in boxes.items() if b[2] <= size[0] and b[3] <= size[1]]
        for p in rng.choice(inside, 2, replace=False):
            x0, y0, x1, y1 = boxes[int(p)][0]
            cx, cy = round((x0 + x1) / 2), round((y0 + y1) / 2)
            marked = img.copy()
            ImageDraw.Draw(marked).rectangle([cx - 2, cy - 2, cx + 1, cy + 1], fill=(255, 0, 255))
            got = _states(s, s.prepare([marked], PROMPT), isolate=True)
            assert torch.nonzero((got - ref).abs().amax(-1) > 1e-4).flatten().tolist() == [int(p)]
    # vision-tower maps at this geometry: 1601 keys per tile held in 1608 tower rows (padded to a multiple of 8)
    with torch.no_grad():  # open the zero-initialised cross-attention gate so that the image reaches the logits
        model.model.language_model.layers[1].cross_attn_attn_gate.fill_(0.5)
    ex = mmlens.explain(s, [img], PROMPT, method="vision_gradcam", answer="red cat")
    keys = torch.tensor(ex.extras["key_scores"])
    assert ex.extras["tower_rows"] == 4 * 1608 and keys.shape[1] == 4 * 1601 and keys.max() > 0
    np.testing.assert_allclose(ex.image_map(0), batch.geometry[0].heatmap(keys[0]), atol=1e-6)
    assert count_hooks(model) == 0
