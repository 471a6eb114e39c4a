import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from mmlens.testing import tiny_subject  # noqa: E402
from mmlens.testing.tiny_models import FAMILIES, tiny_images  # noqa: E402

# Tiny models gain nothing from intra-op threads, and lose a lot to OpenMP spinning on shared cores.
torch.set_num_threads(1)

_CACHE: dict = {}


def subject_for(family: str):
    """One tiny subject per family per test session (building is cheap, but not free)."""
    if family not in _CACHE:
        _CACHE[family] = tiny_subject(family)
    return _CACHE[family]


def lazy_metric(module: str, name: str):
    """The metric function ``name`` of ``mmlens.evaluation.metrics.<module>``, imported on first call: importing the
    metrics subpackage while pytest collects would rebind ``mmlens.evaluation.metrics`` (the catalog function that
    test modules collected later import) to the subpackage."""
    def call(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(f"mmlens.evaluation.metrics.{module}"), name)(*args, **kwargs)

    return call


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def subject(family):
    return subject_for(family)


@pytest.fixture
def images(family):
    # several images: multi-tile for llava_next, several images in one prompt for the others
    return tiny_images(family, n=3 if family == "llava_next" else 2)
