"""Sizes and progress bars as the commands print them (one definition for every command)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from .options import state
from .output import err


def human(n: float | int | None) -> str:
    """Bytes in decimal units (1 MB = 10^6 bytes), as the README's figures."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[Any]:
    """A progress callback ``(phase, done, total)`` drawing a bar in bytes on a terminal; None when
    disabled, quiet or not a terminal (so scripts and --json see nothing)."""
    if not enabled or state.quiet or not err.is_terminal:
        yield None
        return
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda phase, done, total: bar.update(task, completed=done, total=total or None)  # 0: not known yet
