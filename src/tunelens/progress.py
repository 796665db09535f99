"""Progress bars (rich) that stay quiet in CI (CI=true) and on non-main processes."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def quiet() -> bool:
    """True when progress output should be suppressed (CI=true or TUNELENS_QUIET=1)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("TUNELENS_QUIET") == "1"


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None):
        self._p, self._t = progress, task

    def advance(self, n: int = 1, **fields: object) -> None:
        if self._p is not None and self._t is not None:
            self._p.update(self._t, advance=n, **fields)

    def set(self, completed: int) -> None:
        if self._p is not None and self._t is not None:
            self._p.update(self._t, completed=completed)


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True, status: str = "") -> Iterator[_Bar]:
    """A bar with count, elapsed time, ETA and a free-form ``status`` field (``bar.advance(1, status=...)``)."""
    if not enabled or quiet():
        yield _Bar(None, None)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, transient=False) as p:
        yield _Bar(p, p.add_task(description, total=total, status=status))
