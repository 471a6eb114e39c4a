"""Built-in metrics, one module each."""

from mmlens.evaluation.metrics import energy_pointing_game, pointing_game, sparseness, topk_iou  # noqa: F401
