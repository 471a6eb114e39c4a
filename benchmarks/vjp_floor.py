"""The plain-PyTorch floor for "every answer token's input gradient": what the cheapest implementation does.

No mmlens tracing and no hooks: on the Hugging Face model itself, parameters frozen, the LM's input
embeddings (token embeddings with the projected image features scattered in, computed without a graph) are
the only leaf that needs a gradient; one forward on ``inputs_embeds`` with ``logits_to_keep`` set to the K
positions that predict the answer (the LM head and the log-softmax run on K rows only); then the K
vector-Jacobian products, either batched over one graph (``torch.autograd.grad(..., is_grads_batched=True)``)
or one by one with ``retain_graph``. Work: one forward (with a graph) + K input-only backwards, where a
forward + backward with parameter gradients costs about 3 forward units.

LLaVA / LLaVA-NeXT (``benchmarks.common.mid_llava``) only: their LM takes the whole multimodal input as
``inputs_embeds`` (Qwen3-VL adds DeepStack features inside the LM and needs M-RoPE positions; Gemma 3
needs its token types for the bidirectional image block).

    python -m benchmarks.attribution_cost --layers 4 --hidden 256 --image-size 112 --modes forward_backward,vjp_floor
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

VARIANTS = ("batched", "loop")


def plain_embeddings(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """``(1, N, D)`` LM input embeddings of a LLaVA / LLaVA-NeXT, as its own forward builds them (no graph)."""
    cfg, inner = model.config, model.model
    if not hasattr(inner, "get_image_features") or "pixel_values" not in inputs:
        raise SystemExit("vjp_floor runs on the llava family (LLaVA / LLaVA-NeXT: --family llava) only")
    sizes = {"image_sizes": inputs["image_sizes"]} if "image_sizes" in inputs else {}
    with torch.no_grad():
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        out = inner.get_image_features(inputs["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
                                       vision_feature_select_strategy=cfg.vision_feature_select_strategy, **sizes)
        features = torch.cat(list(out.pooler_output), dim=0).to(embeds.dtype)
        mask = (inputs["input_ids"] == cfg.image_token_id)[..., None]
        return embeds.masked_scatter(mask, features)


def answer_log_probs(model: torch.nn.Module, embeds: torch.Tensor, mask: torch.Tensor, query: torch.Tensor,
                     ids: torch.Tensor) -> torch.Tensor:
    """``(K,)`` log-probs of answer tokens ``ids`` read at sequence positions ``query``; the LM head runs on
    those K positions only (``logits_to_keep``)."""
    logits = model(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=query, use_cache=False).logits
    return logits[0].float().log_softmax(-1).gather(-1, ids[:, None])[:, 0]


def input_gradients(values: torch.Tensor, leaf: torch.Tensor, variant: str) -> torch.Tensor:
    """``(K, *leaf.shape)``: the gradient of each of the K ``values`` with respect to ``leaf``."""
    k = values.numel()
    if variant == "batched":
        eye = torch.eye(k, dtype=values.dtype, device=values.device)
        return torch.autograd.grad(values, leaf, grad_outputs=eye, is_grads_batched=True)[0]
    if variant == "loop":
        return torch.stack([torch.autograd.grad(values[i], leaf, retain_graph=i < k - 1)[0] for i in range(k)])
    raise ValueError(f"variant {variant!r}: pass one of {VARIANTS}")


def floor_functions(subject: Any, batch: Any) -> dict[str, Callable[[], torch.Tensor]]:
    """Per variant, a function computing every answer token's input-embedding gradient ``(K, 1, N, D)`` from
    the prepared ``batch`` (vision tower included, as in ``forward_backward``); parameters frozen here."""
    model = subject.model
    for p in model.parameters():
        p.requires_grad_(False)
    inputs = subject.model_inputs(batch)
    query = (batch.answer_positions - 1).to(subject.device)
    ids = batch.answer_ids.to(subject.device)

    def run(variant: str) -> torch.Tensor:
        leaf = plain_embeddings(model, inputs).requires_grad_(True)
        values = answer_log_probs(model, leaf, inputs["attention_mask"], query, ids)
        return input_gradients(values, leaf, variant)

    return {variant: (lambda v=variant: run(v)) for variant in VARIANTS}


def check_floor(subject: Any, batch: Any, grads: dict[str, torch.Tensor]) -> float:
    """Largest difference between the variants' gradients and per-token autograd through the full forward
    (``subject.forward``, logits at every position); raises if above 1e-4 relative to the largest gradient."""
    from mmlens.attribution.captum_gradients import input_embeddings
    from mmlens.model.targets import resolve_targets

    model = subject.model
    embeds = plain_embeddings(model, subject.model_inputs(batch))
    if not torch.equal(embeds, input_embeddings(subject, batch)):
        raise RuntimeError("vjp_floor's input embeddings differ from the model's own")
    leaf = embeds.clone().requires_grad_(True)
    mask = subject.model_inputs(batch)["attention_mask"]
    logits = model(inputs_embeds=leaf, attention_mask=mask, use_cache=False).logits
    targets = resolve_targets(subject.tokenizer, batch, None)
    ref = torch.stack([torch.autograd.grad(t.value(logits, batch), leaf, retain_graph=True)[0] for t in targets])
    scale = float(ref.abs().max())
    worst = max(float((g - ref).abs().max()) for g in grads.values())
    if worst > 1e-4 * scale:
        raise RuntimeError(f"vjp_floor's gradients differ from per-token autograd by {worst:.3g} (scale {scale:.3g})")
    return worst / scale


def breakdown(subject: Any, batch: Any, variant: str, repeats: int = 3) -> dict[str, float]:
    """Median seconds (over ``repeats`` runs) of the parts of ``variant``: building the input embeddings
    (vision tower, no graph), the forward with a graph, and the K vector-Jacobian products."""
    import statistics
    import time

    model, inputs = subject.model, subject.model_inputs(batch)
    query = (batch.answer_positions - 1).to(subject.device)
    ids = batch.answer_ids.to(subject.device)
    runs = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        leaf = plain_embeddings(model, inputs).requires_grad_(True)
        t1 = time.perf_counter()
        values = answer_log_probs(model, leaf, inputs["attention_mask"], query, ids)
        t2 = time.perf_counter()
        input_gradients(values, leaf, variant)
        runs.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
    return {name: statistics.median(r[i] for r in runs) for i, name in enumerate(("embed_s", "forward_s", "vjps_s"))}
