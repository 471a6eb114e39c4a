"""Attention heads: how much each head looks at the image, and what ablating it does to the answer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.layer.logit_lens import check_layers
from mmlens.model.batch import Batch, cat_inputs
from mmlens.model.samples import RunningMean, SampleStat, reduce_samples
from mmlens.model.subject import Subject
from mmlens.model.targets import resolve_targets
from mmlens.results.grid import GridResult
from mmlens.util.options import check_choice


@register_method("head_image_share", leaf="model/token/visual-text", tier="attention",
                 summary="share of attention from the answer positions to image tokens, per layer and head",
                 kind="analysis")
@torch.no_grad()
def head_image_share(subject: Subject, batch: Batch, target: Any = "answer",
                     layers: Sequence[int] | None = None) -> GridResult:
    """``values[layer, head]`` = attention mass on image tokens from the target's query positions (mean).

    >>> head_image_share(lm, batch).values.shape        # doctest: +SKIP
    torch.Size([4, 4])
    """
    subject.require_language_model("head_image_share")
    layers_ = check_layers(subject, layers)
    (tgt,) = resolve_targets(subject.tokenizer, batch, target)[:1]
    rows = tgt.query_positions(batch)
    batch.require_sequence_images("head_image_share", "use head_ablation (it ablates the cross-attention heads) "
                                  "or the attention method")
    image = batch.image_positions()
    with subject.trace() as tr:
        tr.capture_attention("lm.blocks.*.attn.weights", rows=rows,
                             reduce=lambda w: w[0][:, :, image.to(w.device)].sum(-1).mean(-1).cpu())
        subject.forward(batch)
    values = torch.stack([tr[f"lm.blocks.{layer}.attn.weights"] for layer in layers_])
    return GridResult("head_image_share", values, [f"layer {layer}" for layer in layers_],
                      [f"head {h}" for h in range(values.shape[1])],
                      f"attention share on image tokens from {tgt.label!r}", "share of attention",
                      meta={"model": subject.model_id, "method": "head_image_share", "layers": layers_,
                            "target": tgt.label})


@register_method("head_ablation", leaf="model/layer/components", tier="intervention",
                 summary="zero each attention head's output in turn: change in the answer's probability",
                 kind="analysis")
@torch.no_grad()
def head_ablation(subject: Subject, batch: Batch, target: Any = "answer",
                  layers: Sequence[int] | None = None) -> GridResult:
    """``values[layer, head]`` = p(answer | head zeroed) - p(answer); one batched forward per layer (a block that
    cross-attends instead of self-attending, as in Mllama: its cross-attention heads)."""
    subject.require_language_model("head_ablation")
    layers_ = check_layers(subject, layers)
    (tgt,) = resolve_targets(subject.tokenizer, batch, target)[:1]
    n_heads = subject.n_heads
    inputs = subject.model_inputs(batch)
    p_clean = float(tgt.value(subject.adapter.joint_logits(inputs, tgt.tail(batch)), batch).exp())
    values = torch.zeros(len(layers_), n_heads)
    for i, layer in enumerate(layers_):
        point = f"lm.blocks.{layer}.attn.heads"
        if point not in subject.hook_point_map():  # a cross-attention block (Mllama): its cross-attention heads
            point = f"lm.blocks.{layer}.xattn.heads"
        with subject.trace() as tr:
            tr.edit(point, _zero_heads(n_heads))
            logits = subject.adapter.joint_logits(cat_inputs([inputs] * n_heads), tgt.tail(batch))
        values[i] = tgt.value(logits, batch).exp().cpu() - p_clean
    return GridResult("head_ablation", values, [f"layer {layer}" for layer in layers_],
                      [f"head {h}" for h in range(n_heads)], f"head ablation: change in p({tgt.label!r})",
                      "p(ablated) - p(clean)",
                      meta={"model": subject.model_id, "method": "head_ablation", "layers": layers_,
                            "target": tgt.label, "p_clean": p_clean, "forward_calls": 1 + len(layers_)})


def _zero_heads(n_heads: int):
    """Edit for a batch of ``n_heads`` rows: row h has head h's output zeroed."""

    def fn(h: torch.Tensor) -> torch.Tensor:
        if h.shape[0] != n_heads:
            raise InputError("head ablation expects one row per head")
        shaped = h.reshape(*h.shape[:-1], n_heads, -1).clone()
        idx = torch.arange(n_heads, device=h.device)
        shaped[idx, :, idx] = 0
        return shaped.reshape(h.shape)

    return fn


