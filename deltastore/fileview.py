"""Versions as plain files, computed on read: what the FUSE mount and the fsspec filesystem share.

A version file's bytes are laid out by its manifest alone: a safetensors file is its verbatim header
(a blob, ``size - sum(tensor bytes)`` long) followed by its tensors in data order, so sizes, offsets
and headers are known without decoding anything. Reading a byte range maps it onto *units* and
takes each from the shared :class:`~deltastore.filecache.DecodedCache`:

- the header or a plain file: one blob, verified against its id;
- a lossless tensor: with ``verify`` (the default) the whole tensor object, decoded once and
  re-hashed against the sha256 it was added with, so a corrupt object is an error and never wrong
  bytes; without it, tensor-aligned segments of ``unit_bytes`` fetched and decoded by chunk
  (``ObjectDB.get_range_array``), which cannot be checked against a whole-object hash;
- a tensor the fine-tune left as the base's: the base's unit, shared by every version using it;
- a lossy delta: the whole reconstructed tensor (``materialize.tensor_bytes``, the code checkout
  runs, so the bytes equal checkout's bit for bit).

:class:`CatalogView` is the namespace: models, their versions and tags, read from the catalog with
a short time-to-live so versions added after mounting appear, and each version's files from its
manifest (immutable, kept).
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Hashable

import numpy as np
from sqlalchemy import select

from . import chains
from .catalog import Model, Tag, Version
from .errors import BadNameError, CorruptObjectError
from .filecache import DecodedCache, Loader
from .manifest import FileEntry, TensorEntry, is_text
from .materialize import stored_entry, tensor_bytes
from .objects import Scratch
from .protocols import StoreView
from .refs import check_name

log = logging.getLogger("deltastore.fileview")

#: default segment size for unverified lossless reads (a multiple of the 4 MiB object chunks)
UNIT_BYTES = 64 << 20
#: most segments one file's unverified tensors are cut into (files past 1 TiB get larger segments):
#: a manifest may claim up to 2**48 bytes, and a layout is built on open
MAX_FILE_UNITS = 1 << 14


@dataclass(frozen=True)
class Unit:
    """Bytes ``[start, stop)`` of a file, decoded together and cached under ``key``."""

    start: int
    stop: int
    key: Hashable
    load: Loader
    what: str  # for log lines: the tensor or file it belongs to


@dataclass
class VersionFile:
    """One file of one version: its size and the units its bytes come from."""

    path: str
    size: int
    mtime: float
    exact: bool
    sha256: str | None  # the file's own hash, where the add recorded it
    units: list[Unit]
    starts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.starts = [u.start for u in self.units]

    def span(self, start: int, stop: int) -> range:
        """Indexes of the units that overlap ``[start, stop)``."""
        stop = min(stop, self.size)
        if start >= stop or not self.units:
            return range(0)
        first = max(bisect.bisect_right(self.starts, start) - 1, 0)
        last = bisect.bisect_left(self.starts, stop)
        return range(first, last)


class FileReader:
    """Builds :class:`VersionFile` layouts and reads byte ranges of them through one cache."""

    def __init__(self, store: StoreView, cache: DecodedCache, *, verify: bool = True, unit_bytes: int = UNIT_BYTES):
        self.store = store
        self.cache = cache
        self.verify = verify
        self.unit_bytes = max(unit_bytes, 1)
        self._layouts: dict[tuple[str, str], VersionFile] = {}
        self._shared = _CachedStore(store, cache) if verify else store

    # -- layout ---------------------------------------------------------------------------------
    def layout(self, manifest_oid: str, f: FileEntry, mtime: float = 0.0) -> VersionFile:
        key = (manifest_oid, f.path)
        vf = self._layouts.get(key)
        if vf is None:
            units = self._units(manifest_oid, f)
            vf = self._layouts[key] = VersionFile(f.path, f.size, mtime, f.exact, f.sha256, units)
        return vf

    def _units(self, manifest_oid: str, f: FileEntry) -> list[Unit]:
        if f.kind == "blob":
            if not f.object:
                raise CorruptObjectError(manifest_oid, f"{f.path} names no object")
            return [self._blob_unit(f.object, 0, f.size, f.path)] if f.size else []
        if f.kind != "safetensors" or not f.header:
            raise CorruptObjectError(manifest_oid, f"{f.path}: unknown file kind {f.kind!r}")
        head = f.size - sum(t.nbytes for t in f.tensors)
        if head < 8:
            raise CorruptObjectError(manifest_oid, f"{f.path}: sizes leave {head} bytes for the safetensors header")
        units = [self._blob_unit(f.header, 0, head, f"{f.path} (header)")]
        pos = head
        step = max(self.unit_bytes, -(-(f.size - head) // MAX_FILE_UNITS))
        for t in f.tensors:
            if t.nbytes:
                units.extend(self._tensor_units(manifest_oid, t, pos, f.path, step))
            pos += t.nbytes
        return units

    def _blob_unit(self, oid: str, start: int, size: int, what: str) -> Unit:
        def load() -> np.ndarray:
            # always verified (blobs are small); no larger than the manifest says, checked against
            # the object's own frame before decoding (a planted manifest may name any object)
            data = self.store.objects.get(oid, max_size=size)
            if len(data) != size:
                raise CorruptObjectError(oid, f"{what} is {len(data)} bytes, the manifest says {size}")
            return np.frombuffer(data, dtype=np.uint8)

        return Unit(start, start + size, ("blob", oid), load, what)

    def _tensor_units(self, manifest_oid: str, t: TensorEntry, pos: int, path: str, step: int) -> list[Unit]:
        owner, e = stored_entry(self.store, manifest_oid, t)
        what = f"{path}: {t.name}"
        if e.source == "delta":
            def load_delta() -> np.ndarray:
                # (rebuilt by recursing down the base chain: one too deep is said to be, not a RecursionError)
                chains.check_manifest_depth(self.store, owner, f"the version of manifest {manifest_oid}")
                return tensor_bytes(self._shared, owner, e)

            return [Unit(pos, pos + t.nbytes, ("delta", owner, e.name), load_delta, what)]
        if e.source != "tensor":
            raise CorruptObjectError(owner, f"unknown tensor source {e.source!r}")
        if e.object != "sha256:" + e.sha256:
            raise CorruptObjectError(owner, f"tensor {e.name!r} names object {e.object}, not its own sha256")
        oid, n = e.object, e.nbytes
        if self.verify:
            def load_whole() -> np.ndarray:
                out = self.store.objects.get_array(oid, verify=True, nbytes=n)
                if out.size != n:
                    raise CorruptObjectError(oid, f"tensor {e.name!r} decodes to {out.size} bytes, the manifest says {n}")
                return out

            return [Unit(pos, pos + n, ("tensor", oid), load_whole, what)]
        units = []
        for lo in range(0, n, step):
            hi = min(lo + step, n)

            def load_seg(lo: int = lo, hi: int = hi) -> np.ndarray:
                out = self.store.objects.get_range_array(oid, lo, hi)
                if out.size != hi - lo:
                    raise CorruptObjectError(oid, f"tensor {e.name!r} is shorter than the manifest says")
                return out

            units.append(Unit(pos + lo, pos + hi, ("segment", oid, lo, hi), load_seg, what))
        return units

    # -- reading --------------------------------------------------------------------------------
    def read(self, vf: VersionFile, start: int, stop: int, *, readahead: bool = False) -> bytes:
        """Bytes ``[start, stop)`` of the file (shorter at its end). With ``readahead`` the unit
        after the last one read starts decoding in the background."""
        span = self.span_arrays(vf, start, stop, readahead=readahead)
        if not span:
            return b""
        if len(span) == 1:
            return span[0].tobytes()
        return b"".join(span)

    def span_arrays(self, vf: VersionFile, start: int, stop: int, *, readahead: bool = False) -> list[np.ndarray]:
        """:meth:`read` as views into the cached units (no copy)."""
        out = []
        stop = min(stop, vf.size)
        idx = vf.span(start, stop)
        for i in idx:
            u = vf.units[i]
            arr = self.cache.get(u.key, u.load)
            out.append(arr[max(start - u.start, 0) : min(stop, u.stop) - u.start])
        if readahead and len(idx) and idx[-1] + 1 < len(vf.units):
            u = vf.units[idx[-1] + 1]
            self.cache.prefetch(u.key, u.load)
        return out


class _CachedObjects:
    """``store.objects`` for ``tensor_bytes`` under the mount: a verified tensor object comes from
    the shared cache (key ``("tensor", oid)``, the key of the base's own units), so the base
    tensors under many fine-tunes are decoded and hashed once. The caller gets a copy: a codec may
    treat its base as its own, and the cached unit is what other readers are served."""

    def __init__(self, objects: Any, cache: DecodedCache):
        self._objects = objects
        self._cache = cache

    def get_array(self, oid: str, *, verify: bool = True, nbytes: int | None = None,
                  out: np.ndarray | None = None, scratch: Scratch | None = None) -> np.ndarray:
        """As ``ObjectDB.get_array``; ``out``: where the caller's copy goes (a checkout's window),
        instead of a new array that the caller then copies again; ``scratch`` as there."""
        if out is not None and (nbytes is None or out.size != nbytes):
            raise ValueError("get_array: out must be given with nbytes, and hold exactly nbytes")
        if not verify:
            return self._objects.get_array(oid, verify=False, nbytes=nbytes, out=out, scratch=scratch)
        arr = self._cache.get(("tensor", oid), lambda: self._objects.get_array(oid, verify=True, nbytes=nbytes,
                                                                              scratch=scratch))
        if nbytes is not None and arr.size != nbytes:
            raise CorruptObjectError(oid, f"decodes to {arr.size} bytes, not the {nbytes} expected")
        if out is None:
            return arr.copy()
        out[:] = arr
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._objects, name)


class _CachedStore:
    """The store as ``tensor_bytes`` sees it from the mount: everything as it is but ``objects``."""

    def __init__(self, store: StoreView, cache: DecodedCache):
        self._store = store
        self.objects = _CachedObjects(store.objects, cache)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


# ------------------------------------------------------------------------------------------------
@dataclass
class ModelView:
    versions: dict[int, tuple[str, float]]  # number -> (manifest id, created_at as a timestamp)
    tags: dict[str, int]  # tag -> version number
    fetched: float

    @property
    def latest(self) -> int | None:
        return max(self.versions) if self.versions else None


@dataclass
class VersionTree:
    """A version's files and the folders they imply (``a/b.json`` makes folder ``a``)."""

    files: dict[str, FileEntry]
    dirs: dict[str, list[str]]  # folder ("" is the version's root) -> child names, in order


