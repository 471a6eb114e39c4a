"""Built-in metrics, one module each."""

from mmlens.evaluation.metrics import (  # noqa: F401  (importing registers each metric)
    deletion_insertion,
    energy_pointing_game,
    max_sensitivity,
    pointing_game,
    randomisation,
    road,
    sparseness,
    topk_iou,
)
