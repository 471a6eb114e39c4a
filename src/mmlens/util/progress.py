"""Progress bars for slow loops (rich), silent unless asked or attached to a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], description: str, enabled: bool | None = None, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a rich progress bar when ``enabled`` (default: when stderr is a terminal)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=description, total=total, transient=True)
