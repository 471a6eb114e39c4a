"""Built-in methods; importing a module registers its methods in :mod:`mmlens.core.registry`."""
