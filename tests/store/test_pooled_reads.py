"""Tensor objects are read into a buffer each thread reuses (objects._read_buffer): what
get_array returns must never be a view of it, and reads through it give what Backend.get gives."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from deltastore.backend import Backend
from deltastore.errors import CorruptObjectError
from deltastore.objects import ObjectDB, key_of


def _raw(seed: int, n: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("width", [1, 2, 4])
def test_arrays_stay_whole_after_later_reads_on_the_same_thread(tmp_path: Path, width: int) -> None:
    db = ObjectDB(Backend(str(tmp_path)))
    raws = [_raw(i, (5 << 20) + 4 * i) for i in range(3)]  # past one 4 MiB chunk, sizes differ
    oids = [db.put_tensor(r, width, width > 1).oid for r in raws]
    blob = db.put_bytes(b"not a tensor" * 1000).oid
    got = [db.get_array(o, nbytes=len(r)) for o, r in zip(oids, raws)]
    other = db.get_array(blob)  # another coding through the same buffer
    for g, r in zip(got, raws):
        assert g.tobytes() == r
    assert other.tobytes() == b"not a tensor" * 1000
    got[0][:] = 0  # writable, and its own memory
    assert db.get_array(oids[0], nbytes=len(raws[0])).tobytes() == raws[0]


def test_threads_read_side_by_side(tmp_path: Path) -> None:
    db = ObjectDB(Backend(str(tmp_path)))
    raws = [_raw(10 + i, 3 << 20) for i in range(4)]
    oids = [db.put_tensor(r, 2, True).oid for r in raws]
    bad: list[int] = []

    def run(k: int) -> None:
        for _ in range(5):
            for i in range(len(raws)):
                j = (i + k) % len(raws)
                if db.get_array(oids[j], nbytes=len(raws[j])).tobytes() != raws[j]:
                    bad.append(j)

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(run, range(3)))
    assert not bad


def test_get_into_reads_what_get_reads(tmp_path: Path) -> None:
    be = Backend(str(tmp_path))
    be.put("a/b", b"x" * 100_001)
    buf = np.empty(7, dtype=np.uint8)

    def scratch(n: int) -> memoryview:
        nonlocal buf
        if buf.size < n:
            buf = np.empty(n, dtype=np.uint8)
        return memoryview(buf)

    assert bytes(be.get_into("a/b", scratch)) == be.get("a/b")
    assert be.get_into("missing", scratch) is None
    be.put("a/c", b"")
    assert bytes(be.get_into("a/c", scratch)) == b""


def test_truncated_object_is_one_clear_error(tmp_path: Path) -> None:
    be = Backend(str(tmp_path))
    db = ObjectDB(be)
    raw = _raw(3, 1 << 20)
    oid = db.put_tensor(raw, 2, True).oid
    p = tmp_path / key_of(oid)
    data = p.read_bytes()
    p.chmod(0o644)
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptObjectError):
        db.get_array(oid, nbytes=len(raw))
