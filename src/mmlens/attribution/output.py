"""What an attribution method returns to :func:`mmlens.explain`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class MethodOutput:
    """Scores for each target.

    ``position_scores``: ``(n_targets, seq_len)`` float tensor, one score per sequence position (image and
    prompt positions; the explainer turns image positions into heatmaps through the batch geometry).
    ``pixel_maps``: optional, for methods that score original-image pixels directly (pixel-space
    occlusion, RISE): ``pixel_maps[t][i]`` is an ``(H_i, W_i)`` array for target ``t`` and image ``i``.
    ``key_scores``: ``(n_targets, n_keys)``, for models whose images enter through cross-attention keys (geometry
    ``space == "keys"``, Mllama): one score per key, mapped to pixels by the same geometry.
    ``extras``: method-specific numbers worth keeping (e.g. IG convergence delta, forward-call counts).
    """

    position_scores: torch.Tensor
    pixel_maps: list[list[np.ndarray]] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    key_scores: torch.Tensor | None = None
