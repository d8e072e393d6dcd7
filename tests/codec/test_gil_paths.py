"""The paths that keep the GIL free on a fine-tune's add and checkout (issue 7): the chunk map's
shared claims (planes._map_chunks), a chunk's zstd frames decoded in one compiled call
(_numba.fill_frames), and a payload written as its parts (serialize.to_parts)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import zstandard
from test_lossless import finetune_of, weights

from deltastore.codec import _zstd, lossless, planes, to_bytes
from deltastore.codec.errors import CorruptPayloadError
from deltastore.codec.lossless import Lossless
from deltastore.codec.serialize import to_parts


@pytest.mark.parametrize("threads", [2, 3, 8])
@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_chunk_map_runs_each_item_once_in_order_on_several_threads(threads, n):
    seen, names = [], set()

    def work(i):
        seen.append(i)
        names.add(threading.current_thread().name)
        return i * i

    assert planes._map_chunks(work, range(n), threads) == [i * i for i in range(n)]
    assert sorted(seen) == list(range(n))


def test_chunk_map_raises_the_error_and_leaves_no_work_running():
    running, done = [0], []
    lock = threading.Lock()

    def work(i):
        with lock:
            running[0] += 1
        try:
            if i == 3:
                raise ValueError("chunk 3")
            for _ in range(2000):
                pass
            done.append(i)
        finally:
            with lock:
                running[0] -= 1

    with pytest.raises(ValueError, match="chunk 3"):
        planes._map_chunks(work, range(64), 4)
    assert running[0] == 0  # every item taken before the error finished before the caller saw it


def test_chunk_maps_nest_without_waiting_on_each_other():
    inner = lambda i: planes._map_chunks(lambda j: i * 100 + j, range(5), 3)  # noqa: E731
    assert planes._map_chunks(inner, range(6), 3) == [[i * 100 + j for j in range(5)] for i in range(6)]


def _concurrency_probe():
    """A chunk ``work`` that sleeps a little and records the most items running at once."""
    running, peak, lock = [0], [0], threading.Lock()

    def work(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            threading.Event().wait(0.01)
            return i
        finally:
            with lock:
                running[0] -= 1

    return work, peak


@pytest.mark.parametrize("all_helpers", [False, True])
def test_a_chunk_map_takes_no_helpers_while_chunk_work_holds_every_core(monkeypatch, all_helpers):
    """An add or a checkout maps each tensor's chunks on many tensor threads at once: where they
    hold every core, a map runs its items on its own thread (with ``threads - 1`` helpers each, as
    before (``DELTASTORE_CHUNK_HELPERS=all``), twice as many threads ran chunks as there were
    cores). Each item still runs once, in order; a lone map gets its helpers; every core reserved is
    given back."""
    monkeypatch.setenv("DELTASTORE_THREADS", "4")
    monkeypatch.setattr(planes, "_ALL_HELPERS", all_helpers)
    work, peak = _concurrency_probe()
    assert planes._map_chunks(work, range(12), None) == list(range(12))
    assert peak[0] >= 3  # helpers joined (items sleep 10 ms: the pool's threads start within that)
    taken = planes._CORES.reserve(4)
    try:
        assert taken == 4
        names = set()
        work, peak = _concurrency_probe()
        got = planes._map_chunks(lambda i: names.add(threading.current_thread().name) or work(i), range(12), None)
        assert got == list(range(12))
        assert (names == {threading.current_thread().name}) != all_helpers
    finally:
        planes._CORES.release(taken)
    assert planes._CORES.busy == 0


def test_a_chunk_map_started_while_the_cores_are_taken_gets_helpers_as_they_free_up(monkeypatch):
    monkeypatch.setenv("DELTASTORE_THREADS", "4")
    monkeypatch.setattr(planes, "_ALL_HELPERS", False)
    taken = planes._CORES.reserve(4)  # every core busy elsewhere
    work, peak = _concurrency_probe()
    freed = []

    def slow_then_free(i):
        if i == 1 and not freed:
            planes._CORES.release(taken)  # the other work ends while this map runs
            freed.append(True)
        return work(i)

    assert planes._map_chunks(slow_then_free, range(20), None) == list(range(20))
    assert freed and peak[0] >= 3  # helpers joined once the cores were free
    assert planes._CORES.busy == 0


needs_fill = pytest.mark.skipif(planes.fast() is None or _zstd.frame_functions() is None,
                                reason="needs numba and the system's libzstd")


@needs_fill
def test_fill_frames_decodes_what_one_frame_at_a_time_does():
    rng = np.random.default_rng(0)
    parts = [(rng.geometric(0.3, size=int(rng.integers(1, 50000))) % 256).astype(np.uint8) for _ in range(12)]
    z = zstandard.ZstdCompressor()
    payloads, table, pos, at = [], [], 0, 0
    for k, p in enumerate(parts):
        stored = k % 4 == 3
        data = p.tobytes() if stored else z.compress(p)
        table += (0 if stored else 1, pos, len(data), at, p.size)
        payloads.append(data)
        pos += len(data)
        at += p.size
    src = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    dst = np.zeros(at, dtype=np.uint8)
    fx = planes.fast()
    assert fx.fill_frames(_zstd.frame_functions(), _zstd.thread_dctx(), src, dst, table) == -1
    assert np.array_equal(dst, np.concatenate(parts))
    for row, field, value in [(2, 4, parts[2].size + 1), (5, 0, 7), (1, 1, src.size), (3, 2, parts[3].size - 1)]:
        bad = list(table)
        bad[row * 5 + field] = value
        assert fx.fill_frames(_zstd.frame_functions(), _zstd.thread_dctx(), src, dst, bad) == row


@needs_fill
def test_a_bad_frame_is_named_as_the_frame_by_frame_decode_names_it(monkeypatch):
    monkeypatch.setattr(lossless, "GROUPED_CHUNK_BYTES", 2048)
    monkeypatch.setattr(planes, "MIN_GROUP", 100)
    base = weights(torch.bfloat16, (3000,), seed=4)
    enc = Lossless().encode(finetune_of(base, ulps=30), base)
    stream = bytearray(enc.arrays["stream"].numpy().tobytes())
    info = planes.read_info(memoryview(stream))
    first = info.data_start  # the first group's first plane: a zstd frame
    assert info.groups[0][0].modes[0] == 1
    stream[first : first + 4] = b"nope"
    enc.arrays["stream"] = torch.frombuffer(stream, dtype=torch.uint8)
    with pytest.raises(CorruptPayloadError, match="frame"):
        Lossless().reconstruct(enc, base)


def test_to_parts_are_to_bytes():
    base = weights(torch.bfloat16, (5000,), seed=1)
    target = finetune_of(base, ulps=3)
    for enc in (Lossless().encode(target, base), Lossless().encode(target, None),
                Lossless(by_exponent=False).encode(target, base)):
        parts = to_parts(enc)
        assert isinstance(parts[0], bytes)
        assert b"".join(memoryview(p).cast("B") for p in parts) == to_bytes(enc)


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("seed", range(6))
def test_a_chunks_frames_are_the_same_in_one_call_or_one_by_one(width, seed, monkeypatch):
    """A grouped chunk's frames compressed in one multi_compress_to_buffer call are the frames
    ``compress`` makes one by one (stored bytes must not depend on the path), with empty groups,
    one-element groups and groups that do not compress among them."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 6000))
    grouped = rng.integers(0, int(rng.integers(1, 256)), size=(width, n), dtype=np.uint8)
    grouped[:, : n // 3] = 7  # a run that compresses well beside noise that does not
    counts = np.bincount(rng.integers(0, 256, size=n), minlength=256).astype(np.int64)
    min_group = int(rng.choice([1, 64, 4096]))
    monkeypatch.setattr(planes, "ACCEL", 0)  # the C extension's compressor, the one with the one-call path
    one_call = planes._compress_grouped_planes(grouped, counts, 3, min_group)
    monkeypatch.setattr(zstandard.ZstdCompressor, "multi_compress_to_buffer", None, raising=False)
    one_by_one = planes._compress_grouped_planes(grouped, counts, 3, min_group)
    assert [(g.context, g.n, g.modes, g.payloads) for g in one_call] == \
        [(g.context, g.n, g.modes, g.payloads) for g in one_by_one]
    assert sum(g.n for g in one_call) == n
