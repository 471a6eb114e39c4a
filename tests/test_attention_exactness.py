"""Captured attention rows and edge edits are exact: every attention variant, KV-cache decode steps, bf16.

References are transformers' own eager attention (``output_attentions=True``), a no-cache teacher-forced run,
and a float64 recomputation from the model's own bf16 queries / keys.
"""

import pytest
import torch
from conftest import subject_for
from transformers import GptOssConfig, GptOssForCausalLM, Inkling2ForCausalLM
from transformers.models.inkling2.configuration_inkling2 import Inkling2TextConfig
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from mmlens.errors import InputError
from mmlens.hooks.points import HookPoint
from mmlens.hooks.tracing import Tracer
from mmlens.testing import tiny_subject
from mmlens.testing.tiny_models import tiny_images

PROMPT = "what color is the cat ?"


def _eager_attentions(model, inputs: dict) -> tuple[torch.Tensor, ...]:
    """The language model's attention weights from transformers' eager attention."""
    impl = model.config._attn_implementation
    switch = model.config.get_text_config()._attn_implementation != "eager"
    if switch:
        model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(**inputs, output_attentions=True, use_cache=False).attentions
    finally:
        if switch:
            model.set_attn_implementation(impl)


def _tiny_gpt_oss() -> GptOssForCausalLM:
    """Attention sinks (one learned logit per head), a sliding-window layer (window 4) and 4 query heads over 2
    key/value heads."""
    config = GptOssConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=2,
                          num_experts_per_tok=1, sliding_window=4, max_position_embeddings=64,
                          layer_types=["sliding_attention", "full_attention"],
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GptOssForCausalLM(config).eval()
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.sinks.normal_(0.0, 2.0)  # trained sinks are O(1): make them matter
    return model


