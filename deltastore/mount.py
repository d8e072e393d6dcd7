"""A read-only FUSE filesystem (mfusepy on libfuse3) showing every version as plain files.

Layout::

    MOUNTPOINT/NAME/v1/config.json            files of NAME@v1, computed on read
    MOUNTPOINT/NAME/v1/model.safetensors
    MOUNTPOINT/NAME/latest -> v3              symlinks, re-read from the catalog every ``ttl``
    MOUNTPOINT/NAME/<tag>  -> v2

Sizes, modes and times come from the catalog and manifests, so ``ls -lR`` decodes nothing. Reads go
through :mod:`deltastore.fileview` and one :class:`~deltastore.filecache.DecodedCache`; the kernel's
requests slice units already decoded. Page caching stays on (``auto_cache``: kept across opens while
a file's size and mtime are unchanged; no ``direct_io``), so mmap readers such as
``safetensors.safe_open`` work and a second read of a file never reaches this process (counted:
:meth:`DeltaStoreFS.stats_line`, logged at unmount and on ``kill -USR1 PID``; a warm pass over a
file costs one OPEN, one RELEASE and at most a GETATTR or two). Such a warm read is the kernel
copying out of its page cache, as for a local file, but this kernel (6.18) fills FUSE's page cache
with 4 KiB folios whatever the server asks (max_read and max_write 1 MiB, max_pages 256,
read_ahead_kb, kernel_cache or auto_cache: benchmarks/probe_fuse_passthrough.py), where ext4 caches
the same file mostly in 2 MiB folios; the reader's kernel then copies in 4 KiB pieces and walks up
to 512 times as many folios, which is where a warm mount read loses to a warm local read. 6.18's
``fuse_init_file_inode`` sets no folio order for any FUSE file, so no INIT flag, mount option or open
flag of a server changes that; upstream's "fuse: enable large folios" (order from max_read/max_write,
off with writeback cache) is queued for a much later kernel, where this mount's options (no
writeback cache, max_write 1 MiB, max_pages 256) would give folios up to 1 MiB unchanged. Serving
reads with ``direct_io`` instead costs 2.5x the CPU of the 4 KiB page cache and breaks shared mmaps
(benchmarks/results/mount_folios_research.md). The one way left to the server is FUSE passthrough
(the kernel has it): OPEN answers with
a backing file holding the decoded bytes and the kernel reads that file's own page cache. The mount
does that by default wherever it can (``passthrough="auto"``; ``off``, or ``DIR[:SIZE]`` for the
copies' folder and cap, also through DELTASTORE_MOUNT_PASSTHROUGH): libfuse >= 3.17 (Debian 12 has
3.14: FUSE_LIBRARY_PATH can name a newer one) and root; a file read to its end gets a local copy,
and later opens of it are passed through (:mod:`deltastore.passthrough`). Off, or where it cannot
work, everything below holds unchanged.

``auto_cache`` rather than ``kernel_cache``: version numbers are never reused (``lookup.next_number``: removed ones are retired), so a path
always names the same bytes and ``kernel_cache`` would be as right today; ``auto_cache`` costs one
attribute check per open per ``ttl`` and drops the pages if a file's size or mtime ever changes
(a catalog restored from a backup under the same home), where ``kernel_cache`` would keep them.

What a cached page means: bytes of an immutable version, which no later change can make wrong. After
``rm`` of that version, new lookups of its path fail with ENOENT once ``ttl`` has passed; a process
that has the file open or mapped keeps reading it, as an unlinked local file stays readable (its
attributes come from the handle, not the catalog): the kernel's pages as they are, and the pages it
no longer has from the decoded cache or the store, until ``gc`` deletes the objects, after which
those reads fail with EIO (never other bytes). tests/mount checks a held file across ``rm``.

The kernel's read-ahead for the mount is raised (``read_ahead_kb``) so sequential readers and mmap
faults send large requests: 1 MiB each, the most libfuse 3 takes (its buffer is 256 pages), so a
request costs one Python call per MiB; the bytes are copied once out of the cached unit into libfuse
and once by the kernel into the page cache. The sizes asked are counted and logged at unmount. The
decoders (numba's kernels, torch) are loaded on a thread as the mount comes up (:func:`warm_up`),
not on the first read.

Read-only: the kernel mounts it ``ro`` (EROFS on any write). A corrupt or missing object fails the
read that needs it with EIO and an ERROR log line naming the object and the file; nothing wrong is
ever returned for an exact version (tensors are re-hashed as they are decoded).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

from .errors import DeltaStoreError
from .filecache import DecodedCache, parse_size
from .fileview import CatalogView, FileReader, VersionFile
from .passthrough import FUSE_CAP_PASSTHROUGH, SPILL_CHUNK, Backing, SpillCache, set_backing_id
from .protocols import StoreView

log = logging.getLogger("deltastore.mount")

DEFAULT_CACHE_BYTES = 4 << 30
DEFAULT_READ_AHEAD_KB = 16 << 10
#: glibc malloc settings for the server (see :func:`tune_malloc`)
MALLOC_MMAP_THRESHOLD = 32 << 20
MALLOC_TRIM_THRESHOLD = 512 << 20
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class MountError(DeltaStoreError, OSError):
    """A mount or unmount that cannot be done (no FUSE here, busy, not a mount point)."""


def _fuse() -> Any:
    try:
        import mfusepy
    except (ImportError, OSError) as e:  # OSError: mfusepy found no libfuse
        raise MountError("mounting needs mfusepy (pip install 'deltastore[mount]') and libfuse3 "
                         f"(apt-get install fuse3): {e}") from None
    return mfusepy


def fuse_missing() -> str | None:
    """Why a FUSE mount cannot work on this machine, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if shutil.which("fusermount3") is None and os.geteuid() != 0:
        return "fusermount3 is not installed (apt-get install fuse3)"
    try:
        _fuse()
    except MountError as e:
        return str(e)
    return None


