"""Training an SAE streaming over any iterable of activation batches (seeded, with a progress bar).

TopK SAEs get the auxiliary loss AuxK of Gao et al. (2024): features that have not fired for ``dead_after``
activations reconstruct the main reconstruction's residual through their own top-``aux_k`` pre-activations,
which brings them back to life. ReLU + L1 SAEs (Bricken et al. 2023) get dead-feature resampling instead:
every ``resample_every`` steps, features that did not fire since the last check are re-initialised towards
inputs that are badly reconstructed (chosen with probability proportional to their squared loss). Both keep
the decoder rows at unit norm (gradient component along each row removed, then renormalised).

>>> data = [torch.randn(64, 8) for _ in range(4)]
>>> run = train_sae(data, d_sae=16, k=4, epochs=2, batch_size=32, show_progress=False)
>>> run.sae.d_in, len(run.history) > 0
(8, True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.neuron.sae.model import MAX_WIDTH, SparseAutoencoder
from mmlens.util.options import check_choice, check_float, check_int
from mmlens.util.progress import progress_bar

Batches = Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]]


@dataclass
class TrainRun:
    """A trained SAE with its training curve (``history``: step, activations seen, nmse, l0, dead fraction)."""

    sae: SparseAutoencoder
    history: list[dict[str, float]] = field(default_factory=list)
    activations: int = 0
    seconds: float = 0.0

    @property
    def throughput(self) -> float:
        """Activations per second of training (the model's forwards not included)."""
        return self.activations / max(self.seconds, 1e-9)


def _rows(batches: Iterable[torch.Tensor], d_in: int | None) -> Iterator[torch.Tensor]:
    for b in batches:
        if not torch.is_tensor(b) or b.ndim < 1:
            raise InputError(f"activation batches must be tensors (..., d_in), got {type(b).__name__}: pass torch tensors")
        d_in = b.shape[-1] if d_in is None else d_in
        if b.shape[-1] != d_in:
            raise InputError(f"an activation batch is {b.shape[-1]} wide but the SAE reads {d_in}: collect all "
                             "batches at one hook point")
        yield b.reshape(-1, b.shape[-1]).float()


def _minibatches(batches: Iterable[torch.Tensor], d_in: int | None, size: int, buffer: int,
                 gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Rows of ``batches`` in minibatches of ``size``, shuffled within a buffer of ``buffer`` rows."""
    pending: list[torch.Tensor] = []
    held = 0
    for rows in _rows(batches, d_in):
        pending.append(rows)
        held += rows.shape[0]
        if held >= buffer:
            pool = torch.cat(pending)
            pool = pool[torch.randperm(pool.shape[0], generator=gen)]
            cut = (pool.shape[0] // size) * size
            yield from pool[:cut].split(size)
            pending, held = [pool[cut:]], pool.shape[0] - cut
    if held:
        pool = torch.cat(pending)
        yield from pool[torch.randperm(pool.shape[0], generator=gen)].split(size)


def _epochs(batches: Batches, epochs: int) -> Iterator[Iterable[torch.Tensor]]:
    if callable(batches):
        for _ in range(epochs):
            yield batches()
        return
    if epochs > 1 and iter(batches) is batches:
        raise InputError("epochs > 1 needs batches that can be read again: pass a list or a function returning "
                         "a fresh iterable")
    for _ in range(epochs):
        yield batches


@register_method("sparse_autoencoder", leaf="model/embedding/cross-modal", tier="training",
                 summary="sparse autoencoder (TopK + AuxK or ReLU + L1) on any hook point; SAELens format",
                 kind="analysis")
def train_sae(batches: Batches, d_sae: int = 512, architecture: str = "topk", k: int = 16, l1: float = 1e-3,
              lr: float = 1e-3, epochs: int = 1, batch_size: int = 1024, seed: int = 0, hook_name: str = "",
              aux_k: int | None = None, aux_coefficient: float = 1 / 32, dead_after: int = 20_000,
              resample_every: int = 500, total: int | None = None, show_progress: bool | None = None,
              device: str | torch.device = "cpu", meta: dict[str, Any] | None = None) -> TrainRun:
    """Train an SAE on ``batches`` (an iterable of ``(..., d_in)`` tensors, or a function returning one per epoch).

    ``total``: activations per epoch, if known (for the progress bar). Rows are shuffled within a buffer of 32
    minibatches. Loss = normalised MSE (1 - explained variance of the minibatch) + ``l1`` * sum of feature
    activations (standard) or + ``aux_coefficient`` * AuxK (topk, ``aux_k`` = d_in / 2 by default).

    >>> run = train_sae(lambda: activation_tensors(reader, "lm.blocks.1.resid_post"), epochs=4)  # doctest: +SKIP
    """
    architecture = check_choice("architecture", architecture, ("topk", "standard"))
    d_sae = check_int("d_sae", d_sae, 1, MAX_WIDTH)
    epochs = check_int("epochs", epochs, 1, 10_000)
    batch_size = check_int("batch_size", batch_size, 1, 1 << 20)
    lr = check_float("lr", lr, 0.0, 1.0, open_low=True)
    l1 = check_float("l1", l1, 0.0)
    dead_after = check_int("dead_after", dead_after, 1)
    resample_every = check_int("resample_every", resample_every, 1)
    gen = torch.Generator().manual_seed(check_int("seed", seed, 0, 2**63 - 1))
    sae: SparseAutoencoder | None = None
    opt: torch.optim.Optimizer | None = None
    run = TrainRun(sae=None)  # type: ignore[arg-type]
    since_fired = torch.zeros(0)
    fired_window = torch.zeros(0, dtype=torch.bool)
    step, start = 0, time.perf_counter()
    with progress_bar((total or 0) * epochs, "training SAE", show=show_progress if total else False, rate=True) as bar:
        for data in _epochs(batches, epochs):
            for x in _minibatches(data, None if sae is None else sae.d_in, batch_size, 32 * batch_size, gen):
                x = x.to(device)
                if sae is None:
                    sae = SparseAutoencoder(x.shape[-1], d_sae, architecture, k=k, hook_name=hook_name, seed=seed,
                                            meta=meta).to(device)
                    with torch.no_grad():
                        sae.b_dec.copy_(x.mean(0))
                    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
                    since_fired = torch.zeros(d_sae, device=device)
                    fired_window = torch.zeros(d_sae, dtype=torch.bool, device=device)
                    run.sae = sae
                pre = sae.pre_acts(x)
                if architecture == "topk":  # sparse decode: k rows per token, not a dense (n, d_sae) matmul
                    values, index = sae.topk_parts(pre)
                    x_hat = sae.decode_sparse(values, index)
                    active = torch.zeros(d_sae, dtype=torch.bool, device=x.device)
                    active[index[values > 0]] = True
                    l0 = (values > 0).sum(-1).float().mean()
                else:
                    f = sae.activate(pre)
                    x_hat = sae.decode(f)
                    active, l0 = (f > 0).any(0), (f > 0).sum(-1).float().mean()
                err = x - x_hat
                var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
                nmse = err.pow(2).sum() / var
                loss = nmse
                fired = active
                since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + x.shape[0])
                fired_window |= fired
                if architecture == "standard":
                    loss = loss + l1 * f.sum(-1).mean() / x.pow(2).sum(-1).mean().sqrt().clamp_min(1e-12)
                else:
                    dead = since_fired >= dead_after
                    if bool(dead.any()):
                        loss = loss + aux_coefficient * _aux_loss(sae, pre, err.detach(), dead, aux_k)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                sae.remove_parallel_grad()
                opt.step()
                sae.normalize_decoder()
                step += 1
                if architecture == "standard" and step % resample_every == 0:
                    _resample(sae, opt, x, err.detach(), ~fired_window, gen)
                    fired_window.zero_()
                run.activations += x.shape[0]
                bar.update(x.shape[0])
                if step % 50 == 1:
                    run.history.append({"step": step, "activations": run.activations, "nmse": float(nmse.detach()),
                                        "l0": float(l0),
                                        "dead_fraction": float((since_fired >= dead_after).float().mean())})
    if sae is None:
        raise InputError("no activations to train on: the batches were empty")
    run.seconds = time.perf_counter() - start
    sae.meta.update({"architecture": architecture, "d_sae": d_sae, "k": k if architecture == "topk" else None,
                     "l1": l1 if architecture == "standard" else None, "lr": lr, "epochs": epochs,
                     "batch_size": batch_size, "seed": seed, "activations": run.activations, "steps": step})
    sae.eval()
    return run


def _aux_loss(sae: SparseAutoencoder, pre: torch.Tensor, err: torch.Tensor, dead: torch.Tensor,
              aux_k: int | None) -> torch.Tensor:
    """AuxK: the residual ``err`` reconstructed from the top-``aux_k`` dead features, normalised MSE."""
    n_dead = int(dead.sum())
    kk = min(aux_k or max(1, sae.d_in // 2), n_dead)
    masked = pre.masked_fill(~dead, float("-inf"))
    values, index = masked.topk(kk, dim=-1, sorted=False)
    f_aux = torch.zeros_like(pre).scatter_(-1, index, values.relu())
    e_hat = f_aux @ sae.W_dec
    return (e_hat - err).pow(2).sum() / (err - err.mean(0)).pow(2).sum().clamp_min(1e-12)


@torch.no_grad()
def _resample(sae: SparseAutoencoder, opt: torch.optim.Optimizer, x: torch.Tensor, err: torch.Tensor,
              dead: torch.Tensor, gen: torch.Generator) -> None:
    """Re-initialise ``dead`` features towards badly reconstructed inputs (Bricken et al. 2023)."""
    idx = torch.nonzero(dead).flatten()
    if idx.numel() == 0:
        return
    weight = err.pow(2).sum(-1).cpu().double()
    if float(weight.sum()) <= 0:
        return
    pick = torch.multinomial(weight, idx.numel(), replacement=True, generator=gen).to(x.device)
    d = x[pick] - sae.b_dec
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else torch.tensor(1.0)
    sae.W_dec[idx] = d
    sae.W_enc[:, idx] = d.t() * enc_norm * 0.2
    sae.b_enc[idx] = 0.0
    for p, sl in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][sl] = 0.0
