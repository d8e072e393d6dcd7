"""Named crash points, for the crash-safety tests: ``DELTASTORE_CRASH_AT=<point>[:<n>]`` makes
the process SIGKILL itself the n-th time (default: first) it reaches ``<point>``.

A SIGKILL, not an exception: nothing runs after it (no ``finally``, no atexit, no flush of
Python buffers), which is what a power cut or the OOM killer leaves behind. Off (one dict lookup)
unless the variable is set.
"""

from __future__ import annotations

import os
import signal
import threading

_counts: dict[str, int] = {}
_lock = threading.Lock()


def crash_point(name: str) -> None:
    spec = os.environ.get("DELTASTORE_CRASH_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        hit = _counts[name] == (int(nth) if nth else 1)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
