"""Sparse autoencoders (dictionary learning) on any hook point: train, measure, save in SAELens' format,
inspect features (top patches / texts, logit effect) and intervene on them during generation.

Survey: Neuron > features beyond single units; Embedding > cross-modal > dictionary learning.
"""

from mmlens.neuron.sae.activations import TokenTable
from mmlens.neuron.sae.features import ConceptMatch, auroc, logit_effect, match_concepts, top_tokens
from mmlens.neuron.sae.intervene import feature_edit, generate_with_feature
from mmlens.neuron.sae.io import load_sae, save_sae
from mmlens.neuron.sae.metrics import ce_recovered, reconstruction_metrics
from mmlens.neuron.sae.model import SparseAutoencoder
from mmlens.neuron.sae.train import TrainRun, train_sae

__all__ = ["ConceptMatch", "SparseAutoencoder", "TokenTable", "TrainRun", "auroc", "ce_recovered",
           "feature_edit", "generate_with_feature", "load_sae", "logit_effect", "match_concepts",
           "reconstruction_metrics", "save_sae", "top_tokens", "train_sae"]
