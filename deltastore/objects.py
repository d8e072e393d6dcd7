"""Immutable objects named by the SHA-256 of their logical bytes.

Every object decodes to one byte string, its *logical* content: a file's bytes (blob), a tensor's
raw little-endian bytes (tensor), a codec payload (delta), canonical manifest JSON (manifest). Its
id is ``sha256:<hex>`` of those bytes, so any object can be re-hashed after decoding (``verify``)
and identical content is stored once whatever the kind. On the backend it lives at
``objects/ab/cdef...`` in a small frame::

    b"DSO1"  u8 kind (b t d m)  u8 coding (0 zstd, 1 byte-plane stream, 2 raw)  u16 reserved  body

Objects are written once (temp + rename, or one PUT) and never modified; only ``gc`` deletes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np
import zstandard

from .backend import Backend
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


@dataclass(frozen=True)
class PutResult:
    oid: str
    logical: int  # bytes it decodes to
    stored: int  # bytes on the backend (frame included)
    new: bool  # False when it was already there (deduplicated)


class ObjectDB:
    def __init__(self, backend: Backend):
        self.backend = backend

    # -- writing -------------------------------------------------------------------------------
    def _put(self, oid: str, kind: str, coding: int, body_fn, logical: int) -> PutResult:
        key = key_of(oid)
        size = self.backend.size(key)
        if size is not None:
            self.backend.touch(key)  # an add in progress needs it: keep it out of gc's reach
            return PutResult(oid, logical, size, False)
        body = body_fn()
        frame = _FRAME.pack(MAGIC, KINDS[kind], bytes([coding]), 0)
        data = frame + body
        self.backend.put(key, data)
        return PutResult(oid, logical, len(data), True)

    def put_bytes(self, data: bytes, kind: str = "blob") -> PutResult:
        oid = oid_of(data)
        return self._put(oid, kind, ZSTD, lambda: zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data), len(data))

    def put_tensor(self, raw: bytes | bytearray | memoryview, width: int, is_float: bool, oid: str | None = None) -> PutResult:
        oid = oid or oid_of(raw)
        return self._put(oid, "tensor", PLANES, lambda: planes.compress(raw, width, rotate=is_float, level=ZSTD_LEVEL), len(raw))

    def put_raw(self, data: bytes, kind: str) -> PutResult:
        """Already-compressed payloads (codec output): stored as they are."""
        return self._put(oid_of(data), kind, RAW, lambda: data, len(data))

    # -- reading -------------------------------------------------------------------------------
    def _frame(self, oid: str) -> tuple[str, int, memoryview]:
        data = self.backend.get(key_of(oid))
        if data is None:
            raise ObjectMissingError(oid)
        if len(data) < _FRAME.size:
            raise CorruptObjectError(oid, "truncated frame")
        magic, kind, coding, _ = _FRAME.unpack(data[: _FRAME.size])
        if magic != MAGIC or kind not in KIND_NAMES:
            raise CorruptObjectError(oid, "bad frame header")
        return KIND_NAMES[kind], coding[0], memoryview(data)[_FRAME.size :]

    def get(self, oid: str, *, verify: bool = True) -> bytes:
        """The logical bytes; with ``verify`` they are re-hashed against the id."""
        kind, coding, body = self._frame(oid)
        try:
            if coding == ZSTD:
                out = zstandard.ZstdDecompressor().decompress(body)
            elif coding == PLANES:
                out = planes.decompress(body).tobytes()
            elif coding == RAW:
                out = bytes(body)
            else:
                raise CorruptObjectError(oid, f"unknown coding {coding}")
        except (zstandard.ZstdError, CorruptPayloadError) as e:
            raise CorruptObjectError(oid, str(e)) from None
        if verify and oid_of(out) != oid:
            raise CorruptObjectError(oid, "content does not hash to its id")
        return out

    def get_array(self, oid: str, *, verify: bool = True) -> np.ndarray:
        """Logical bytes as a writable uint8 array (tensor objects decode without an extra copy)."""
        kind, coding, body = self._frame(oid)
        if coding != PLANES:
            return np.frombuffer(bytearray(self.get(oid, verify=verify)), dtype=np.uint8)
        try:
            out = planes.decompress(body)
        except CorruptPayloadError as e:
            raise CorruptObjectError(oid, str(e)) from None
        if verify and oid_of(out) != oid:
            raise CorruptObjectError(oid, "content does not hash to its id")
        return out

    def get_range(self, oid: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of a tensor object, decoding only the chunks that cover them."""
        kind, coding, body = self._frame(oid)
        if coding != PLANES:
            return self.get(oid)[start:stop]
        try:
            return planes.decompress_range(body, start, stop).tobytes()
        except CorruptPayloadError as e:
            raise CorruptObjectError(oid, str(e)) from None

    def kind(self, oid: str) -> str:
        return self._frame(oid)[0]

    def exists(self, oid: str) -> bool:
        return self.backend.exists(key_of(oid))

    def stored_size(self, oid: str) -> int | None:
        return self.backend.size(key_of(oid))

    def verify(self, oid: str) -> None:
        """Raise ObjectMissingError / CorruptObjectError unless the object decodes to its id."""
        self.get(oid, verify=True)

    def all_oids(self) -> list[str]:
        out = []
        for key in self.backend.list("objects"):
            oid = oid_of_key(key)
            if oid is not None:
                out.append(oid)
        return out

    def delete(self, oid: str) -> None:
        self.backend.delete(key_of(oid))
