"""The token table an SAE's features are read on: activations of many tokens with where they come from and which
object each image token belongs to.

The activations themselves are collected by the one dataset-run path (:func:`mmlens.runs.collect_activations`,
read back with :class:`mmlens.runs.activation_reader.ActivationReader`; :mod:`mmlens.runs.sae_run` joins the two
for SAEs); the object under each image cell comes from :mod:`mmlens.model.positions`. This module only turns the
collected rows into tensors and concept labels.

>>> import numpy as np
>>> meta = {"index": np.array([0, 0]), "position": np.array([3, 9]), "grid": np.array([0, -1]),
...         "box": np.array([[0, 0, 8, 8], []], dtype=object), "token": np.array(["<image>", "red"], dtype=object),
...         "object_color": np.array(["red", "red"], dtype=object), "object_shape": np.array(["none", "none"], dtype=object)}
>>> t = TokenTable.from_columns(np.ones((2, 4), np.float32), meta, "lm.blocks.0.resid_post")
>>> len(t), t.image_token.tolist(), t.labels["red"].tolist()
(2, [True, False], [True, False])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mmlens.model.positions import NONE

#: the metadata columns a table is built from
COLUMNS = ["index", "position", "grid", "box", "token", "object_color", "object_shape"]


@dataclass
class TokenTable:
    """Activations of many tokens with where they come from.

    ``acts (n, d)``; per row: ``sample``, ``position`` (sequence position), ``image_token`` (bool: an image-grid
    cell), ``box`` (pixel box of an image token's cell, else NaN) and ``token`` (its text); ``labels[name]``
    (bool, n) marks image patches on an object of colour / shape ``name`` (empty without object masks).
    """

    acts: torch.Tensor
    sample: torch.Tensor
    position: torch.Tensor
    image_token: torch.Tensor
    box: torch.Tensor
    token: list[str] = field(default_factory=list)
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    hook_name: str = ""

    def __len__(self) -> int:
        return int(self.acts.shape[0])

    @classmethod
    def from_columns(cls, acts: np.ndarray, meta: dict[str, np.ndarray], hook_name: str) -> TokenTable:
        """A table from an activation collection's rows (``ActivationReader.load(point, COLUMNS)``)."""
        image = torch.as_tensor(np.asarray(meta["grid"]) >= 0)
        boxes = [list(b) if b is not None and len(b) == 4 else [float("nan")] * 4 for b in meta["box"]]
        table = cls(torch.tensor(np.asarray(acts, np.float32)), torch.as_tensor(np.asarray(meta["index"]).astype(np.int64)),
                    torch.as_tensor(np.asarray(meta["position"]).astype(np.int64)), image,
                    torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), [str(t) for t in meta["token"]],
                    hook_name=hook_name)
        for column in ("object_color", "object_shape"):
            values = np.asarray(meta[column], dtype=object)
            for value in sorted(set(values[image.numpy()].tolist()) - {NONE, None}):
                table.labels[str(value)] = torch.as_tensor(values == value) & image
        return table

    def context(self, i: int, words: int = 3) -> str:
        """Row ``i``'s token with up to ``words`` collected tokens of the same sample before it: ``a b [c]``."""
        s, p = int(self.sample[i]), int(self.position[i])
        near = torch.nonzero((self.sample == s) & (self.position < p) & (self.position >= p - words)).flatten()
        return " ".join([*(self.token[j] for j in near.tolist()), f"[{self.token[i]}]"])
