"""Model perspective / layer: logit lens, causal tracing, attention knockout."""
