"""Hook points mean the same thing in every family (see the table in :mod:`mmlens.hooks.tracing`).

``projector.out`` row ``k`` is the image token at ``batch.image_positions()[k]`` (the LM's sequence order,
for Qwen2.5-VL too, whose vision tower runs in window order); chunked vision attention (Qwen: one call per
image or window) is gathered into one block-diagonal matrix.
"""

import pytest
import torch
from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

import mmlens
from mmlens import count_hooks


def _run(subject, batch, *edits):
    """Capture ``projector.out`` and the LM input after applying ``edits`` (tracer method name, kwargs)."""
    with subject.trace() as tr:
        for method, kwargs in edits:
            getattr(tr, method)("projector.out", **kwargs)
        tr.capture("projector.out")
        tr.capture("lm.blocks.0.resid_pre")
        subject.forward(batch)
    assert count_hooks(subject.model) == 0
    return tr["projector.out"], tr["lm.blocks.0.resid_pre"][0]


def _marked_positions(batch) -> list[int]:
    """A few grid cells of every image: first, last and a middle cell of each grid."""
    out = []
    for geo in batch.geometry:
        for grid in geo.grids:
            flat = grid.positions.flatten()
            out += [int(flat[0]), int(flat[len(flat) // 2]), int(flat[-1])]
    return sorted(set(out))


def test_projector_out_rows_are_the_lm_image_tokens_in_sequence_order(subject, images):
    """Captured row k == the LM input embedding at the k-th image position, for every k."""
    batch = subject.prepare(images, "what color is the cat?")
    positions = batch.image_positions()
    feats, resid = _run(subject, batch)
    assert feats.shape == (positions.numel(), resid.shape[-1])
    torch.testing.assert_close(feats, resid[positions], rtol=0, atol=0)


def test_marking_at_projector_out_moves_exactly_that_sequence_position(subject, images):
    """Ablate / patch / steer one image token's row at ``projector.out`` by its geometry index: exactly
    that LM sequence position changes in ``lm.blocks.0.resid_pre`` (and it takes the edited value)."""
    batch = subject.prepare(images, "what color is the cat?")
    positions = batch.image_positions()
    ref_feats, ref = _run(subject, batch)
    vector = torch.linspace(-1, 1, ref.shape[-1])
    for p in _marked_positions(batch):
        k = int(torch.nonzero(positions == p))
        source = ref_feats * 3.0 + 1.0
        for method, kwargs, expected in [
            ("ablate", {"positions": [k]}, torch.zeros_like(ref[p])),
            ("patch", {"source": source, "positions": [k]}, source[k]),
            ("add", {"vector": vector, "positions": [k]}, ref[p] + vector),
        ]:
            _, got = _run(subject, batch, (method, kwargs))
            moved = torch.nonzero((got - ref).abs().amax(-1) > 0).flatten().tolist()
            assert moved == [p], (subject.family, method, k, p, moved)
            torch.testing.assert_close(got[p], expected)


def _window(subject, batch):
    """Qwen2.5-VL: HF's window permutation of merged units and window boundaries (in patches)."""
    from transformers.vision_utils import get_vision_window_index

    visual = subject.model.model.visual
    return get_vision_window_index(batch.inputs["image_grid_thw"], spatial_merge_size=visual.spatial_merge_size,
                                   window_size=visual.window_size, patch_size=visual.patch_size, kwargs={})


def _patch_perm(subject, batch) -> torch.Tensor:
    """Patch order of the vision blocks: held row i = input patch perm[i] (identity for Qwen2-VL)."""
    n = int(batch.inputs["image_grid_thw"].prod(-1).sum())
    if subject.family != "qwen2_5_vl":
        return torch.arange(n)
    window_index, _ = _window(subject, batch)
    return (window_index[:, None] * 4 + torch.arange(4)).flatten()


def _chunk_bounds(subject, batch, block: int) -> list[int]:
    """Chunk boundaries (cu_seqlens, in held order) that HF's Qwen vision tower uses in block ``block``."""
    from transformers.vision_utils import get_vision_attention_seqlens

    visual = subject.model.model.visual
    full, _ = get_vision_attention_seqlens(batch.inputs["image_grid_thw"], visual.config, kwargs={})
    if block in getattr(visual, "fullatt_block_indexes", range(len(visual.blocks))):
        return full.tolist()
    return torch.unique_consecutive(_window(subject, batch)[1]).tolist()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("block", [0, 1])
def test_chunked_vision_attention_is_gathered_over_all_chunks(subject, images, block):
    """Qwen vision attention runs one call per image (Qwen2.5-VL: per window in windowed blocks): the
    captured weights are one ``(1, heads, patches, patches)`` matrix over all chunks, block-diagonal in the
    tower's held order, each block equal to ``softmax(q k^T / sqrt(d))`` recomputed from the block's input,
    and shown in input-patch order (Qwen2.5-VL holds patches in window order)."""
    batch = subject.prepare(images, "what color is the cat?")
    attn = subject.adapter.parts().vision_blocks[block].attn
    seen = {}
    handle = attn.register_forward_pre_hook(lambda m, a, kw: seen.update(x=a[0] if a else kw["hidden_states"], kw=kw),
                                            with_kwargs=True)
    try:
        with subject.trace() as tr:
            tr.capture_attention(f"vision.blocks.{block}.attn.weights")
            subject.forward(batch)
    finally:
        handle.remove()
    got = tr[f"vision.blocks.{block}.attn.weights"]
    x = seen["x"]
    n, heads = x.shape[0], attn.num_heads
    assert got.shape == (1, heads, n, n)
    q, k, _ = attn.qkv(x).reshape(n, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, *seen["kw"]["position_embeddings"])
    scores = torch.einsum("qhd,khd->hqk", q, k) * attn.scaling
    bounds = _chunk_bounds(subject, batch, block)
    assert len(bounds) > 2  # several chunks: the case that used to keep only the last one
    ref = torch.zeros(heads, n, n)
    for a, b in zip(bounds[:-1], bounds[1:]):
        ref[:, a:b, a:b] = torch.softmax(scores[:, a:b, a:b], dim=-1)
    inv = torch.argsort(_patch_perm(subject, batch))
    ref = ref[:, inv][:, :, inv]
    torch.testing.assert_close(got[0], ref, rtol=1e-5, atol=1e-6)
    # rows select query rows of the gathered matrix
    with subject.trace() as tr:
        tr.capture_attention(f"vision.blocks.{block}.attn.weights", rows=[0, n - 1])
        subject.forward(batch)
    torch.testing.assert_close(tr[f"vision.blocks.{block}.attn.weights"][0], ref[:, [0, n - 1]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_vision_rows_are_input_patches_in_every_vision_point(subject, images):
    """Row j of every ``vision.*`` point is input patch j (Qwen2.5-VL's window order undone, for captures
    and edits): with vision attention zeroed, setting row j of ``vision.embed`` moves only row j of each
    ``vision.blocks.*.resid_post``, and setting row j of the last block's output moves only merged token
    ``j // 4`` of ``projector.out`` (patches come in 2x2 merge units, merged tokens in sequence order)."""
    batch = subject.prepare(images, "what color is the cat?")

    def run(point=None, row=None):
        with subject.trace() as tr:
            tr.edit("vision.blocks.*.attn", torch.zeros_like)
            if point:
                tr.ablate(point, positions=[row], value=3.0)
            tr.capture("vision.blocks.*.resid_post")
            tr.capture("projector.out")
            subject.forward(batch)
        return tr

    ref = run()
    n = ref["vision.blocks.0.resid_post"].shape[0]
    for j in [1, 9, 14, n - 3]:  # 9, 14: merge units 2, 3 of the first image (windows reorder them)
        got = run("vision.embed", j)
        for i in range(len(subject.adapter.parts().vision_blocks)):
            name = f"vision.blocks.{i}.resid_post"
            moved = torch.nonzero((got[name] - ref[name]).abs().amax(-1) > 0).flatten().tolist()
            assert moved == [j], (subject.family, name, j, moved)
        got = run("vision.blocks.1.resid_post", j)
        moved = torch.nonzero((got["projector.out"] - ref["projector.out"]).abs().amax(-1) > 0).flatten().tolist()
        assert moved == [j // 4], (subject.family, j, moved)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_block_attention_refuses_chunked_vision_attention(subject):
    with subject.trace() as tr, pytest.raises(mmlens.InputError, match="attends in chunks"):
        tr.block_attention("vision.blocks.0.attn.weights", [0], [1])
    assert count_hooks(subject.model) == 0
