"""Vision-tower maps: the patch geometry (marking test), vision_gradcam against a hand-written autograd reference
and vision_relevancy against a hand-written eager reference of Chefer et al.'s rule, on the tiny models."""

import numpy as np
import pytest
import torch
from conftest import subject_for
from PIL import ImageDraw

import mmlens
from mmlens.attribution.gradient import eager_attention
from mmlens.attribution.tower_pass import block_geometry
from mmlens.attribution.vision_gradcam import vision_gradcam_rows
from mmlens.attribution.vision_relevancy import vision_relevancy_rows
from mmlens.hooks.points import HookPoint
from mmlens.hooks.tracing import Tracer
from mmlens.model.targets import resolve_targets
from mmlens.testing import tiny_subject
from mmlens.testing.tiny_dual import DUAL_FAMILIES, tiny_dual_subject
from mmlens.testing.tiny_models import FAMILIES, tiny_images

ALL = (*FAMILIES, *DUAL_FAMILIES)
_DUAL: dict = {}


def _subject(family):
    if family in DUAL_FAMILIES:
        if family not in _DUAL:
            _DUAL[family] = tiny_dual_subject(family)
        return _DUAL[family]
    return subject_for(family)


def _batch(subject, family, image=None):
    dual = family in DUAL_FAMILIES
    image = image if image is not None else tiny_images("llava" if dual else family)[0]
    if dual:
        return subject.prepare([image], "a red cat", answer="<match>")
    return subject.prepare([image], "what color is the cat ?", answer="red cat")


def _tower(subject, batch, point):
    with subject.trace() as tr:
        tr.capture(point)
        subject.forward(batch)
    return tr.captured[point][0]


