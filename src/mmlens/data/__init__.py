"""Datasets with ground truth for scoring explanations."""

from mmlens.data.shapes_splits import SPLITS, TRAP_SPLITS
from mmlens.data.shapes_vqa import QUESTION_TYPES, ShapesSample, ShapesVQA

__all__ = ["QUESTION_TYPES", "SPLITS", "TRAP_SPLITS", "ShapesSample", "ShapesVQA"]
