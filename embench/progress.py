"""The progress callbacks long jobs report through (the CLI draws them as rich progress bars)."""

from __future__ import annotations

from collections.abc import Callable

Status = Callable[[str, int, int | None], None]  # (what is happening, done, total or None when unknown)
Counter = Callable[[int, int], None]  # (done, total) of one counted piece of work


def silent(text: str, done: int, total: int | None) -> None:
    """The status callback of a job nobody watches."""
