"""Keys and bytes on any fsspec filesystem: the only place the store touches storage.

Like zarr's Store: it deals in keys and bytes only; a missing key is ``None`` from ``get``; writes
are atomic (a temp name then rename on filesystems that rename atomically, a single PUT on object
stores); ``read_only`` refuses writes. Local disk goes through plain ``os`` calls, which are
faster than fsspec's wrappers and give us ``os.replace`` and ``fsync``.

Durability: a local object is fsynced before it is renamed to its name, so a crash never leaves
a torn file under an object's name; the directories that gained names are fsynced by ``flush``,
which the store calls before any catalog row names them. An object store's PUT is durable when
it returns. What a backend can do is declared in :class:`Capabilities`; the store reads those,
never the protocol name, and ``deltastore.testing.BackendTests`` checks each declaration holds.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import fsspec

from .config import safe_url
from .crash import crash_point
from .errors import ReadOnlyError

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


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    def __repr__(self) -> str:
        # a URL may carry credentials (s3://KEY:SECRET@bucket, ?secret_key=...): never show them
        return f"Backend({safe_url(self.url)!r}{', read_only' if self.read_only else ''})"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError(f"the object store at {self.url} is open read-only")

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        crash_point("backend.get")
        p = self._path(key)
        if self.local:
            try:
                with open(p, "rb") as f:
                    return f.read()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
        try:
            return self.fs.cat_file(p)
        except FileNotFoundError:
            return None

    def get_range(self, key: str, start: int, end: int) -> bytes | None:
        """Bytes ``[start, end)`` (fewer past the end of the object; empty for an empty range);
        None if the key is missing."""
        p = self._path(key)
        if end <= start:
            return b"" if self.exists(key) else None
        if self.local:
            try:
                with open(p, "rb") as f:
                    f.seek(start)
                    return f.read(end - start)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
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
    def _write_temp(self, p: str, data: bytes | bytearray | memoryview) -> str:
        """A durable temp file beside ``p``: written, fsynced and made read-only."""
        d = os.path.dirname(p)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f"{TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                crash_point("backend.put.open")
                mv = memoryview(data)
                half = len(mv) // 2
                f.write(mv[:half])
                f.flush()
                crash_point("backend.put.half-written")
                f.write(mv[half:])
                f.flush()
                crash_point("backend.put.before-fsync")
                os.fsync(f.fileno())
            os.chmod(tmp, 0o444)  # objects are immutable: make accidental edits fail
        except BaseException:
            self._unlink_quiet(tmp)
            raise
        crash_point("backend.put.before-rename")
        return tmp

    @staticmethod
    def _unlink_quiet(p: str) -> None:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Write ``key`` atomically: readers see the old state or the whole new object, never half.

        Local: the data is fsynced before the rename, so the name never points at a torn file;
        the directory entry is made durable by ``flush``. Object stores: one PUT."""
        self._check_writable()
        p = self._path(key)
        if self.local:
            tmp = self._write_temp(p, data)
            try:
                os.replace(tmp, p)
            except BaseException:
                self._unlink_quiet(tmp)
                raise
            with self._dirty_lock:
                self._dirty_dirs.add(os.path.dirname(p))
            crash_point("backend.put.after-rename")
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
