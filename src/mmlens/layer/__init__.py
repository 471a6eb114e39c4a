"""Model perspective / layer: logit lens, causal tracing, attention knockout."""

from mmlens.layer import attention_knockout, causal_trace, heads, logit_lens  # noqa: F401  (registers the methods)
