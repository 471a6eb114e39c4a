"""Model perspective / neuron: per-neuron scores, ablation, top-activating patches, specialisation."""
