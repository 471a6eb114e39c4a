"""Inference-time methods (the survey's Training & Inference branch): per-token grounding signals of a
generated answer, mitigations as decoding options (VCD, PAI-style attention re-weighting, steering) and the
tuned lens. Each module registers itself in the catalog."""

from mmlens.inference import decoding, signals, tuned_lens  # noqa: F401
