"""Immutable objects named by the SHA-256 of their logical bytes.

Every object decodes to one byte string, its *logical* content: a file's bytes (blob), a tensor's
raw little-endian bytes (tensor), a codec payload (delta), canonical manifest JSON (manifest). Its
id is ``sha256:<hex>`` of those bytes, so any object can be re-hashed after decoding (``verify``)
and identical content is stored once whatever the kind. On the backend it lives at
``objects/ab/cdef...`` in a small frame::

    b"DSO1"  u8 kind (b t d m)  u8 coding (0 zstd, 1 byte-plane stream, 2 raw)  u16 reserved  body

Objects are written once (temp + rename, or one PUT) and never modified; only ``gc`` deletes.
Nothing read back is trusted: a frame's claimed decoded size is checked against what the caller
expects (the manifest's size) before anything is allocated, and every failure to decode is a
:class:`CorruptObjectError`. On a file system an add that finds its object already stored checks
the stored size and frame first (``stored_problem``) and rewrites a torn one.
"""

from __future__ import annotations

import bisect
import ctypes
import hashlib
import mmap
import os
import struct
import sys
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import zstandard

from . import libc
from .backend import Backend, Unreadable
from .codec import planes
from .codec.errors import CorruptPayloadError
from .errors import CorruptObjectError, ObjectMissingError

MAGIC = b"DSO1"
_FRAME = struct.Struct("<4sccH")
KINDS = {"blob": b"b", "tensor": b"t", "delta": b"d", "manifest": b"m"}
KIND_NAMES = {v: k for k, v in KINDS.items()}
ZSTD, PLANES, RAW = 0, 1, 2
PREFIX = "objects/"
ZSTD_LEVEL = 3
#: decoded size allowed when the caller does not know it (a manifest, a header): a frame that
#: claims more is refused before anything is allocated
MAX_DECODED = 1 << 34
#: zstd-coded objects (files, headers, manifests) up to this size are decoded and re-hashed whole
#: when an add finds them already stored on a file system
SMALL_CHECKED_WHOLE = 64 << 20
#: a manifest object may decode to at most this much (a 1000-shard model's is a few MiB)
MAX_MANIFEST = 256 << 20
#: the plane stream's fixed header (codec/planes.py): magic, width, flags, reserved, nchunks, raw_total
_STREAM_HEAD = struct.Struct("<4sBBHIQ")
_TABLES_KEPT = 4096
#: ``write_tensor`` reads a tensor object this many stored bytes at a time (at least one chunk)
SLAB_BYTES = 8 << 20


