"""A bounded, ordered parallel map: the one way the store uses every core.

Adding and checking out a model are streams of tensors that must come out in file order (a
safetensors file is one byte stream, hashed and written front to back) but whose expensive parts
(reading, SHA-256, byte planes, zstd, codec decode) are independent and release the GIL. Each
tensor's work runs on a pool; results are handed back in input order; at most ``workers`` items
are in flight and, when the items are large, at most ``budget`` bytes of them, so peak memory is
bounded by the window (about workers x the largest tensor), never by the model.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

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


#: ops inside frozen_heap over all threads, and whether the freeze is theirs (under _LOCK)
_FROZEN: list = [0, False]


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave the objects that exist when an add or a checkout starts out of the cyclic garbage
    collector's full passes while it runs (``gc.freeze``), and hand them back after it
    (``gc.unfreeze``): nothing is lost, a collection of them is only put off until the op is done.

    A full pass walks every object the process holds (torch alone makes ~200,000) with the GIL
    held, stopping every worker; the objects an op makes (numba's import among them) set off one
    or two such passes per op, 0.15-0.35 s each on the dev VM, where the op's own objects are a
    small fraction of the heap. Ops in several threads at once: the first freezes, the last
    unfreezes. A process that froze objects itself (``gc.freeze`` before a fork, say) is left as
    it is: unfreezing would hand its objects back too. ``DELTASTORE_GC_FREEZE=0``: leave the
    collector alone."""
    if os.environ.get("DELTASTORE_GC_FREEZE", "").strip() == "0":
        yield
        return
    with _LOCK:
        _FROZEN[0] += 1
        if _FROZEN[0] == 1:
            _FROZEN[1] = gc.get_freeze_count() == 0  # ours to freeze and unfreeze
            if _FROZEN[1]:
                gc.freeze()
    try:
        yield
    finally:
        with _LOCK:
            _FROZEN[0] -= 1
            if _FROZEN[0] == 0 and _FROZEN[1]:
                gc.unfreeze()


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
                budget: int = DEFAULT_BUDGET, held: bool = True) -> Iterator[R]:
    """``fn(item)`` for each item, run ``workers`` at a time, yielded in input order.

    At most ``workers`` items are in flight, and items beyond the first stop being submitted once
    their summed ``weight`` (bytes) would pass ``budget``. ``held``: whether a finished item's
    result still holds its weight until it is yielded (a tensor handed back). Where it does not
    (``held=False``: the result is small, its bytes already written), only running items count,
    so one large item at the head of the order does not stop the others behind it: finished
    results wait their turn while new items start (with 4 workers the stage probe saw one tensor
    task run alone for a second at a time behind a large one; a mapped checkout on 16 cores went 1.69 ->
    2.22 GB/s). An exception in ``fn`` surfaces when its result is reached;
    items still in flight are then waited for (never left writing behind the caller's back) and
    dropped.
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
            while pending:
                if held:
                    if len(pending) < workers and inflight + w <= budget:
                        break
                elif pending[0][0].done() or any(f.done() and f.exception() is not None for f, _ in pending):
                    pass  # hand back what is ready first; after a failure start nothing more
                else:
                    live = [(f, fw) for f, fw in pending if not f.done()]
                    if not live or (len(live) < workers and sum(fw for _, fw in live) + w <= budget):
                        break
                    wait([f for f, _ in live], return_when=FIRST_COMPLETED)
                    continue
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


def largest_first(weights: list[int]) -> list[int]:
    """Indices of ``weights`` from the largest to the smallest (ties in input order): the order to
    start items in where the order they finish in does not matter (a window whose results hold no
    bytes, ``held=False``), so that the largest items do not come last and run alone.

    Why: each tensor has stages one thread runs (its read, its SHA-256, its base's verification, its
    object's hash). A Llama file's 250 MiB lm_head comes last in its order: in a 12-layer fine-tune
    add on the H200 machine's 16 cores it ran them with 2-4 cores busy for most of the add's last
    0.8 s (the stage timeline, scaling_h200.md). Started first, the same stages run beside the other
    tensors' work: +11-13% on both adds and the base checkout there (alternating rounds).
    The longest-processing-time-first rule of list scheduling."""
    return sorted(range(len(weights)), key=lambda i: -weights[i])


class InOrderHash:
    """SHA-256 of a byte stream whose pieces are produced out of order by workers, computed on a
    thread of its own, in order, as soon as the next piece is there.

    An add must hash each safetensors file as one stream, which no number of cores makes faster;
    hashing each tensor's bytes as soon as they are read (rather than once its encode is done)
    lets that one serial pass start with the first read and run beside every encode, so it costs
    its own time once instead of adding the first tensor's encode before it and the last tensor's
    encode after it. A caller bounds memory by waiting (:meth:`wait_through`) for each piece it
    is done with before taking more work, since the thread holds a piece until it is hashed.
    """

    def __init__(self, head: bytes = b""):
        self._hash = hashlib.sha256(head)
        self._pieces: dict[int, object] = {}
        self._next = 0
        self._closed = False
        self._error: BaseException | None = None
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="deltastore-hash", daemon=True)
        self._thread.start()

    def put(self, index: int, data: object) -> None:
        """Piece ``index`` (0, 1, 2, ... each exactly once): any buffer, hashed when its turn comes."""
        with self._cv:
            self._pieces[index] = data
            self._cv.notify_all()

    def wait_through(self, index: int) -> None:
        """Return once pieces ``0..index`` are hashed."""
        with self._cv:
            while self._next <= index and self._error is None and not self._closed:
                self._cv.wait()
            if self._error is not None:
                raise self._error

    def hexdigest(self, count: int) -> str:
        """The digest of the head and pieces ``0..count-1``, once they are hashed; ends the thread."""
        self.wait_through(count - 1)
        self.close()
        return self._hash.hexdigest()

    def close(self) -> None:
        """Stop the thread (pieces not yet hashed are dropped); safe to call more than once."""
        with self._cv:
            self._closed = True
            self._pieces.clear()
            self._cv.notify_all()
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while self._next not in self._pieces and not self._closed:
                        self._cv.wait()
                    if self._closed:
                        return
                    piece = self._pieces.pop(self._next)
                self._hash.update(piece)  # hashlib releases the GIL for large buffers
                del piece
                with self._cv:
                    self._next += 1
                    self._cv.notify_all()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
            with self._cv:
                self._error = e
                self._cv.notify_all()


class BufferPool:
    """uint8 buffers handed from one tensor to the next within one operation (an add's reads and
    base decodes), instead of a fresh allocation per tensor.

    A tensor-sized ``np.empty`` is above glibc's mmap threshold (32 MiB at most), so every one was
    a fresh mapping: a page fault and a zeroed page per 4 KiB on first touch, and an ``munmap``
    (a TLB shootdown on every core running the process's threads) when freed. An add makes two
    or three such buffers a tensor (a fine-tune: the read, the base's decode), so their cost grows
    with the threads that fault and unmap at once. The pool never holds more buffers than were in
    use at once, so memory stays within the window the caller already bounds; it is freed with the
    pool. Thread-safe."""

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, n: int) -> np.ndarray:
        """A uint8 array of exactly ``n`` bytes (contents undefined), from the smallest free buffer
        that holds it; a free buffer too small for it is dropped, so the count never grows."""
        with self._lock:  # (by index: list.remove would compare arrays element by element)
            fits = [i for i, b in enumerate(self._free) if b.size >= n]
            if fits:
                return self._free.pop(min(fits, key=lambda i: self._free[i].size))[:n]
            if self._free:
                self._free.pop(min(range(len(self._free)), key=lambda i: self._free[i].size))
        return np.empty(n, dtype=np.uint8)

    def give(self, arr: np.ndarray) -> None:
        """Hand back an array from :meth:`take` once nothing reads or writes it any more."""
        buf = arr if arr.base is None else arr.base
        if isinstance(buf, np.ndarray) and buf.dtype == np.uint8 and buf.ndim == 1:
            with self._lock:
                self._free.append(buf)
