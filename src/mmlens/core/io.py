"""Writing result files atomically: a failure never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmlens.errors import InputError


def atomic_write(path: str | Path, write: Callable[[Path], None], suffixes: tuple[str, ...] | None = None) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` only if it succeeded.

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> atomic_write(p, lambda t: t.write_text("hi")).read_text()
    'hi'
    """
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise InputError(f"cannot save to {str(path)!r}: use one of the extensions {', '.join(suffixes)}")
    if not path.parent.exists():
        raise InputError(f"folder {str(path.parent)!r} does not exist: create it or choose another output path")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_plot_or_json(path: str | Path, to_dict: Callable[[], dict], plot: Callable[[], Any]) -> Path:
    """Write ``to_dict()`` as ``.json`` or the figure from ``plot()`` as ``.png``, atomically."""

    def write(tmp: Path) -> None:
        if tmp.suffix.lower() == ".json":
            tmp.write_text(json.dumps(to_dict(), indent=1))
        else:
            import matplotlib.pyplot as plt

            fig = plot()
            fig.savefig(tmp, dpi=120, format="png")
            plt.close(fig)

    return atomic_write(path, write, suffixes=(".json", ".png"))
