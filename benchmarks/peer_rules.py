"""The peers' relevancy rules, re-implemented from their published descriptions (no code copied), for
:mod:`benchmarks.peer_cost`.

Both compute Chefer et al.'s generic relevancy (ICCV 2021, eqs. 5-6): ``R = I`` (``N x N``), then for every
self-attention layer, first to last, ``R <- R + mean_heads((dy/dA * A)^+) @ R``; the relevancy of target ``y``
(the logit of an answer token, read at query position ``q``) is row ``q`` of ``R``. They differ in how the
attention maps and their gradients are kept, which is what the benchmark measures:

- :func:`chefer_rows` (Chefer et al. 2021, sec. 3 and their description of the generic method: every
  attention block keeps its attention map and a hook keeps its gradient; an explanation is one forward and one
  backward of the target): per target a forward with hooks on every layer's attention module that keep the
  probabilities with ``retain_grad``, one backward of the target's logit, then the full ``N x N`` recursion.
- :func:`lvlm_interpret_maps` (Stan et al. 2024, LVLM-Interpret, sec. 3 "relevancy maps": the model run with
  eager attention and ``output_attentions=True``; every layer's attention map kept with its gradient; per
  generated token one backward of its logit, then Chefer's rule): one forward of prompt + answer, every
  layer's ``output_attentions`` tensor with ``retain_grad``, one backward per answer token (``retain_graph``),
  the full ``N x N`` recursion per token, every token's map kept (the tool keeps one map per token to display).

The model is used as loaded (parameters keep ``requires_grad``; ``model.zero_grad()`` before each backward, as
both descriptions' users do) and must already run eager attention (``model.set_attn_implementation("eager")``).

>>> rows = chefer_rows(model, inputs, [(q, token)])     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The language model's per-layer self-attention modules (``decoder.layers[i].self_attn``)."""
    decoder = model.get_decoder()
    return [layer.self_attn for layer in decoder.layers]


def _recursion(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s rule over every layer's kept map and gradient: ``R = I; R += mean_h((grad * A)^+) @ R``."""
    n = attentions[0].shape[-1]
    r = torch.eye(n, device=attentions[0].device)
    for a in attentions:
        cam = (a.grad[0].float() * a[0].detach().float()).clamp(min=0).mean(0)
        r = r + cam @ r
    return r


def _require_eager(model: torch.nn.Module) -> None:
    if model.config.get_text_config()._attn_implementation != "eager":
        raise ValueError("the peers' rules read eager attention: call model.set_attn_implementation('eager') first")


def _forward_keeping_attention(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits, and every layer's attention probabilities kept by forward hooks with ``retain_grad``."""
    kept: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: tuple, output: tuple) -> None:
        probs = output[1]
        probs.retain_grad()
        kept.append(probs)

    handles = [m.register_forward_hook(keep) for m in attention_modules(model)]
    try:
        with torch.enable_grad():
            logits = model(**inputs, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    return logits, kept


def chefer_rows(model: torch.nn.Module, inputs: dict, targets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Row ``q`` of Chefer et al.'s ``R`` for each target ``(q, token)``: one forward + one backward each.
    Returns ``(T, N)``."""
    _require_eager(model)
    rows = []
    for q, token in targets:
        logits, kept = _forward_keeping_attention(model, inputs)
        model.zero_grad()
        logits[0, q, token].backward()
        rows.append(_recursion(kept)[q].detach())
        del logits, kept
    return torch.stack(rows)


def lvlm_interpret_maps(model: torch.nn.Module, inputs: dict, targets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Each target's full ``R`` from one forward with ``output_attentions=True`` and one backward per target.
    Returns ``(T, N, N)``."""
    _require_eager(model)
    with torch.enable_grad():
        out = model(**inputs, output_attentions=True, use_cache=False)
    attentions = list(out.attentions)
    for a in attentions:
        a.retain_grad()
    maps = []
    for i, (q, token) in enumerate(targets):
        model.zero_grad()
        for a in attentions:
            a.grad = None
        out.logits[0, q, token].backward(retain_graph=i < len(targets) - 1)
        maps.append(_recursion(attentions).detach())
    return torch.stack(maps)


def answer_targets(batch) -> list[tuple[int, int]]:
    """``(query position, token id)`` of each answer token of an mmlens batch: the logit that predicts it."""
    ids = batch.answer_ids.tolist()
    return [(batch.prompt_len - 1 + j, int(t)) for j, t in enumerate(ids)]