def _intersects(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("family", ALL)
def test_marking_a_tower_patch_moves_exactly_its_patch_embeddings(family):
    """Paint a mark at the centre of a tower patch's pixel box: the patch embeddings (local: exact) that move are
    the patch's own in every tile holding the mark, and none outside half a patch around it."""
    subject = _subject(family)
    image = tiny_images("llava" if family in DUAL_FAMILIES else family)[0]
    image = image.resize((image.width * 4, image.height * 4))
    batch = _batch(subject, family, image)
    ref = _tower(subject, batch, "vision.embed")
    geometry = block_geometry(subject, batch, ref).images[0]
    ref = ref.reshape(-1, ref.shape[-1])
    boxes = geometry.position_boxes()
    inside = [p for p, bs in boxes.items() if all(b[0] >= 0 and b[1] >= 0 and b[2] <= image.width
                                                  and b[3] <= image.height for b in bs)]
    for p in np.random.default_rng(0).choice(inside, size=2, replace=False):
        x0, y0, x1, y1 = boxes[int(p)][0]
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * 0.15, (y1 - y0) * 0.15
        marked = image.copy()
        ImageDraw.Draw(marked).rectangle([round(cx - hw), round(cy - hh), round(cx + hw) - 1, round(cy + hh) - 1],
                                         fill=(255, 0, 255))
        got = _tower(subject, _batch(subject, family, marked), "vision.embed").reshape(ref.shape)
        moved = set(torch.nonzero((got - ref).abs().amax(-1) > 1e-4).flatten().tolist())
        expected = set(geometry.positions_at(cx, cy))
        halo = (cx - hw - (x1 - x0) / 2, cy - hh - (y1 - y0) / 2, cx + hw + (x1 - x0) / 2, cy + hh + (y1 - y0) / 2)
        allowed = {q for q, bs in boxes.items() if any(_intersects(b, halo) for b in bs)}
        assert int(p) in expected <= moved, (family, int(p), expected - moved)
        assert moved <= allowed, (family, moved - allowed)


def _feature_block(subject, family) -> int:
    """The block the model reads, from its configuration (hidden_states[i] is block i - 1's output); CLIP's
    Grad-CAM reads the block below its CLS-pooled last block."""
    n = len(subject.adapter.parts().vision_blocks)
    layer = getattr(subject.model.config, "vision_feature_layer", None)
    if family == "clip":
        return n - 2
    if isinstance(layer, int):
        return n + layer if layer < 0 else layer - 1
    return n - 1


@pytest.mark.parametrize("family", ALL)
def test_vision_gradcam_equals_an_autograd_reference(family):
    """Plain forward hook on the feature block, ``torch.autograd.grad`` per target, Grad-CAM by hand."""
    subject = _subject(family)
    batch = _batch(subject, family)
    targets = resolve_targets(subject.tokenizer, batch, None)
    rows, geometry, block = vision_gradcam_rows(subject, batch, targets)
    assert block == _feature_block(subject, family)
    kept = []
    module = subject.adapter.parts().vision_blocks[block]
    handle = module.register_forward_hook(lambda m, a, out: kept.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.enable_grad():
            logits = subject.forward(batch)
            a = kept[0]
            grads = [torch.autograd.grad(t.value(logits, batch, "logit").sum(), a, retain_graph=True)[0]
                     for t in targets]
    finally:
        handle.remove()
    a2 = a.detach().reshape(-1, a.shape[-1])
    image_rows = geometry.image_rows(0)
    for t, g in enumerate(grads):
        g2 = g.reshape(-1, g.shape[-1])
        if family == "qwen2_5_vl":  # the block holds its rows in window order: compare the image's scores as a set
            ref = torch.relu(a2 @ g2.mean(0))
            got = rows[t, image_rows]
            assert torch.allclose(got.sort().values, ref.sort().values, atol=1e-6, rtol=1e-4)
            continue
        ref = torch.relu(a2[image_rows] @ g2[image_rows].mean(0))
        assert torch.allclose(rows[t, image_rows], ref, atol=1e-6, rtol=1e-4), (family, t)
        others = torch.ones(rows.shape[1], dtype=torch.bool)
        others[image_rows] = False
        assert (rows[t, others] == 0).all()  # CLS rows score 0
    # each LM image token (cross-attention families: each key) gets the mean of the rows feeding it
    n = int(batch.key_positions().max()) + 1 if batch.in_key_space else batch.seq_len
    positions = geometry.to_positions(rows, n)
    for tok in batch.geometry[0].grid_positions().tolist():
        fed = geometry.token_of == tok
        assert int(fed.sum()) >= 1 and torch.allclose(positions[:, tok], rows[:, fed].mean(1))
        assert not batch.in_key_space or int(fed.sum()) == 1  # one tower row per key
    assert mmlens.count_hooks(subject.model) == 0


def _eager_relevancy(subject, batch, target, geometry, block, dual):
    """Chefer et al.'s rule with full matrices in forward order: R_lm over the LM, the image tokens' (R - I) rows
    split over their patches (CLS seed for CLIP), times R_tower over blocks 0..block, with every block's B as one
    (rows x rows) matrix: tiles block-diagonal; chunked towers' calls block-diagonal in held order, permuted to
    canonical order."""
    n_lm = 0 if dual else subject.n_layers
    hook_points = subject.hook_point_map()
    # cross-attention families (Mllama): each LM layer has self- or cross-attention
    lm_names = [f"lm.blocks.{i}.attn.weights" if f"lm.blocks.{i}.attn.weights" in hook_points
                else f"lm.blocks.{i}.xattn.weights" for i in range(n_lm)]
    extra = {f"v{k}": HookPoint(hook_points[f"vision.blocks.{k}.attn.weights"].module, "attn_weights")
             for k in range(block + 1)}
    order = hook_points["vision.blocks.0.attn.weights"].rows
    perm = []
    handle = order.source.register_forward_pre_hook(lambda m, a, kw: perm.append(order.order(a, kw)),
                                                    with_kwargs=True) if order is not None else None
    try:
        with torch.enable_grad(), eager_attention(subject.model), Tracer({**hook_points, **extra}) as tr:
            for name in lm_names:
                tr.capture_attention(name, detach=False)
            for k in range(block + 1):
                tr.capture_attention(f"v{k}", detach=False)
            logits = subject.forward(batch)
    finally:
        if handle is not None:
            handle.remove()
    lm_w = [tr.captured[name][0] for name in lm_names]
    v_w = [tr.captured[f"v{k}"] for k in range(block + 1)]  # per block: one call per tile batch or chunk
    flat = lm_w + [w for calls in v_w for w in calls]
    grads = list(torch.autograd.grad(target.value(logits, batch, "logit").sum(), flat))
    b = [(g.float() * w.float()).clamp_min(0).mean(-3) for g, w in zip(grads, flat)]
    lm_b, v_b = b[:n_lm], b[n_lm:]
    if dual:
        v = torch.zeros(geometry.n_rows)
        v[0] = 1.0
    elif batch.in_key_space:  # Chefer et al.'s bi-modal rules: R_tt, R_ti; key k is tower row token_of^-1(k)
        n, n_keys = batch.seq_len, int(batch.key_positions().max()) + 1
        r_tt, r_ti = torch.eye(n), torch.zeros(n, n_keys)
        for name, m in zip(lm_names, lm_b):
            if ".xattn." in name:
                hat = r_tt - torch.eye(n)
                total = hat.sum(1, keepdim=True)
                r_ti = r_ti + (hat / torch.where(total > 0, total, torch.ones_like(total)) + torch.eye(n)).T @ m[0]
            else:
                r_tt, r_ti = r_tt + m[0] @ r_tt, r_ti + m[0] @ r_ti
        keys = r_ti[target.query_positions(batch)].mean(0)
        v = torch.zeros(geometry.n_rows)
        fed = geometry.token_of >= 0
        v[fed] = keys[geometry.token_of[fed]]
    else:
        n = batch.seq_len
        r = torch.eye(n)
        for m in lm_b:
            r = r + m[0] @ r
        lm = (r - torch.eye(n))[target.query_positions(batch)].mean(0)
        v = torch.zeros(geometry.n_rows)
        for j, tok in enumerate(geometry.token_of.tolist()):
            if tok >= 0:
                v[j] = lm[tok] / int((geometry.token_of == tok).sum())
    start = v.detach().clone()
    r = torch.eye(geometry.n_rows)
    i = 0
    for calls in v_w:
        full = torch.block_diag(*[t for m in v_b[i:i + len(calls)] for t in m])
        i += len(calls)
        if perm:
            inv = torch.argsort(perm[0])
            full = full[inv][:, inv]
        r = r + full @ r
    return start, (v @ r).detach()


def _sharpened(family):
    """A fresh tiny subject whose vision blocks' weight matrices are scaled by 4 (gates opened), so the tower's share of the
    relevancy (tiny with random weights) is well above float32 rounding of the LM share it adds to."""
    subject = tiny_dual_subject(family) if family in DUAL_FAMILIES else tiny_subject(family)
    with torch.no_grad():
        for block in subject.adapter.parts().vision_blocks:
            for name, p in block.named_parameters():
                if name.endswith("weight") and p.ndim == 2:
                    p.mul_(4.0)
                elif name.startswith("gate_"):  # gated blocks (Mllama's global layers; tanh gates ~0 at init)
                    p.fill_(1.0)
        if subject.adapter.parts().lm_cross_attn:  # images reach the logits through one gated cross-attention
            subject.adapter.parts().unembed.weight.mul_(100.0)  # layer: target gradients (hence B) are ~100x smaller
    return subject


@pytest.mark.parametrize("family,n_images", [("llava", 1), ("qwen2_vl", 2), ("qwen2_5_vl", 1), ("llava_next", 1),
                                             ("internvl", 1), ("clip", 1), ("mllama", 2)])
def test_vision_relevancy_equals_an_eager_reference(family, n_images):
    """One batched carried backward == full-matrix recursion per target (merge windows with one attention call per
    image, Qwen2.5-VL's windows in held order, tiles, pixel shuffle, CLS-seeded CLIP, Mllama's cross-attention keys
    = tower rows, several images' tiles with their padding rows)."""
    subject = _sharpened(family)
    if family in DUAL_FAMILIES:
        batch = _batch(subject, family)
    else:
        batch = subject.prepare(tiny_images(family, n=n_images), "what color is the cat ?", answer="red cat")
    targets = resolve_targets(subject.tokenizer, batch, None)
    rows, geometry, block = vision_relevancy_rows(subject, batch, targets)
    assert mmlens.count_hooks(subject.model) == 0
    for t, target in enumerate(targets):
        start, ref = _eager_relevancy(subject, batch, target, geometry, block, family in DUAL_FAMILIES)
        assert torch.allclose(rows[t], ref, atol=1e-9, rtol=1e-5), (family, t, (rows[t] - ref).abs().max())
        tower = ref - start  # what the tower's attention added: compared on its own
        assert tower.abs().max() > 3e-5 * start.abs().max(), (family, tower.abs().max())
        assert torch.allclose(rows[t] - start, tower, atol=1e-3 * float(tower.abs().max()), rtol=1e-2)
        assert rows[t, geometry.image_rows(0)].max() > 0


@pytest.mark.parametrize("method", ["vision_gradcam", "vision_relevancy"])
@pytest.mark.parametrize("family", ["llava", "gemma3", "qwen3_vl", "siglip"])
def test_vision_maps_are_non_negative_image_shaped_and_leave_no_hooks(family, method):
    subject = _subject(family)
    dual = family in DUAL_FAMILIES
    images = tiny_images("llava" if dual else family, n=1)
    try:
        ex = mmlens.explain(subject, images, "a red cat" if dual else "what color is the cat ?", method=method,
                            answer=None if dual else "red cat")
    except mmlens.InputError as err:
        assert (family, method) == ("siglip", "vision_relevancy") and "attention head" in str(err)
        return
    for t in range(len(ex.targets)):
        m = ex.image_map(t)
        assert m.shape == (images[0].height, images[0].width)
        assert (m >= 0).all() and m.max() > 0
    assert (ex.position_scores >= 0).all()
    assert mmlens.count_hooks(subject.model) == 0


def test_vision_relevancy_refuses_attention_pooled_dual_encoders_in_one_line():
    subject = _subject("siglip2")
    with pytest.raises(mmlens.InputError, match="pools with an attention head"):
        mmlens.explain(subject, tiny_images("llava", n=1), "a red cat", method="vision_relevancy")
    assert mmlens.count_hooks(subject.model) == 0


def test_vision_gradcam_layer_option_is_checked():
    subject = subject_for("llava")  # feature layer -2: block 0 of the 2-block tiny tower
    with pytest.raises(mmlens.InputError, match="does not reach the target"):
        mmlens.explain(subject, tiny_images("llava", n=1), "what color is the cat ?", method="vision_gradcam",
                       answer="red cat", layer=1)
    assert mmlens.count_hooks(subject.model) == 0


def test_cross_attention_keys_read_exactly_their_tower_rows():
    """Mllama's tower layout ``"keys"``: each cross-attention key (the projector over the last global block's row,
    concatenated with intermediate local features) depends on exactly one row of the feature block, the one
    ``token_of`` maps to it; padding rows (17 keys per tile, 24 rows) feed no key. Two images: tile offsets."""
    subject = subject_for("mllama")
    batch = subject.prepare(tiny_images("mllama", n=2), "what color is the cat ?", answer="red cat")
    _, geometry, block = vision_gradcam_rows(subject, batch, resolve_targets(subject.tokenizer, batch, None))
    kept = []
    parts = subject.adapter.parts()
    hooks = [parts.vision_blocks[block].register_forward_hook(lambda m, a, out: kept.append(out)),
             parts.cross_states.register_forward_hook(lambda m, a, out: kept.append(out))]
    try:
        with torch.enable_grad():
            subject.forward(batch)
    finally:
        for h in hooks:
            h.remove()
    a, states = kept[0], kept[1].reshape(-1, kept[1].shape[-1])
    n_keys = int(batch.key_positions().max()) + 1
    assert states.shape[0] == n_keys and geometry.n_rows == a.shape[:-1].numel() > n_keys
    for key in (0, 1, 16, 17, 40, 4 * 17 + 5, n_keys - 1):  # CLS, patches, second tile, second image, last key
        (g,) = torch.autograd.grad(states[key].sum(), a, retain_graph=True)
        moved = torch.nonzero(g.reshape(-1, g.shape[-1]).abs().amax(-1)).flatten().tolist()
        assert moved == torch.nonzero(geometry.token_of == key).flatten().tolist() and len(moved) == 1, (key, moved)
    assert (geometry.token_of >= 0).sum() == n_keys
    assert mmlens.count_hooks(subject.model) == 0
