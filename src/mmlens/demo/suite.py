"""The demo variants of ``mmlens benchmark --suite planted``: per variant, its model, the ShapesVQA split it is
tested on and the evidence it really reads (planted by training, see :mod:`mmlens.data.shapes_planted`).

>>> PLANTED_VARIANTS["trigger"].split
'trigger-flip'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlantedVariant:
    """A demo variant of the suite: its model, the ShapesVQA split it is tested on, what it really reads."""

    name: str
    model: str
    split: str
    evidence: str


#: Every variant of the suite (runnable when its model and split are shipped in this install).
PLANTED_VARIANTS: dict[str, PlantedVariant] = {v.name: v for v in (
    PlantedVariant("trigger", "demo:trigger", "trigger-flip",
                   "a 6x6 corner checker (the trigger) that flips 'is there ...?' to 'no'"),
    PlantedVariant("shortcut", "demo:shortcut", "shortcut-conflict",
                   "a corner colour swatch naming another shape than the object's"),
    PlantedVariant("twoobject", "demo:twoobject", "twoobject", "both objects of 'is the S1 the same color as the S2?'"),
    # no planted evidence: the demo recipe with a contrastively pretrained vision tower, object masks only
    PlantedVariant("clip-llava", "demo:clip-llava", "standard", "no planted evidence (object masks only)"),
)}
