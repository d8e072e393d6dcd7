"""Keys and bytes on any fsspec filesystem: the only place the store touches storage.

Like zarr's Store: it deals in keys and bytes only; a missing key is ``None`` from ``get``; writes
are atomic (a temp name then rename on filesystems that rename atomically, a single PUT on object
stores); ``read_only`` refuses writes. Local disk goes through plain ``os`` calls, which are
faster than fsspec's wrappers and give us ``os.replace`` and ``fsync``.

Durability: a local object is fsynced before it is renamed to its name, so a crash never leaves
a torn file under an object's name (``put(defer=True)``, as an add writes its objects, does the
fsync and rename on a thread of its own, so the writer goes on encoding while the disk catches
up; ``flush`` waits for them); the directories that gained names are fsynced by ``flush``,
which the store calls before any catalog row names them. An object store's PUT is durable when
it returns. What a backend can do is declared in :class:`Capabilities`; the store reads those,
never the protocol name, and ``deltastore.testing.BackendTests`` checks each declaration holds.
"""

from __future__ import annotations

import collections
import os
import stat
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

import fsspec

from .config import safe_url
from .crash import crash_point
from .errors import ReadOnlyError

if TYPE_CHECKING:
    import numpy as np

TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do cheaply and safely; each flag is checked by the backend test suite.

    - ``cheap_touch``: ``touch`` refreshes a key's mtime without rewriting it (local disk; S3 has
      no such call, a copy onto itself rewrites the object).
    - ``conditional_put``: ``put_if_absent`` is atomic: of two racing writers exactly one wins
      (local: ``link``; S3: ``If-None-Match: *``, which AWS and SeaweedFS honour).
    - ``ranged_get``: ``get_range`` reads only the bytes asked for.
    - ``atomic_rename``: a written temp file is renamed into place; leftovers are ``.tmp-`` keys.
    - ``torn_possible``: an object under its final name may be torn after a crash of the machine
      (a file system: only as good as its fsyncs and its disk); an object store's PUT is all or
      nothing. The store checks the frame of a dedup hit where this holds.
    """

    cheap_touch: bool
    conditional_put: bool
    ranged_get: bool
    atomic_rename: bool
    torn_possible: bool


LOCAL = Capabilities(cheap_touch=True, conditional_put=True, ranged_get=True, atomic_rename=True, torn_possible=True)
#: protocols whose PUT is all-or-nothing and honours If-None-Match (s3fs passes it through)
OBJECT_STORE = Capabilities(cheap_touch=False, conditional_put=True, ranged_get=True, atomic_rename=False, torn_possible=False)
OTHER = Capabilities(cheap_touch=False, conditional_put=False, ranged_get=True, atomic_rename=False, torn_possible=False)


def open_nonblocking(path: str) -> tuple[BinaryIO, os.stat_result] | None:
    """``path`` opened for reading without blocking, with its ``fstat``; None if there is nothing
    there. Why not ``open``: a FIFO planted under a record's or an object's name made it wait
    forever for a writer (gc hung on one in the catalog folder). The caller decides what a
    non-file is (:func:`_open_regular`: missing; a transfer's bounded read: refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return os.fdopen(fd, "rb"), os.fstat(fd)


class Unreadable(Exception):
    """A key that holds more than it may, or that is not a plain file (a FIFO, a device): reading
    it whole would exhaust memory, block, or never end. Callers turn it into their own error."""


def _open_regular(path: str) -> BinaryIO | None:
    """``path`` opened for reading if it is a plain file, else None, as for a missing key (what
    ``exists`` says: ``os.path.isfile``): a directory, FIFO or device is no object."""
    got = open_nonblocking(path)
    if got is None:
        return None
    f, st = got
    if not stat.S_ISREG(st.st_mode):
        f.close()
        return None
    return f


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, m: memoryview) -> None:
    while m.nbytes:  # os.write releases the GIL; a short write (a signal, a pipe) goes on
        m = m[os.write(fd, m) :]


