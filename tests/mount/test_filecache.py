"""The decoded-unit cache: byte cap, least recently used out first, one decode per unit however
many readers ask at once, failures not kept."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from deltastore.errors import BadInputError, CorruptObjectError
from deltastore.filecache import DecodedCache, parse_size


def unit(n: int, fill: int = 0) -> np.ndarray:
    return np.full(n, fill, dtype=np.uint8)


def test_byte_cap_and_lru_order() -> None:
    c = DecodedCache(300, prefetch_workers=0)
    for k in "abc":
        c.get(k, lambda k=k: unit(100, ord(k)))
    c.get("a", lambda: pytest.fail("a is cached"))  # a is now the most recent
    c.get("d", lambda: unit(100))  # evicts b, the least recently used
    assert "b" not in c and "a" in c and "c" in c and "d" in c
    assert c.stats.bytes_held == 300 and c.stats.evictions == 1
    big = c.get("huge", lambda: unit(1000))  # larger than the cap: handed out, not kept
    assert big.size == 1000 and "huge" not in c and c.stats.bytes_held == 300


def test_one_decode_for_concurrent_readers() -> None:
    c = DecodedCache(1 << 20, prefetch_workers=0)
    calls = []

    def slow() -> np.ndarray:
        calls.append(1)
        time.sleep(0.2)
        return unit(10, 7)

    got = []
    threads = [threading.Thread(target=lambda: got.append(c.get("k", slow))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 8 and all(g[0] == 7 for g in got)
    assert c.stats.misses == 1 and c.stats.waits + c.stats.hits == 7


def test_a_failed_decode_reaches_every_waiter_and_is_not_kept() -> None:
    c = DecodedCache(1 << 20, prefetch_workers=0)

    def bad() -> np.ndarray:
        time.sleep(0.1)
        raise CorruptObjectError("sha256:" + "0" * 64, "test")

    errors = []

    def reader() -> None:
        try:
            c.get("k", bad)
        except CorruptObjectError as e:
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4 and "k" not in c
    assert c.get("k", lambda: unit(3))[0] == 0  # the next read tries again


def test_prefetch_decodes_in_the_background() -> None:
    c = DecodedCache(1 << 20, prefetch_workers=1)
    c.prefetch("k", lambda: unit(5, 9))
    deadline = time.monotonic() + 5
    while c.stats.bytes_held == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert c.get("k", lambda: pytest.fail("prefetched"))[0] == 9
    c.close()


def test_parse_size() -> None:
    assert parse_size("4GiB") == 4 << 30 and parse_size("512MiB") == 512 << 20 and parse_size("64k") == 64 << 10
    assert parse_size("1.5G") == 3 << 29 and parse_size("100") == 100 and parse_size("0") == 0
    for bad in ("lots", "-1G", ""):
        with pytest.raises(BadInputError):
            parse_size(bad)


def test_a_superseded_prefetch_is_dropped_before_it_decodes() -> None:
    """``wanted`` is asked when the worker reaches the unit: False means nothing is computed."""
    c = DecodedCache(1 << 20, prefetch_workers=1)
    gate = threading.Event()
    c.prefetch("slow", lambda: (gate.wait(5), unit(5, 1))[1])  # holds the one worker
    keep = {"old": True}
    c.prefetch("old", lambda: pytest.fail("a dropped read-ahead was decoded"), wanted=lambda: keep["old"])
    c.prefetch("new", lambda: unit(5, 7), wanted=lambda: True)
    keep["old"] = False  # superseded while still queued
    gate.set()
    deadline = time.monotonic() + 5
    while not c.holds("new") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert c.holds("new") and not c.holds("old") and "old" not in c and c.stats.dropped == 1
    assert c.get("old", lambda: unit(5, 3))[0] == 3  # a reader still gets it, decoded then
    c.close()


def test_a_read_ahead_asked_after_close_is_dropped_quietly() -> None:
    """A FUSE read that arrives while the mount shuts down (its pool closed, or the interpreter
    exiting) may still ask for read-ahead: it is dropped, not raised into the read, and a plain
    get still decodes."""
    c = DecodedCache(1 << 20, prefetch_workers=1)
    c.close()
    c.prefetch("k", lambda: np.arange(4, dtype=np.uint8))
    assert c.stats.dropped == 1
    assert c.get("k", lambda: np.arange(4, dtype=np.uint8)).tolist() == [0, 1, 2, 3]