def oid_of(data: bytes | bytearray | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_oid(oid: str) -> str:
    """The hex digest of an id, checked, so an id can never become a path outside objects/."""
    algo, _, hexd = oid.partition(":")
    if algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise ValueError(f"not an object id: {oid!r}")
    return hexd


def key_of(oid: str) -> str:
    h = parse_oid(oid)
    return f"{PREFIX}{h[:2]}/{h[2:]}"


def oid_of_key(key: str) -> str | None:
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "objects" or len(parts[1]) != 2 or len(parts[2]) != 62:
        return None
    oid = f"sha256:{parts[1]}{parts[2]}"
    try:
        parse_oid(oid)
    except ValueError:
        return None
    return oid


def stored_bound(nbytes: int) -> int:
    """The most bytes an object of ``nbytes`` logical bytes can hold in any coding written here,
    generously: raw, zstd (at most n/256 more), or plane streams (planes stored raw at worst, plus a
    chunk table of 48 bytes or less a chunk of 4 MiB) with the frame's header. A larger file named
    like an object (a sparse terabyte in a shared folder) is refused before it is read."""
    return nbytes + nbytes // 16 + (1 << 20)


def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    """Write all of ``view`` to ``fd`` at ``offset`` (pwrite may write less than asked)."""
    done = 0
    while done < view.nbytes:
        w = os.pwrite(fd, view[done:], offset + done)
        if w <= 0:
            raise OSError(f"pwrite wrote nothing at {offset + done}")
        done += w


class Scratch(Protocol):
    """Buffers a read can borrow and hand back (``pipeline.BufferPool``)."""

    def take(self, n: int) -> np.ndarray: ...

    def give(self, arr: np.ndarray) -> None: ...


@dataclass(frozen=True)
class ChunkTable:
    """A tensor object's chunk table (codec/planes.py's stream layout): chunk ``i`` holds raw
    bytes ``[raw_offsets[i], raw_offsets[i+1])`` and lies at ``[stored_offsets[i],
    stored_offsets[i+1])`` of the backend object (frame included); ``entries`` are its table
    entries verbatim, so the chunks a range needs can be decoded as a stream of their own."""

    width: int
    rotate: bool
    raw_total: int
    raw_offsets: list[int]
    stored_offsets: list[int]
    entries: list[bytes]


@dataclass(frozen=True)
class PutResult:
    oid: str
    logical: int  # bytes it decodes to
    stored: int  # bytes on the backend (frame included)
    new: bool  # False when it was already there (deduplicated)


class ObjectDB:
    def __init__(self, backend: Backend):
        self.backend = backend
        self._tables: dict[str, ChunkTable] = {}  # chunk tables of tensor objects, for ranged reads

    # -- writing -------------------------------------------------------------------------------
    def _put(self, oid: str, kind: str, coding: int, framed_fn, logical: int, defer: bool = False) -> PutResult:
        """Store ``framed_fn(frame)`` (the frame and the encoded body: one buffer, or a list of
        buffers written in turn) as ``oid``, unless a whole copy is there already; the encode
        runs only when it is written. ``defer``: see ``Backend.put`` (the object may not exist
        until ``backend.flush()``)."""
        key = key_of(oid)
        size = self.backend.size(key)
        if size is not None:
            # gc cannot delete it under us: adds and gc exclude each other (maintenance.py). On a
            # file system a crash may have left it torn: reuse it only if its frame is whole.
            if not self.backend.capabilities.torn_possible or self.stored_problem(oid, logical) is None:
                return PutResult(oid, logical, size, False)
            self._tables.pop(oid, None)
        data = framed_fn(_FRAME.pack(MAGIC, KINDS[kind], bytes([coding]), 0))
        size = sum(memoryview(b).nbytes for b in data) if isinstance(data, list) else memoryview(data).nbytes
        self.backend.put(key, data, defer=defer)
        return PutResult(oid, logical, size, True)

    def put_bytes(self, data: bytes, kind: str = "blob") -> PutResult:
        oid = oid_of(data)
        return self._put(oid, kind, ZSTD, lambda f: [f, zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)], len(data))

    def put_tensor(self, raw: bytes | bytearray | memoryview | np.ndarray, width: int, is_float: bool,
                   oid: str | None = None, *, defer: bool = False) -> PutResult:
        """A tensor's raw bytes as a byte-plane stream, written part by part after its frame (the
        planes' frames and stored planes as they come: no copy of the stream to frame it)."""
        oid = oid or oid_of(raw)
        return self._put(oid, "tensor", PLANES,
                         lambda f: planes.compress_parts(raw, width, f, rotate=is_float, level=ZSTD_LEVEL), len(raw), defer)

    def put_raw(self, data: bytes | list, kind: str, *, defer: bool = False) -> PutResult:
        """Already-compressed payloads (codec output): stored as they are, after the frame.
        ``data``: one buffer, or a list of buffers that make the payload in turn (hashed and
        written one after another, never joined: ``codec.serialize.to_parts``)."""
        if not isinstance(data, list):
            return self._put(oid_of(data), kind, RAW, lambda f: [f, data], len(data), defer)
        parts = [memoryview(p).cast("B") for p in data]
        h = hashlib.sha256()
        for p in parts:
            h.update(p)  # hashlib releases the GIL for large buffers
        return self._put("sha256:" + h.hexdigest(), kind, RAW, lambda f: [f, *parts], sum(p.nbytes for p in parts), defer)

    # -- reading -------------------------------------------------------------------------------
    def _read(self, oid: str, logical: int | None = None, scratch: Scratch | None = None) -> bytes | np.ndarray | None:
        """The object's stored bytes (None if missing), read no further than any coding of
        ``logical`` bytes (default :data:`MAX_DECODED`) can take (:func:`stored_bound`): a larger
        file (a sparse terabyte named like an object in a shared folder) is refused unread, and
        before anything is borrowed from ``scratch`` (where given, the bytes are read into it:
        :meth:`Backend.get_into`)."""
        logical = MAX_DECODED if logical is None else logical
        key, bound = key_of(oid), stored_bound(logical)
        try:
            return self.backend.get(key, max_bytes=bound) if scratch is None else self.backend.get_into(key, scratch.take, bound)
        except Unreadable as e:
            raise CorruptObjectError(oid, f"{e} (more than any coding of {logical} bytes takes)") from None

    def _frame(self, oid: str, logical: int | None = None) -> tuple[str, int, memoryview]:
        return self._framed(oid, self._read(oid, logical))

    @staticmethod
    def _framed(oid: str, data: bytes | None) -> tuple[str, int, memoryview]:
        if data is None:
            raise ObjectMissingError(oid)
        if len(data) < _FRAME.size:
            raise CorruptObjectError(oid, "truncated frame")
        magic, kind, coding, _ = _FRAME.unpack(data[: _FRAME.size])
        if magic != MAGIC or kind not in KIND_NAMES:
            raise CorruptObjectError(oid, "bad frame header")
        return KIND_NAMES[kind], coding[0], memoryview(data)[_FRAME.size :]

    def get(self, oid: str, *, verify: bool = True, max_size: int | None = None) -> bytes:
        """The logical bytes; with ``verify`` they are re-hashed against the id. ``max_size``
        (what the manifest says the object decodes to) is checked against the frame's own
        claim before anything is allocated: a hostile frame cannot make us allocate more."""
        kind, coding, body = self._frame(oid, max_size)
        cap = (MAX_MANIFEST if kind == "manifest" else MAX_DECODED) if max_size is None else max_size
        try:
            if coding == ZSTD:
                claimed = zstandard.frame_content_size(body)
                if claimed < 0:  # deltastore always writes the size; without it zstd would guess
                    raise CorruptObjectError(oid, "zstd frame does not say its size")
                if claimed > cap:
                    raise CorruptObjectError(oid, f"decodes to {claimed} bytes, more than the {cap} expected")
                out = zstandard.ZstdDecompressor().decompress(body)
            elif coding == PLANES:
                _check_planes_size(oid, body, cap)
                out = planes.decompress(body).tobytes()
            elif coding == RAW:
                if len(body) > cap:
                    raise CorruptObjectError(oid, f"holds {len(body)} bytes, more than the {cap} expected")
                out = bytes(body)
            else:
                raise CorruptObjectError(oid, f"unknown coding {coding}")
        except (zstandard.ZstdError, CorruptPayloadError, ValueError, OverflowError, MemoryError, struct.error) as e:
            raise CorruptObjectError(oid, f"does not decode: {e}") from None
        if verify and oid_of(out) != oid:
            raise CorruptObjectError(oid, "content does not hash to its id")
        if max_size is not None and len(out) > max_size:
            raise CorruptObjectError(oid, f"decodes to {len(out)} bytes, more than the {max_size} expected")
        return out

    def get_view(self, oid: str, *, verify: bool = True, max_size: int | None = None) -> bytes | memoryview:
        """:meth:`get`, but a stored-as-is payload (a codec's delta) comes back as a view of the
        bytes read, not copied: ``bytes(view)`` copied it with the GIL held, once per delta on
        every fine-tune checkout. Other codings decode to new bytes as :meth:`get` does.
        ``max_size``: as :meth:`get`'s."""
        kind, coding, body = self._frame(oid, max_size)
        if coding != RAW:
            return self.get(oid, verify=verify, max_size=max_size)
        if max_size is not None and len(body) > max_size:
            raise CorruptObjectError(oid, f"holds {len(body)} bytes, more than the {max_size} expected")
        if verify and oid_of(body) != oid:
            raise CorruptObjectError(oid, "content does not hash to its id")
        return body

    def get_array(self, oid: str, *, verify: bool = True, nbytes: int | None = None, out: np.ndarray | None = None,
                  scratch: Scratch | None = None) -> np.ndarray:
        """Logical bytes as a writable uint8 array (tensor objects decode without an extra copy).
        ``nbytes``: what it must decode to, checked against the stream's header before allocating.
        ``out``: a uint8 array of exactly ``nbytes`` to decode into (a checkout's window onto the
        file it writes), instead of a new array. ``scratch``: where the stored object is read into
        and handed back to once decoded (``pipeline.BufferPool``; :meth:`Backend.get_into`)."""
        if out is not None and (nbytes is None or out.size != nbytes):
            raise ValueError("get_array: out must be given with nbytes, and hold exactly nbytes")
        data = self._read(oid, nbytes, scratch)
        try:
            kind, coding, body = self._framed(oid, data)
            if coding != PLANES:
                got = np.frombuffer(bytearray(self.get(oid, verify=verify, max_size=nbytes)), dtype=np.uint8)
                if nbytes is not None and got.size != nbytes:
                    raise CorruptObjectError(oid, f"decodes to {got.size} bytes, not the {nbytes} expected")
                if out is None:
                    return got
                out[:] = got
                return out
            try:
                _check_planes_size(oid, body, MAX_DECODED if nbytes is None else nbytes, exact=nbytes is not None)
                out = planes.decompress(body, out=out)
            except (CorruptPayloadError, ValueError, OverflowError, MemoryError, struct.error) as e:
                raise CorruptObjectError(oid, f"does not decode: {e}") from None
            del body
            if sys.getrefcount(data) == 2:  # decoded, and held nowhere else: its pages can go now
                _discard(data)
            if verify and oid_of(out) != oid:
                raise CorruptObjectError(oid, "content does not hash to its id")
            return out
        finally:
            if isinstance(data, np.ndarray):
                scratch.give(data)  # read into it: nothing decoded views it

    def write_tensor(self, oid: str, nbytes: int, fd: int, offset: int, *, verify: bool = True) -> bool:
        """A tensor object's bytes written to the open file ``fd`` at ``offset`` by ``pwrite``, one
        stream chunk at a time on the calling thread (:func:`planes.decompress_each`): each chunk is
        decoded into this thread's scratch, hashed and written while it is in cache. A checkout's
        mapped window instead has the kernel allocate and zero every page first (MAP_POPULATE),
        then the decode write it and the hash read it back from memory: on the dev VM 1.0-2.0
        CPU-s/GB for the window's pages against 0.3-0.6 for ``pwrite`` from a cached buffer. The
        object is read a few chunks at a time (:data:`SLAB_BYTES`, ranged reads after its chunk
        table), not whole: a 60 MB read into a new ``bytes`` cost 1.06 CPU-s/GB (a fresh mapping
        and its page faults) against 0.30 for 4 MiB reads (benchmarks/probe_object_read.py).

        ``nbytes``: what it must hold (checked before anything is written). False (nothing
        written) where the object is not a plain plane stream: the caller decodes it as before.
        With ``verify``, bytes that do not hash to the id are a :class:`CorruptObjectError` after
        they were written (the caller discards the file)."""
        table = self.chunk_table(oid)
        if table is None:
            return False
        if table.raw_total != nbytes:
            raise CorruptObjectError(oid, f"decodes to {table.raw_total} bytes, not the {nbytes} expected")
        h, n = hashlib.sha256(), len(table.entries)

        def emit(pos: int, chunk: np.ndarray) -> None:
            if verify:
                h.update(chunk)
            pwrite_all(fd, memoryview(chunk), offset + pos)

        first = 0
        while first < n:
            last = first + 1  # one past the slab's last chunk
            while last < n and table.stored_offsets[last + 1] - table.stored_offsets[first] <= SLAB_BYTES:
                last += 1
            head, body = self._chunks(oid, table, first, last)
            base = table.raw_offsets[first]
            try:
                planes.decompress_each(head, lambda pos, chunk: emit(base + pos, chunk), body=body)
            except (CorruptPayloadError, ValueError, OverflowError, MemoryError, struct.error) as e:
                raise CorruptObjectError(oid, f"does not decode: {e}") from None
            first = last
        if verify and "sha256:" + h.hexdigest() != oid:
            raise CorruptObjectError(oid, "content does not hash to its id")
        return True

    def get_range(self, oid: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of a tensor object, fetching from the backend and decoding only
        the chunks that cover them (the frame and chunk table first, then one ranged read of those
        chunks' payloads). Other codings are fetched whole. Nothing here is hashed: a byte range
        cannot be checked against the id of the whole object, so callers that must never return
        wrong bytes verify the whole object once (``get_array``) or use ``get``."""
        return self.get_range_array(oid, start, stop).tobytes()

    def get_range_array(self, oid: str, start: int, stop: int) -> np.ndarray:
        """:meth:`get_range` as a uint8 array (no extra copy)."""
        table = self.chunk_table(oid)
        if table is None:
            return np.frombuffer(self.get(oid), dtype=np.uint8)[start:stop]
        stop = min(stop, table.raw_total)
        if start >= stop:
            return np.empty(0, dtype=np.uint8)
        first = bisect.bisect_right(table.raw_offsets, start) - 1
        last = bisect.bisect_left(table.raw_offsets, stop)  # one past the last chunk needed
        head, body = self._chunks(oid, table, first, last)
        try:
            out = planes.decompress(head + body)
        except CorruptPayloadError as e:
            raise CorruptObjectError(oid, str(e)) from None
        base = table.raw_offsets[first]
        return out[start - base : stop - base]

    def _chunks(self, oid: str, table: "ChunkTable", first: int, last: int) -> tuple[bytes, bytes]:
        """Chunks ``[first, last)`` of a tensor object as a plane stream of their own: (its header
        and chunk table, built from ``table``; their payloads, one ranged read of the backend)."""
        lo, hi = table.stored_offsets[first], table.stored_offsets[last]
        body = self.backend.get_range(key_of(oid), lo, hi)
        if body is None:
            raise ObjectMissingError(oid)
        if len(body) != hi - lo:
            raise CorruptObjectError(oid, f"object is shorter than its chunk table says ({lo + len(body)} < {hi} bytes)")
        head = b"".join([_STREAM_HEAD.pack(planes.MAGIC, table.width, planes.FLAG_ROTATE if table.rotate else 0, 0,
                                           last - first, table.raw_offsets[last] - table.raw_offsets[first]),
                         *table.entries[first:last]])
        return head, body

    def chunk_table(self, oid: str) -> "ChunkTable | None":
        """Where each chunk of a tensor object lies on the backend, read with ranged reads of its
        frame and table only (cached: objects never change); None for objects that are not
        chunked plane streams."""
        table = self._tables.get(oid)
        if table is not None:
            return table
        key = key_of(oid)
        head = self.backend.get_range(key, 0, _FRAME.size + _STREAM_HEAD.size)
        if head is None:
            raise ObjectMissingError(oid)
        if len(head) < _FRAME.size:
            raise CorruptObjectError(oid, "truncated frame")
        magic, kind, coding, _ = _FRAME.unpack(head[: _FRAME.size])
        if magic != MAGIC or kind not in KIND_NAMES:
            raise CorruptObjectError(oid, "bad frame header")
        if coding[0] != PLANES:
            return None
        if len(head) < _FRAME.size + _STREAM_HEAD.size:
            raise CorruptObjectError(oid, "plane stream is truncated (header)")
        smagic, width, flags, _, nchunks, raw_total = _STREAM_HEAD.unpack(head[_FRAME.size :])
        if smagic != planes.MAGIC:
            return None  # another stream layout: read whole
        if width not in (1, 2, 4, 8):
            raise CorruptObjectError(oid, "not a plane stream (bad width)")
        entry = 8 + 5 * width
        tpos = _FRAME.size + _STREAM_HEAD.size
        raw = self.backend.get_range(key, tpos, tpos + nchunks * entry) if nchunks else b""
        size = self.backend.size(key)
        if raw is None or size is None:
            raise ObjectMissingError(oid)
        if len(raw) != nchunks * entry:
            raise CorruptObjectError(oid, "plane stream is truncated (chunk table)")
        raw_offsets, stored_offsets, entries = [0], [tpos + nchunks * entry], []
        for i in range(nchunks):
            e = raw[i * entry : (i + 1) * entry]
            (rl,) = struct.unpack_from("<Q", e)
            plens = struct.unpack_from(f"<{width}I", e, 8)
            if rl % width:
                raise CorruptObjectError(oid, "plane stream chunk is not whole elements")
            raw_offsets.append(raw_offsets[-1] + rl)
            stored_offsets.append(stored_offsets[-1] + sum(plens))
            entries.append(bytes(e))
        if raw_offsets[-1] != raw_total:
            raise CorruptObjectError(oid, "plane stream chunk table does not add up")
        if stored_offsets[-1] != size:
            raise CorruptObjectError(oid, "plane stream is truncated or has trailing bytes")
        table = ChunkTable(width, bool(flags & planes.FLAG_ROTATE), raw_total, raw_offsets, stored_offsets, entries)
        if len(self._tables) >= _TABLES_KEPT:
            self._tables.clear()
        self._tables[oid] = table
        return table

    def stored_problem(self, oid: str, logical: int) -> str | None:
        """Why the stored object cannot be what ``logical`` bytes of content make, from its size
        and frame alone (no decompression of tensors): None when it looks whole. Catches what a
        crash can leave on a file system (an empty, truncated or zero-filled file); ``verify``
        re-hashes for everything else."""
        key = key_of(oid)
        try:
            head = self.backend.get_range(key, 0, _FRAME.size)
            size = self.backend.size(key)
            if head is None or size is None:
                return "missing"
            if len(head) < _FRAME.size:
                return "truncated frame"
            magic, kind, coding, _ = _FRAME.unpack(head)
            if magic != MAGIC or kind not in KIND_NAMES:
                return "bad frame header"
            body = size - _FRAME.size
            if coding[0] == RAW:
                return None if body == logical else f"holds {body} bytes, not {logical}"
            if coding[0] == PLANES:
                table = self.chunk_table(oid)  # checks the table adds up to the object's size
                return None if table is not None and table.raw_total == logical else "plane stream of another size"
            if coding[0] == ZSTD:
                if body <= SMALL_CHECKED_WHOLE:
                    self.get(oid, verify=True, max_size=logical)
                    return None
                claimed = zstandard.frame_content_size(self.backend.get_range(key, _FRAME.size, _FRAME.size + 18) or b"")
                return None if claimed == logical else "zstd frame of another size"
            return f"unknown coding {coding[0]}"
        except (CorruptObjectError, ObjectMissingError, zstandard.ZstdError) as e:
            return str(e)

    def kind(self, oid: str) -> str:
        return self._frame(oid)[0]

    def exists(self, oid: str) -> bool:
        return self.backend.exists(key_of(oid))

    def stored_size(self, oid: str) -> int | None:
        return self.backend.size(key_of(oid))

    def verify(self, oid: str, max_size: int | None = None) -> None:
        """Raise ObjectMissingError / CorruptObjectError unless the object decodes to its id (to at
        most ``max_size`` bytes, where given: read no further than that takes)."""
        self.get(oid, verify=True, max_size=max_size)

    def all_oids(self) -> list[str]:
        out = []
        for key in self.backend.list("objects"):
            oid = oid_of_key(key)
            if oid is not None:
                out.append(oid)
        return out

    def delete(self, oid: str) -> None:
        self.backend.delete(key_of(oid))


#: buffers from this size up have their pages handed back before they are freed (:func:`_discard`)
DISCARD_FROM = 16 << 20


def _discard(data: bytes) -> None:
    """Hand the pages of ``data`` (a large buffer about to be freed, that nothing else holds or
    views) back to the kernel with the GIL released: ``madvise(MADV_DONTNEED)`` through ctypes,
    on the whole pages inside it. Its free then unmaps a range with no pages left; that
    ``munmap`` tore every page down with the GIL held (an object read whole: 0.125 s a GB of
    object on the dev VM, on every base tensor of a fine-tune's add and checkout). Linux only;
    elsewhere, or below :data:`DISCARD_FROM`, nothing is done."""
    if type(data) is not bytes or len(data) < DISCARD_FROM:  # (a backend may hand back another buffer type)
        return
    madvise = libc.function("madvise", ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if madvise is None:
        return
    addr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value  # the bytes' own buffer, not a copy
    page = mmap.PAGESIZE
    lo, hi = -(-addr // page) * page, (addr + len(data)) // page * page
    if hi > lo:
        madvise(lo, hi - lo, 4)  # MADV_DONTNEED; a failure leaves the pages to free() as before


def _check_planes_size(oid: str, body: memoryview, cap: int, *, exact: bool = False) -> None:
    """The plane stream's claimed raw size against ``cap`` (or equal to it), before allocating."""
    if len(body) < _STREAM_HEAD.size:
        raise CorruptObjectError(oid, "plane stream is truncated (header)")
    raw_total = _STREAM_HEAD.unpack(body[: _STREAM_HEAD.size])[5]
    if raw_total > cap or (exact and raw_total != cap):
        raise CorruptObjectError(oid, f"decodes to {raw_total} bytes, not the {cap} expected")
