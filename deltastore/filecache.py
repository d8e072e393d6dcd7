"""One LRU of decoded bytes with a byte cap, shared by every file a mount or fsspec filesystem has
open.

Version files are computed on read, and the kernel asks a FUSE server for 128 KiB to 1 MiB at a
time: decoding per request would decode each tensor dozens of times. Readers instead ask for whole
*units* (a header, a tensor or a tensor-aligned segment of one, see ``fileview``), and this cache
keeps the decoded units, least recently used out first, up to ``cap_bytes``. A unit is computed
once however many readers want it at the same moment (single flight: eight ranks loading one
checkpoint decode each unit once); a unit that fails to decode is not kept, so the next read tries
again and fails the same way. ``prefetch`` decodes a unit in the background (read-ahead for
sequential readers) without holding anyone up.

Memory: what the cache holds stays under ``cap_bytes``; on top of it sit the units being decoded
(one per reading thread plus the read-ahead workers) and the units readers are still copying from.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np

from .errors import BadInputError

log = logging.getLogger("deltastore.filecache")

Loader = Callable[[], np.ndarray]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0  # units decoded
    waits: int = 0  # readers that waited for another reader's decode of the same unit
    evictions: int = 0
    bytes_held: int = 0
    errors: int = 0
    dropped: int = 0  # read-aheads superseded before a worker reached them


class _Flight:
    """One unit being computed; waiters block on ``done``."""

    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: np.ndarray | None = None
        self.error: BaseException | None = None


class DecodedCache:
    """Decoded units by key, least recently used evicted first, at most ``cap_bytes`` held."""

    def __init__(self, cap_bytes: int, *, prefetch_workers: int = 1):
        if cap_bytes < 0:
            raise ValueError("cache size must be >= 0")
        self.cap_bytes = int(cap_bytes)
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()
        self.stats = CacheStats()
        self._pool = ThreadPoolExecutor(max(1, prefetch_workers), thread_name_prefix="deltastore-readahead") if prefetch_workers else None

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items or key in self._flights

    def holds(self, key: Hashable) -> bool:
        """Decoded and kept (``in`` also counts a unit still on its way)."""
        with self._lock:
            return key in self._items

    def get(self, key: Hashable, load: Loader) -> np.ndarray:
        """The unit ``key``, from the cache or computed once by ``load`` (others wait for it)."""
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
                self.stats.hits += 1
                return arr
            flight = self._flights.get(key)
            owner = flight is None
            if owner:
                flight = self._flights[key] = _Flight()
                self.stats.misses += 1
            else:
                self.stats.waits += 1
        if not owner:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            arr = load()
        except BaseException as e:
            flight.error = e
            with self._lock:
                self._flights.pop(key, None)
                self.stats.errors += 1
            flight.done.set()
            raise
        flight.value = arr
        with self._lock:
            self._flights.pop(key, None)
            self._insert(key, arr)
        flight.done.set()
        return arr

    def put(self, key: Hashable, arr: np.ndarray) -> None:
        """Keep a unit computed elsewhere (a verification pass that decoded it anyway)."""
        with self._lock:
            if key not in self._items:
                self._insert(key, arr)

    def prefetch(self, key: Hashable, load: Loader, *, wanted: Callable[[], bool] | None = None) -> None:
        """Start computing ``key`` in the background unless it is held or on its way. ``wanted``,
        asked when the worker reaches it, can drop it first (a read-ahead a newer one superseded:
        nothing is computed and no reader can be waiting on it, as no flight was made)."""
        if self._pool is None or self.cap_bytes == 0:
            return
        with self._lock:
            if key in self._items or key in self._flights:
                return

        def run() -> None:
            if wanted is not None and not wanted():
                self.stats.dropped += 1
                return
            try:
                self.get(key, load)
            except Exception as e:  # the reader that needs it will get the error itself
                log.debug("read-ahead of %s failed: %s", key, e)

        try:
            self._pool.submit(run)
        except RuntimeError:  # the pool is shut down (closed, or the interpreter is exiting): read-ahead is optional
            self.stats.dropped += 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.stats.bytes_held = 0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.clear()

    def _insert(self, key: Hashable, arr: np.ndarray) -> None:  # under the lock
        n = arr.nbytes
        if n > self.cap_bytes:
            return  # larger than the whole cache: the caller uses it once
        old = self._items.pop(key, None)
        if old is not None:
            self.stats.bytes_held -= old.nbytes
        while self._items and self.stats.bytes_held + n > self.cap_bytes:
            _, ev = self._items.popitem(last=False)
            self.stats.bytes_held -= ev.nbytes
            self.stats.evictions += 1
        self._items[key] = arr
        self.stats.bytes_held += n


def parse_size(text: str | int) -> int:
    """``4GiB``, ``512MiB``, ``1.5G``, ``100000`` -> bytes (K/M/G/T are powers of 1024 here too)."""
    if isinstance(text, int):
        return text
    t = text.strip().lower().replace(" ", "")
    for suffix in ("ib", "b"):
        if t.endswith(suffix) and t[: -len(suffix)][-1:].isalpha():
            t = t[: -len(suffix)]
            break
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    scale = 1
    if t and t[-1] in mult:
        scale, t = mult[t[-1]], t[:-1]
    elif t.endswith("b"):
        t = t[:-1]
    try:
        value = float(t)
    except ValueError:
        raise BadInputError(f"not a size: {text!r} (try 4GiB, 512MiB, 0)") from None
    if value < 0:
        raise BadInputError(f"not a size: {text!r} (negative)")
    return int(value * scale)
