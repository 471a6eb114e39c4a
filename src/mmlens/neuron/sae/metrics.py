"""How good an SAE is: explained variance, L0, dead fraction (streaming), and CE recovered inside the model.

CE recovered = (CE_zero_ablation - CE_with_SAE) / (CE_zero_ablation - CE_clean): the teacher-forced answer's
cross-entropy when the hook point's activation (at the chosen positions) is replaced by the SAE's
reconstruction, set against zero-ablating it (0) and leaving it alone (1).

>>> sae = SparseAutoencoder(4, 8, k=8, seed=0)
>>> reconstruction_metrics(sae, [torch.randn(50, 4)])["l0"] <= 8
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from mmlens.errors import InputError
from mmlens.hooks.points import check_point
from mmlens.model.positions import sequence_positions
from mmlens.model.samples import SampleStat, reduce_samples
from mmlens.model.subject import Subject
from mmlens.neuron.sae.model import SparseAutoencoder
from mmlens.util.options import check_choice


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """Explained variance (1 - SSE / total sum of squares about the mean), mean L0, the share of features that
    never fired (dead fraction) and the mean squared error, over every row of ``batches`` (streaming)."""
    sse = total_sq = 0.0
    sum_x: torch.Tensor | None = None
    n = l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for b in batches:
        x = b.reshape(-1, b.shape[-1]).float()
        f = sae.encode(x)
        x_hat = sae.decode(f)
        sse += float((x - x_hat).double().pow(2).sum())
        total_sq += float(x.double().pow(2).sum())
        sum_x = x.double().sum(0) if sum_x is None else sum_x + x.double().sum(0)
        n += x.shape[0]
        l0 += float((f > 0).sum())
        fired |= (f > 0).any(0).cpu()
    if sum_x is None or n == 0:
        raise InputError("no activations to evaluate: pass at least one non-empty batch")
    variance = total_sq - float(sum_x.pow(2).sum()) / n
    return {"explained_variance": 1.0 - sse / max(variance, 1e-30), "l0": l0 / n,
            "dead_fraction": float((~fired).float().mean()), "mse": sse / (n * x.shape[-1]), "activations": int(n)}


def splice(reconstruct: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor | None, lm: bool) -> Callable:
    """An edit that puts ``reconstruct(x)`` in place of ``x`` at sequence ``rows`` (all rows if None)."""

    def edit(t: torch.Tensor) -> torch.Tensor:
        if rows is None or not lm:
            return reconstruct(t).to(t.dtype)
        idx = rows[rows < t.shape[-2]].to(t.device)
        if idx.numel() == 0:
            return t
        t = t.clone()
        t[..., idx, :] = reconstruct(t[..., idx, :]).to(t.dtype)
        return t

    return edit


def _answer_ce(subject: Subject, batch: Any) -> float:
    return float(-subject.answer_log_probs(subject.forward(batch), batch).mean())


class CeRecovered(SampleStat):
    """Answer cross-entropy clean / with ``reconstruct`` spliced in at ``hook_name`` / zero-ablated there: each
    sample's three values (its contribution; none without an answer), summed (the reducer)."""

    name = "ce_recovered"

    def __init__(self, reconstruct: Callable[[torch.Tensor], torch.Tensor], hook_name: str,
                 positions: str = "all", answer: str = "given") -> None:
        self.reconstruct, self.hook_name, self.positions, self.answer = reconstruct, hook_name, positions, answer

    def config(self) -> dict[str, Any]:
        return {"stat": self.name, "hook_name": self.hook_name, "positions": self.positions, "answer": self.answer,
                "reconstruct": _fingerprint(self.reconstruct)}

    def check(self, subject: Subject) -> None:
        self.hook_name = check_point(subject, self.hook_name)
        self.positions = check_choice("positions", self.positions, ("all", "image", "text"))

    @torch.no_grad()
    def per_sample(self, subject: Subject, batch: Any) -> dict[str, torch.Tensor] | None:
        if batch.answer_ids.numel() == 0:
            return None
        lm = self.hook_name.startswith("lm.")
        rows = None if self.positions == "all" or not lm else sequence_positions(self.positions, batch)
        values = [_answer_ce(subject, batch)]
        for fn in (fitted(self.reconstruct, self.hook_name), torch.zeros_like):
            with subject.trace() as tr:
                tr.edit(self.hook_name, splice(fn, rows, lm))
                values.append(_answer_ce(subject, batch))
        return {"ce": torch.tensor(values, dtype=torch.float64)}

    def reducer(self, subject: Subject) -> CeSums:
        return CeSums()


class CeSums:
    """Streaming sums of the three cross-entropies; :meth:`result` gives the means and the CE recovered."""

    def __init__(self) -> None:
        self.ce, self.n = {"clean": 0.0, "sae": 0.0, "zero": 0.0}, 0

    def add(self, index: int, c: dict[str, torch.Tensor]) -> None:
        for key, value in zip(self.ce, c["ce"].tolist()):
            self.ce[key] += value
        self.n += 1

    def result(self) -> dict[str, float]:
        if self.n == 0:
            raise InputError("no sample had an answer to score: pass samples with answers (or answer='model')")
        ce = {k: v / self.n for k, v in self.ce.items()}
        gap = ce["zero"] - ce["clean"]
        rec = (ce["zero"] - ce["sae"]) / gap if abs(gap) > 1e-12 else float("nan")
        return {"ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_zero": ce["zero"], "ce_recovered": rec,
                "samples": self.n}


def _fingerprint(reconstruct: Any) -> str:
    """What tells two reconstructions apart in a run's manifest: a hash of a module's weights, else its name."""
    import hashlib

    if isinstance(reconstruct, torch.nn.Module):
        digest = hashlib.sha1()
        for key, value in sorted(reconstruct.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return f"{type(reconstruct).__name__}:{digest.hexdigest()}"
    return getattr(reconstruct, "__qualname__", type(reconstruct).__name__)


def ce_recovered(subject: Subject, reconstruct: Callable[[torch.Tensor], torch.Tensor], samples: Iterable[Any],
                 hook_name: str, positions: str = "all", answer: str = "given",
                 show_progress: bool | None = None) -> dict[str, float]:
    """Mean answer cross-entropy clean / with ``reconstruct`` spliced in at ``hook_name`` / zero-ablated there,
    and the CE recovered. ``reconstruct`` is an SAE (or any map ``x -> x_hat``; the identity gives 1.0). The
    dataset-run version: :func:`mmlens.run_ce_recovered`.

    >>> ce_recovered(lm, sae, ShapesVQA().samples(50), "lm.blocks.1.resid_post")["ce_recovered"]  # doctest: +SKIP
    0.97
    """
    subject.require_language_model("ce_recovered")
    return reduce_samples(subject, samples, CeRecovered(reconstruct, hook_name, positions, answer), "CE recovered",
                          show_progress)


def fitted(reconstruct: Callable[[torch.Tensor], torch.Tensor], hook_name: str) -> Callable:
    """``reconstruct`` that first checks (an SAE's) width against the activations met at ``hook_name``."""
    if not isinstance(reconstruct, SparseAutoencoder):
        return reconstruct

    def checked(x: torch.Tensor) -> torch.Tensor:
        reconstruct.check_fits(hook_name, int(x.shape[-1]))
        return reconstruct(x)

    return checked
