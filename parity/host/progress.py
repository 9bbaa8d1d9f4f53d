"""Progress that works with and without a terminal.

On a terminal a rich status line is redrawn in place. Anywhere else (a CI log, a pipe, `scripts/demo.sh | tee`) a
status line draws nothing, so every new message becomes one plain line with the seconds elapsed since the command's
step started, e.g. `[  42.0s] sam-tiny-random: building environment sam ...`. Messages go to stderr; stdout keeps
only results (tables, paths, JSON).
"""

from __future__ import annotations

import re
import time
from types import TracebackType

from rich.console import Console
from rich.markup import escape

PLAIN_LINE = re.compile(r"^\[\s*\d+\.\ds\] ")
"""How a plain progress line starts (tests and log readers tell progress from results and errors by it)."""


class StepProgress:
    """One progress display for one step of a command: `with StepProgress(console, "sam-tiny-random") as progress:
    ... progress.update(message)`; `progress.update` is the `on_progress` callback the pipeline takes.

    `prefix` (a variant id) starts every message; `announce` is shown at once (plain mode prints it as the first line;
    without it plain mode stays silent until the first message, so an immediate one-line error stays alone)."""

    def __init__(self, console: Console, prefix: str | None = None, announce: str | None = None):
        self.console = console
        self.prefix = f"{prefix}: " if prefix else ""
        self.started = time.perf_counter()
        self.last: str | None = None
        self._status = console.status(escape(self.prefix + (announce or "starting"))) if console.is_terminal else None
        if announce and self._status is None:
            self.update(announce)

    def __enter__(self) -> StepProgress:
        if self._status is not None:
            self._status.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._status is not None:
            self._status.__exit__(kind, exc, tb)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def update(self, message: str) -> None:
        message = self.prefix + message
        if message == self.last:
            return
        self.last = message
        if self._status is not None:
            self._status.update(f"{escape(message)} [dim]({self.elapsed():.0f}s)[/]")
        else:
            self.console.print(f"[{self.elapsed():6.1f}s] {message}", markup=False, highlight=False, soft_wrap=True)
