"""What an SAE feature means: its top-activating image patches and texts, its logit effect, and how well one
feature alone detects a known concept (AUROC against ground-truth labels, with a random-direction baseline).

>>> auroc(torch.tensor([[0.1], [0.9], [0.5]]), torch.tensor([False, True, False])).tolist()
[1.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmlens.errors import InputError
from mmlens.model.subject import Subject
from mmlens.neuron.sae.activations import TokenTable
from mmlens.neuron.sae.model import SparseAutoencoder
from mmlens.util.options import check_int


@torch.no_grad()
def feature_acts(sae: SparseAutoencoder, table: TokenTable, chunk: int = 8192) -> torch.Tensor:
    """``(tokens, d_sae)`` feature activations of every row of ``table``."""
    sae.check_fits(table.hook_name, int(table.acts.shape[-1]))
    return torch.cat([sae.encode(x) for x in table.acts.split(chunk)])


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per column of ``scores (n, m)``: the area under the ROC curve for the bool ``labels (n,)`` (ties count
    half, as scikit-learn's ``roc_auc_score``)."""
    from scipy.stats import rankdata

    y = labels.bool().numpy()
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise InputError(f"AUROC needs positive and negative examples (got {pos} and {neg}): use more samples")
    ranks = rankdata(scores.double().numpy(), axis=0)
    return torch.from_numpy((ranks[y].sum(0) - pos * (pos + 1) / 2) / (pos * neg)).float()


@dataclass
class ConceptMatch:
    """The best single feature for a concept: chosen on ``select`` samples, AUROC measured on held-out ones."""

    concept: str
    feature: int
    auroc: float
    random_auroc: float
    random_median: float
    positives: int

    def to_dict(self) -> dict[str, Any]:
        return {"concept": self.concept, "feature": self.feature, "auroc": round(self.auroc, 4),
                "random_direction_auroc": round(self.random_auroc, 4),
                "random_direction_median": round(self.random_median, 4), "positives": self.positives}