@dataclass
class _Handle:
    vf: VersionFile
    path: str
    next_offset: int = 0
    key: tuple[str, str] = ("", "")  # (manifest, path in the version): one file of one version
    backing_id: int = 0  # > 0: opened for passthrough (see deltastore.passthrough)


def _fh(fh: Any) -> int:
    """The handle number whether mfusepy passes it plain or as libfuse's fuse_file_info (raw_fi,
    which passthrough needs)."""
    return fh if fh is None or isinstance(fh, int) else fh.fh


def _mfuse_base() -> type:
    try:
        return _fuse().Operations
    except MountError:
        return object


class DeltaStoreFS(_mfuse_base()):  # type: ignore[misc]
    """The FUSE operations: a namespace from the catalog, file bytes from :class:`FileReader`."""

    use_ns = True

    def __init__(self, store: StoreView, cache: DecodedCache, *, verify: bool = True, ttl: float = 1.0,
                 prefetch_on_config: bool = True, spill: SpillCache | None = None):
        self.store = store
        #: local copies for FUSE passthrough (None: off); needs mfusepy's raw_fi and no auto_cache
        self.spill = spill
        self._backing = Backing()
        self._mode_lock = threading.Lock()
        self._cached_open: Counter[tuple[str, str]] = Counter()  # page-cache handles open, by file
        self._read_to_end: set[tuple[str, str]] = set()  # files whose last byte a READ returned
        #: one backing id per file while passthrough handles use it, [id, handles]: the kernel refuses
        #: (EBUSY, so EIO) a second backing file on an inode that has one
        self._backing_ids: dict[tuple[str, str], list[int]] = {}
        self.view = CatalogView(store, ttl=ttl)
        self.reader = FileReader(store, cache, verify=verify)
        self.cache = cache
        self.prefetch_on_config = prefetch_on_config
        self._prefetched: set[str] = set()  # manifests whose weights an open of config.json queued
        self._config_opens = 0  # versions whose config.json open queued a read-ahead, so far
        self._handles: dict[int, _Handle] = {}
        self._ids = count(1)
        self._uid, self._gid = os.getuid(), os.getgid()
        self._started = time.time_ns()
        self.requests = 0
        self.bytes_served = 0
        #: READ requests by size, in power-of-two KiB buckets (the size the kernel asked for): shows
        #: whether page faults and read-ahead reach the server in large pieces; logged at unmount
        self.request_sizes: Counter[int] = Counter()
        self.sequential_requests = 0
        #: requests this process answered, by operation (the high-level libfuse turns a LOOKUP into a
        #: ``getattr`` call, so "getattr" counts both): what a warm read still costs in round trips
        self.ops: Counter[str] = Counter()
        self.stats_sockets: tuple[socket.socket, socket.socket] | None = None  # see _log_stats_on_signal

    def stats_line(self) -> str:
        """The requests answered so far, by operation, and the READ bytes: logged at unmount and on
        SIGUSR1 (``kill -USR1 PID``), so a benchmark can count what one phase of reading cost."""
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items())) or "none"
        copies = f"; passthrough copies written {self.spill.written}" if self.spill is not None else ""
        return f"requests so far: {ops}; {self.bytes_served / 1e6:.1f} MB read{copies}"

    def init_with_config(self, conn: Any, config: Any) -> None:
        """Ask the kernel for passthrough when local copies are on; without it they are turned off."""
        if self.spill is None or conn is None:
            return
        if not conn.capable_ext & FUSE_CAP_PASSTHROUGH:
            (log.info if self.spill.auto else log.warning)("passthrough off: the kernel does not offer it")
            self.spill.close()
            self.spill = None
            return
        conn.want_ext |= FUSE_CAP_PASSTHROUGH
        conn.max_backing_stack_depth = 1

    # -- the namespace --------------------------------------------------------------------------
    def _node(self, path: str) -> tuple[str, Any]:
        """("dir", mtime_s) | ("link", target, mtime_s) | ("file", (manifest, FileEntry, mtime_s))."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return ("dir", self._started / 1e9)
        mv = self.view.model(parts[0])
        if mv is None:
            raise self._err(errno.ENOENT)
        newest = max((c for _, c in mv.versions.values()), default=self._started / 1e9)
        if len(parts) == 1:
            return ("dir", newest)
        name = parts[1]
        number = _version_number(name)
        if number is None:
            target = mv.latest if name == "latest" else mv.tags.get(name)
            if target is None or len(parts) > 2:
                raise self._err(errno.ENOENT)
            return ("link", f"v{target}", newest)
        if number not in mv.versions:
            raise self._err(errno.ENOENT)
        manifest, created = mv.versions[number]
        tree = self.view.tree(manifest)
        rest = "/".join(parts[2:])
        if rest in tree.dirs:
            return ("dir", created)
        f = tree.files.get(rest)
        if f is None:
            raise self._err(errno.ENOENT)
        return ("file", (manifest, f, created))

    @staticmethod
    def _err(code: int) -> OSError:
        return _fuse().FuseOSError(code)

    def _guard(self, what: str, fn, *args, **kwargs):  # noqa: ANN001, ANN202
        """Run ``fn``: store errors become EIO with a log line naming the object; ENOENT passes."""
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            if isinstance(e, DeltaStoreError):
                log.error("EIO on %s: %s", what, e)
                raise self._err(errno.EIO) from None
            raise
        except DeltaStoreError as e:
            if type(e).__name__ == "UnknownRefError":
                raise self._err(errno.ENOENT) from None
            log.error("EIO on %s: %s", what, e)
            raise self._err(errno.EIO) from None
        except Exception as e:  # a catalog or backend failure: report it, never crash the mount
            log.error("EIO on %s: %s: %s", what, type(e).__name__, e)
            raise self._err(errno.EIO) from None

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        self.ops["getattr"] += 1
        fh = _fh(fh)
        h = self._handles.get(fh) if fh else None
        if h is not None:
            # an open file answers from its handle: the kernel asks again on reads once the attribute
            # timeout lapses, and a version removed since (rm) must not fail its open readers
            return self._file_stat(h.vf.size, h.vf.mtime)
        node = self._guard(path, self._node, path)
        base = {"st_uid": self._uid, "st_gid": self._gid}
        if node[0] == "dir":
            t = int(node[1] * 1e9)
            return {**base, "st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_size": 0,
                    "st_mtime": t, "st_ctime": t, "st_atime": t}
        if node[0] == "link":
            t = int(node[2] * 1e9)
            return {**base, "st_mode": stat.S_IFLNK | 0o777, "st_nlink": 1, "st_size": len(node[1]),
                    "st_mtime": t, "st_ctime": t, "st_atime": t}
        _, f, created = node[1]
        return self._file_stat(f.size, created)

    def _file_stat(self, size: int, created: float) -> dict[str, Any]:
        t = int(created * 1e9)
        return {"st_uid": self._uid, "st_gid": self._gid, "st_mode": stat.S_IFREG | 0o444, "st_nlink": 1,
                "st_size": size, "st_blocks": (size + 511) // 512, "st_blksize": 1 << 20,
                "st_mtime": t, "st_ctime": t, "st_atime": t}

    def readdir(self, path: str, fh: int) -> list[str]:
        self.ops["readdir"] += 1
        return self._guard(path, self._readdir, path)

    def _readdir(self, path: str) -> list[str]:
        parts = [p for p in path.split("/") if p]
        if not parts:
            return [".", "..", *self.view.model_names()]
        mv = self.view.model(parts[0])
        if mv is None:
            raise self._err(errno.ENOENT)
        if len(parts) == 1:
            names = [f"v{n}" for n in sorted(mv.versions)]
            if mv.versions:
                names.append("latest")
            names += [t for t in sorted(mv.tags) if t != "latest" and _version_number(t) is None]
            return [".", "..", *names]
        node = self._node(path)
        if node[0] != "dir":
            raise self._err(errno.ENOTDIR)
        manifest, _ = mv.versions[_version_number(parts[1])]
        return [".", "..", *self.view.tree(manifest).dirs["/".join(parts[2:])]]

    def readlink(self, path: str) -> str:
        self.ops["readlink"] += 1
        node = self._guard(path, self._node, path)
        if node[0] != "link":
            raise self._err(errno.EINVAL)
        return node[1]

    def open(self, path: str, flags: Any) -> int:
        self.ops["open"] += 1
        fi = None
        if not isinstance(flags, int):  # raw_fi: libfuse's fuse_file_info, answered in place
            fi, flags = flags, flags.flags
        if flags & _WRITE_FLAGS:
            raise self._err(errno.EROFS)
        node = self._guard(path, self._node, path)
        if node[0] != "file":
            raise self._err(errno.EISDIR)
        manifest, f, created = node[1]
        vf = self._guard(path, self.reader.layout, manifest, f, created)
        fh = next(self._ids)
        h = _Handle(vf, path, key=(manifest, f.path))
        if fi is not None:
            self._choose_mode(h, fi)
            fi.fh = fh
        self._handles[fh] = h
        if f.path == "config.json" and self.prefetch_on_config:
            self._prefetch_weights(manifest, created)
        return 0 if fi is not None else fh

    def _choose_mode(self, h: _Handle, fi: Any) -> None:
        """Passthrough to the file's local copy when there is one and none of the file's
        page-cache handles is open (the kernel refuses an inode in both modes: EIO); else the page
        cache, kept across opens (the auto_cache of the plain path is off here: libfuse would set
        FOPEN_KEEP_CACHE on passthrough opens too, which the kernel refuses)."""
        with self._mode_lock:
            copy = self.spill.acquire(h.key) if self.spill is not None and not self._cached_open[h.key] else None
            if copy is not None:
                try:
                    ent = self._backing_ids.get(h.key)
                    if ent is None:
                        ent = self._backing_ids[h.key] = [self._backing.open(copy), 0]
                    ent[1] += 1
                    h.backing_id = ent[0]
                except OSError as e:
                    log.warning("passthrough open of %s failed, page cache instead: %s", h.path, e)
                    self.spill.release(h.key)  # type: ignore[union-attr]
                else:
                    set_backing_id(fi, h.backing_id)
                    fi.keep_cache = 0
                    self.ops["open-passthrough"] += 1
                    return
            self._cached_open[h.key] += 1
            fi.keep_cache = 1

    def _prefetch_weights(self, manifest: str, created: float) -> None:
        """Queue the version's safetensors units for decoding, in file order, on the cache's
        read-ahead worker: up to half the cache, once per version per mount.

        Why: ``from_pretrained`` (and vLLM, and most loaders) read ``config.json`` first, then spend
        seconds importing modules and building the model before they touch a weight; the mount would
        sit idle through that and then make the loader wait for every tensor's decode. Started at
        the config's open, the decode runs on the mount's core while the loader works on its own.
        The cost when no weights follow: decode work and cache space (at most half the cap), done
        once per version."""
        if manifest in self._prefetched:
            return
        self._prefetched.add(manifest)
        # a scan over many versions' configs (`grep -r`, a hub-style indexer) must not queue every
        # version's weights: what an open queued is dropped once two newer versions' configs were
        # opened after it (two, so two jobs loading different versions at once both keep theirs)
        self._config_opens += 1
        mine = self._config_opens
        wanted = lambda: self._config_opens - mine < 2  # noqa: E731
        budget = self.cache.cap_bytes // 2
        try:
            tree = self.view.tree(manifest)
            for name in sorted(p for p in tree.files if "/" not in p and p.endswith(".safetensors")):
                vf = self.reader.layout(manifest, tree.files[name], created)
                for u in vf.units:
                    budget -= u.stop - u.start
                    if budget < 0:
                        return
                    self.cache.prefetch(u.key, u.load, wanted=wanted)
        except Exception as e:  # noqa: BLE001  (a read of the file reports it, with EIO)
            log.debug("no read-ahead of %s's weights: %s", manifest, e)

    def read(self, path: str, size: int, offset: int, fh: int) -> "bytes | _Span":
        self.ops["read"] += 1
        h = self._handles.get(_fh(fh))
        if h is None:
            raise self._err(errno.EBADF)
        sequential = offset == h.next_offset or offset == 0
        parts = self._guard(f"{h.path} at byte {offset}", self.reader.span_arrays, h.vf, offset, offset + size,
                            readahead=sequential)
        if not parts:
            return b""
        data = _Span(parts[0]) if len(parts) == 1 else b"".join(parts)
        h.next_offset = offset + len(data)
        if self.spill is not None and h.next_offset >= h.vf.size:
            self._read_to_end.add(h.key)
        self.requests += 1
        self.bytes_served += len(data)
        self.request_sizes[1 << max(size - 1, 0).bit_length()] += 1
        self.sequential_requests += sequential
        return data

    def destroy(self, path: str) -> None:
        st = self.cache.stats
        log.info("unmounted: %d reads, %.1f MB served (%.0f KiB a request); units decoded %d, cache hits %d, "
                 "waits on another reader's decode %d, evictions %d, errors %d", self.requests, self.bytes_served / 1e6,
                 self.bytes_served / max(self.requests, 1) / 1024, st.misses, st.hits, st.waits, st.evictions, st.errors)
        log.info("read requests by size asked: %s; %d of them sequential on their handle",
                 ", ".join(f"{_kib(b)}: {n}" for b, n in sorted(self.request_sizes.items())) or "none",
                 self.sequential_requests)
        log.info(self.stats_line())

    def release(self, path: str, fh: Any) -> int:
        self.ops["release"] += 1
        h = self._handles.pop(_fh(fh), None)
        if h is not None and self.spill is not None:
            self._release_mode(h)
        return 0

    def _release_mode(self, h: _Handle) -> None:
        """Undo :meth:`_choose_mode`; once a file was read to its end (by any handle: later
        handles may find every page cached and send no READ), the close of one of its page-cache
        handles gets its local copy written (from the decoded cache, whose tensors were checked
        against their sha256 as they were decoded; the copy is also checked against the file's
        sha256 where the version is exact and its add recorded one)."""
        spill = self.spill
        assert spill is not None
        if h.backing_id:
            with self._mode_lock:
                ent = self._backing_ids[h.key]
                ent[1] -= 1
                if not ent[1]:
                    del self._backing_ids[h.key]
                    self._backing.close(ent[0])
            spill.release(h.key)
            return
        with self._mode_lock:
            self._cached_open[h.key] -= 1
            if not self._cached_open[h.key]:
                del self._cached_open[h.key]
        if h.key in self._read_to_end and h.vf.size and not spill.has(h.key):
            vf = h.vf

            def chunks():  # noqa: ANN202
                for a in range(0, vf.size, SPILL_CHUNK):
                    yield from self.reader.span_arrays(vf, a, a + SPILL_CHUNK)

            spill.spill(h.key, vf.size, vf.sha256 if vf.exact else None, chunks)

    def statfs(self, path: str) -> dict[str, int]:
        self.ops["statfs"] += 1
        return {"f_bsize": 1 << 20, "f_frsize": 1 << 20, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0,
                "f_files": 0, "f_ffree": 0, "f_namemax": 255}

    # every write is refused (the kernel already refuses most on a read-only mount)
    def _rofs(self, *args: Any) -> int:
        raise self._err(errno.EROFS)

    create = mkdir = rmdir = unlink = rename = symlink = link = write = truncate = chmod = chown = _rofs
    setxattr = removexattr = _rofs


def parse_stats(log_text: str) -> dict[str, float]:
    """The last :meth:`DeltaStoreFS.stats_line` in a mount's log as ``{operation: count}`` plus
    "MB read" and, with passthrough on, "copies" (for benchmarks and tests; {} if there is none)."""
    if "requests so far:" not in log_text:
        return {}
    line = log_text.rsplit("requests so far:", 1)[1].splitlines()[0]
    ops, _, rest = line.partition(";")
    got: dict[str, float] = {op: int(n) for op, n in (part.split() for part in ops.split(",") if part.strip() != "none")}
    got["MB read"] = float(rest.split("MB read", 1)[0])
    if "passthrough copies written" in rest:
        got["copies"] = int(rest.rsplit("passthrough copies written", 1)[1].split()[0])
    return got


class _Span:
    """A read's bytes handed to libfuse without a copy: mfusepy takes ``len()`` and ``memmove``s
    from ``_as_parameter_`` (the array's address) straight into the kernel's buffer."""

    __slots__ = ("arr", "_as_parameter_")

    def __init__(self, arr: Any):
        self.arr = arr  # keeps the memory alive until libfuse has copied it
        self._as_parameter_ = ctypes.c_void_p(arr.ctypes.data)

    def __len__(self) -> int:
        return int(self.arr.nbytes)


def _kib(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} B"


def _version_number(name: str) -> int | None:
    """N for a folder named vN (ASCII digits, no leading zero); None for any other name ('v²' and
    'v١' pass str.isdigit(): one made int() raise, the other named v1 a second way)."""
    digits = name[1:]
    if name[:1] == "v" and digits.isascii() and digits.isdigit() and not (len(digits) > 1 and digits[0] == "0"):
        return int(digits)
    return None


# ------------------------------------------------------------------------------------------------
def serve(store: StoreView, mountpoint: str | Path, *, cache_bytes: int = DEFAULT_CACHE_BYTES, verify: bool = True,
          ttl: float = 1.0, allow_other: bool = False, read_ahead_kb: int | None = DEFAULT_READ_AHEAD_KB,
          debug: bool = False, passthrough: str | None = None) -> None:
    """Mount and serve in this process until unmounted (``deltastore unmount``, or fusermount3 -u).

    ``passthrough``: ``auto`` (the default, also from the environment variable
    DELTASTORE_MOUNT_PASSTHROUGH), ``off``, ``DIR`` or ``DIR:SIZE``: local copies of the files read
    to their end, up to SIZE in a folder under DIR, served by FUSE passthrough (see
    :mod:`deltastore.passthrough`); ``auto`` turns it on wherever it can work (libfuse >= 3.17 and
    root) with copies under the user's cache folder, and off elsewhere; a DIR asked for where it
    cannot work gets a warning saying why, and the mount runs without it."""
    mfusepy = _fuse()
    mp = Path(mountpoint).absolute()
    if not mp.is_dir():
        raise MountError(f"{mp} is not a directory; create it first")
    if os.path.ismount(mp):
        raise MountError(f"{mp} is already a mount point")
    why = fuse_missing()
    if why:
        raise MountError(f"cannot mount: {why}")
    tune_malloc()
    cache = DecodedCache(cache_bytes)
    spill = _spill_cache(passthrough if passthrough is not None else os.environ.get("DELTASTORE_MOUNT_PASSTHROUGH"))
    ops = DeltaStoreFS(store, cache, verify=verify, ttl=ttl, spill=spill)
    stats_signal = _log_stats_on_signal(ops)
    if read_ahead_kb:
        threading.Thread(target=_tune_when_mounted, args=(mp, read_ahead_kb), daemon=True).start()
    # not a daemon: numba may be inside LLVM when an unmount ends the process (see planes.fast())
    threading.Thread(target=warm_up, name="deltastore-warm-up").start()
    opts: dict[str, Any] = dict(foreground=True, nothreads=False, ro=True, fsname=f"deltastore:{_home_of(store)}", subtype="deltastore",
                                auto_cache=spill is None, entry_timeout=ttl, attr_timeout=ttl, negative_timeout=0, debug=debug)
    if spill is not None:
        opts["raw_fi"] = True
    if allow_other:
        opts["allow_other"] = True
    log.info("mounting %s at %s (cache %d bytes)", store, mp, cache_bytes)
    try:
        mfusepy.FUSE(ops, str(mp), **opts)
    finally:
        cache.close()
        if spill is not None:
            spill.close()
        if stats_signal:
            signal.set_wakeup_fd(-1)


def _spill_cache(spec: str | None) -> SpillCache | None:
    """The ``passthrough`` setting -> the local copies for passthrough, or None.

    ``auto`` (the default): on where it can work here (libfuse >= 3.17, root: :func:`passthrough.missing`),
    with the copies in :func:`passthrough.default_dir` up to :func:`passthrough.default_cap`; else off,
    said in one info line. ``off``: off. ``DIR`` or ``DIR:SIZE``: asked for, so where it cannot work a
    warning says why."""
    from .passthrough import default_dir, missing

    spec = (spec or "auto").strip()
    if spec.lower() in ("off", "no", "0", "false", "none"):
        return None
    auto = spec.lower() == "auto"
    why = missing()
    if why:
        (log.info if auto else log.warning)("passthrough off: %s", why)
        return None
    if auto:
        root, cap = default_dir(), None
    else:
        root, _, size = spec.partition(":")
        cap = parse_size(size) if size else None
    try:
        spill = SpillCache(root, cap, auto=auto)
    except OSError as e:
        log.warning("passthrough off: cannot keep local copies in %s: %s", root, e)
        return None
    log.info("passthrough on: local copies of the files read in %s, up to %d bytes", spill.dir, spill.cap_bytes)
    return spill


def _log_stats_on_signal(ops: DeltaStoreFS) -> bool:
    """``kill -USR1 PID`` logs :meth:`DeltaStoreFS.stats_line` (the requests answered so far).

    Why through a wakeup fd and a thread: the main thread sits in libfuse's loop for the life of the
    mount and never runs Python, so a Python handler would only run at unmount; and blocking the
    signal cannot steer it to one thread, since threads started at import (torch's, numba's) leave it
    unblocked. Python's C-level handler, on whichever thread the kernel picks, writes the signal's
    number to the wakeup socket at once; a thread of ours reads it and logs. Only from the main
    thread (the CLI's case); returns whether it was set up."""
    if threading.current_thread() is not threading.main_thread():
        return False
    r, w = socket.socketpair()
    w.setblocking(False)
    ops.stats_sockets = (r, w)  # kept open as long as the mount: the signal handler writes to w's number
    signal.signal(signal.SIGUSR1, lambda *_: None)  # not SIG_DFL, which would end the process
    signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)

    def wait() -> None:
        while True:
            got = r.recv(64)
            if not got:
                return
            if signal.SIGUSR1 in got:
                log.info(ops.stats_line())

    threading.Thread(target=wait, name="deltastore-stats", daemon=True).start()
    return True


def warm_up() -> float:
    """Load the decoders before the first read needs them; returns the seconds it took.

    A process's first lossless decode pays for importing numba and setting up its compiled
    kernels (about a second here, see ``codec.planes.fast()``), and its first torch ops for
    torch's own set-up. In a fresh mount that landed on the first read of a file, which a
    ``from_pretrained`` then waits for with nothing else to do. The mount runs this on a thread
    of its own as it comes up: a bf16 tensor of one plane chunk (4 MiB) through the lossless
    codec, plain and as a delta on a base, and the float32 arithmetic a lossy delta's
    reconstruction does. Synthetic data only: nothing of the store is read or decoded. A failure
    is logged and changes nothing (the first read then pays, as before)."""
    t0 = time.perf_counter()
    try:
        import torch

        from . import codec as codecs

        codecs.planes.fast()  # numba's import and set-up, so the round trips below run its kernels
        gen = torch.Generator().manual_seed(0)
        base = torch.randn(1 << 21, generator=gen).to(torch.bfloat16)
        target = (base.float() + 1e-3 * torch.randn(1 << 21, generator=gen)).to(torch.bfloat16)
        lossless = codecs.get_codec("lossless")
        for b in (None, base):
            enc = codecs.from_bytes(codecs.to_bytes(lossless.encode(target, b)))
            if not torch.equal(lossless.reconstruct(enc, b).view(torch.int16), target.view(torch.int16)):
                raise RuntimeError("the lossless codec did not round-trip its warm-up tensor")
        (base.float().reshape(1024, -1)[:, :64] @ target.float().reshape(-1, 1024)[:64]).to(torch.bfloat16)
    except Exception as e:  # noqa: BLE001  (the mount works without it)
        log.warning("decoder warm-up failed (the first read will load the decoders): %s: %s", type(e).__name__, e)
    took = time.perf_counter() - t0
    log.info("decoders loaded in %.2f s", took)
    return took


def tune_malloc() -> bool:
    """Let glibc keep freed decode buffers for reuse instead of handing them back at once.

    Decoding a tensor allocates several temporaries of its size (payload, base copy, codec
    intermediates). With glibc's defaults each one over the dynamic mmap threshold is a fresh
    ``mmap`` that the kernel must zero page by page, and a freed heap top is trimmed straight away,
    so the next tensor faults the same memory in again: ``clear_page`` was 18% of a cold read's
    server CPU. Buffers under 32 MiB now come from the heap, and up to 512 MiB freed at its top stays
    there (measured on SmolLM2: 10-25% less server CPU per cold read, peak RSS unchanged). The cost
    is memory: after a burst of decoding, up to that much freed memory can stay with the process
    until reused. Only glibc has ``mallopt``; elsewhere this does nothing and returns False."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD))


def _home_of(store: StoreView) -> str:
    """The store's home, for the mount table (no URL: those can carry credentials)."""
    home = str(getattr(store.config, "home", "") or "")
    return home.replace(",", "_").replace(" ", "_") or "store"


def _tune_when_mounted(mp: Path, kb: int) -> None:
    for _ in range(200):
        if os.path.ismount(mp):
            set_read_ahead(mp, kb)
            return
        time.sleep(0.05)


def set_read_ahead(mountpoint: str | Path, kb: int) -> bool:
    """Raise the kernel's read-ahead for this mount (``/sys/class/bdi/MAJ:MIN/read_ahead_kb``) so a
    sequential reader asks for large pieces; needs root, and is skipped quietly otherwise."""
    dev = os.stat(mountpoint).st_dev
    p = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    try:
        p.write_text(str(int(kb)))
        return True
    except OSError as e:
        log.info("could not set %s (%s); the kernel's default read-ahead stays", p, e)
        return False


# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Holder:
    pid: int
    command: str
    path: str
    how: str  # "open" | "cwd" | "mmap"

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command}) has {self.path} {'mapped' if self.how == 'mmap' else self.how}"