def _ts(d: dt.datetime | None) -> float:
    if d is None:
        return 0.0
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return d.timestamp()


class CatalogView:
    """Models, versions and tags with a ``ttl`` (seconds), and each version's file tree."""

    def __init__(self, store: StoreView, *, ttl: float = 1.0):
        self.store = store
        self.ttl = ttl
        self._lock = threading.Lock()
        self._names: tuple[float, list[str]] | None = None
        self._models: dict[str, ModelView] = {}
        self._trees: dict[str, VersionTree] = {}

    def model_names(self) -> list[str]:
        now = time.monotonic()
        cached = self._names
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        with self.store.Session() as s:
            names = [n for n in s.scalars(select(Model.name).order_by(Model.name)) if _listable(n, "model name")]
        self._names = (now, names)
        return names

    def model(self, name: str, *, fresh: bool = False) -> ModelView | None:
        """A model's versions and tags, read again after ``ttl`` seconds or when ``fresh``."""
        now = time.monotonic()
        mv = self._models.get(name)
        if mv is not None and not fresh and now - mv.fetched < self.ttl:
            return mv
        with self.store.Session() as s:
            mid = s.scalar(select(Model.id).where(Model.name == name))
            if mid is None:
                self._models.pop(name, None)
                return None
            rows = s.execute(select(Version.number, Version.manifest, Version.created_at).where(Version.model_id == mid)).all()
            tags = s.execute(select(Tag.name, Version.number).join(Version, Tag.version_id == Version.id)
                             .where(Tag.model_id == mid)).all()
        mv = ModelView({n: (m, _ts(c)) for n, m, c in rows}, {t: n for t, n in tags if _listable(t, "tag name")}, now)
        self._models[name] = mv
        return mv

    def tree(self, manifest_oid: str) -> VersionTree:
        tree = self._trees.get(manifest_oid)
        if tree is not None:
            return tree
        man = self.store.manifest(manifest_oid)
        files: dict[str, FileEntry] = {}
        dirs: dict[str, list[str]] = {"": []}
        for f in man.files:
            if not plain_path(f.path):
                log.warning("manifest %s lists the unsafe path %r: not shown", manifest_oid, f.path)
                continue
            parts = f.path.split("/")
            for i in range(len(parts)):
                parent, child = "/".join(parts[:i]), parts[i]
                if i < len(parts) - 1:
                    sub = "/".join(parts[: i + 1])
                    if sub in files:
                        break  # a file and a folder of one name: keep the file
                    if sub not in dirs:
                        dirs[sub] = []
                        dirs[parent].append(child)
                elif f.path not in dirs and f.path not in files:
                    files[f.path] = f
                    dirs[parent].append(child)
        tree = self._trees[manifest_oid] = VersionTree(files, dirs)
        return tree


_unlisted: set[str] = set()  # names already logged as left out (once each per process)


def _listable(name: object, what: str) -> bool:
    """A catalog's model or tag name that a listing may show: one the store itself would accept
    (refs.check_name: no '/', '..', control characters). A row written by other hands may hold
    anything, and one name with a '/' made the kernel fail the whole listing (EIO)."""
    try:
        check_name(name, what)  # type: ignore[arg-type]
    except BadNameError:
        if name not in _unlisted and len(_unlisted) < 1000:
            _unlisted.add(name)  # type: ignore[arg-type]
            log.warning("the catalog holds the %s %r, which no REF can name: not listed", what, name)
        return False
    return True


def plain_path(rel: object) -> bool:
    """A manifest path that names a file inside the version: UTF-8 text, relative, no ``..``,
    ``.``, empty or control-character parts, no backslashes (the rules ``materialize.safe_dest``
    applies). A lone surrogate is no file name: FUSE encodes every name it lists, and one such
    name failed the whole listing of its version."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        return False
    if not is_text(rel):
        return False
    return not any(p in ("", ".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in p) for p in rel.split("/"))
