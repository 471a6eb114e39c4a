"""Attention-tier methods: raw attention and rollout, against eager attention and hand-built references."""

import pytest
import torch
from conftest import subject_for

import mmlens
from mmlens import InputError
from mmlens.attribution.attention import attention, attention_rollout, rollout
from mmlens.model.targets import resolve_targets
from mmlens.testing.tiny_models import FAMILIES, tiny_images

PROMPT = "what color is the cat?"



def eager_attentions(subject, batch):
    """Every layer's (1, heads, N, N) attention from a plain eager forward with output_attentions."""
    impl = subject.model.config._attn_implementation
    subject.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = subject.model(**subject.model_inputs(batch), output_attentions=True, use_cache=False)
    finally:
        subject.model.set_attn_implementation(impl)
    return [a.float() for a in out.attentions]


def setup(family, answer="red cat", target=None):
    subject = subject_for(family)
    batch = subject.prepare(tiny_images(family, n=1), PROMPT, answer=answer)
    return subject, batch, resolve_targets(subject.tokenizer, batch, target)


def reference_rollout(stack, rows, residual=0.5):
    """The full product A'_L @ ... @ A'_1, then its rows."""
    n = stack[0].shape[-1]
    prod = torch.eye(n, dtype=torch.float64)
    for a in stack:  # first layer first: prod <- A'_l @ prod
        a = (1 - residual) * a.double() + residual * torch.eye(n, dtype=torch.float64)
        a = a / a.sum(-1, keepdim=True)
        prod = a @ prod
    return prod[rows]


@pytest.mark.parametrize("residual", [0.5, 0.0, 0.3])
def test_attention_rollout_equals_full_product(residual):
    g = torch.Generator().manual_seed(0)
    n, layers = 7, 4
    mask = torch.ones(n, n).tril().bool()
    stack = [torch.softmax(torch.randn(n, n, generator=g).masked_fill(~mask, float("-inf")), -1) for _ in range(layers)]
    rows = [6, 2, 4]
    got = attention_rollout(stack, rows, residual=residual)
    torch.testing.assert_close(got.double(), reference_rollout(stack, rows, residual), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.ones(3))  # rows stay distributions
    assert got[1, 3:].abs().max() == 0  # causal: position 2 sees nothing after it


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_method_equals_eager_weights(family):
    subject, batch, targets = setup(family)
    out = attention(subject, batch, targets)
    ref = torch.stack(eager_attentions(subject, batch))[:, 0].mean(1)  # (layers, N, N): mean over heads
    for t, target in enumerate(targets):
        q = target.query_positions(batch)
        expected = ref[:, q].mean(0).mean(0)  # mean over layers, then over the target's query rows
        torch.testing.assert_close(out.position_scores[t], expected, atol=1e-5, rtol=1e-4)
    assert out.position_scores.shape == (2, batch.seq_len)


def test_attention_options_select_layers_heads_and_max():
    subject, batch, _ = setup("llava")
    targets = resolve_targets(subject.tokenizer, batch, "answer")  # one target with two query rows
    out = attention(subject, batch, targets, layers=[-1], heads=1, aggregate="max")
    a = eager_attentions(subject, batch)[-1][0, 1]  # last layer, head 1
    q = targets[0].query_positions(batch)
    torch.testing.assert_close(out.position_scores[0], a[q].mean(0), atol=1e-5, rtol=1e-4)
    both = attention(subject, batch, targets, layers=[0, 1], aggregate="max")
    ref = torch.stack(eager_attentions(subject, batch))[:, 0]  # (L, H, N, N)
    torch.testing.assert_close(both.position_scores[0], ref.amax(1).amax(0)[q].mean(0), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_rollout_method_equals_reference_on_eager_weights(family):
    subject, batch, targets = setup(family)
    out = rollout(subject, batch, targets)
    stack = [a[0].mean(0) for a in eager_attentions(subject, batch)]
    for t, target in enumerate(targets):
        q = target.query_positions(batch)
        expected = reference_rollout(stack, q).mean(0).float()
        torch.testing.assert_close(out.position_scores[t], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "method, options, match",
    [
        ("attention", {"layers": 7}, "layers=7 is out of range"),
        ("attention", {"heads": [0, 5]}, "heads="),
        ("attention", {"aggregate": "median"}, "aggregate='median'"),
        ("rollout", {"residual": 1.5}, "residual=1.5"),
        ("rollout", {"head_fusion": "min"}, "head_fusion"),
    ],
)
def test_bad_attention_options_are_one_line_input_errors(method, options, match):
    subject = subject_for("llava")
    with pytest.raises(InputError, match=match) as info:
        mmlens.explain(subject, tiny_images("llava"), PROMPT, method=method, answer="red", **options)
    assert "\n" not in str(info.value)
