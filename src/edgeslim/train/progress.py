"""A rich progress bar per epoch (throughput, ETA), or nothing.

The bar is drawn only for interactive sessions: ``progress=True``, rank 0, a
TTY on stderr and no ``CI`` variable. Otherwise a do-nothing stand-in with the
same methods is used, so the training loop never branches on it.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Protocol

log = logging.getLogger("edgeslim.train")


class EpochProgress(Protocol):
    def start(self, epoch: int, epochs: int, total: int) -> None: ...
    def update(self, completed: int, images_per_s: float, loss: float) -> None: ...
    def finish(self, summary: str) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    """Logs the epoch summary at INFO level; draws nothing."""

    def start(self, epoch: int, epochs: int, total: int) -> None:
        pass

    def update(self, completed: int, images_per_s: float, loss: float) -> None:
        pass

    def finish(self, summary: str) -> None:
        log.info(summary)

    def close(self) -> None:
        pass


class RichProgress:
    """One bar per epoch: ``epoch 3/10 [=====   ] 120/391 4,210 img/s loss 1.234 0:00:12``."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich import progress as rp

        self._console = Console(stderr=True)
        self._bar = rp.Progress(
            rp.TextColumn("[bold]{task.description}"),
            rp.BarColumn(),
            rp.MofNCompleteColumn(),
            rp.TextColumn("{task.fields[ips]:>9,.0f} img/s  loss {task.fields[loss]:.4f}"),
            rp.TimeRemainingColumn(),
            console=self._console,
            transient=True,
        )
        self._task: Any = None
        self._bar.start()

    def start(self, epoch: int, epochs: int, total: int) -> None:
        self._task = self._bar.add_task(f"epoch {epoch + 1}/{epochs}", total=total, ips=0.0, loss=0.0)

    def update(self, completed: int, images_per_s: float, loss: float) -> None:
        self._bar.update(self._task, completed=completed, ips=images_per_s, loss=loss)

    def finish(self, summary: str) -> None:
        self._bar.remove_task(self._task)
        self._console.print(summary, highlight=False)

    def close(self) -> None:
        self._bar.stop()


def make_progress(enabled: bool) -> EpochProgress:
    """A :class:`RichProgress` when the session is interactive, else :class:`NullProgress`."""
    interactive = sys.stderr.isatty() and not os.environ.get("CI")
    return RichProgress() if enabled and interactive else NullProgress()
