"""A bounded, ordered parallel map: the one way the store uses every core.

Adding and checking out a model are streams of tensors that must come out in file order (a
safetensors file is one byte stream, hashed and written front to back) but whose expensive parts
(reading, SHA-256, byte planes, zstd, codec decode) are independent and release the GIL. Each
tensor's work runs on a pool; results are handed back in input order; at most ``workers`` items
are in flight and, when the items are large, at most ``budget`` bytes of them, so peak memory is
bounded by the window (about workers x the largest tensor), never by the model.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_POOLS: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()
#: default byte budget of a window: items in flight beyond the first stop here
DEFAULT_BUDGET = 1 << 30


def default_workers() -> int:
    """``DELTASTORE_THREADS`` if set, else every core the process may use."""
    env = os.environ.get("DELTASTORE_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _pool(n: int) -> ThreadPoolExecutor:
    """One long-lived pool per size: new threads per call would each get a glibc malloc arena, and
    freed tensor buffers would pile up across arenas (see codec/planes.py). Separate from the
    byte-plane pool, so a tensor task that waits on its chunks can never starve it."""
    with _LOCK:
        pool = _POOLS.get(n)
        if pool is None:
            pool = _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="deltastore-work")
        return pool


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, weight: Callable[[T], int] | None = None,
                budget: int = DEFAULT_BUDGET) -> Iterator[R]:
    """``fn(item)`` for each item, run ``workers`` at a time, yielded in input order.

    At most ``workers`` items are in flight, and items beyond the first stop being submitted once
    their summed ``weight`` (bytes) would pass ``budget``. An exception in ``fn`` surfaces when its
    result is reached; items still in flight are then waited for (never left writing behind the
    caller's back) and dropped.
    """
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    pool = _pool(workers)
    pending: deque[tuple[Future, int]] = deque()
    inflight = 0
    try:
        for item in items:
            w = weight(item) if weight is not None else 0
            while pending and (len(pending) >= workers or inflight + w > budget):
                fut, fw = pending.popleft()
                inflight -= fw
                yield fut.result()
            pending.append((pool.submit(fn, item), w))
            inflight += w
        while pending:
            fut, fw = pending.popleft()
            inflight -= fw
            yield fut.result()
    finally:
        for fut, _ in pending:
            fut.cancel()
        for fut, _ in pending:
            if not fut.cancelled():
                try:
                    fut.result()
                except BaseException:  # noqa: BLE001 - the first error already propagates
                    pass
