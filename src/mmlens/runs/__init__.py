"""Dataset runs: inputs (ShapesVQA, JSONL, image folders, Parquet / ``datasets`` folders) -> a per-sample job on
a Subject -> Parquet shards with a manifest (resumable), on the ``local`` engine or on Ray.

>>> from mmlens.runs import open_source, run_dataset      # doctest: +SKIP
"""

from mmlens.runs.activation_reader import ActivationReader
from mmlens.runs.activations import collect_activations
from mmlens.runs.engine import ENGINES, DatasetRun, Job, run_dataset
from mmlens.runs.sources import open_source
from mmlens.runs.store import RunStore

__all__ = [
    "ENGINES",
    "ActivationReader",
    "DatasetRun",
    "Job",
    "RunStore",
    "collect_activations",
    "open_source",
    "run_dataset",
]