HEAD_STATS = ("image_share", "ablation")


class HeadStats(SampleStat):
    """Per-head statistics over a dataset: each sample's :func:`head_image_share` and / or :func:`head_ablation`
    grid (its contribution), averaged over samples (the reducer: streaming means)."""

    name = "head_stats"

    def __init__(self, stats: Sequence[str] = HEAD_STATS, layers: Sequence[int] | None = None,
                 target: str = "answer", answer: str = "given") -> None:
        self.stats, self.layers = list(stats), (None if layers is None else [int(x) for x in layers])
        self.target, self.answer = target, answer

    def config(self) -> dict[str, Any]:
        return {"stat": self.name, "stats": self.stats, "layers": self.layers, "target": self.target,
                "answer": self.answer}

    def check(self, subject: Subject) -> None:
        for s in self.stats:
            check_choice("head statistic", s, HEAD_STATS)
        if not self.stats:
            raise InputError(f"no head statistic given: pass some of {', '.join(HEAD_STATS)}")
        check_choice("answer", self.answer, ("given", "model"))
        self.layers = check_layers(subject, self.layers)

    def per_sample(self, subject: Subject, batch: Batch) -> dict[str, torch.Tensor]:
        fns = {"image_share": head_image_share, "ablation": head_ablation}
        return {s: fns[s](subject, batch, self.target, self.layers).values.double() for s in self.stats}

    def reducer(self, subject: Subject) -> HeadMeans:
        return HeadMeans(self.stats, self.layers or [], subject.model_id, self.target)


class HeadMeans:
    """Streaming means of per-sample head grids; :meth:`result`: ``{statistic: GridResult}``."""

    def __init__(self, stats: list[str], layers: list[int], model: str, target: str) -> None:
        self.stats, self.layers, self.model, self.target = stats, layers, model, target
        self.means = {s: RunningMean() for s in stats}

    def add(self, index: int, c: dict[str, torch.Tensor]) -> None:
        for s in self.stats:
            self.means[s].add(c[s])

    def result(self) -> dict[str, GridResult]:
        titles = {"image_share": "mean attention share on image tokens", "ablation": "mean head ablation effect"}
        units = {"image_share": "share of attention", "ablation": "p(ablated) - p(clean)"}
        out = {}
        for s, mean in self.means.items():
            values = mean.mean
            out[s] = GridResult(f"head_{s}", values, [f"layer {x}" for x in self.layers],
                                [f"head {h}" for h in range(values.shape[1])], f"{titles[s]} ({mean.count} samples)",
                                units[s], meta={"model": self.model, "method": f"head_{s}", "layers": self.layers,
                                                "target": self.target, "samples": mean.count})
        return out


def dataset_head_stats(subject: Subject, samples: Iterable[Any], stats: Sequence[str] = HEAD_STATS,
                       layers: Sequence[int] | None = None, target: str = "answer", answer: str = "given",
                       show_progress: bool | None = None) -> dict[str, GridResult]:
    """Mean image-attention share and / or ablation effect per head over ``samples`` (streaming; the dataset-run
    version: :func:`mmlens.run_head_stats`).

    >>> grids = dataset_head_stats(lm, ShapesVQA().samples(50)); grids["ablation"].values.shape  # doctest: +SKIP
    torch.Size([4, 4])
    """
    return reduce_samples(subject, samples, HeadStats(stats, layers, target, answer), "head statistics",
                          show_progress)
