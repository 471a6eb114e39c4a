"""Training checkpoints and a small (optionally mislabelled) training set for the demo training script.

``python -m mmlens.demo.train ... --save-every N --checkpoint-dir DIR`` saves the model (safetensors, with its
processor) every ``N`` optimiser steps into ``DIR/<stage>-step-<global step>`` (e.g. ``llava-step-000300``) and
keeps ``DIR/manifest.json``: per checkpoint its stage, global step and learning rate, and per step the training
sample indices its batch held (batches are deterministic from the seed), so data attribution
(:func:`mmlens.tracin`) can name the samples a checkpoint has seen.

``--train-size M`` cycles over the first ``M`` training samples (so each is seen several times); ``--plant K``
gives ``K`` of them (colour questions, deterministic) a wrong colour answer: the planted-label test of TracIn.

>>> data = TrainingSet(ShapesVQA(seed=1000), size=50, plant=2)
>>> len(data.planted), data.sample(data.planted[0]).answer != ShapesVQA(seed=1000).sample(data.planted[0]).answer
(2, True)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from mmlens.data.shapes_vqa import COLORS, ShapesSample, ShapesVQA
from mmlens.errors import InputError
from mmlens.util.io import atomic_write, check_output_folder, read_json

MANIFEST = "manifest.json"


def wrong_color(answer: str) -> str:
    """A deterministic wrong colour for a colour answer (the next colour in :data:`COLORS`)."""
    colors = list(COLORS)
    return colors[(colors.index(answer) + 1) % len(colors)]


class TrainingSet:
    """``data`` restricted to its first ``size`` samples (cycled; 0 = all) with ``plant`` mislabelled ones."""

    def __init__(self, data: ShapesVQA, size: int = 0, plant: int = 0) -> None:
        if size < 0 or plant < 0:
            raise InputError(f"--train-size {size} / --plant {plant}: pass 0 or more")
        if plant and not size:
            raise InputError("--plant needs --train-size: planted samples live in a finite training set")
        self.data, self.size = data, size
        colour_idx = [i for i in range(size) if data.sample(i).question_type == "color"] if plant else []
        if plant > len(colour_idx):
            raise InputError(f"--plant {plant}: only {len(colour_idx)} colour questions among the first {size} "
                             "training samples: plant fewer or raise --train-size")
        step = max(1, len(colour_idx) // max(1, plant))
        self.planted: list[int] = colour_idx[::step][:plant]

    def index(self, i: int) -> int:
        """The dataset index of the ``i``-th sample drawn."""
        return i % self.size if self.size else i

    def sample(self, i: int) -> ShapesSample:
        k = self.index(i)
        s = self.data.sample(k)
        return replace(s, answer=wrong_color(s.answer)) if k in self.planted else s

    def samples(self, n: int, start: int = 0) -> Iterator[ShapesSample]:
        return (self.sample(i) for i in range(start, start + n))


class CheckpointSaver:
    """Saves ``model`` + ``processor`` every ``every`` steps and at the end of each stage; writes the manifest."""

    def __init__(self, folder: str | Path, every: int, info: dict[str, Any]) -> None:
        if not isinstance(every, int) or every <= 0:
            raise InputError(f"--save-every {every}: pass a number of steps >= 1")
        self.folder, self.every = check_output_folder(folder, "--checkpoint-dir"), every
        self.manifest: dict[str, Any] = {"format": "mmlens-checkpoints/1", **info, "checkpoints": [], "steps": {}}

    def after_step(self, model: Any, processor: Any, stage: str, step: int, total: int, global_step: int,
                   indices: list[int], lr: float) -> None:
        """Record step ``step`` (0-based within ``stage``; ``global_step`` over all stages) and save if due."""
        self.manifest["steps"][str(global_step + 1)] = {"stage": stage, "samples": indices, "lr": lr}
        if (step + 1) % self.every and step + 1 != total:
            return
        name = f"{stage}-step-{global_step + 1:06d}"
        path = self.folder / name
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path, safe_serialization=True)
        processor.save_pretrained(path)
        self.manifest["checkpoints"].append({"name": name, "stage": stage, "step": global_step + 1, "lr": lr})
        atomic_write(self.folder / MANIFEST, lambda t: t.write_text(json.dumps(self.manifest, indent=0)))
        print(f"checkpoint {path}", flush=True)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a checkpoint folder, or one :class:`InputError` line saying what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"checkpoint folder {str(folder)!r} does not exist: pass the --checkpoint-dir of a "
                         "training run")
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(f"{str(folder)!r} holds no {MANIFEST}: pass a folder written by python -m mmlens.demo.train "
                         "--save-every N --checkpoint-dir DIR")
    manifest = read_json(path, "checkpoint manifest", "rerun the training with --checkpoint-dir")
    try:
        names = [c["name"] for c in manifest["checkpoints"]]
    except (KeyError, TypeError) as err:
        raise InputError(f"{str(path)!r} is not a checkpoint manifest ({err}): rerun the training with "
                         "--checkpoint-dir") from None
    missing = [n for n in names if not (folder / n / "config.json").is_file()]
    if not names or missing:
        raise InputError(f"{str(folder)!r}: checkpoint(s) {', '.join(missing) or '(none)'} missing: pass a folder "
                         "holding the saved checkpoints of one training run")
    return manifest