def holders(mountpoint: str | Path) -> list[Holder]:
    """Processes with a file of the mount open, mapped, or as their working directory."""
    mp = str(Path(mountpoint).absolute()).rstrip("/")
    inside = (lambda p: p == mp or p.startswith(mp + "/"))
    out: list[Holder] = []
    for pid_s in os.listdir("/proc"):
        if not pid_s.isdigit():
            continue
        pdir = f"/proc/{pid_s}"
        try:
            with open(f"{pdir}/comm") as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        seen: set[tuple[str, str]] = set()

        def add(path: str, how: str) -> None:
            if inside(path) and (path, how) not in seen:
                seen.add((path, how))
                out.append(Holder(int(pid_s), comm, path, how))

        try:
            add(os.readlink(f"{pdir}/cwd"), "cwd")
        except OSError:
            pass
        try:
            for fd in os.listdir(f"{pdir}/fd"):
                try:
                    add(os.readlink(f"{pdir}/fd/{fd}"), "open")
                except OSError:
                    pass
        except OSError:
            pass
        try:
            with open(f"{pdir}/maps") as fh:
                for line in fh:
                    i = line.find(" /")
                    if i >= 0:
                        add(line[i + 1 :].rstrip("\n").removesuffix(" (deleted)"), "mmap")
        except OSError:
            pass
    return out


def unmount(mountpoint: str | Path, *, timeout: float = 10.0) -> None:
    """Unmount cleanly; if files are still open, raise :class:`MountError` naming who holds them."""
    mp = Path(mountpoint).absolute()
    if not os.path.ismount(mp):
        raise MountError(f"{mp} is not mounted")
    cmd = ["fusermount3", "-u", str(mp)] if shutil.which("fusermount3") else ["umount", str(mp)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip()
        if "busy" in msg.lower():
            held = holders(mp)
            listing = "; ".join(str(h) for h in held[:20]) or "no process found holding it (try again)"
            more = f" and {len(held) - 20} more" if len(held) > 20 else ""
            raise MountError(f"{mp} is busy, still in use: {listing}{more}")
        raise MountError(f"unmounting {mp} failed: {msg}")
    deadline = time.monotonic() + timeout
    while os.path.ismount(mp) and time.monotonic() < deadline:
        time.sleep(0.05)