def _tiny_inkling2() -> Inkling2ForCausalLM:
    """Learned relative ``position_bias`` and per-query sinks (``sinks`` of shape (batch, heads, queries, 1)),
    a sliding-window layer (window 4) then a full one, 4 query heads over 2 key/value heads."""
    config = Inkling2TextConfig(vocab_size=64, unpadded_vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8, swa_num_attention_heads=4,
                                swa_num_key_value_heads=2, swa_head_dim=8, sliding_window_size=4, d_rel=4,
                                rel_extent=8, moe_intermediate_size=16, n_routed_experts=2, num_experts_per_tok=1,
                                n_layers_per_attn_res_block=1, max_position_embeddings=64, eos_token_id=1,
                                layer_types=["hybrid_sliding", "hybrid"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Inkling2ForCausalLM(config).eval()


def _lm_rows_equal_eager(model) -> list[torch.Tensor]:
    """Capture every row of every layer of a text-only LM; assert they equal eager's; return eager's."""
    ids = torch.randint(2, 64, (1, 12), generator=torch.Generator().manual_seed(1))
    points = {f"lm.blocks.{i}.attn.weights": HookPoint(layer.self_attn, "attn_weights")
              for i, layer in enumerate(model.model.layers)}
    with torch.no_grad(), Tracer(points) as tr:
        tr.capture_attention("lm.blocks.*.attn.weights", rows=list(range(12)))
        model(ids, use_cache=False)
    ref = _eager_attentions(model, {"input_ids": ids})
    for i, eager in enumerate(ref):
        got = tr[f"lm.blocks.{i}.attn.weights"]
        assert got.dtype == torch.float32 and got.shape == eager.shape
        assert (got - eager).abs().max().item() < 1e-5
    return list(ref)


# -- 1. every attention variant --------------------------------------------------------------------------


def test_paligemma2_rows_equal_eager_weights_under_softcap_window_and_gqa():
    """Gemma 2 LM: attention logits soft-capped at 50, layer 0 slides over 8 keys, 4 query / 2 kv heads,
    ``query_pre_attn_scalar`` scaling, bidirectional image+prompt prefix (eager attention)."""
    s = subject_for("paligemma2")
    text = s.model.config.text_config
    assert (text.attn_logit_softcapping, text.sliding_window, text._attn_implementation) == (50.0, 8, "eager")
    batch = s.prepare(tiny_images("paligemma2", 1), PROMPT, answer="red cat")
    assert batch.seq_len > 2 * text.sliding_window
    rows = list(range(batch.seq_len))  # explicit rows: recomputed, not the eager weights passed through
    with torch.no_grad(), s.trace() as tr:
        tr.capture_attention("lm.blocks.*.attn.weights", rows=rows)
        s.forward(batch)
    ref = _eager_attentions(s.model, s.model_inputs(batch))
    for i, eager in enumerate(ref):
        got = tr[f"lm.blocks.{i}.attn.weights"]
        assert got.dtype == torch.float32 and got.shape == eager.shape
        assert (got - eager).abs().max().item() < 1e-5  # the uncapped rows were off by 0.05 / 0.12
    # the window is in force: in layer 0 the last query sees exactly the 8 newest keys
    assert int((ref[0][0, 0, -1] > 0).sum()) == text.sliding_window


def test_attention_sink_rows_equal_eager_weights():
    ref = _lm_rows_equal_eager(_tiny_gpt_oss())
    assert all(r.sum(-1).min().item() < 0.95 for r in ref)  # the sinks absorb visible probability mass
    assert int((ref[0][0, 0, -1] > 0).sum()) == 4  # sliding window of 4


def test_position_bias_and_per_query_sink_rows_equal_eager_weights():
    ref = _lm_rows_equal_eager(_tiny_inkling2())
    assert all(r.sum(-1).min().item() < 0.95 for r in ref)
    assert int((ref[0][0, 0, -1] > 0).sum()) == 4 and int((ref[1][0, 0, -1] > 0).sum()) == 12


def test_flex_attention_masks_are_refused_in_one_line():
    s = tiny_subject("llava")
    s.model.set_attn_implementation("flex_attention")
    batch = s.prepare(tiny_images("llava", 1), PROMPT)
    with pytest.raises(InputError, match="attn_implementation='eager' or 'sdpa'") as err:
        with torch.no_grad(), s.trace() as tr:
            tr.capture_attention("lm.blocks.0.attn.weights", rows=[batch.seq_len - 1])
            s.forward(batch)
    assert "\n" not in str(err.value)


# -- 2. generation with a KV cache -----------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llava", "paligemma2"])
def test_blocked_image_edges_during_generate_match_teacher_forcing(family):
    """Generated tokens may not read the image. Cached decode steps must block the same edges as a full
    no-cache forward over prompt + answer (paligemma2: its sliding layer's cache keeps only 7 keys)."""
    s = subject_for(family)
    images = tiny_images(family, 1)
    prompt = s.prepare(images, PROMPT)
    image, start = prompt.image_positions(), prompt.prompt_len
    generated = list(range(start, start + 8))
    with s.trace() as tr:
        tr.block_attention("lm.blocks.*.attn.weights", generated, image)
        tr.capture("lm.logits", reduce=lambda t: t[0, -1])
        gen = s.generate(images, PROMPT, max_new_tokens=4, min_new_tokens=4)
        steps = torch.stack(tr.all("lm.logits"))  # one row per forward: prefill, then 3 decode steps
    n = len(gen.token_ids)
    assert n == 4 and steps.shape[0] == 4
    batch = gen.batch
    with torch.no_grad(), s.trace() as tr:
        tr.block_attention("lm.blocks.*.attn.weights", generated, image)
        blocked = s.forward(batch)[0, start - 1 : start - 1 + n]
    free = s.forward(batch)[0, start - 1 : start - 1 + n].detach()
    assert torch.equal(blocked.argmax(-1), gen.token_ids)
    assert (steps - blocked).abs().max().item() < 1e-4
    assert (free[1:] - blocked[1:]).abs().max().item() > 1e-2  # the block matters for generated queries
    assert (free[0] - blocked[0]).abs().max().item() == 0  # ... and leaves the prompt's last row alone


@pytest.mark.parametrize("family", ["llava", "paligemma2"])
def test_row_captures_during_generate_match_teacher_forcing(family):
    s = subject_for(family)
    images = tiny_images(family, 1)
    start = s.prepare(images, PROMPT).prompt_len
    rows = [start - 1, start + 1, start + 2]  # last prompt row (prefill), 2nd and 3rd generated tokens
    with s.trace() as tr:
        tr.capture_attention("lm.blocks.*.attn.weights", rows=rows)
        gen = s.generate(images, PROMPT, max_new_tokens=4, min_new_tokens=4)
    batch = gen.batch
    with torch.no_grad(), s.trace() as ref:
        ref.capture_attention("lm.blocks.*.attn.weights", rows=rows)
        s.forward(batch)
    for layer in range(s.n_layers):
        name = f"lm.blocks.{layer}.attn.weights"
        calls = tr.all(name)
        assert [c.shape[2] for c in calls] == [1, 1, 1]  # prefill row, then one row per decode step
        full = ref[name]
        for i, (row, got) in enumerate(zip(rows, calls)):
            assert got.shape[-1] == row + 1  # one column per absolute key position up to the query
            assert (got[:, :, 0] - full[:, :, i, : row + 1]).abs().max().item() < 1e-5
            assert full[:, :, i, row + 1 :].abs().max().item() == 0


def test_block_attention_refuses_negative_positions():
    s = subject_for("llava")
    with pytest.raises(InputError, match="absolute token indices"), s.trace() as tr:
        tr.block_attention("lm.blocks.0.attn.weights", [-1], [0])


# -- 7. precision ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_bf16_captures_are_float32_and_exact(impl):
    """A bf16 model's captured rows are float32 and equal a float64 recomputation from its own bf16 queries
    and keys (bf16 rounding of probabilities ~ 1e-3 would fail the 1e-5 tolerance)."""
    s = tiny_subject("llava")
    s.model.to(torch.bfloat16)
    s.model.set_attn_implementation(impl)
    batch = s.prepare(tiny_images("llava", 1), PROMPT)
    attn = s.adapter.parts().lm_blocks[0].self_attn
    seen: dict[str, torch.Tensor] = {}
    hooks = [attn.q_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("q", o)),
             attn.k_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("k", o)),
             attn.register_forward_pre_hook(lambda m, a, kw: seen.__setitem__("pe", kw["position_embeddings"]),
                                            with_kwargs=True)]
    rows = None if impl == "eager" else [batch.seq_len - 3, batch.seq_len - 1]
    try:
        with torch.no_grad(), s.trace() as tr:
            tr.capture_attention("lm.blocks.0.attn.weights", rows=rows)
            s.forward(batch)
    finally:
        for h in hooks:
            h.remove()
    got = tr["lm.blocks.0.attn.weights"]
    assert got.dtype == torch.float32
    n, d = batch.seq_len, attn.head_dim
    q, k = (seen[x].view(1, n, -1, d).transpose(1, 2) for x in "qk")
    q, k = apply_rotary_pos_emb(q, k, *seen["pe"])  # bf16, as the model computes them
    scores = q.double() @ k.double().transpose(-1, -2) * attn.scaling
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    ref = scores.softmax(-1)
    ref = ref if rows is None else ref[:, :, rows]
    assert (got.double() - ref).abs().max().item() < 1e-5
    assert (ref.to(torch.bfloat16).double() - ref).abs().max().item() > 1e-4  # what a bf16 cast would lose
