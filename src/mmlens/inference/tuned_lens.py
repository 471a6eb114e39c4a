"""Tuned lens (Belrose et al. 2023): one affine translator per layer, ``h -> h + A h + b``, trained so that
decoding the translated residual stream through the final norm and unembedding matches the model's final
distribution (KL), streaming over a dataset run. The last layer needs none (its lens is the output).

A lens file (safetensors) records the model's identity (name, layer count, hidden size, vocabulary and a
fingerprint of its unembedding) and is refused, in one line, by any other model.

>>> from mmlens.testing import tiny_subject
>>> lm = tiny_subject("llava")
>>> lens = TunedLens.identity(lm)
>>> lens.n_layers == lm.n_layers
True
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmlens.catalog import register_method
from mmlens.errors import InputError
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.util.io import atomic_write
from mmlens.util.options import check_float, check_int
from mmlens.util.progress import progress_bar


def identity_of(subject: Subject) -> dict[str, Any]:
    """What a lens file must match: name, layers, hidden size, vocabulary, unembedding fingerprint."""
    parts = subject.adapter.parts()
    weight = parts.unembed.weight.detach().float().flatten()
    sample = weight[:: max(1, weight.numel() // 65536)].cpu().numpy().tobytes()
    return {"model": subject.model_id, "n_layers": subject.n_layers, "hidden": int(parts.unembed.weight.shape[1]),
            "vocab": int(parts.unembed.weight.shape[0]), "fingerprint": hashlib.sha256(sample).hexdigest()[:16]}


class TunedLens:
    """Translators ``weight[l]`` ``(d, d)`` and ``bias[l]`` ``(d,)`` for layers ``0 .. n_layers - 2``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, identity: dict[str, Any]) -> None:
        self.weight, self.bias, self.identity = weight, bias, dict(identity)

    @classmethod
    def identity(cls, subject: Subject) -> TunedLens:
        """Zero translators: the plain logit lens."""
        ident = identity_of(subject)
        d, n = ident["hidden"], max(0, ident["n_layers"] - 1)
        return cls(torch.zeros(n, d, d), torch.zeros(n, d), ident)

    @property
    def n_layers(self) -> int:
        return int(self.identity["n_layers"])

    def __call__(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """``h`` (any leading axes, last = hidden) of ``layer`` translated for the final norm + unembedding."""
        if layer % self.n_layers == self.n_layers - 1:
            return h
        w, b = self.weight[layer].to(h.device, h.dtype), self.bias[layer].to(h.device, h.dtype)
        return h + h @ w.T + b

    def check(self, subject: Subject, source: str = "this tuned lens") -> None:
        """One-line InputError unless the lens was trained for ``subject``'s model."""
        mine = identity_of(subject)
        for key in ("n_layers", "hidden", "vocab", "fingerprint"):
            if self.identity.get(key) != mine[key]:
                raise InputError(f"{source} was trained for model {self.identity.get('model')!r} ({key} "
                                 f"{self.identity.get(key)!r}), not {subject.model_id!r} ({key} {mine[key]!r}): train "
                                 "one for this model (mmlens.train_tuned_lens)")

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        meta = {"mmlens": json.dumps({"kind": "tuned_lens", **self.identity})}
        tensors = {"weight": self.weight.float().contiguous(), "bias": self.bias.float().contiguous()}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), meta), (".safetensors",))

    @classmethod
    def load(cls, path: str | os.PathLike, subject: Subject | None = None) -> TunedLens:
        """Read a lens file; with ``subject``, refuse (one line) a file trained for another model."""
        from safetensors import safe_open

        p = Path(path)
        if not p.is_file():
            raise InputError(f"tuned-lens file {str(p)!r} not found: pass a .safetensors from mmlens.train_tuned_lens")
        try:
            with safe_open(str(p), "pt") as f:
                meta = json.loads((f.metadata() or {}).get("mmlens", "{}"))
                weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
        except Exception as err:  # noqa: BLE001 - any unreadable file is one line
            raise InputError(f"{str(p)!r} is not a tuned-lens file ({type(err).__name__}): train one with "
                             "mmlens.train_tuned_lens") from None
        if meta.pop("kind", None) != "tuned_lens":
            raise InputError(f"{str(p)!r} is not a tuned-lens file: train one with mmlens.train_tuned_lens")
        lens = cls(weight, bias, meta)
        if subject is not None:
            lens.check(subject, f"tuned-lens file {str(p)!r}")
        return lens


