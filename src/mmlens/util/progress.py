"""The one progress-bar helper (rich): silent unless asked, or on a terminal for runs long enough to need it.

>>> from mmlens.util.progress import progress, progress_bar
>>> sum(progress(range(3), "counting", enabled=False))
3
>>> with progress_bar(10, "forwards", show=False) as bar:
...     bar.update(1)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

#: ``show=None`` shows a bar only on a terminal and for at least this many steps.
MIN_STEPS = 4


def _wanted(show: bool | None, total: int | None) -> bool:
    if show is not None:
        return bool(show)
    return sys.stderr.isatty() and (total is None or total >= MIN_STEPS)


def progress(items: Iterable[T], description: str, enabled: bool | None = None, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar when ``enabled`` (default: when stderr is a terminal)."""
    if not _wanted(enabled, total if total is not None else getattr(items, "__len__", lambda: None)()):
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=description, total=total, transient=True)


class Bar:
    """A running bar: :meth:`update` advances it by ``n`` steps (a no-op when the bar is hidden)."""

    def __init__(self, progress_: object | None = None, task: object | None = None) -> None:
        self._progress, self._task = progress_, task

    def update(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)


def _Rate() -> object:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: object) -> Text:
            speed = getattr(task, "speed", None)
            return Text(f"{speed:.2f}/s" if speed else "-/s")

    return Rate()


@contextmanager
def progress_bar(total: int, description: str, show: bool | None = None, rate: bool = False) -> Iterator[Bar]:
    """A bar over ``total`` steps (e.g. batched forwards), removed on exit, also on errors; ``rate`` adds the
    steps per second (dataset runs: samples/s) beside the ETA."""
    if not _wanted(show, total):
        yield Bar()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeRemainingColumn()) \
        if rate else ()
    with Progress(*columns, transient=True) as prog:
        yield Bar(prog, prog.add_task(description, total=total))
