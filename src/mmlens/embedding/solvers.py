"""Small convex solvers (accelerated proximal gradient, batched in torch): the non-negative lasso of SpLiCE and
the elastic-net multinomial logistic regression of sparse concept-bottleneck heads and linear probes.

>>> import torch
>>> x = torch.eye(3); y = torch.tensor([[1.0, 0.0, 2.0]])
>>> w = nonneg_lasso(x, y, l1=0.01)
>>> [round(v, 2) for v in w[0].tolist()]
[0.97, 0.0, 1.97]
"""

from __future__ import annotations

import torch


def nonneg_lasso(dictionary: torch.Tensor, targets: torch.Tensor, l1: float, steps: int = 1000) -> torch.Tensor:
    """``w >= 0`` minimising ``1/(2d) ||targets - w @ dictionary||^2 + l1 * ||w||_1`` per row of ``targets``
    (``dictionary``: ``(k, d)`` atoms; ``targets``: ``(n, d)``; scikit-learn's ``Lasso`` scaling). FISTA."""
    x, y = dictionary.double(), targets.double()
    d = x.shape[1]
    gram, xy = x @ x.T / d, y @ x.T / d  # (k, k), (n, k)
    lip = float(torch.linalg.matrix_norm(gram, ord=2)) or 1.0
    w = torch.zeros(y.shape[0], x.shape[0], dtype=torch.float64)
    z, t = w.clone(), 1.0
    for _ in range(steps):
        w_next = (z - (z @ gram - xy) / lip - l1 / lip).clamp_min(0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        z = w_next + (t - 1) / t_next * (w_next - w)
        w, t = w_next, t_next
    return w.float()


def sparse_logistic(features: torch.Tensor, labels: torch.Tensor, n_classes: int, l1: float = 0.0,
                    l2: float = 1e-4, steps: int = 2000, lr: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression ``(weight (classes, features), bias)`` with an elastic-net penalty
    ``l1 * |W|_1 + l2/2 * |W|^2`` on the weights, by proximal gradient (soft thresholding, as GLM-SAGA does)."""
    x, y = features.double(), labels.long()
    n, f = x.shape
    w = torch.zeros(n_classes, f, dtype=torch.float64)
    b = torch.zeros(n_classes, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(y, n_classes).double()
    lip = float(torch.linalg.matrix_norm(x, ord=2)) ** 2 / n / 2 + l2 + 1e-12
    step = min(lr, 1.0 / lip)
    for _ in range(steps):
        p = (x @ w.T + b).softmax(-1)
        g = (p - onehot).T @ x / n + l2 * w
        w = w - step * g
        w = w.sign() * (w.abs() - step * l1).clamp_min(0)
        b = b - step * (p - onehot).mean(0)
    return w.float(), b.float()
