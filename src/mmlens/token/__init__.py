"""Model perspective / token: visual token importance and pruning."""

from mmlens.token import pruning  # noqa: F401  (registers the methods)
