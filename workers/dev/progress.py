"""A progress bar with rate and ETA for publishing commands (``replay``, ``simulate``), drawn
by ``rich`` when the stream is a terminal; silent otherwise (pipes and logs get no control
characters)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["Progress"]


def _rate_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):  # type: ignore[misc]
        """Messages per second since the start."""

        def render(self, task: Any) -> Text:
            elapsed = task.elapsed or 0.0
            rate = task.completed / elapsed if elapsed > 0 else 0.0
            return Text(f"{rate:,.0f} msg/s", style="progress.data.speed")

    return RateColumn()


class Progress:
    """``update(done)`` as messages go out, ``close(done)`` at the end."""

    def __init__(self, label: str, total: int | None, enabled: bool,
                 stream: TextIO | None = None) -> None:
        out = stream if stream is not None else sys.stderr
        self.enabled = enabled and out.isatty()
        self._bar: Any = None
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
            MofNCompleteColumn(), _rate_column(), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=Console(file=out, force_terminal=True),
            refresh_per_second=10)
        self._task = self._bar.add_task(label, total=total)
        self._bar.start()

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done)

    def close(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
            self._bar.stop()
            self._bar = None
