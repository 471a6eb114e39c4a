"""TracIn (Pruthi et al. 2020, "Estimating Training Data Influence by Tracing Gradient Descent"), TracInCP form.

``influence(z, z') = sum_c lr_c * <grad L(z; w_c), grad L(z'; w_c)>`` over the saved checkpoints ``w_c`` (with
the learning rate ``lr_c`` in force there), the loss ``L`` being the answer's negative log-likelihood under
teacher forcing and the gradients taken over a chosen parameter subset (default: the unembedding). A positive
influence marks a *proponent* (a gradient step on ``z`` lowers the test loss), a negative one an *opponent*.

>>> r = tracin("ckpts", tests=[ShapesVQA(seed=0).sample(3)])      # doctest: +SKIP
>>> r.top(0, k=10)                                                  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmlens.catalog import register_method
from mmlens.data.shapes_vqa import ShapesVQA
from mmlens.demo.checkpoints import TrainingSet, read_manifest
from mmlens.errors import InputError
from mmlens.util.options import check_choice

RANKS = ("abs", "proponents", "opponents")


@dataclass
class TracInResult:
    """``influence[test, train]`` summed over checkpoints; ``train_index`` the training samples' dataset indices."""

    influence: np.ndarray
    train_index: list[int]
    tests: list[Any] = field(repr=False)
    train: list[Any] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)

    def top(self, test: int, k: int = 10, by: str = "abs") -> list[int]:
        """Positions (into ``train``) of the ``k`` most influential training samples for test ``test``."""
        check_choice("by", by, RANKS)
        row = self.influence[test]
        key = {"abs": -np.abs(row), "proponents": -row, "opponents": row}[by]
        return [int(i) for i in np.argsort(key, kind="stable")[:k]]

    def to_dict(self, k: int = 10, by: str = "abs") -> dict[str, Any]:
        return {**self.meta, "rank_by": by, "train_index": self.train_index, "tests": [
            {"question": t.question, "answer": t.answer, "top": [
                {"train_index": self.train_index[j], "question": self.train[j].question,
                 "answer": self.train[j].answer, "influence": float(self.influence[i, j])}
                for j in self.top(i, k, by)]} for i, t in enumerate(self.tests)]}

    def save(self, path: str | os.PathLike, k: int = 10, by: str = "abs") -> Path:
        """``.json`` (every test's top ``k``) or ``.png`` (a contact sheet: a test image, then its top ``k``)."""
        from mmlens.util.io import save_plot_or_json

        return save_plot_or_json(path, lambda: self.to_dict(k, by), lambda: self._sheet(k, by))

    def _sheet(self, k: int, by: str) -> Any:
        import matplotlib.pyplot as plt

        rows = len(self.tests)
        fig, axes = plt.subplots(rows, k + 1, figsize=(1.6 * (k + 1), 1.9 * rows), squeeze=False)
        planted = set(self.meta.get("planted", []))
        for i, t in enumerate(self.tests):
            cells = [(t.image, f"TEST\n{t.question}\n-> {t.answer}", "black")]
            for j in self.top(i, k, by):
                s, idx = self.train[j], self.train_index[j]
                cells.append((s.image, f"#{idx} {self.influence[i, j]:+.3g}\n{s.question}\n-> {s.answer}",
                              "red" if idx in planted else "black"))
            for ax, (img, text, colour) in zip(axes[i], cells):
                ax.imshow(img)
                ax.set_title(text, fontsize=5, color=colour)
                ax.axis("off")
        fig.suptitle(f"TracIn: top {k} training samples by {by} influence (red: planted wrong label)", fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        return fig


def training_samples(folder: str | os.PathLike) -> tuple[list[int], list[Any]]:
    """The dataset indices and samples (planted labels included) a checkpoint folder's training run drew from."""
    m = read_manifest(folder)
    data = TrainingSet.__new__(TrainingSet)  # rebuilt from the manifest (no re-planting search)
    data.data = ShapesVQA(image_size=m["image_size"], seed=m["data_seed"], split=m["split"])
    data.size, data.planted = m["train_size"], list(m["planted"])
    seen = sorted({i for step in m["steps"].values() for i in step["samples"]})
    return seen, [data.sample(i) for i in seen]


def _params(model: torch.nn.Module, params: str) -> list[tuple[str, torch.nn.Parameter]]:
    patterns = [p.strip() for p in params.split(",") if p.strip()]
    if patterns == ["unembed"]:
        weight = model.get_output_embeddings().weight
        return [(n, p) for n, p in model.named_parameters() if p is weight][:1]
    found = [(n, p) for n, p in model.named_parameters() if any(fnmatch.fnmatch(n, pat) for pat in patterns)]
    if not found:
        raise InputError(f"params {params!r} match no parameter: pass 'unembed' or glob(s) over the model's parameter "
                         "names (e.g. '*layers.2.*')")
    return found


def _grads(subject: Any, samples: Sequence[Any], named: list[tuple[str, torch.nn.Parameter]], tick: Any) -> torch.Tensor:
    """One row per sample: the flattened gradient of the answer's NLL over ``named``."""
    rows = []
    for s in samples:
        batch = subject.prepare(s.image, s.question, answer=s.answer)
        loss = -subject.answer_log_probs(subject.forward(batch), batch).sum()
        grads = torch.autograd.grad(loss, [p for _, p in named])
        rows.append(torch.cat([g.flatten() for g in grads]).double())
        tick()
    return torch.stack(rows)


@register_method("tracin", leaf="training-inference/training", tier="training",
                 summary="TracIn: training-sample influence on a test answer from gradient dot products over "
                         "training checkpoints", kind="analysis")
def tracin(checkpoints: str | os.PathLike, tests: Sequence[Any], train: Sequence[Any] | None = None,
           params: str = "unembed", show_progress: bool | None = None) -> TracInResult:
    """TracInCP influence of training samples on ``tests`` (objects with ``image``, ``question``, ``answer``).

    ``checkpoints``: a folder written by ``python -m mmlens.demo.train --save-every N --checkpoint-dir DIR``;
    ``train``: default every training sample the run drew (planted labels included, see
    :func:`training_samples`); ``params``: ``"unembed"`` or parameter-name globs.
    """
    from mmlens.model.loading import load
    from mmlens.util.progress import progress_bar

    manifest = read_manifest(checkpoints)
    if not tests:
        raise InputError("no test sample given: pass at least one (image, question, answer) sample")
    train_index, train_list = training_samples(checkpoints) if train is None else (
        [getattr(s, "index", i) for i, s in enumerate(train)], list(train))
    if not train_list:
        raise InputError("no training sample: pass train=... or a folder whose manifest lists the samples seen")
    ckpts = manifest["checkpoints"]
    influence = torch.zeros(len(tests), len(train_list), dtype=torch.float64)
    with progress_bar(len(ckpts) * (len(tests) + len(train_list)), "tracin", show=show_progress, rate=True) as bar:
        for c in ckpts:
            subject = load(str(Path(checkpoints) / c["name"]))
            subject.model.eval()
            named = _params(subject.model, params)
            for p in subject.model.parameters():
                p.requires_grad_(False)
            for _, p in named:
                p.requires_grad_(True)
            g_test = _grads(subject, tests, named, bar.update)
            g_train = _grads(subject, train_list, named, bar.update)
            influence += float(c["lr"]) * g_test @ g_train.T
    meta = {"method": "tracin", "checkpoints": [c["name"] for c in ckpts], "params": params,
            "n_params": int(sum(p.numel() for _, p in named)), "planted": manifest.get("planted", [])}
    return TracInResult(influence.numpy(), train_index, list(tests), train_list, meta)


__all__ = ["RANKS", "TracInResult", "tracin", "training_samples"]
