"""FUSE passthrough for the mount: warm reads served from a local copy's page cache.

Why: Linux 6.18 caches FUSE files in 4 KiB folios whatever the server asks, so a warm read through
the mount copies in 4 KiB pieces and costs 55-72% of a local read per CPU second
(benchmarks/results/mount_amd-epyc-2c.md). With passthrough the server answers OPEN with a
*backing file* and the kernel reads that file's own page cache (ext4: 2 MiB folios) without asking
the server again: 98-101% of local in benchmarks/probe_fuse_passthrough.py.

On by default wherever it can work (``deltastore mount`` without ``--passthrough``, which is
``auto``): the copies then go to :func:`default_dir`, capped by :func:`default_cap`. Each mount's
copies are a folder of their own, removed at unmount; the folder of a mount killed before that is
removed by the next mount that uses the same place (:func:`remove_orphans`).

How the mount uses it: once a version file has been read through the mount to its end (cold, by the
ordinary FUSE path), its bytes are written from the mount's decoded cache to a *spill* file in a
local directory (checked against the file's sha256 where the version is exact and its add recorded
one: the decoded tensors it is written from were checked against theirs already; then renamed into
place). Later opens of that file answer with the spill file's backing id. The spill directory is a
cache with a byte cap: the least recently opened copies that no handle uses are removed to make
room, and the whole directory at unmount. Its disk is not the store's: the store still holds only
the base and the deltas.

What it needs, checked by :func:`missing`: libfuse >= 3.17 (the first whose INIT and OPEN carry
passthrough; Debian 12 ships 3.14: point ``FUSE_LIBRARY_PATH`` at a newer libfuse3.so), a kernel
with FUSE passthrough, and CAP_SYS_ADMIN (the backing-id ioctl). Kernel rules the mount keeps: a
passthrough open carries no FOPEN_KEEP_CACHE (the open would fail with EIO), and one inode is never
open in both modes at once (EIO as well), so a file goes passthrough only while none of its
page-cache handles is open.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

log = logging.getLogger("deltastore.mount")

#: fuse_common.h (libfuse 3.17): the want_ext bit that asks the kernel for passthrough
FUSE_CAP_PASSTHROUGH = 1 << 29
#: linux/fuse.h: _IOW(229, 1, struct fuse_backing_map {int32 fd; uint32 flags; uint64 padding})
FUSE_DEV_IOC_BACKING_OPEN = 0x4010E501
#: linux/fuse.h: _IOW(229, 2, uint32_t)
FUSE_DEV_IOC_BACKING_CLOSE = 0x4004E502
#: offset of ``backing_id`` in libfuse 3.17's ``struct fuse_file_info`` (flags, a word of bits, two
#: padding words, fh, lock_owner, poll_events): mfusepy 3.1 names no field for it
BACKING_ID_OFFSET = 36
SPILL_CHUNK = 64 << 20
#: the copies' cap when none is given: 8 GiB, but never more than a quarter of the free space where
#: they go (measured when the mount starts)
DEFAULT_CAP_BYTES = 8 << 30


def default_dir() -> Path:
    """Where ``passthrough="auto"`` keeps its copies: the user's cache folder (``$XDG_CACHE_HOME``,
    else ``~/.cache``), on disk. Not the temp folder: /tmp is often tmpfs, where a copy would hold
    the file a second time in memory beside its page cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deltastore" / "mount-copies"


