"""Model perspective / layer: logit lens, causal tracing, attention knockout."""

from mmlens.layer import logit_lens, causal_trace, attention_knockout, heads  # noqa: F401  (registers the methods)
