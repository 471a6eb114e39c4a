"""Concept vocabularies for SpLiCE, concept bottlenecks and text spans, and their checks.

>>> shapes_vocabulary()[:3], shapes_vocabulary()[8], len(shapes_vocabulary())
(['red', 'green', 'blue'], 'red circle', 23)
>>> concept_objects("red circle"), concept_objects("red"), concept_objects("circle")
(('red', 'circle'), ('red', None), (None, 'circle'))
>>> check_vocabulary(["red", "red ", "blue"])
['red', 'blue']
"""

from __future__ import annotations

from collections.abc import Iterable

from mmlens.data.shapes_vqa import COLORS, SHAPES
from mmlens.errors import InputError

#: A small general-purpose vocabulary written for mmlens: colours, shapes, sizes, positions, textures and a few
#: common things, for a first look at an embedding when no domain vocabulary is at hand.
GENERIC_VOCABULARY: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray",
    "circle", "square", "triangle", "rectangle", "star", "line", "dot", "ring", "cross",
    "large", "small", "tiny", "many", "few", "single", "pair",
    "left", "right", "top", "bottom", "center", "corner", "edge",
    "bright", "dark", "striped", "spotted", "smooth", "rough", "shiny", "blurry",
    "text", "letter", "number", "face", "person", "animal", "dog", "cat", "bird", "tree", "flower", "grass",
    "sky", "water", "road", "car", "house", "building", "window", "door", "food", "fruit", "table", "chair",
    "indoor", "outdoor", "night", "day", "drawing", "photo", "pattern", "background",
)


def shapes_vocabulary(objects: bool = True) -> list[str]:
    """The ShapesVQA concepts (from :mod:`mmlens.data.shapes_vqa`): its colours, its shapes, then (``objects``)
    every object it draws as a colour-shape pair ("red circle", ...; an image *is* a set of such objects)."""
    pairs = [f"{c} {s}" for c in COLORS for s in SHAPES] if objects else []
    return [*COLORS, *SHAPES, *pairs]


def concept_objects(concept: str) -> tuple[str | None, str | None]:
    """``(colour, shape)`` a ShapesVQA concept names, ``None`` for the attribute it leaves open (a colour word
    names any object of that colour); ``(None, None)`` for a concept outside the ShapesVQA vocabulary."""
    words = concept.split()
    color = next((w for w in words if w in COLORS), None)
    shape = next((w for w in words if w in SHAPES), None)
    return color, shape


def check_vocabulary(words: Iterable[str] | str | None, name: str = "vocabulary", minimum: int = 2) -> list[str]:
    """The vocabulary as a list of distinct stripped words / phrases; one-line InputError if it is unusable."""
    if words is None or isinstance(words, str):
        raise InputError(f"{name} must be a list of words or phrases, not {type(words).__name__}: pass e.g. "
                         "['red', 'circle', ...] (or mmlens.embedding.shapes_vocabulary())")
    out: list[str] = []
    for w in words:
        if not isinstance(w, str) or not w.strip():
            raise InputError(f"{name} holds {w!r}: every entry must be a non-empty word or phrase")
        if w.strip() not in out:
            out.append(w.strip())
    if len(out) < minimum:
        raise InputError(f"{name} has {len(out)} distinct entr{'y' if len(out) == 1 else 'ies'}: a decomposition "
                         f"needs at least {minimum}; pass more words or phrases")
    return out