@torch.no_grad()
def match_concepts(sae: SparseAutoencoder, table: TokenTable, concepts: list[str] | None = None, seed: int = 0,
                   random_directions: int | None = None) -> list[ConceptMatch]:
    """For each concept label of ``table`` (image patches only): the feature with the best AUROC on half of the
    samples, and its AUROC on the other half; the baseline does the same with ``random_directions`` (default
    ``d_sae``) seeded random unit directions, scoring a patch by its projection ``(x - b_dec) . r`` (the best one
    chosen the same way: ``random_auroc``; the median direction on the held-out half: ``random_median``).
    ``concepts=None``: every label with positive and negative patches in both halves."""
    auto = concepts is None
    concepts = list(table.labels) if concepts is None else concepts
    missing = [c for c in concepts if c not in table.labels]
    if missing or not concepts:
        raise InputError(f"no labels for {missing or 'any concept'}: the table has {sorted(table.labels)} "
                         "(collect tokens of samples with object masks)")
    image = table.image_token
    gen = torch.Generator().manual_seed(seed)
    samples = table.sample.unique()
    held = set(samples[torch.randperm(samples.numel(), generator=gen)][: samples.numel() // 2].tolist())
    test = torch.tensor([int(s) in held for s in table.sample.tolist()]) & image
    select = ~test & image
    feats = feature_acts(sae, table)
    r = torch.randn(sae.d_in, random_directions or sae.d_sae, generator=gen)
    proj = (table.acts - sae.b_dec.detach()) @ (r / r.norm(dim=0, keepdim=True))
    out = []
    for c in concepts:
        y = table.labels[c]
        if auto and not all(0 < int(y[part].sum()) < int(part.sum()) for part in (select, test)):
            continue  # a concept seen in one half only cannot be scored held-out
        best = int(auroc(feats[select], y[select]).argmax())
        best_r = int(auroc(proj[select], y[select]).argmax())
        held_r = auroc(proj[test], y[test])
        out.append(ConceptMatch(c, best, float(auroc(feats[test][:, [best]], y[test])[0]), float(held_r[best_r]),
                                float(held_r.median()), int(y[test].sum())))
    return out


@dataclass
class TopToken:
    """One token where a feature fired: sample, position, activation, image cell box (None for text) and text."""

    sample: int
    position: int
    activation: float
    box: tuple[float, float, float, float] | None
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"sample": self.sample, "position": self.position, "activation": round(self.activation, 5),
                "box": None if self.box is None else [round(v, 2) for v in self.box], "text": self.text}


def top_tokens(sae: SparseAutoencoder, table: TokenTable, feature: int, k: int = 8, image: bool = True,
               feats: torch.Tensor | None = None, context: int = 3) -> list[TopToken]:
    """The ``k`` image patches (``image=True``) or text tokens with the largest activation of ``feature``; a text
    token's ``text`` is its token with up to ``context`` collected tokens before it (its box is None)."""
    check_int("feature", feature, 0, sae.d_sae - 1)
    check_int("k", k, 1, 10_000)
    col = (feature_acts(sae, table) if feats is None else feats)[:, feature]
    keep = table.image_token if image else ~table.image_token
    idx = torch.nonzero(keep & (col > 0)).flatten()
    idx = idx[col[idx].argsort(descending=True)][:k]
    out = []
    for i in idx.tolist():
        s, p = int(table.sample[i]), int(table.position[i])
        if image:
            text, box = "<image>", tuple(float(v) for v in table.box[i])
        else:
            text, box = table.context(i, context), None
        out.append(TopToken(s, p, float(col[i]), box, text))
    return out


@torch.no_grad()
def logit_effect(subject: Subject, sae: SparseAutoencoder, feature: int, k: int = 8) -> dict[str, list]:
    """The tokens whose logits the feature's decoder direction raises / lowers most, read through the final norm
    and the unembedding (as the logit lens reads a residual stream); for residual-width hook points."""
    parts = subject.adapter.parts()
    hidden = int(subject.model.config.get_text_config().hidden_size)
    if parts.unembed is None or sae.d_in != hidden:
        raise InputError(f"the logit effect reads residual-stream directions ({hidden} wide); this SAE reads "
                         f"{sae.d_in}-wide activations at {sae.hook_name!r}: use an SAE on lm.blocks.*.resid_*")
    w = sae.direction(feature)
    p = next(parts.unembed.parameters())
    logits = parts.unembed(parts.lm_norm(w.to(p.device, p.dtype)[None]))[0].float().cpu()
    logits = logits - logits.mean()
    tok = subject.tokenizer
    k = min(k, logits.numel())
    up, down = logits.topk(k), (-logits).topk(k)
    return {"up": [(tok.convert_ids_to_tokens(int(i)), round(float(v), 4)) for v, i in zip(up.values, up.indices)],
            "down": [(tok.convert_ids_to_tokens(int(i)), round(-float(v), 4)) for v, i in zip(down.values, down.indices)]}


def patch_crops(images: list[Any], hits: list[TopToken], margin: float = 1.0) -> list[np.ndarray]:
    """For each image-patch hit, a crop of its original image (``images[hit.sample]``) around the cell box, the
    cell outlined in red."""
    from PIL import ImageDraw

    crops = []
    for h in hits:
        if h.box is None:
            continue
        img = images[h.sample].convert("RGB").copy()
        x0, y0, x1, y1 = h.box
        ImageDraw.Draw(img).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 0, 0))
        w, ht = x1 - x0, y1 - y0
        box = (max(0, int(x0 - margin * w)), max(0, int(y0 - margin * ht)),
               min(img.width, int(x1 + margin * w)), min(img.height, int(y1 + margin * ht)))
        crops.append(np.asarray(img.crop(box)))
    return crops
