"""Grad-CAM on the vision tower (Selvaraju et al. 2017, the form CLIP / ViT users know), for every family.

Activation ``A`` = the output of the tower's feature block (the last block the target reaches: the one the
projector reads, e.g. LLaVA's second-to-last; for a dual encoder the image tower's last block; where only a
pooled CLS row of that block is read, as in CLIP, the block below it, whose patch rows the last block's
attention reads: the usual choice for ViT Grad-CAM), one row per
patch of every tile / crop / frame. Per image ``i``, channel weights ``w_c = mean_p dtarget/dA[p, c]`` over the
image's patch rows (CLS and padding rows left out), score ``relu(sum_c w_c A[p, c])`` per patch, placed on
the original pixels by :mod:`mmlens.model.tower_geometry` (several tiles covering a pixel are averaged).
``position_scores``: each LM image token gets the mean of the patches that feed it.

Cross-attention families (Mllama): ``A`` is the last *global* layer's output, the block the keys read (each key is
the projection of that block's row concatenated with the same row of some intermediate local layers, e.g. Llama 3.2
Vision's layers 3, 7, 15, 23, 30; Grad-CAM follows the last block only, as ViT Grad-CAM does). Its rows are the keys
one to one (tile padding rows left out), so the map comes out as ``key_scores`` (sequence positions score 0).

Unlike ``gradcam`` (the LM side, over the projector's output tokens), this reads the tower at its own
resolution, before any merge / pixel shuffle / pooling.

>>> import mmlens                                                                      # doctest: +SKIP
>>> ex = mmlens.explain(lm, "cat.png", "what is this?", method="vision_gradcam")       # doctest: +SKIP
"""

from __future__ import annotations

import torch

from mmlens.attribution.batched import batched_grad, chunks, resolve_target_batch
from mmlens.attribution.gradient import gradient_mode
from mmlens.attribution.output import MethodOutput
from mmlens.attribution.tower_pass import block_geometry, tower_forward, tower_output
from mmlens.catalog import register_method
from mmlens.model.batch import Batch
from mmlens.model.subject import Subject
from mmlens.model.targets import Target, check_objective, targets_tail
from mmlens.model.tower_geometry import TowerGeometry


def tower_cam(a: torch.Tensor, grads: torch.Tensor, geometry: TowerGeometry) -> torch.Tensor:
    """Grad-CAM scores ``(k, n_rows)`` from the feature block's output ``a`` (``(..., d)``) and the targets'
    gradients w.r.t. it ``(k, ..., d)``: per image, ``relu(A @ mean_rows(grad))`` on its patch rows, 0 elsewhere.

    >>> from mmlens.model.geometry import ImageGeometry, ImageGrid
    >>> g = TowerGeometry([ImageGeometry(0, (2, 1), torch.tensor([0, 1]), [ImageGrid(torch.tensor([[0, 1]]),
    ...     (0.0, 0.0, 2.0, 1.0))])], torch.tensor([0, 1]), 2)
    >>> tower_cam(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[[2.0, 0.0], [2.0, -4.0]]]), g)
    tensor([[2., 0.]])
    """
    a = a.detach().reshape(-1, a.shape[-1]).float()
    grads = grads.reshape(grads.shape[0], -1, grads.shape[-1]).float()
    out = torch.zeros(grads.shape[0], a.shape[0])
    for i in range(len(geometry.images)):
        rows = geometry.image_rows(i).to(a.device)
        weights = grads[:, rows].mean(1)  # (k, d)
        out[:, rows.cpu()] = torch.relu(weights @ a[rows].T).cpu()
    return out


@register_method(
    "vision_gradcam",
    leaf="model/architecture/analysis",
    tier="gradient",
    summary="Grad-CAM on the vision tower's feature block (patch resolution), mapped to pixels per tile",
)
def vision_gradcam(subject: Subject, batch: Batch, targets: list[Target], objective: str = "logit",
                   layer: int | None = None, target_batch: int | None = None) -> MethodOutput:
    """Grad-CAM on vision block ``layer``'s output (default: the feature block, see the module doc). The target
    is the answer tokens' summed logit by default (``objective``), as in Grad-CAM's class score."""
    rows, geometry, block = vision_gradcam_rows(subject, batch, targets, objective, layer, target_batch)
    return tower_output(batch, geometry, rows, block)


def vision_gradcam_rows(subject: Subject, batch: Batch, targets: list[Target], objective: str = "logit",
                        layer: int | None = None, target_batch: int | None = None
                        ) -> tuple[torch.Tensor, TowerGeometry, int]:
    """:func:`vision_gradcam`'s per-row scores ``(T, n_rows)``, the tower geometry and the block read."""
    check_objective(objective)
    size = resolve_target_batch(target_batch, subject, batch)
    with gradient_mode(subject):
        run = tower_forward(subject, batch, tail=targets_tail(targets, batch))
        values = [t.value(run.logits, batch, objective).sum() for t in targets]
        block = run.feature_block(values, layer)
        parts = list(chunks(len(targets), size))
        while True:
            a = run.outputs[block]
            geometry = block_geometry(subject, batch, a)
            (g,) = batched_grad(torch.stack([values[t] for t in parts[0]]), a, retain_graph=True)
            rows = torch.cat([geometry.image_rows(i) for i in range(len(geometry.images))]).to(g.device)
            if layer is not None or block == 0 or g.reshape(g.shape[0], -1, g.shape[-1])[:, rows].any():
                break
            block -= 1  # only a pooled row (CLS) is read at this block: Grad-CAM reads the block below
        scores = [tower_cam(a, g, geometry)]
        for c, part in enumerate(parts[1:], 1):
            (g,) = batched_grad(torch.stack([values[t] for t in part]), a, retain_graph=c < len(parts) - 1)
            scores.append(tower_cam(a, g, geometry))
        del g
    return torch.cat(scores), geometry, block
