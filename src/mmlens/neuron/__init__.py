"""Model perspective / neuron: per-neuron scores, ablation, top-activating patches, specialisation."""

from mmlens.neuron import dataset, sae, scores  # noqa: F401  (registers the methods)
