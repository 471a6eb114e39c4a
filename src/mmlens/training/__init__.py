"""Training-time explanations: data attribution over training checkpoints (TracIn)."""

from mmlens.training.tracin import TracInResult, tracin, training_samples

__all__ = ["TracInResult", "tracin", "training_samples"]
