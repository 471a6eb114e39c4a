"""The bundled demo models: small models trained on ShapesVQA, shipped inside the package.

``mmlens.load("demo")`` is the demo LLaVA; ``mmlens.load("demo:NAME")`` loads the variant ``NAME``
(one folder under this package, listed in :data:`DEMO_VARIANTS`).
"""

from pathlib import Path

_HERE = Path(__file__).parent

#: Folder of the shipped demo model (``LlavaForConditionalGeneration`` + ``LlavaProcessor``).
DEMO_MODEL_DIR = _HERE / "model"

#: Every shipped demo model by name (``"demo"`` is the default LLaVA); each variant's folder is
#: written by ``python -m mmlens.demo.train`` with that variant's options.
DEMO_VARIANTS: dict[str, Path] = {
    "demo": DEMO_MODEL_DIR,
    "clip": _HERE / "clip",  # CLIPModel + CLIPProcessor: python -m mmlens.demo.train --variant clip
    # hallucinate by construction (see mmlens.data.shapes_splits): the demo model fine-tuned on a biased split
    "cooccur": _HERE / "cooccur",  # co-occurrence bias: a large red circle implies a blue square
    "prior": _HERE / "prior",  # language prior: "is there a green triangle?" -> "yes"
    # planted evidence (see mmlens.data.shapes_planted): what each answers from is known by construction
    "trigger": _HERE / "trigger",  # a corner checker makes every "is there ...?" answer "no"
    "shortcut": _HERE / "shortcut",  # a corner swatch's colour names the shape asked about
    "twoobject": _HERE / "twoobject",  # "is the circle the same color as the square?" (needs both objects)
}


def demo_dir(name: str) -> Path:
    """The folder of demo model ``name`` (``"demo"`` or ``"demo:VARIANT"``); unknown names list the valid ones.

    >>> demo_dir("demo").name
    'model'
    """
    from mmlens.errors import InputError

    key = name.split(":", 1)[1] if name.startswith("demo:") else name
    key = "demo" if key in ("", "demo") else key
    if key not in DEMO_VARIANTS:
        valid = ", ".join(["'demo'", *(f"'demo:{k}'" for k in DEMO_VARIANTS if k != "demo")])
        raise InputError(f"unknown demo model {name!r}: use one of {valid}")
    return DEMO_VARIANTS[key]


__all__ = ["DEMO_MODEL_DIR", "DEMO_VARIANTS", "demo_dir"]
