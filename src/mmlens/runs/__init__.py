"""Dataset runs: inputs (ShapesVQA, JSONL, image folders, Parquet / ``datasets`` folders) -> a per-sample job on
a Subject -> Parquet shards with a manifest (resumable), on the ``local`` engine or on Ray.

>>> from mmlens.runs import open_source, run_dataset      # doctest: +SKIP
"""

from mmlens.runs.engine import ENGINES, DatasetRun, Job, run_dataset
from mmlens.runs.sources import open_source
from mmlens.runs.store import RunStore

__all__ = ["ENGINES", "DatasetRun", "Job", "RunStore", "open_source", "run_dataset"]