def _states(subject: Subject, batch: Batch) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every layer's residual stream ``(seq, d)`` and the final log-probs ``(seq, V)`` of one forward."""
    with subject.trace() as tr:
        tr.capture("lm.blocks.*.resid_post", reduce=lambda h: h[0].float())
        logits = subject.forward(batch)
    return [tr[f"lm.blocks.{i}.resid_post"] for i in range(subject.n_layers)], logits[0].float().log_softmax(-1)


def _layer_kl(subject: Subject, lens: TunedLens, states: list[torch.Tensor], final: torch.Tensor) -> torch.Tensor:
    """``(layers,)`` KL(final || lens at layer l), mean over positions (differentiable in the translators)."""
    parts = subject.adapter.parts()
    dtype = next(subject.model.parameters()).dtype
    out = []
    for layer, h in enumerate(states):
        logq = parts.unembed(parts.lm_norm(lens(layer, h).to(dtype))).float().log_softmax(-1)
        out.append((final.exp() * (final - logq)).sum(-1).mean())
    return torch.stack(out)


def _batches(subject: Subject, samples: Iterable[Any]) -> Iterable[Batch]:
    for s in samples:
        if isinstance(s, Batch):
            yield s
        elif hasattr(s, "image") and hasattr(s, "question"):
            yield subject.prepare(s.image, s.question, answer=getattr(s, "answer", None))
        else:
            yield subject.prepare(*s)


@register_method("tuned_lens", leaf="model/layer/workflow", tier="activations", kind="analysis",
                 summary="per-layer affine translators trained so each layer decodes like the final one")
def train_tuned_lens(subject: Subject, samples: Sequence[Any], lr: float = 1e-2, epochs: int = 1,
                     show: bool | None = None) -> TunedLens:
    """Train translators on ``samples`` (ShapesVQA samples, Batches or ``(image, prompt[, answer])`` tuples),
    one Adam step per sample and layer loss summed, streaming (one forward per sample and epoch).

    >>> from mmlens.data import ShapesVQA                                          # doctest: +SKIP
    >>> lens = train_tuned_lens(lm, list(ShapesVQA(seed=100).samples(200)))       # doctest: +SKIP
    >>> lens.save("demo.tuned_lens.safetensors")                                   # doctest: +SKIP
    """
    subject.require_language_model("the tuned lens")
    subject.require("activations")
    lr = check_float("lr", lr, 0.0, 10.0, open_low=True)
    epochs = check_int("epochs", epochs, 1, 1000)
    if not samples:
        raise InputError("no samples to train the tuned lens on: pass at least one")
    lens = TunedLens.identity(subject)
    lens.weight.requires_grad_(True)
    lens.bias.requires_grad_(True)
    opt = torch.optim.Adam([lens.weight, lens.bias], lr=lr)
    parts = subject.adapter.parts()
    frozen = [p for m in (parts.lm_norm, parts.unembed) for p in m.parameters() if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with progress_bar(len(samples) * epochs, "training the tuned lens", show=show) as bar:
            for _ in range(epochs):
                for batch in _batches(subject, samples):
                    with torch.no_grad():
                        states, final = _states(subject, batch)
                    loss = _layer_kl(subject, lens, states[:-1], final).sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    bar.update(1)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    lens.weight.requires_grad_(False)
    lens.bias.requires_grad_(False)
    return lens


@torch.no_grad()
def lens_kl(subject: Subject, samples: Sequence[Any], lens: TunedLens | None = None) -> np.ndarray:
    """``(layers,)`` mean KL(final distribution || lens at layer l) over ``samples`` and all their positions;
    ``lens=None``: the plain logit lens.

    >>> lens_kl(lm, held_out), lens_kl(lm, held_out, lens)                       # doctest: +SKIP
    """
    subject.require_language_model("lens_kl")
    lens = lens or TunedLens.identity(subject)
    lens.check(subject)
    total = None
    count = 0
    for batch in _batches(subject, samples):
        states, final = _states(subject, batch)
        kl = _layer_kl(subject, lens, states, final).cpu()
        total = kl if total is None else total + kl
        count += 1
    if total is None:
        raise InputError("no held-out samples: pass at least one")
    return (total / count).numpy()
