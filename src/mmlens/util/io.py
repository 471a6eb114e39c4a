"""Writing result files atomically (a failure never leaves a half-written file behind), and reading a saved JSON
file back with one clear line for every way it can be wrong."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmlens.errors import InputError


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _nearest_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor or "."))


def _writable(folder: Path, what: str) -> None:
    """A probe file in ``folder`` (``os.access`` says yes to root on read-only mounts and lies on some network
    file systems), else one InputError line."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".mmlens-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(f"cannot write in folder {str(folder)!r} ({err.strerror or type(err).__name__}): "
                         f"choose a writable folder for {what}") from None


def check_output(path: str | Path, suffixes: tuple[str, ...] | None = None, what: str = "output") -> Path:
    """``path`` checked as a file to (over)write: extension, not a folder, parent an existing writable folder.

    Call it before any long work; each failure is one :class:`InputError` line naming the fix.
    """
    path = Path(path)
    shown = str(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise InputError(f"{what} {shown!r}: use a file name ending in one of the extensions {', '.join(suffixes)}")
    if path.is_dir():
        raise InputError(f"{what} {shown!r} is a directory: pass a file path, e.g. {str(path / ('out' + path.suffix))!r}")
    parent = path.parent
    existing = _nearest_existing(parent)
    if existing.exists() and not existing.is_dir():
        raise InputError(f"{what} {shown!r}: {str(existing)!r} is a file, not a folder: choose another output path")
    if existing != parent:
        raise InputError(f"folder {str(parent)!r} does not exist: create it or choose another output path")
    _writable(parent, "the output")
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None], suffixes: tuple[str, ...] | None = None) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` only if it succeeded.

    The temporary file sits in the target folder (so the move is atomic) and is removed on any failure; the
    file ends up with the usual ``0666 & ~umask`` permissions, like any file the user creates.

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> atomic_write(p, lambda t: t.write_text("hi")).read_text()
    'hi'
    """
    path = check_output(path, suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # after writing: some writers replace the file they are given
        os.replace(tmp, path)
    except BaseException:  # disk full etc. propagate (the CLI reports them in one line), minus the temp file
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_files_together(folder: str | Path, writers: dict[str, Callable[[Path], None]]) -> list[Path]:
    """Call each ``writers[name](tmp_path)`` in ``folder``, then rename all of them into place only once every
    one succeeded: a failure leaves none of the files (old ones stay as they were).

    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> [p.name for p in write_files_together(d, {"a.txt": lambda t: t.write_text("a")})]
    ['a.txt']
    """
    import uuid

    folder = Path(folder)
    tag, staged = uuid.uuid4().hex[:8], []
    try:
        for name, write in writers.items():
            tmp = folder / f".{name}.{tag}.tmp"
            staged.append((tmp, folder / name))
            write(tmp)
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return [final for _, final in staged]


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


def check_output_folder(path: str | Path, what: str = "--out") -> Path:
    """``path`` checked as a folder to write files into (created later if missing): not a file, and the
    nearest existing folder on its way is writable. One :class:`InputError` line on failure."""
    path = Path(path)
    existing = _nearest_existing(path)
    if existing.exists() and not existing.is_dir():
        raise InputError(f"{what} {str(path)!r}: {str(existing)!r} is a file, not a folder: pass a folder")
    _writable(existing, what)
    return path


def read_json(path: str | Path, what: str, fix: str, *, format: str | None = None, version: int | None = None,
              format_fix: str | None = None) -> dict[str, Any]:
    """The JSON object saved in ``path``, or one :class:`InputError` line ending in ``fix``: the file is missing
    (or a folder), unreadable, not JSON, not a JSON object, or (when given) its ``"format"`` is not ``format`` or
    its ``"format_version"`` is not ``version`` (these two end in ``format_fix`` when given, else ``fix``).

    ``what`` names the content in the message, e.g. ``"mmlens probe result"``.

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> _ = p.write_text('{"format": "demo", "x": 1}')
    >>> read_json(p, "demo result", "pass a saved result", format="demo")["x"]
    1
    >>> _ = p.write_text("[1, 2]")
    >>> read_json(p, "demo result", "pass a saved result")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    mmlens.errors.InputError: '...r.json' holds no demo result (a JSON list, not an object): pass a saved result
    """
    path = Path(path)
    shown = str(path)
    if not path.is_file():
        raise InputError(f"{what} {shown!r} not found: {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad UTF-8 or bad JSON
        raise InputError(f"{shown!r} is not a readable {what} ({type(err).__name__}): {fix}") from None
    if not isinstance(data, dict):
        kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(data), "number")
        raise InputError(f"{shown!r} holds no {what} (a JSON {kind}, not an object): {fix}")
    fix = format_fix or fix
    if format is not None and data.get("format") != format:
        raise InputError(f"{shown!r} holds no {what} (format {_brief(data.get('format'))}, not {format!r}): {fix}")
    if version is not None and data.get("format_version") != version:
        raise InputError(f"{shown!r} holds {what} format version {_brief(data.get('format_version'))}; this mmlens "
                         f"reads version {version}: {fix}")
    return data


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
