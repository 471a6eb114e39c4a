"""Row-chunked attention (probabilities recomputed in backward) equals eager attention: output, gradients,
the (P, dP) chunks the methods reduce, and attention x gradient / relevancy on every family; it keeps no
``heads x N x N`` tensor for backward; short sequences keep the eager path by default."""

import pytest
import torch
from conftest import subject_for

import mmlens
from mmlens import InputError, count_hooks
from mmlens.attribution import attention_backward as backward_module
from mmlens.attribution import relevancy as rel_module
from mmlens.attribution.gradient import eager_attention
from mmlens.attribution.relevancy import attention_chunk_rows, attention_x_gradient, relevancy
from mmlens.hooks import attention_chunks
from mmlens.hooks.attention import AttentionCall
from mmlens.hooks.attention_chunks import RowChunks, row_chunked_attention
from mmlens.model.targets import resolve_targets
from mmlens.testing.tiny_models import FAMILIES, tiny_images

PROMPT = "what color is the cat ?"


def reference(q, k, v, mask, scaling, softcap, sinks):
    """Eager attention as transformers defines it (float32), with P kept for its gradient."""
    heads = q.shape[1]
    kk, vv = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
    s = q @ kk.transpose(-1, -2) * scaling
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    s = s + mask
    if sinks is None:
        p = torch.softmax(s, -1)
    else:
        sink = sinks.view(1, -1, 1, 1).expand(*s.shape[:3], 1)
        p = torch.softmax(torch.cat([s, sink], -1), -1)[..., :-1]
    p.retain_grad()
    return (p @ vv).transpose(1, 2), p


@pytest.mark.parametrize("softcap, sinks", [(None, False), (5.0, False), (None, True)])
def test_row_chunks_equal_eager_attention_and_its_gradients(softcap, sinks):
    gen = torch.Generator().manual_seed(0)
    n, heads, kv_heads, d = 11, 4, 2, 8  # grouped-query heads
    q, k, v = (torch.randn(1, h, n, d, generator=gen, requires_grad=True) for h in (heads, kv_heads, kv_heads))
    pos = torch.arange(n)
    allowed = (pos[None] <= pos[:, None]) & (pos[:, None] - pos[None] < 6)  # causal, sliding window of 6
    allowed[2:5, 2:5] = True  # a bidirectional block (Gemma 3's image tokens)
    mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
    sink = torch.randn(heads, generator=gen) if sinks else None
    call = AttentionCall(None, q, k, mask, 0.3, True, 0, 0, False, softcap=softcap, sinks=sink)
    seen, done = [], []
    plan = RowChunks(4, lambda start, p, dp: seen.append((start, p, dp)), lambda: done.append(1))
    out = row_chunked_attention(call, v, plan)
    ref, p_ref = reference(q, k, v, mask, 0.3, softcap, sink)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    grad = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, (q, k, v), grad)
    (ref * grad).sum().backward()
    for g, x in zip(got, (q, k, v)):
        assert g.abs().max() > 0
        torch.testing.assert_close(g, x.grad, atol=1e-5, rtol=0)
    assert [s for s, *_ in seen] == [0, 4, 8] and done == [1]  # three chunks, then the layer is done
    torch.testing.assert_close(torch.cat([p for _, p, _ in seen], 2), p_ref.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat([dp for *_, dp in seen], 2), p_ref.grad, atol=1e-5, rtol=0)


def eager_cams(subject, batch, target, objective):
    """Per layer ``mean_heads(relu(dtarget/dA * A))`` ``(N, N)``, from a plain eager forward and backward."""
    with eager_attention(subject.model), torch.enable_grad():
        out = subject.model(**subject.model_inputs(batch), output_attentions=True, use_cache=False)
        grads = torch.autograd.grad(target.value(out.logits, batch, objective).sum(), out.attentions)
    return [(g[0].float() * a.detach()[0].float()).clamp_min(0).mean(0) for a, g in zip(out.attentions, grads)]


