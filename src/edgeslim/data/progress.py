"""A progress bar for slow one-off data work (decoding archives), on stderr."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")

#: Set to ``0`` to silence the bar (tests, logs).
PROGRESS_ENV = "EDGESLIM_PROGRESS"


def track(items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
    """Yield ``items`` while drawing a rich progress bar on stderr.

    The bar is drawn only on an interactive terminal and when
    ``$EDGESLIM_PROGRESS`` is not ``0``, so logs stay clean.
    """
    console = Console(stderr=True)
    disable = not console.is_terminal or os.environ.get(PROGRESS_ENV, "1") == "0"
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=disable, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
