"""Decomposition of an MLLM's image embedding (the projector's input) into the direct contributions of the vision
tower's input embedding, every attention head, every MLP and the biases.

The tower runs inside a normal forward, stopped as soon as the projector is called. The projector's input is
matched to the residual stream after some block (LLaVA reads the second-to-last, without CLS), or to the tower's
final layernorm of the last block (SigLIP towers; linearised per row with its actual scale). Contributions are
averaged over the image-token rows, so the decomposition is of the mean image-token embedding (exact). Towers whose
projector reads a reshaped stream (pixel shuffle) are decomposed at that stream, with a note saying so.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmlens.embedding.tower import Tower, _attn
from mmlens.util.progress import progress

_OUT_PROJ = ("out_proj", "proj", "o_proj", "projection_layer", "dense")


class _Stop(Exception):
    """Raised in the projector's pre-hook: the tower's work is done."""


def _out_proj(attn: nn.Module, d: int) -> nn.Linear | None:
    for name in _OUT_PROJ:
        m = getattr(attn, name, None)
        if isinstance(m, nn.Linear) and m.in_features == d and m.out_features == d:
            return m
    return None


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _post_norm(t: Tower) -> nn.Module | None:
    for m in t.model.modules():
        enc = getattr(m, "encoder", None)
        if (getattr(enc, "layers", None) is t.blocks or getattr(m, "blocks", None) is t.blocks) and isinstance(
            getattr(m, "post_layernorm", None), nn.LayerNorm
        ):
            return m.post_layernorm
    return None


def _capture(t: Tower, image: Any) -> tuple[list[dict[str, Any]], torch.Tensor]:
    subject = t.subject
    batch = subject.prepare([image], "what color is the object ?")
    records: list[dict[str, Any]] = [{} for _ in t.blocks]
    handles, found = [], {}
    try:
        for i, block in enumerate(t.blocks):
            rec, attn = records[i], _attn(block)

            def pre(m: nn.Module, args: tuple, kwargs: dict, rec: dict = rec) -> None:
                rec["x"] = args[0] if args else kwargs["hidden_states"]

            def post(m: nn.Module, args: Any, out: Any, rec: dict = rec) -> None:
                rec["out"] = _first(out)

            def on_attn(m: nn.Module, args: Any, out: Any, rec: dict = rec) -> None:
                rec["attn"] = _first(out)

            handles += [block.register_forward_pre_hook(pre, with_kwargs=True), block.register_forward_hook(post),
                        attn.register_forward_hook(on_attn)]
            proj = _out_proj(attn, int(getattr(t.vision_config, "hidden_size", 0)) or -1)
            if proj is not None:
                def heads_in(m: nn.Module, args: tuple, rec: dict = rec) -> None:
                    rec["z"] = args[0]

                handles.append(proj.register_forward_pre_hook(heads_in))

        def stop(m: nn.Module, args: tuple, kwargs: dict) -> None:
            found["p"] = args[0] if args else next(iter(kwargs.values()))
            raise _Stop

        handles.append(t.parts.projector.register_forward_pre_hook(stop, with_kwargs=True))
        with torch.no_grad():
            try:
                subject.forward(batch)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return records, found["p"].float()


def _match(t: Tower, records: list[dict[str, Any]], p: torch.Tensor) -> tuple[int, int, nn.Module | None, str]:
    """``(block, dropped leading rows, layernorm or None, note)``: how the projector input reads the stream."""
    streams = [records[0]["x"]] + [r["out"] for r in records]
    d = streams[-1].shape[-1]
    norm = _post_norm(t)
    for k in range(len(streams) - 1, -1, -1):
        s = streams[k].float().reshape(-1, streams[k].shape[-2] if streams[k].ndim > 2 else 1, d)
        for drop in (0, 1):
            for ln in (None, norm) if k == len(streams) - 1 else (None,):
                cand = s[:, drop:] if ln is None else ln(s[:, drop:]).float()
                if p.shape[-1] == d and cand.numel() == p.numel() and torch.allclose(cand.reshape(p.shape), p, atol=1e-4, rtol=1e-3):
                    return k, drop, ln, "projector input = " + ("final layernorm of " if ln is not None else "") + (
                        f"the stream after block {k - 1}" if k else "the patch embeddings") + (" without CLS" if drop else "")
    return len(streams) - 1, 0, None, ("the projector reads a reshaped copy of the last block's output (e.g. pixel "
                                       "shuffle): the decomposition is of that stream")


def decompose_mllm(t: Tower, images: list, show: bool | None = None) -> Any:
    from mmlens.embedding.decompose import Decomposition

    H = t.n_heads
    rows_out, embs, notes = [], [], set()
    names: list[str] = []
    for image in progress(images, "decomposing", show):
        records, p = _capture(t, image)
        k, drop, ln, note = _match(t, records, p)
        notes.add(note)
        comps: list[tuple[str, torch.Tensor]] = [("embed", records[0]["x"].float())]
        for i, (block, rec) in enumerate(zip(t.blocks[:k], records[:k], strict=True)):
            x, attn = rec["x"].float(), rec["attn"].float()
            scale = getattr(block, "lambda_1", None)
            scale = scale.float() if torch.is_tensor(scale) else 1.0
            proj = _out_proj(_attn(block), x.shape[-1])
            if proj is not None and "z" in rec:
                z = rec["z"].float()
                dh = z.shape[-1] // H
                w = proj.weight.float().view(-1, H, dh)
                zh = z.reshape(*z.shape[:-1], H, dh)
                for h in range(H):
                    comps.append((f"L{i}.H{h}", (zh[..., h, :] @ w[:, h].T) * scale))
                bias = proj.bias.float() if proj.bias is not None else torch.zeros(x.shape[-1])
                comps.append((f"L{i}.attn_bias", (bias * scale).expand_as(x)))
            else:
                comps.append((f"L{i}.attn", attn * scale))
            comps.append((f"L{i}.mlp", rec["out"].float() - x - attn * scale))
        stream = records[k - 1]["out"].float() if k else records[0]["x"].float()
        vecs = [_rows(c, stream, drop) for _, c in comps]
        if ln is not None:
            s = _rows(stream, stream, drop)
            sigma = (s.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
            vecs = [(v - v.mean(-1, keepdim=True)) / sigma * ln.weight.float() for v in vecs]
            vecs.append(ln.bias.float().expand_as(s))
            comps.append(("bias", stream))
        names = [n for n, _ in comps]
        rows_out.append(torch.stack([v.mean(0) for v in vecs]))
        embs.append(p.reshape(-1, p.shape[-1]).mean(0) if p.shape[-1] == stream.shape[-1] else _rows(stream, stream, drop).mean(0))
    # n_layers: the blocks the decomposition covers (the projector may read an earlier block than the last)
    return Decomposition(names, torch.stack(rows_out).cpu(), torch.stack(embs).cpu(), k, H,
                         notes=sorted(notes) + ["rows averaged: contributions to the mean image-token embedding"])


def _rows(c: torch.Tensor, stream: torch.Tensor, drop: int) -> torch.Tensor:
    """``c`` laid out like ``stream`` (images x rows x d or rows x d), leading ``drop`` rows removed, as rows x d."""
    c = c.expand_as(stream) if c.shape != stream.shape else c
    if c.ndim > 2:
        c = c[:, drop:]
    return c.reshape(-1, c.shape[-1])
