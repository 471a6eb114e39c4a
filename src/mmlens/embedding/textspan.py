"""TextSpan (Gandelsman et al., ICLR 2024): each head's direct contributions over a dataset, described by the
texts that span them, found by iterative removal: the text whose direction carries the most of the head's
(centred) variance is picked, then that direction is projected out of the head's outputs and of every text,
and again. Texts are first projected onto the span of the head's top principal components, as in the paper.

>>> import torch
>>> from mmlens.embedding.decompose import Decomposition
>>> c = torch.zeros(50, 2, 3); c[:, 1, 0] = torch.randn(50)   # the head varies along axis 0 only
>>> d = Decomposition(["embed", "L0.H0"], c, c.sum(1), 1, 1)
>>> bank = TextBank(["x", "y", "z"], torch.eye(3))
>>> text_spans(d, bank, n_texts=1)[0].texts[0][0]
'x'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmlens.catalog import register_method
from mmlens.embedding.decompose import Decomposition
from mmlens.embedding.zeroshot import normalize
from mmlens.errors import InputError
from mmlens.util.options import check_float, check_int

#: Default memory allowed for a text bank's embeddings (float32), in MB.
TEXT_BANK_MAX_MB = 2048.0


@dataclass
class TextBank:
    """Texts and their normalised embeddings ``(m, d)``."""

    texts: list[str]
    embeddings: torch.Tensor


def text_bank(t: Any, texts: Iterable[str], chunk: int = 256, max_mb: float = TEXT_BANK_MAX_MB,
              show: bool | None = None) -> TextBank:
    """Encode ``texts`` (a list or any iterable, read in chunks of ``chunk``) into a :class:`TextBank`.

    Only the embeddings are kept; if they would pass ``max_mb`` the bank stops with a one-line error (pass
    fewer texts or raise ``max_mb``)."""
    from mmlens.embedding.tower import tower
    from mmlens.util.progress import progress

    t = tower(t)
    t.require_text("TextSpan's text spans")
    chunk = check_int("chunk", chunk, 1, 65536)
    max_mb = check_float("max_mb", max_mb, 0.0, open_low=True)
    d = t.embed_dim
    limit = int(max_mb * 2**20 // (4 * d))
    if hasattr(texts, "__len__") and len(texts) > limit:  # type: ignore[arg-type]
        raise InputError(_too_big(len(texts), d, max_mb))  # type: ignore[arg-type]
    kept, rows, buf = [], [], []
    for text in progress(texts, "text bank", show):
        buf.append(text)
        if len(kept) + len(buf) > limit:
            raise InputError(_too_big(len(kept) + len(buf), d, max_mb))
        if len(buf) == chunk:
            rows.append(normalize(t.encode_texts(buf, batch_size=chunk)))
            kept += buf
            buf = []
    if buf:
        rows.append(normalize(t.encode_texts(buf, batch_size=chunk)))
        kept += buf
    if len(kept) < 2:
        raise InputError(f"the text bank holds {len(kept)} text(s): TextSpan needs at least 2; pass more")
    return TextBank(kept, torch.cat(rows))


def _too_big(n: int, d: int, max_mb: float) -> str:
    return (f"the text bank ({n:,}+ texts x {d} dims, {n * d * 4 / 2**20:,.0f} MB of embeddings) is over the "
            f"{max_mb:,.0f} MB limit: pass fewer texts or raise max_mb")


@dataclass
class HeadSpan:
    layer: int
    head: int
    #: ``(text, share of the head's variance its direction removed)``, in the order picked
    texts: list[tuple[str, float]]
    #: variance of the head's direct contributions (summed over dims)
    variance: float

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "head": self.head, "variance": self.variance,
                "texts": [{"text": s, "share": round(v, 6)} for s, v in self.texts]}


@register_method("textspan", leaf="model/embedding/visual", tier="activations", kind="embedding",
                 summary="TextSpan: each vision head's outputs described by texts (iterative removal)")
@torch.no_grad()
def text_spans(dec: Decomposition, bank: TextBank, n_texts: int = 5, heads: Sequence[tuple[int, int]] | None = None,
               n_components: int = 64) -> list[HeadSpan]:
    """The ``n_texts`` texts spanning each head's direct contributions (all heads unless ``heads`` is given).

    ``dec``: a decomposition of many images (>= 2); ``bank``: from :func:`text_bank`."""
    if dec.contributions.shape[0] < 2:
        raise InputError("text spans need the decomposition of at least 2 images (the paper uses thousands)")
    if bank.embeddings.shape[-1] != dec.contributions.shape[-1]:
        raise InputError(f"the text bank has {bank.embeddings.shape[-1]} dims but the image embedding has "
                         f"{dec.contributions.shape[-1]}: encode the bank with the same model")
    if "L0.H0" not in dec.names:
        raise InputError("this decomposition has no per-head terms: decompose an image-text dual encoder")
    n_texts = check_int("n_texts", n_texts, 1, len(bank.texts))
    n_components = check_int("n_components", n_components, 1, 4096)
    pairs = list(heads) if heads is not None else [(layer, h) for layer in range(dec.n_layers) for h in range(dec.n_heads)]
    return [_span(dec, layer, h, bank, n_texts, n_components) for layer, h in pairs]


def _span(dec: Decomposition, layer: int, head: int, bank: TextBank, n_texts: int, n_components: int) -> HeadSpan:
    c = dec.contributions[:, dec.head(layer, head)].double()
    c = c - c.mean(0)
    total = float((c**2).sum())
    _, s, vt = torch.linalg.svd(c, full_matrices=False)
    keep = vt[: min(n_components, int((s > s.max() * 1e-6).sum()) if total > 0 else 0)]
    r = bank.embeddings.double() @ keep.T @ keep if keep.shape[0] else bank.embeddings.double() * 0
    picked: list[tuple[str, float]] = []
    used: set[int] = set()
    for _ in range(n_texts):
        dirs = normalize(r)
        score = ((c @ dirs.T) ** 2).sum(0)
        if used:
            score[list(used)] = -1
        j = int(score.argmax())
        used.add(j)
        picked.append((bank.texts[j], float(score[j]) / total if total > 0 else 0.0))
        u = dirs[j]
        if u.norm() == 0:
            continue
        c = c - (c @ u)[:, None] * u
        r = r - (r @ u)[:, None] * u
    return HeadSpan(layer, head, picked, total / c.shape[0])


def categorize(spans: Sequence[HeadSpan], categories: dict[str, Sequence[str]], top: int = 3,
               min_share: float = 0.5) -> dict[tuple[int, int], str]:
    """Label each head by the category whose words appear in its top ``top`` span texts (weighted by the variance
    they explain), if it holds at least ``min_share`` of it; else ``"other"``."""
    out = {}
    for sp in spans:
        weights = {k: 0.0 for k in categories}
        total = 0.0
        for text, share in sp.texts[:top]:
            words = set(text.lower().replace(",", " ").split())
            total += share
            for k, vocab in categories.items():
                if words & {w.lower() for w in vocab}:
                    weights[k] += share
        best = max(weights, key=weights.get) if weights else None
        out[(sp.layer, sp.head)] = best if best is not None and total > 0 and weights[best] >= min_share * total else "other"
    return out


@register_method("textspan-map", leaf="model/embedding/visual", tier="activations", kind="embedding",
                 summary="per-head image maps: each patch's direct contribution along a text direction")
def head_maps(dec: Decomposition, direction: torch.Tensor, heads: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``(n_images, len(heads), rows, cols)``: each patch token's contribution (through head ``(l, h)``) along
    ``direction`` (e.g. a text embedding). Needs ``decompose(..., per_token=True)``."""
    if dec.tokens is None or dec.grid is None:
        raise InputError("this decomposition has no per-token terms: call decompose(..., per_token=True) on an "
                         "image-text dual encoder with a square patch grid")
    d = normalize(direction.float().reshape(-1))
    maps = torch.stack([dec.tokens[:, layer, h, dec.cls:] @ d for layer, h in heads], 1)
    return maps.reshape(*maps.shape[:2], *dec.grid)
