"""What the store relies on from an object backend, as one pytest suite every backend passes.

Subclass :class:`BackendTests` and provide a ``backend`` fixture (an empty, writable
:class:`~deltastore.backend.Backend`); override :meth:`BackendTests.reopen` if a second handle
on the same store needs more than its URL. Tests of a capability a backend does not declare
(``backend.capabilities``) are skipped, and each declared capability is checked to hold::

    class TestMyBackend(BackendTests):
        @pytest.fixture
        def backend(self, tmp_path):
            return Backend(f"myfs://bucket/{tmp_path.name}")
"""

from __future__ import annotations

import threading
import time

import pytest

from ..backend import TMP_PREFIX, Backend, Unreadable
from ..errors import ReadOnlyError

BIG = 3 << 20  # large enough that a write takes more than one system call or request part


def _payload(n: int, seed: int) -> bytes:
    return bytes((i * 131 + seed * 7) & 0xFF for i in range(256)) * (n // 256) + bytes(n % 256)


class BackendTests:
    """Keys and bytes: missing is None, writes are whole, reads are exact, read-only refuses."""

    def reopen(self, backend: Backend, *, read_only: bool = False) -> Backend:
        """A second handle on the same store (another process would open it this way)."""
        return Backend(backend.url, read_only=read_only)

    # -- basic contract ------------------------------------------------------------------------
    def test_missing_is_none(self, backend: Backend) -> None:
        assert backend.get("objects/aa/missing") is None
        assert backend.get_range("objects/aa/missing", 0, 4) is None
        assert not backend.exists("objects/aa/missing")
        assert backend.size("objects/aa/missing") is None
        assert backend.mtime("objects/aa/missing") is None
        assert list(backend.list("nothing-here")) == []

    def test_put_get_exists_size(self, backend: Backend) -> None:
        backend.put("objects/aa/one", b"\x00\x01payload")
        assert backend.get("objects/aa/one") == b"\x00\x01payload"
        assert backend.exists("objects/aa/one")
        assert backend.size("objects/aa/one") == 9
        assert backend.get_range("objects/aa/one", 2, 5) == b"pay"

    def test_every_byte_value_and_empty(self, backend: Backend) -> None:
        data = bytes(range(256)) * 3
        backend.put("objects/ab/bytes", data)
        backend.put("objects/ab/empty", b"")
        assert backend.get("objects/ab/bytes") == data
        assert backend.get("objects/ab/empty") == b""
        assert backend.size("objects/ab/empty") == 0

    def test_a_bounded_get_refuses_a_key_that_holds_more(self, backend: Backend) -> None:
        """``get(key, max_bytes=n)``: the whole value where it holds at most n bytes; ``Unreadable``
        where it holds more (found on disk from its size, on S3 from a ranged read of n + 1 bytes);
        an empty value is empty; a missing key None."""
        data = _payload(BIG, 3)
        backend.put("objects/ad/big", memoryview(data))
        backend.put("objects/ad/empty", b"")
        assert backend.get("objects/ad/big", max_bytes=len(data)) == data
        assert backend.get("objects/ad/big", max_bytes=len(data) + 100) == data
        for n in (len(data) - 1, 1000, 0):
            with pytest.raises(Unreadable, match="more than"):
                backend.get("objects/ad/big", max_bytes=n)
        assert backend.get("objects/ad/empty", max_bytes=10) == b""
        assert backend.get("objects/ad/missing", max_bytes=10) is None

    def test_big_object_and_ranges(self, backend: Backend) -> None:
        data = _payload(BIG, 1)
        backend.put("objects/ac/big", memoryview(data))
        assert backend.size("objects/ac/big") == len(data)
        assert backend.get("objects/ac/big") == data
        for a, b in ((0, 1), (BIG - 7, BIG), (12345, 2 << 20), (BIG // 2, BIG // 2)):
            assert backend.get_range("objects/ac/big", a, b) == data[a:b]

    def test_overwrite_is_whole(self, backend: Backend) -> None:
        backend.put("objects/bb/x", b"a" * 1000)
        backend.put("objects/bb/x", b"b" * 10)
        assert backend.get("objects/bb/x") == b"b" * 10

    def test_list_and_delete(self, backend: Backend) -> None:
        for k in ("objects/cc/1", "objects/cc/2", "objects/dd/3", "catalog/versions/m/v1.json"):
            backend.put(k, b"x")
        assert {"objects/cc/1", "objects/cc/2", "objects/dd/3"} == {k for k in backend.list("objects")
                                                                     if not k.rsplit("/", 1)[-1].startswith(TMP_PREFIX)}
        assert list(backend.list("catalog/versions")) == ["catalog/versions/m/v1.json"]
        backend.delete("objects/cc/1")
        backend.delete("objects/cc/1")  # deleting what is gone is fine
        assert not backend.exists("objects/cc/1")
        assert backend.mtime("objects/cc/2") is not None

    def test_read_only_refuses_writes(self, backend: Backend) -> None:
        backend.put("objects/ee/1", b"x")
        ro = self.reopen(backend, read_only=True)
        assert ro.get("objects/ee/1") == b"x"
        with pytest.raises(ReadOnlyError):
            ro.put("objects/ee/2", b"y")
        with pytest.raises(ReadOnlyError):
            ro.delete("objects/ee/1")
        with pytest.raises(ReadOnlyError):
            ro.put_if_absent("objects/ee/3", b"z")
        assert ro.get("objects/ee/1") == b"x" and not ro.exists("objects/ee/2")

    def test_seen_by_another_handle_after_flush(self, backend: Backend) -> None:
        backend.put("objects/ef/1", b"durable")
        backend.flush()
        assert self.reopen(backend).get("objects/ef/1") == b"durable"

    # -- atomicity -----------------------------------------------------------------------------
    def test_readers_never_see_half_an_object(self, backend: Backend) -> None:
        """Writes are all or nothing: a reader racing two writers sees one whole version."""
        a, b = _payload(BIG, 2), _payload(BIG, 3)
        backend.put("objects/ff/race", a)
        stop = threading.Event()
        seen: list[bool] = []

        def read() -> None:
            other = self.reopen(backend)
            while not stop.is_set():
                got = other.get("objects/ff/race")
                seen.append(got in (a, b))

        t = threading.Thread(target=read)
        t.start()
        try:
            for i in range(6):
                backend.put("objects/ff/race", b if i % 2 == 0 else a)
        finally:
            stop.set()
            t.join()
        assert seen and all(seen)

    # -- declared capabilities -----------------------------------------------------------------
    def test_conditional_put(self, backend: Backend) -> None:
        if not backend.capabilities.conditional_put:
            pytest.skip("backend declares no conditional put")
        assert backend.put_if_absent("objects/gg/once", b"first")
        assert not backend.put_if_absent("objects/gg/once", b"second")
        assert backend.get("objects/gg/once") == b"first"

    def test_conditional_put_has_one_winner(self, backend: Backend) -> None:
        if not backend.capabilities.conditional_put:
            pytest.skip("backend declares no conditional put")
        wins: list[int] = []
        barrier = threading.Barrier(6)

        def race(i: int) -> None:
            h = self.reopen(backend)
            barrier.wait()
            if h.put_if_absent("objects/gh/race", f"writer {i}".encode()):
                wins.append(i)

        ts = [threading.Thread(target=race, args=(i,)) for i in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(wins) == 1
        assert backend.get("objects/gh/race") == f"writer {wins[0]}".encode()

    def test_cheap_touch(self, backend: Backend) -> None:
        if not backend.capabilities.cheap_touch:
            pytest.skip("backend declares no cheap touch")
        backend.put("objects/hh/t", b"content")
        m0 = backend.mtime("objects/hh/t")
        time.sleep(0.05)
        backend.touch("objects/hh/t")
        assert backend.mtime("objects/hh/t") > m0
        assert backend.get("objects/hh/t") == b"content"

    def test_atomic_rename_leaves_no_temp_files(self, backend: Backend) -> None:
        if not backend.capabilities.atomic_rename:
            pytest.skip("backend writes in one request")
        backend.put("objects/ii/1", b"x" * 100)
        backend.put_if_absent("objects/ii/2", b"y")
        backend.put_if_absent("objects/ii/2", b"z")
        assert sorted(backend.list("objects/ii")) == ["objects/ii/1", "objects/ii/2"]

    def test_ranged_get_reads_only_the_range(self, backend: Backend) -> None:
        if not backend.capabilities.ranged_get:
            pytest.skip("backend declares no ranged get")
        data = _payload(BIG, 4)
        backend.put("objects/jj/r", data)
        assert backend.get_range("objects/jj/r", BIG - 3, BIG + 100) == data[BIG - 3 :]  # past the end: what is there
