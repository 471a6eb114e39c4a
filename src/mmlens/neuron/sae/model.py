"""The sparse autoencoder: TopK (Gao et al. 2024) or ReLU + L1 (Bricken et al. 2023), with SAELens' parameters.

``f(x) = act((x - b_dec) @ W_enc + b_enc)``, ``x_hat = f(x) @ W_dec + b_dec``; ``W_enc`` is ``(d_in, d_sae)``,
``W_dec`` is ``(d_sae, d_in)`` with unit-norm rows (one decoder direction per feature), exactly SAELens'
``topk`` / ``standard`` architectures, so a file saved here loads there and back (:mod:`.io`).

>>> sae = SparseAutoencoder(d_in=8, d_sae=32, architecture="topk", k=4, seed=0)
>>> f = sae.encode(torch.randn(5, 8))
>>> f.shape, int((f != 0).sum(-1).max()) <= 4
(torch.Size([5, 32]), True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmlens.errors import InputError
from mmlens.util.options import check_choice, check_int

#: SAELens' names of the two architectures built here.
ARCHITECTURES = ("topk", "standard")
MAX_WIDTH = 1 << 20


class SparseAutoencoder(nn.Module):
    """A dictionary of ``d_sae`` features over ``d_in``-wide activations at ``hook_name``.

    ``architecture="topk"`` keeps the ``k`` largest pre-activations (ReLU'd); ``"standard"`` is ReLU, trained
    with an L1 penalty. ``meta`` holds free-form metadata (model, training statistics) saved with the file.
    """

    def __init__(self, d_in: int, d_sae: int, architecture: str = "topk", k: int = 16, hook_name: str = "",
                 seed: int | None = 0, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.d_in = check_int("d_in", d_in, 1, MAX_WIDTH)
        self.d_sae = check_int("d_sae", d_sae, 1, MAX_WIDTH)
        self.architecture = check_choice("architecture", architecture, ARCHITECTURES)
        self.k = check_int("k", k, 1, self.d_sae, why=f" (at most d_sae={self.d_sae})") if architecture == "topk" else k
        self.hook_name = hook_name
        self.meta: dict[str, Any] = dict(meta or {})
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        w = torch.randn(d_sae, d_in, generator=gen)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.t().clone())  # tied initialisation (Gao et al., Conerly et al.)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    # -- the map ----------------------------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``(x - b_dec) @ W_enc + b_enc``."""
        self._check_input(x)
        return (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Feature activations from pre-activations: TopK (ReLU'd) or ReLU."""
        if self.architecture == "standard":
            return pre.relu()
        values, index = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, index, values.relu())

    def topk_parts(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TopK's ``(values, indices)`` (ReLU'd values), without the dense ``(..., d_sae)`` tensor."""
        values, index = pre.topk(self.k, dim=-1, sorted=False)
        return values.relu(), index

    def decode_sparse(self, values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``decode`` of activations given as ``(n, k)`` values at ``(n, k)`` feature indices: a weighted sum of
        k decoder rows per token (``embedding_bag``), k / d_sae of the dense matmul's work, forward and backward."""
        return torch.nn.functional.embedding_bag(index, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``(..., d_sae)`` of activations ``x`` ``(..., d_in)``."""
        return self.activate(self.pre_acts(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``f @ W_dec + b_dec``."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` (same shape and dtype as ``x``)."""
        return self.decode(self.encode(x)).to(x.dtype)

    def direction(self, feature: int) -> torch.Tensor:
        """Decoder direction (unit norm) of ``feature``."""
        check_int("feature", feature, 0, self.d_sae - 1)
        return self.W_dec[feature].detach()

    # -- constraints ------------------------------------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit norm (the decoder-norm constraint)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out of ``W_dec.grad`` the part along each row (keeps unit norm to first order)."""
        if self.W_dec.grad is not None:
            along = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
            self.W_dec.grad.sub_(along * self.W_dec)

    # -- checks -----------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x) or x.shape[-1:] != (self.d_in,):
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            where = f" ({self.hook_name})" if self.hook_name else ""
            raise InputError(f"activations of shape {shape} do not fit this SAE{where}: its last axis must be "
                             f"d_in={self.d_in}; use an SAE trained on this hook point")

    def check_fits(self, hook_name: str, width: int) -> None:
        """One-line InputError unless this SAE reads ``width``-wide activations (at ``hook_name``)."""
        if width != self.d_in:
            raise InputError(f"this SAE reads {self.d_in}-wide activations (trained on {self.hook_name or 'an unnamed point'}) "
                             f"but {hook_name} is {width} wide: train or load an SAE for {hook_name}")

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.architecture == "topk" else ""
        return f"{self.architecture}, d_in={self.d_in}, d_sae={self.d_sae}{k}, hook_name={self.hook_name!r}"