@pytest.mark.parametrize("family", [*FAMILIES, "paligemma2"])
def test_chunked_attention_gradient_methods_equal_eager_references(family):
    subject = subject_for(family)
    batch = subject.prepare(tiny_images(family), PROMPT, answer="red cat blue")
    targets = resolve_targets(subject.tokenizer, batch, None) + resolve_targets(subject.tokenizer, batch, "answer")
    n = batch.seq_len
    assert attention_chunk_rows(None, subject, batch) is None  # short: eager attention by default
    if batch.in_key_space:  # Mllama: images are cross-attention keys of a short text sequence; no chunks there
        for fn in (attention_x_gradient, relevancy):
            chunked = fn(subject, batch, targets, attention_chunk=3, target_batch=2)
            torch.testing.assert_close(chunked.key_scores, fn(subject, batch, targets, target_batch=2).key_scores,
                                       atol=0, rtol=0)
        return
    # 3 rows per chunk: several chunks per layer; target_batch=2: the chunks' backward runs batched over targets
    axg = attention_x_gradient(subject, batch, targets, attention_chunk=3, target_batch=2).position_scores
    rel = relevancy(subject, batch, targets, attention_chunk=3, target_batch=2).position_scores
    for t, target in enumerate(targets):
        q = target.query_positions(batch)
        cams = eager_cams(subject, batch, target, "log_prob")
        expected = torch.stack([c[q] for c in cams]).mean(0).mean(0)
        torch.testing.assert_close(axg[t], expected, atol=1e-5, rtol=1e-4)
        r = torch.eye(n)
        for c in eager_cams(subject, batch, target, "logit"):
            r = r + c @ r
        torch.testing.assert_close(rel[t], (r - torch.eye(n))[q].mean(0), atol=1e-5, rtol=1e-4)
        assert rel[t].abs().max() > 0 and axg[t].abs().max() > 0


def saved_matrices(subject, batch, method, **options):
    """How many ``(.., N, N)`` attention-shaped tensors autograd saves for backward while ``method`` runs."""
    n, count = batch.seq_len, [0]

    def pack(t):
        count[0] += int(t.ndim >= 2 and tuple(t.shape[-2:]) == (n, n) and t.numel() >= subject.n_heads * n * n)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mmlens.explain(subject, tiny_images("llava"), PROMPT, method=method, answer="red cat", **options)
    return count[0]


@pytest.mark.parametrize("method", ["relevancy", "attention_x_gradient"])
def test_chunked_path_saves_no_attention_matrix_for_backward(method, monkeypatch):
    subject = subject_for("llava")
    batch = subject.prepare(tiny_images("llava"), PROMPT, answer="red cat")
    assert saved_matrices(subject, batch, method) >= subject.n_layers  # eager: every layer's probabilities
    assert saved_matrices(subject, batch, method, attention_chunk=4) == 0
    # the default chunks once a layer's probabilities exceed the budget (here: 3 rows' worth)
    monkeypatch.setattr(backward_module, "ATTENTION_CHUNK_BYTES", 3 * subject.n_heads * batch.seq_len * 4)
    assert attention_chunk_rows(None, subject, batch) == 3
    assert attention_chunk_rows(None, subject, batch, targets_per_backward=2) == 1
    calls = []
    monkeypatch.setattr(attention_chunks, "_spans", lambda n, size: calls.append(size) or
                        (slice(s, min(s + size, n)) for s in range(0, n, size)))
    assert saved_matrices(subject, batch, method, target_batch=1) == 0
    assert set(calls) == {3}


@pytest.mark.parametrize("value", [0, -1, 2.5, "4"])
def test_bad_attention_chunk_is_a_one_line_input_error(value):
    with pytest.raises(InputError, match=f"attention_chunk={value!r}") as info:
        mmlens.explain(subject_for("llava"), tiny_images("llava"), PROMPT, method="relevancy", answer="red",
                       attention_chunk=value)
    assert "\n" not in str(info.value)


def test_chunked_taps_are_removed_also_on_errors():
    subject = subject_for("llava")
    batch = subject.prepare(tiny_images("llava"), PROMPT, answer="red cat")
    targets = resolve_targets(subject.tokenizer, batch, None)

    class Boom(rel_module._Relevancy):
        def rows(self, layer, start, a, grad):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        rel_module.attention_gradients(subject, batch, targets, [0, 1], Boom(2, batch.seq_len, 1),
                                       rel_module.row_seeds(targets, batch)[0][:, :1], attention_chunk=4)
    assert count_hooks(subject.model) == 0
    assert subject.model.config.get_text_config()._attn_implementation == "sdpa"


def test_relevancy_chunks_fold_in_any_layer_order():
    gen = torch.Generator().manual_seed(1)
    n, heads, layers = 7, 3, 3
    a = [torch.rand(heads, n, n, generator=gen) for _ in range(layers)]
    g = [torch.randn(heads, n, n, generator=gen) for _ in range(layers)]
    seed = torch.zeros(2, n)
    seed[0, 5], seed[1, 6] = 1.0, 1.0
    b = [(gi * ai).clamp_min(0).mean(0) for ai, gi in zip(a, g)]
    expected = rel_module.relevancy_rows(b, [5, 6]) - torch.eye(n)[[5, 6]]
    for order in ([2, 1, 0], [0, 2, 1], [1, 0, 2]):  # backward's order (last first), and layers arriving early
        carry = rel_module._Relevancy(layers, n, 2)
        carry.start(seed)
        for layer in order:
            for start in range(0, n, 3):
                carry.rows(layer, start, a[layer][:, start:start + 3], g[layer][:, start:start + 3])
            carry.done(layer)
        torch.testing.assert_close(carry.finish(), expected, atol=1e-6, rtol=0)
