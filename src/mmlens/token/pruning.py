"""Visual token importance and pruning (FastV-style): rank image tokens, drop a share r of them from the
later layers, and measure how the answer holds up as a curve over r.

Pruning is done by blocking attention from every position to the pruned image tokens in the layers from
``after_layer`` on, which is what dropping them from the sequence at that layer does (FastV).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.layer.logit_lens import check_layers
from mmlens.model.batch import Batch, cat_inputs
from mmlens.model.samples import RunningMean, SampleStat, reduce_samples
from mmlens.model.subject import Subject
from mmlens.model.targets import resolve_targets, tail_rows
from mmlens.util.io import save_plot_or_json

DEFAULT_RATIOS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass
class PruningCurve:
    """Answer agreement and target probability as a function of the pruned share of image tokens."""

    ratios: list[float]
    prob: list[float]
    agreement: list[float]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ratios": self.ratios, "prob": self.prob, "agreement": self.agreement, "meta": self.meta}

    def plot(self, ax: Any = None) -> Any:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = (plt.subplots(figsize=(5, 3.5)) if ax is None else (ax.figure, ax))
        ax.plot(self.ratios, self.prob, "o-", label="p(answer)")
        ax.plot(self.ratios, self.agreement, "s--", label="answer agreement")
        ax.set_xlabel("share of image tokens pruned")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"visual token pruning ({self.meta.get('rank', '')})", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    def save(self, path: str | Path) -> Path:
        """Write ``.json`` (numbers + metadata) or ``.png`` (the plot); nothing is left on failure."""
        return save_plot_or_json(path, self.to_dict, self.plot)


def fastv_scores(subject: Subject, batch: Batch, layer: int) -> torch.Tensor:
    """Per-position importance: mean attention (heads, queries after the image) each token receives at ``layer``."""
    (layer,) = check_layers(subject, [layer])
    image = batch.image_positions()
    queries = torch.arange(int(image.max()) + 1, batch.seq_len)
    with torch.no_grad(), subject.trace() as tr:
        tr.capture_attention(f"lm.blocks.{layer}.attn.weights", rows=queries, reduce=lambda w: w[0].mean((0, 1)).cpu())
        subject.forward(batch)
    return tr[f"lm.blocks.{layer}.attn.weights"]


@register_method("token_pruning", leaf="model/token/visual", tier="intervention",
                 summary="rank image tokens (FastV attention or any map), prune a share r, answer drift over r",
                 kind="analysis")
@torch.no_grad()
def pruning_curve(subject: Subject, batch: Batch, ratios: Sequence[float] = DEFAULT_RATIOS,
                  scores: torch.Tensor | None = None, after_layer: int = 2, target: Any = "answer") -> PruningCurve:
    """Prune the lowest-scored share ``r`` of image tokens from layer ``after_layer`` on, for each ``r``, in one
    batched forward. ``scores``: per-position importance (default FastV: attention received at layer
    ``after_layer - 1``).

    >>> curve = pruning_curve(lm, batch); curve.save("pruning.png")     # doctest: +SKIP
    """
    subject.require_language_model("token pruning")
    n = subject.n_layers
    if not 1 <= after_layer < n:
        raise InputError(f"after_layer={after_layer} is out of range: use 1..{n - 1}")
    if not ratios or any(not 0.0 <= r <= 1.0 for r in ratios):
        raise InputError(f"ratios must lie in [0, 1], got {list(ratios)}")
    batch.require_sequence_images("token pruning", "use attention_knockout or causal_trace (they block / corrupt "
                                  "the cross-attention keys)")
    rank = "fastv" if scores is None else "given scores"
    scores = fastv_scores(subject, batch, after_layer - 1) if scores is None else torch.as_tensor(scores).float()
    image = batch.image_positions()
    order = image[scores[image].argsort()]  # least important first
    (tgt,) = resolve_targets(subject.tokenizer, batch, target)[:1]
    everyone = torch.arange(batch.seq_len)
    with subject.trace() as tr:
        for row, r in enumerate(ratios):
            pruned = order[: round(r * image.numel())]
            if pruned.numel():
                tr.block_attention(f"lm.blocks.{after_layer}.attn.weights", everyone, pruned, rows=[row])
                for layer in range(after_layer + 1, n):
                    tr.block_attention(f"lm.blocks.{layer}.attn.weights", everyone, pruned, rows=[row])
        inputs = cat_inputs([subject.model_inputs(batch)] * len(ratios))
        logits = subject.adapter.joint_logits(inputs, batch.seq_len - batch.prompt_len + 1)  # the answer's positions
    prob = tgt.value(logits, batch).exp().cpu()
    q = tail_rows(logits.shape[1], batch.seq_len, batch.answer_positions - 1)
    agree = (logits[:, q].argmax(-1).cpu() == batch.answer_ids).float().mean(-1)
    return PruningCurve([float(r) for r in ratios], prob.tolist(), agree.tolist(),
                        {"model": subject.model_id, "rank": rank, "after_layer": after_layer, "target": tgt.label,
                         "image_tokens": int(image.numel()), "forward_calls": 1 + (rank == "fastv")})


class PruningStat(SampleStat):
    """The FastV pruning curve of each sample (its contribution, on the model's own answer), averaged (the
    reducer: streaming means)."""

    name = "pruning_curve"
    answer = "model"

    def __init__(self, ratios: Sequence[float] = DEFAULT_RATIOS, after_layer: int = 2) -> None:
        self.ratios, self.after_layer = [float(r) for r in ratios], int(after_layer)

    def config(self) -> dict[str, Any]:
        return {"stat": self.name, "ratios": self.ratios, "after_layer": self.after_layer}

    def check(self, subject: Subject) -> None:
        n = subject.n_layers
        if not 1 <= self.after_layer < n:
            raise InputError(f"after_layer={self.after_layer} is out of range: use 1..{n - 1}")
        if not self.ratios or any(not 0.0 <= r <= 1.0 for r in self.ratios):
            raise InputError(f"ratios must lie in [0, 1], got {self.ratios}")

    def per_sample(self, subject: Subject, batch: Batch) -> dict[str, torch.Tensor]:
        curve = pruning_curve(subject, batch, self.ratios, after_layer=self.after_layer)
        return {"prob": torch.tensor(curve.prob), "agreement": torch.tensor(curve.agreement)}

    def reducer(self, subject: Subject) -> PruningMeans:
        return PruningMeans(self.ratios, self.after_layer, subject.model_id)


class PruningMeans:
    """Streaming means of per-sample pruning curves."""

    def __init__(self, ratios: list[float], after_layer: int, model: str) -> None:
        self.ratios, self.after_layer, self.model = ratios, after_layer, model
        self.prob, self.agree = RunningMean(), RunningMean()

    def add(self, index: int, c: dict[str, torch.Tensor]) -> None:
        self.prob.add(c["prob"])
        self.agree.add(c["agreement"])

    def result(self) -> PruningCurve:
        return PruningCurve(list(self.ratios), self.prob.mean.tolist(), self.agree.mean.tolist(),
                            {"model": self.model, "rank": "fastv", "after_layer": self.after_layer,
                             "samples": self.prob.count})


def dataset_pruning_curve(subject: Subject, samples: Iterable[Any], ratios: Sequence[float] = DEFAULT_RATIOS,
                          after_layer: int = 2, show_progress: bool | None = None) -> PruningCurve:
    """Mean pruning curve over ``samples`` (the model's own answers), with streaming means (the dataset-run
    version: :func:`mmlens.run_pruning_curve`)."""
    return reduce_samples(subject, samples, PruningStat(ratios, after_layer), "pruning", show_progress)
