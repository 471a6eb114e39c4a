"""The package version (one place; ``mmlens.__version__`` re-exports it)."""

__version__ = "0.1.0"