class _Syncer:
    """Deferred puts' fsync + rename, one at a time in submission order, on a thread that runs
    while there is work (it ends when the queue is empty; the next submit starts another).

    ``wait`` returns once everything submitted so far is renamed, and raises the first error any
    of them met (that object's temp file is removed; the caller's flush, and so its commit,
    fails). It holds paths only, never data: the bytes are in the page cache already."""

    def __init__(self, work):  # noqa: ANN001 - Backend._make_durable
        self._work = work
        self._cv = threading.Condition()
        self._queue: collections.deque[tuple[str, str]] = collections.deque()
        self._running = False
        self._error: BaseException | None = None

    def submit(self, tmp: str, p: str) -> None:
        with self._cv:
            self._queue.append((tmp, p))
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="deltastore-sync", daemon=True).start()

    def wait(self) -> None:
        with self._cv:
            while self._running:
                self._cv.wait()
            err, self._error = self._error, None
        if err is not None:
            raise err

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._queue:
                    self._running = False
                    self._cv.notify_all()
                    return
                tmp, p = self._queue.popleft()
            try:
                self._work(tmp, p)
            except BaseException as e:  # noqa: BLE001 - handed to the next wait()
                with self._cv:
                    if self._error is None:
                        self._error = e


class Backend:
    """A key -> bytes store rooted at a URL (a directory path or any fsspec URL)."""

    def __init__(self, url: str, *, read_only: bool = False, storage_options: dict | None = None):
        self.url = url
        self.read_only = read_only
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.fs = fs
        self.root = root.rstrip("/")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.local = protocol in ("file", "local")
        if self.local:
            self.root = str(Path(self.root).absolute())
            self.capabilities = LOCAL
        else:
            self.capabilities = OBJECT_STORE if protocol in ("s3", "s3a") else OTHER
        self._dirty_dirs: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._syncer: _Syncer | None = None  # started by the first put(defer=True)

    def __repr__(self) -> str:
        # a URL may carry credentials (s3://KEY:SECRET@bucket, ?secret_key=...): never show them
        return f"Backend({safe_url(self.url)!r}{', read_only' if self.read_only else ''})"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError(f"the object store at {self.url} is open read-only")

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: str, max_bytes: int | None = None) -> bytes | None:
        """A key's bytes; None if it is missing (or, on disk, not a plain file). ``max_bytes``: a key
        that holds more raises :class:`Unreadable`, found from its size on disk before anything is
        read, on S3 by a ranged GET of one byte more: a sparse terabyte named like an object or a
        lease marker in a shared folder was read to its end (or failed with MemoryError)."""
        crash_point("backend.get")
        p = self._path(key)
        if self.local:
            f = _open_regular(p)
            if f is None:
                return None
            with f:
                if max_bytes is not None and (size := os.fstat(f.fileno()).st_size) > max_bytes:
                    raise Unreadable(f"{key} holds {size} bytes, more than the {max_bytes} it may")
                return f.read()
        if max_bytes is not None:
            data = self.get_range(key, 0, max_bytes + 1)
            if data is not None and len(data) > max_bytes:
                raise Unreadable(f"{key} holds more than the {max_bytes} bytes it may")
            return data
        try:
            return self.fs.cat_file(p)
        except FileNotFoundError:
            return None

    def get_into(self, key: str, take: Callable[[int], np.ndarray], max_bytes: int | None = None) -> np.ndarray | bytes | None:
        """:meth:`get` (``max_bytes`` as there, refused before ``take`` is asked), on a local store
        into ``take(size)`` (a uint8 array of the file's size, e.g. a buffer reused from one object
        to the next: ``pipeline.BufferPool.take``), returned cut to what was read; elsewhere what
        :meth:`get` returns. Why: a large object read into a fresh
        ``bytes`` is a fresh mapping, a zeroed page per 4 KiB faulted in and torn down again, with
        the GIL held for the teardown; a fine-tune's add reads every changed tensor's base object.
        On the H200 machine's 16 cores that read cost 0.48 CPU-s a GB of fine-tune (0.44 of it
        system time, 133k page faults a GB) into new ``bytes``, 0.18 into the add's pool (issue 7,
        scaling_h200.md, fourteenth session)."""
        if not self.local:
            return self.get(key, max_bytes)
        crash_point("backend.get")
        f = _open_regular(self._path(key))
        if f is None:
            return None
        with f:
            size = os.fstat(f.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise Unreadable(f"{key} holds {size} bytes, more than the {max_bytes} it may")
            buf = take(size)
            view, done = memoryview(buf), 0
            while done < size:
                n = f.readinto(view[done:])  # the GIL released while the kernel copies
                if not n:
                    break  # shorter than it was (objects are never rewritten: a damaged store)
                done += n
        return buf[:done]

    def get_range(self, key: str, start: int, end: int) -> bytes | None:
        """Bytes ``[start, end)`` (fewer past the end of the object; empty for an empty range);
        None if the key is missing."""
        p = self._path(key)
        if end <= start:
            return b"" if self.exists(key) else None
        if self.local:
            f = _open_regular(p)
            if f is None:
                return None
            with f:
                f.seek(start)
                return f.read(end - start)
        try:
            return self.fs.cat_file(p, start=start, end=end)
        except FileNotFoundError:
            return None
        except OSError as e:  # S3 answers 416 for a range that starts past the end
            if "not satisfiable" in str(e) or "InvalidRange" in str(e):
                return b"" if self.exists(key) else None
            raise

    def exists(self, key: str) -> bool:
        p = self._path(key)
        return os.path.isfile(p) if self.local else self.fs.exists(p)

    def size(self, key: str) -> int | None:
        p = self._path(key)
        try:
            if self.local:
                return os.path.getsize(p) if os.path.isfile(p) else None
            return int(self.fs.size(p))
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix`` (a folder), temp files included."""
        base = self._path(prefix).rstrip("/")
        if self.local:
            if not os.path.isdir(base):
                return
            for dirpath, _, files in os.walk(base):
                rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
                for fn in files:
                    yield f"{rel}/{fn}"
            return
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return
        for p in found:
            yield p[len(self.root) + 1 :]

    def mtime(self, key: str) -> float | None:
        p = self._path(key)
        try:
            if self.local:
                return os.path.getmtime(p)
            info = self.fs.info(p)
            m = info.get("LastModified") or info.get("mtime") or info.get("created")
            return m.timestamp() if hasattr(m, "timestamp") else (float(m) if m is not None else None)
        except FileNotFoundError:
            return None

    # -- writes --------------------------------------------------------------------------------
    def _write_temp(self, p: str, data: bytes | bytearray | memoryview | list, *, durable: bool = True) -> str:
        """A temp file beside ``p``, written (``data``: one buffer, or a list of buffers written
        in turn, so a caller need not join its parts into one copy first); with ``durable``,
        also fsynced and made read-only (else :meth:`_make_durable` does that later)."""
        d = os.path.dirname(p)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f"{TMP_PREFIX}{uuid.uuid4().hex}")
        parts = [memoryview(b).cast("B") for b in data] if isinstance(data, list) else [memoryview(data).cast("B")]
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                crash_point("backend.put.open")
                total = sum(m.nbytes for m in parts)
                half, done = total // 2, 0
                for m in parts:  # the crash point halfway through the bytes, wherever that falls
                    if done <= half < done + m.nbytes:
                        _write_all(fd, m[: half - done])
                        crash_point("backend.put.half-written")
                        _write_all(fd, m[half - done :])
                    else:
                        _write_all(fd, m)
                    done += m.nbytes
                if durable:
                    crash_point("backend.put.before-fsync")
                    os.fsync(fd)
            finally:
                os.close(fd)
            if durable:
                os.chmod(tmp, 0o444)  # objects are immutable: make accidental edits fail
        except BaseException:
            self._unlink_quiet(tmp)
            raise
        if durable:
            crash_point("backend.put.before-rename")
        return tmp

    def _make_durable(self, tmp: str, p: str) -> None:
        """What ``put`` does after writing, for a deferred put: fsync, read-only, rename."""
        try:
            crash_point("backend.put.before-fsync")
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, 0o444)
            crash_point("backend.put.before-rename")
        except BaseException:
            self._unlink_quiet(tmp)
            raise
        self._rename_in(tmp, p)

    def _rename_in(self, tmp: str, p: str) -> None:
        """A durable temp file to its name; the directory is synced by ``flush``."""
        try:
            os.replace(tmp, p)
        except BaseException:
            self._unlink_quiet(tmp)
            raise
        with self._dirty_lock:
            self._dirty_dirs.add(os.path.dirname(p))
        crash_point("backend.put.after-rename")

    @staticmethod
    def _unlink_quiet(p: str) -> None:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass

    def put(self, key: str, data: bytes | bytearray | memoryview | list, *, defer: bool = False) -> None:
        """Write ``key`` atomically: readers see the old state or the whole new object, never half.
        ``data``: one buffer, or a list of buffers that make the object in turn.

        Local: the data is fsynced before the rename, so the name never points at a torn file;
        the directory entry is made durable by ``flush``. Object stores: one PUT.

        ``defer`` (local only; elsewhere ignored): return once the bytes are written, leaving the
        fsync and rename to a thread of this backend, in the same order; the key may not exist
        until :meth:`flush` returns, which waits for them (and raises what they met). An add's
        workers write this way: a worker no longer sits in ``fsync`` while there is encoding to do,
        so the disk's time overlaps the cores' instead of adding to it."""
        self._check_writable()
        p = self._path(key)
        if self.local and defer:
            tmp = self._write_temp(p, data, durable=False)
            with self._dirty_lock:
                if self._syncer is None:
                    self._syncer = _Syncer(self._make_durable)
                syncer = self._syncer
            syncer.submit(tmp, p)
            return
        if isinstance(data, list):
            data = b"".join(memoryview(b).cast("B") for b in data) if not self.local else data
        if self.local:
            self._rename_in(self._write_temp(p, data), p)
            return
        self._remote_put(p, bytes(data))

    def _remote_put(self, p: str, data: bytes, **kw: object) -> None:
        if os.environ.get("DELTASTORE_CRASH_AT", "").partition(":")[0] == "backend.put.in-flight":
            # the upload runs in a thread; the process dies while it is on the wire
            failed: list[BaseException] = []

            def upload() -> None:
                try:
                    self.fs.pipe_file(p, data, **kw)
                except BaseException as e:  # noqa: BLE001 - handed to the caller below
                    failed.append(e)

            t = threading.Thread(target=upload, daemon=True)
            t.start()
            time.sleep(0.002)
            crash_point("backend.put.in-flight")
            t.join()
            if failed:
                raise failed[0]
        else:
            self.fs.pipe_file(p, data, **kw)
        crash_point("backend.put.after-rename")

    def put_if_absent(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        """Write ``key`` only if no such key exists; True if this call wrote it. Atomic where
        ``capabilities.conditional_put`` holds: of racing writers exactly one gets True."""
        self._check_writable()
        p = self._path(key)
        if self.local:
            tmp = self._write_temp(p, data)
            try:
                os.link(tmp, p)
            except FileExistsError:
                return False
            finally:
                self._unlink_quiet(tmp)
            with self._dirty_lock:
                self._dirty_dirs.add(os.path.dirname(p))
            return True
        if not self.capabilities.conditional_put:
            raise NotImplementedError(f"{self.url}: this backend has no conditional put")
        try:
            self._remote_put(p, bytes(data), mode="create")
        except (FileExistsError, OSError) as e:
            if isinstance(e, FileExistsError) or "PreconditionFailed" in str(e) or "pre-condition" in str(e) or "412" in str(e):
                return False
            raise
        return True

    def flush(self) -> None:
        """Make every completed ``put`` durable: fsync the directories that gained names (the
        files themselves were fsynced before their rename). Object stores: nothing to do."""
        if not self.local or self.read_only:
            return
        syncer = self._syncer
        if syncer is not None:
            syncer.wait()  # deferred puts first: their renames add the directories to sync
        with self._dirty_lock:
            dirs, self._dirty_dirs = self._dirty_dirs, set()
        crash_point("backend.flush")
        for d in sorted(dirs):
            try:
                _fsync_dir(d)
            except FileNotFoundError:
                pass

    def touch(self, key: str) -> None:
        """Refresh a key's mtime where that is cheap (``capabilities.cheap_touch``); else nothing."""
        if self.read_only or not self.capabilities.cheap_touch:
            return
        try:
            os.utime(self._path(key))
        except FileNotFoundError:
            pass

    def delete(self, key: str) -> None:
        self._check_writable()
        p = self._path(key)
        try:
            if self.local:
                os.unlink(p)
                with self._dirty_lock:
                    self._dirty_dirs.add(os.path.dirname(p))
            else:
                self.fs.rm_file(p)
        except FileNotFoundError:
            pass
