"""Rich progress bars for long jobs (quiet when disabled)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class _Quiet:
    def add_task(self, *_a, **_k) -> int:
        return 0

    def update(self, *_a, **_k) -> None:
        pass

    def advance(self, *_a, **_k) -> None:
        pass


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress | _Quiet]:
    """A rich Progress with description, bar, count, elapsed time and a status field."""
    if not enabled:
        yield _Quiet()
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    ) as bar:
        yield bar
