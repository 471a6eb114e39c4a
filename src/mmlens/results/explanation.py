"""Typed, saveable results. :class:`Explanation` is what :func:`mmlens.explain` returns.

An explanation holds, for each target (an answer token, a phrase, a contrast), the score of every
sequence position, each image's map over its patch grid(s) and upsampled to the original pixels, the
prompt-token scores, the original images (for plotting) and the metadata that reproduces it.

>>> import mmlens                                                          # doctest: +SKIP
>>> ex = mmlens.explain(lm, "cat.png", "what color is the cat?", answer="red")   # doctest: +SKIP
>>> ex.image_map("red").shape, ex.text_scores("red")[:2]                   # doctest: +SKIP
>>> ex.save("cat.safetensors"); mmlens.Explanation.load("cat.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmlens.errors import InputError
from mmlens.results import rendering
from mmlens.util.io import atomic_write

FORMAT = "mmlens.explanation"
FORMAT_VERSION = 1
SUFFIXES = (".png", ".json", ".safetensors", ".html")

TargetKey = int | str | None


@dataclass(eq=False)
class Explanation:
    """Per-target attributions of one answer, with everything needed to plot, save and reproduce them.

    Shapes (``T`` targets, ``S`` sequence positions, image ``i`` of ``W_i x H_i`` pixels, grid ``g``):

    - ``position_scores``: ``(T, S)`` float32, one score per sequence position;
    - ``pixel_maps[t][i]``: ``(H_i, W_i)`` float32 map over image ``i``'s original pixels;
    - ``grid_maps[t][i][g]``: ``(rows, cols)`` float32 map over the patch grid ``g`` of image ``i``
      (LLaVA-NeXT: base grid, then tiles; kinds in ``grid_kinds[i]``).
    """

    method: str
    labels: list[str]
    target_indices: list[list[int]]
    position_scores: np.ndarray
    pixel_maps: list[list[np.ndarray]]
    grid_maps: list[list[list[np.ndarray]]]
    grid_kinds: list[list[str]]
    tokens: list[str]
    text_positions: list[int]
    image_positions: list[list[int]]
    images: list[Image.Image]
    prompt: str
    answer: str
    answer_tokens: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    # -- access -------------------------------------------------------------------------------------------
    @property
    def targets(self) -> list[str]:
        """Target labels, in order (``image_map`` / ``text_scores`` / ``plot`` take a label or an index)."""
        return list(self.labels)

    def _index(self, target: TargetKey) -> int:
        if target is None:
            return 0
        if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
            if -len(self.labels) <= int(target) < len(self.labels):
                return int(target) % len(self.labels)
            raise InputError(f"target index {target} is out of range: this explanation has {len(self.labels)} "
                             f"targets {self.labels}")
        if isinstance(target, str) and target in self.labels:
            return self.labels.index(target)
        raise InputError(f"target {target!r} was not explained; pass one of {self.labels} or an index")

    def _image(self, image: int) -> int:
        if not isinstance(image, (int, np.integer)) or not -len(self.images) <= int(image) < len(self.images):
            raise InputError(f"image {image!r} is out of range: this explanation has {len(self.images)} image(s)")
        return int(image) % len(self.images)

    def image_map(self, target: TargetKey = None, image: int = 0) -> np.ndarray:
        """``(H, W)`` map of ``target`` (label, index; None = the first) over ``image``'s original pixels."""
        return self.pixel_maps[self._index(target)][self._image(image)]

    def grid_map(self, target: TargetKey = None, image: int = 0, grid: int = 0) -> np.ndarray:
        """``(rows, cols)`` map of ``target`` over patch grid ``grid`` of ``image`` (before upsampling)."""
        grids = self.grid_maps[self._index(target)][self._image(image)]
        if not 0 <= grid < len(grids):
            raise InputError(f"grid {grid} is out of range: image {image} has {len(grids)} grid(s) "
                             f"{self.grid_kinds[self._image(image)]}")
        return grids[grid]

    def text_scores(self, target: TargetKey = None) -> list[tuple[str, float]]:
        """``(token, score)`` for every prompt position that holds no image token, in order."""
        row = self.position_scores[self._index(target)]
        return [(self.tokens[p], float(row[p])) for p in self.text_positions]

    @property
    def is_video(self) -> bool:
        """True when ``images`` are the frames of one video (``metadata["video"]``: fps, frame times)."""
        return bool(self.metadata.get("video"))

    def frame_curve(self, target: TargetKey = None) -> np.ndarray:
        """Per-frame (per-image) importance: the sum of ``target``'s scores over each frame's tokens."""
        from mmlens.results.video_strip import frame_curve

        return frame_curve(self, target)

    def save_strip(self, path: str | os.PathLike, target: TargetKey = None) -> Path:
        """Write a video's frames with their heatmaps side by side and the frame curve under them (PNG)."""
        from mmlens.results.video_strip import strip_png

        data = strip_png(self, target, dpi=120)
        return atomic_write(Path(path), lambda tmp: tmp.write_bytes(data), suffixes=(".png",))

    # -- plotting -----------------------------------------------------------------------------------------
    def plot(self, target: TargetKey = None, ax: Any = None, image: int | None = None,
             alpha: float = 0.5, cmap: str = "jet") -> Any:
        """Images with the heatmap overlaid, a colour bar and the target in the title; returns the figure.

        ``target=None`` draws every target (a grid of panels: one row per target when there are several
        images); ``ax`` draws a single panel into an existing matplotlib axes. The figure is not registered
        with pyplot (no GUI backend needed); :meth:`show` displays it.

        >>> fig = ex.plot("red"); fig.savefig("red.png")             # doctest: +SKIP
        """
        from matplotlib.figure import Figure

        return rendering.plot(self, Figure, target, ax, image, alpha, cmap)

    def _png_bytes(self, target: TargetKey = None, dpi: int = 100) -> bytes:
        return rendering.png_bytes(self, target, dpi)

    def _repr_html_(self) -> str:
        """Self-contained HTML: the plot as a base64 image and a table of prompt-token scores (all escaped)."""
        return rendering.explanation_html(self)


    def show(self, target: TargetKey = None) -> None:
        """Display the plot (every target, or one): inline in a notebook, else in a matplotlib window."""
        try:
            from IPython import get_ipython
            from IPython.display import Image as PNG
            from IPython.display import display

            if get_ipython() is not None:
                display(PNG(self._png_bytes(target)))
                return
        except ImportError:
            pass
        import matplotlib.pyplot as plt

        rendering.plot(self, plt.figure, target, None, None, 0.5, "jet")
        plt.show()

    # -- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists and strings only); :meth:`from_dict` inverts it exactly."""
        meta = self._meta()
        for t, entry in enumerate(meta["targets"]):
            entry["position_scores"] = _floats(self.position_scores[t])
            entry["text_scores"] = [[tok, s] for tok, s in self.text_scores(t)]
            entry["images"] = [
                {"pixel_map": _floats(self.pixel_maps[t][i]),
                 "grids": [_floats(g) for g in self.grid_maps[t][i]]}
                for i in range(len(self.images))
            ]
        for entry, img in zip(meta["images"], self.images):
            entry["png_base64"] = base64.b64encode(_png(img)).decode("ascii")
        return meta

    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "prompt": self.prompt,
            "answer": self.answer,
            "answer_tokens": list(self.answer_tokens),
            "targets": [{"label": lab, "answer_indices": list(idx)}
                        for lab, idx in zip(self.labels, self.target_indices)],
            "tokens": list(self.tokens),
            "text_positions": list(self.text_positions),
            "image_positions": [list(p) for p in self.image_positions],
            "images": [{"width": img.width, "height": img.height, "grid_kinds": list(kinds)}
                       for img, kinds in zip(self.images, self.grid_kinds)],
            "metadata": jsonable(self.metadata),
            "extras": jsonable(self.extras),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Explanation:
        """Rebuild an explanation from :meth:`to_dict` output."""
        _check_format(data)
        images = [_from_png(base64.b64decode(entry["png_base64"])) for entry in data["images"]]
        targets = data["targets"]
        return cls._build(
            data,
            images,
            np.array([t["position_scores"] for t in targets], dtype=np.float32).reshape(len(targets), -1),
            [[np.array(im["pixel_map"], dtype=np.float32) for im in t["images"]] for t in targets],
            [[[np.array(g, dtype=np.float32) for g in im["grids"]] for im in t["images"]] for t in targets],
        )

    @classmethod
    def _build(cls, meta: dict[str, Any], images: list[Image.Image], scores: np.ndarray,
               pixel_maps: list[list[np.ndarray]], grid_maps: list[list[list[np.ndarray]]]) -> Explanation:
        return cls(
            method=meta["method"],
            labels=[t["label"] for t in meta["targets"]],
            target_indices=[list(t["answer_indices"]) for t in meta["targets"]],
            position_scores=scores,
            pixel_maps=pixel_maps,
            grid_maps=grid_maps,
            grid_kinds=[list(im["grid_kinds"]) for im in meta["images"]],
            tokens=list(meta["tokens"]),
            text_positions=list(meta["text_positions"]),
            image_positions=[list(p) for p in meta["image_positions"]],
            images=images,
            prompt=meta["prompt"],
            answer=meta["answer"],
            answer_tokens=list(meta["answer_tokens"]),
            metadata=meta["metadata"],
            extras=meta["extras"],
        )

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"position_scores": np.ascontiguousarray(self.position_scores, dtype=np.float32)}
        for t in range(len(self.labels)):
            for i in range(len(self.images)):
                arrays[f"pixel/{t}/{i}"] = np.ascontiguousarray(self.pixel_maps[t][i], dtype=np.float32)
                for g, grid in enumerate(self.grid_maps[t][i]):
                    arrays[f"grid/{t}/{i}/{g}"] = np.ascontiguousarray(grid, dtype=np.float32)
        for i, img in enumerate(self.images):
            arrays[f"image/{i}"] = np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
        return arrays

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.png`` (the plot), ``.json`` (:meth:`to_dict`), ``.safetensors`` (arrays + metadata in
        the header) or ``.html`` (self-contained report). The file appears complete or not at all."""
        path = Path(path)
        writers: dict[str, Callable[[Path], None]] = {
            ".png": lambda tmp: tmp.write_bytes(self._png_bytes(dpi=120)),
            ".json": lambda tmp: tmp.write_text(json.dumps(self.to_dict()), encoding="utf-8"),
            ".safetensors": self._write_safetensors,
            ".html": lambda tmp: tmp.write_text(rendering.html_page(self), encoding="utf-8"),
        }
        return atomic_write(path, lambda tmp: writers[path.suffix.lower()](tmp), suffixes=SUFFIXES)

    def _write_safetensors(self, tmp: Path) -> None:
        from safetensors.numpy import save_file

        save_file(self._arrays(), str(tmp), metadata={"mmlens": json.dumps(self._meta())})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Explanation:
        """Read an explanation saved as ``.json`` or ``.safetensors``.

        >>> ex = Explanation.load("cat.safetensors")                  # doctest: +SKIP
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"explanation file {str(path)!r} not found: pass a saved .json or .safetensors file")
        suffix = path.suffix.lower()
        if suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise InputError(f"{str(path)!r} is not valid JSON ({err.__class__.__name__}): pass a file "
                                 "written by Explanation.save") from None
            return _rebuild(path, lambda: cls.from_dict(data))
        if suffix == ".safetensors":
            return _rebuild(path, lambda: cls._load_safetensors(path))
        raise InputError(f"cannot load {str(path)!r}: pass a .json or .safetensors file (plots cannot be read back)")

    @classmethod
    def _load_safetensors(cls, path: Path) -> Explanation:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                header = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise InputError(f"{str(path)!r} is not a readable safetensors file ({err.__class__.__name__})") from None
        if "mmlens" not in header:
            raise InputError(f"{str(path)!r} holds no mmlens explanation: pass a file written by Explanation.save")
        try:
            meta = json.loads(header["mmlens"])
        except (json.JSONDecodeError, TypeError) as err:
            raise InputError(f"{str(path)!r} has a malformed mmlens header ({err.__class__.__name__}): pass a file "
                             "written by Explanation.save") from None
        return cls.from_arrays(meta, arrays)

    @classmethod
    def from_arrays(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Explanation:
        """Rebuild an explanation from its safetensors arrays (names as written by ``save``) and its metadata
        (the ``"mmlens"`` header); dataset runs store many explanations this way in one file."""
        _check_format(meta)
        n_t, n_i = len(meta["targets"]), len(meta["images"])
        images = [Image.fromarray(arrays[f"image/{i}"]) for i in range(n_i)]
        pixel = [[arrays[f"pixel/{t}/{i}"] for i in range(n_i)] for t in range(n_t)]
        grids = [[[arrays[f"grid/{t}/{i}/{g}"] for g in range(len(meta["images"][i]["grid_kinds"]))]
                  for i in range(n_i)] for t in range(n_t)]
        return cls._build(meta, images, arrays["position_scores"], pixel, grids)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays ``save`` writes to ``.safetensors`` (see :meth:`from_arrays`)."""
        return self._arrays()

    def meta(self) -> dict[str, Any]:
        """The JSON metadata ``save`` writes into the ``.safetensors`` header (see :meth:`from_arrays`)."""
        return self._meta()

    def __repr__(self) -> str:
        return (f"Explanation(method={self.method!r}, targets={self.labels}, images={len(self.images)}, "
                f"answer={self.answer!r})")


# -- helpers ----------------------------------------------------------------------------------------------------
def _rebuild(path: Path, build: Callable[[], Explanation]) -> Explanation:
    """``build()``, with missing fields / wrong types / inconsistent arrays as one InputError line."""
    try:
        ex = build()
        n_t, n_i = len(ex.labels), len(ex.images)
        if ex.position_scores.shape != (n_t, len(ex.tokens)) or len(ex.pixel_maps) != n_t or any(
                len(row) != n_i for row in ex.pixel_maps) or len(ex.grid_kinds) != n_i:
            raise ValueError("array shapes do not match the targets, tokens and images")
        return ex
    except InputError:
        raise
    except (KeyError, TypeError, IndexError, ValueError, AttributeError, OSError) as err:
        what = f"misses the field {err.args[0]!r}" if isinstance(err, KeyError) and err.args else \
            f"is malformed ({err.__class__.__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})"
        raise InputError(f"explanation file {str(path)!r} {what}: pass a complete file written by "
                         "Explanation.save") from None


def _check_format(data: dict[str, Any]) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError("this file holds no mmlens explanation: pass a file written by Explanation.save")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(f"explanation format {data.get('format_version')} is newer than this mmlens reads "
                         f"({FORMAT_VERSION}): upgrade mmlens")


def _floats(a: np.ndarray) -> list:
    """Exact JSON form of a float32 array (float32 -> float64 -> repr round-trips)."""
    return np.asarray(a, dtype=np.float32).astype(np.float64).tolist()


def jsonable(value: Any) -> Any:
    """``value`` with tuples/arrays/tensors turned into lists and unknown objects into their repr."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "tolist") and hasattr(value, "detach"):  # torch tensor
        return value.detach().cpu().tolist()
    return repr(value)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _from_png(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")
