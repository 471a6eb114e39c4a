"""The typer options and arguments that several CLI commands share, defined once so that their flags, help texts
and defaults cannot drift apart (``mmlens.cli`` and its ``cli_*`` modules import them from here).

>>> from typer.testing import CliRunner
>>> from mmlens.cli import app
>>> "HF id, local folder, or 'demo'" in CliRunner().invoke(app, ["lens", "--help"]).output
True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

# -- the model and one question about one image ------------------------------------------------------------------
ModelOpt = typer.Option("demo", "--model", "-m", help="HF id, local folder, or 'demo' (the bundled model)")
ModelVariantOpt = typer.Option("demo", "--model", "-m", help="HF id, local folder, 'demo' or 'demo:VARIANT'")
ImageArg = typer.Argument(..., help="image file (local path; URLs are not fetched)")
PromptArg = typer.Argument(..., help="question or instruction")
AnswerOpt = typer.Option(None, "--answer", help="teacher-force this answer instead of the model's own")
LayersOpt = typer.Option(None, "--layers", help="comma-separated layer indices (default: all)")

# -- dataset runs (benchmark, explain-dataset, dataset-stats): where they run --------------------------------------
EngineOpt = typer.Option("local", "--engine", help="local (one process) or ray (Ray Data, one model replica per actor)")
AddressOpt = typer.Option(None, "--address", help="Ray: auto, ray://HOST:PORT or HOST:PORT (default: a local Ray)")
ReplicasOpt = typer.Option(1, "--replicas", help="Ray: model replicas (actors)")
GpusOpt = typer.Option(0.0, "--gpus-per-replica", help="Ray: GPUs per replica (0: CPU)")

# -- resumable dataset runs (explain-dataset, dataset-stats): what they read and how they shard it ----------------
RunDataOpt = typer.Option(None, "--data", help=".jsonl, image folder with metadata.jsonl, .parquet file(s) or a "
                                               "datasets folder (default: ShapesVQA)")
RunNOpt = typer.Option(None, "--n", help="first n samples (default: all; ShapesVQA: 100)")
ShardSizeOpt = typer.Option(50, "--shard-size", help="samples per shard (the unit of resuming)")
StrictOpt = typer.Option(False, "--strict", help="stop at the first unreadable row instead of listing it")


def png_out(default: str) -> Any:
    """``--out`` / ``-o`` of a command writing a PNG and its JSON beside it, defaulting to ``default``."""
    return typer.Option(Path(default), "--out", "-o", help="PNG path; the JSON goes beside it")


def shapes_side(vision_config: Any) -> int:
    """The ShapesVQA image side for a vision tower: its ``image_size`` (an int, or ``(H, W)`` as InternVL's), within
    ShapesVQA's range (64 when the config names none).

    >>> shapes_side(type("C", (), {"image_size": [448, 448]})()), shapes_side(None)
    (448, 64)
    """
    from mmlens.data.shapes_vqa import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

    size = getattr(vision_config, "image_size", None) or 64
    size = max(size) if isinstance(size, (list, tuple)) else size
    return min(max(int(size), MIN_IMAGE_SIZE), MAX_IMAGE_SIZE)