def default_cap(root: str | Path) -> int:
    """:data:`DEFAULT_CAP_BYTES`, or a quarter of the free space under ``root`` (a folder) if that is less."""
    return min(DEFAULT_CAP_BYTES, shutil.disk_usage(root).free // 4)


def missing() -> str | None:
    """Why passthrough cannot work in this process, or None."""
    try:
        import mfusepy
    except (ImportError, OSError) as e:
        return f"no mfusepy/libfuse: {e}"
    if (mfusepy.fuse_version_major, mfusepy.fuse_version_minor) < (3, 17):
        return (f"libfuse {mfusepy.fuse_version_major}.{mfusepy.fuse_version_minor} has no passthrough "
                "(3.17 or later: set FUSE_LIBRARY_PATH to its libfuse3.so)")
    if os.geteuid() != 0:
        return "the backing-id ioctl needs CAP_SYS_ADMIN (run the mount as root)"
    return None


def set_backing_id(fi: Any, backing_id: int) -> None:
    """Write ``backing_id`` into a libfuse 3.17 ``fuse_file_info`` (mfusepy's raw_fi struct)."""
    ctypes.c_int32.from_address(ctypes.addressof(fi) + BACKING_ID_OFFSET).value = backing_id


class Backing:
    """Backing ids on this process's /dev/fuse descriptor (the session's)."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def _dev(self) -> int:
        if self._fd is None:
            for name in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                        self._fd = int(name)
                        break
                except OSError:
                    continue
            else:
                raise OSError("no /dev/fuse descriptor in this process")
        return self._fd

    def open(self, path: Path) -> int:
        """A backing id for ``path`` (the kernel keeps its own reference to the file)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            return fcntl.ioctl(self._dev(), FUSE_DEV_IOC_BACKING_OPEN, bytearray(struct.pack("iIQ", fd, 0, 0)))
        finally:
            os.close(fd)

    def close(self, backing_id: int) -> None:
        try:
            fcntl.ioctl(self._dev(), FUSE_DEV_IOC_BACKING_CLOSE, bytearray(struct.pack("I", backing_id)))
        except OSError as e:
            log.warning("closing backing id %d failed: %s", backing_id, e)


SPILL_PREFIX = "deltastore-passthrough-"
#: in each mount's copies folder: the mount process's pid, so a later mount can tell it is orphaned
OWNER_FILE = ".owner-pid"


def remove_orphans(root: str | Path) -> list[Path]:
    """Remove the copies folders under ``root`` whose mount process is gone (a mount killed
    before its unmount could remove them); returns them. A folder without a readable owner, or
    whose pid is alive (perhaps reused by another process), is kept: removing too little is safe."""
    gone = []
    for d in Path(root).glob(SPILL_PREFIX + "*"):
        try:
            pid = int((d / OWNER_FILE).read_text().strip())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
            log.info("removed the passthrough copies of a mount that is gone (pid %d): %s", pid, d)
        except (OSError, ValueError):
            continue
    return gone


@dataclass
class _Copy:
    path: Path
    size: int
    last_open: float
    users: int = 0  # passthrough handles open on it


class SpillCache:
    """Local copies of version files for passthrough, at most ``cap_bytes`` in all.

    ``key`` names one file of one version (manifest, path). :meth:`acquire` / :meth:`release` count
    the passthrough handles that use a copy (such a copy is never removed); :meth:`spill` writes a
    copy on a thread of its own, from byte chunks the caller supplies."""

    def __init__(self, root: str | Path, cap_bytes: int | None = None, *, auto: bool = False):
        #: on by default rather than asked for: where it turns out not to work, say so quietly
        self.auto = auto
        Path(root).mkdir(parents=True, exist_ok=True)
        remove_orphans(root)
        self.dir = Path(tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=root))
        (self.dir / OWNER_FILE).write_text(str(os.getpid()))
        #: None: :func:`default_cap` of ``root``, measured now
        self.cap_bytes = default_cap(root) if cap_bytes is None else cap_bytes
        self._copies: dict[Hashable, _Copy] = {}
        self._pending: set[Hashable] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.written = 0
        self.skipped = 0

    def _name(self, key: Hashable) -> Path:
        return self.dir / hashlib.sha256(repr(key).encode()).hexdigest()

    def acquire(self, key: Hashable) -> Path | None:
        """The complete copy of ``key``, counted as in use until :meth:`release`; None if none."""
        with self._lock:
            c = self._copies.get(key)
            if c is None:
                return None
            c.users += 1
            c.last_open = time.monotonic()
            return c.path

    def release(self, key: Hashable) -> None:
        with self._lock:
            c = self._copies.get(key)
            if c is not None and c.users > 0:
                c.users -= 1

    def has(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._copies or key in self._pending

    def spill(self, key: Hashable, size: int, sha256: str | None, chunks: Callable[[], Iterable[Any]]) -> bool:
        """Write ``key``'s copy in the background from ``chunks()`` (buffers in file order, ``size``
        bytes in all); with ``sha256`` the copy is kept only if it hashes to it. Returns whether a
        write was started (not when one exists or is under way, or when the cap leaves no room)."""
        with self._lock:
            if self._closed or key in self._copies or key in self._pending or not self._make_room(size):
                self.skipped += key not in self._copies and key not in self._pending
                return False
            self._pending.add(key)
        threading.Thread(target=self._write, args=(key, size, sha256, chunks), name="deltastore-spill", daemon=True).start()
        return True

    def _make_room(self, size: int) -> bool:
        """Remove the least recently opened unused copies until ``size`` more fits (lock held)."""
        if size > self.cap_bytes:
            return False
        used = sum(c.size for c in self._copies.values())
        for key, c in sorted(self._copies.items(), key=lambda kv: kv[1].last_open):
            if used + size <= self.cap_bytes:
                break
            if c.users == 0:
                c.path.unlink(missing_ok=True)
                del self._copies[key]
                used -= c.size
        return used + size <= self.cap_bytes

    def _write(self, key: Hashable, size: int, sha256: str | None, chunks: Callable[[], Iterable[Any]]) -> None:
        final = self._name(key)
        tmp = final.with_suffix(".part")
        ok = False
        try:  # a copy for later opens must not take the CPU from the readers of this one: lowest
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # priority (Linux: per thread)
        except (OSError, AttributeError):
            pass
        try:
            h = hashlib.sha256() if sha256 else None
            n = 0
            with open(tmp, "wb") as f:
                for buf in chunks():
                    f.write(buf)
                    if h is not None:
                        h.update(buf)
                    n += len(memoryview(buf).cast("B"))
                f.flush()
                # its pages as written are folios of the write's sizes; dropped (once on disk), they
                # come back by read-ahead in the large folios a read gives (2 MiB on ext4 here)
                os.fdatasync(f.fileno())
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            if n != size:
                raise ValueError(f"wrote {n} bytes, the file has {size}")
            if h is not None and h.hexdigest() != sha256:
                raise ValueError("the copy does not hash to the file's sha256")
            os.replace(tmp, final)
            ok = True
        except Exception as e:  # noqa: BLE001  (no copy: the file keeps the ordinary path)
            log.warning("no passthrough copy of %s: %s: %s", key, type(e).__name__, e)
            tmp.unlink(missing_ok=True)
        with self._lock:
            self._pending.discard(key)
            if ok and not self._closed:
                self._copies[key] = _Copy(final, size, time.monotonic())
                self.written += 1
            elif ok:
                final.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove every copy (at unmount: nothing uses them once the mount is gone)."""
        with self._lock:
            self._closed = True
            self._copies.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
