"""Keys and bytes on any fsspec filesystem: the only place the store touches storage.

Like zarr's Store: it deals in keys and bytes only; a missing key is ``None`` from ``get``; writes
are atomic (a temp name then rename on filesystems that rename atomically, a single PUT on object
stores); ``read_only`` refuses writes. Local disk goes through plain ``os`` calls, which are
faster than fsspec's wrappers and give us ``os.replace``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import fsspec

from .errors import ReadOnlyError

TMP_PREFIX = ".tmp-"


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

    def __repr__(self) -> str:
        return f"Backend({self.url!r}{', read_only' if self.read_only else ''})"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError(f"the object store at {self.url} is open read-only")

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        p = self._path(key)
        if self.local:
            try:
                with open(p, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return None
        try:
            return self.fs.cat_file(p)
        except FileNotFoundError:
            return None

    def get_range(self, key: str, start: int, end: int) -> bytes | None:
        p = self._path(key)
        if self.local:
            try:
                with open(p, "rb") as f:
                    f.seek(start)
                    return f.read(end - start)
            except FileNotFoundError:
                return None
        try:
            return self.fs.cat_file(p, start=start, end=end)
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        p = self._path(key)
        return os.path.exists(p) if self.local else self.fs.exists(p)

    def size(self, key: str) -> int | None:
        p = self._path(key)
        try:
            return os.path.getsize(p) if self.local else int(self.fs.size(p))
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
    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Write ``key`` atomically: readers see the old state or the whole new object, never half.

        Local writes are not fsync'd one by one (that cost a fifth of an add); ``flush`` makes
        everything written so far durable, and the store calls it before a version that names
        these objects is committed to the catalog."""
        self._check_writable()
        p = self._path(key)
        if self.local:
            d = os.path.dirname(p)
            os.makedirs(d, exist_ok=True)
            tmp = os.path.join(d, f"{TMP_PREFIX}{uuid.uuid4().hex}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.chmod(tmp, 0o444)  # objects are immutable: make accidental edits fail
                os.replace(tmp, p)
            except BaseException:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                raise
            return
        self.fs.pipe_file(p, bytes(data))

    def flush(self) -> None:
        """Make every completed ``put`` durable (one sync instead of an fsync per object)."""
        if self.local and not self.read_only:
            os.sync()

    def touch(self, key: str) -> None:
        """Mark an existing key as recently used (gc's grace period counts from its mtime)."""
        if self.read_only:
            return
        if self.local:
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
            else:
                self.fs.rm_file(p)
        except FileNotFoundError:
            pass
