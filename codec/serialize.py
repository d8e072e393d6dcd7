"""Bytes for an :class:`Encoded` payload, and back.

Layout (little-endian): ``b"DSE1"``, u32 header length, the header as compact sorted JSON, then
each array's raw bytes in header order. The header names every array's dtype and shape, so the
reader never guesses and never unpickles anything.

The reader trusts nothing: every header field is type-checked, every array's size is checked
against the bytes left before anything is allocated (so memory stays within the buffer's size),
and then the payload is checked against what its codec would have written (``checks.py``). Any
malformed payload is a :class:`CorruptPayloadError`; a payload of a newer format than this
deltastore reads is a :class:`CodecError` that says to upgrade.
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

import numpy as np
import torch

from .base import Encoded
from .checks import check_payload
from .errors import CorruptPayloadError

MAGIC = b"DSE1"
#: Most dimensions an array or target shape may have (real tensors have 1-4).
MAX_NDIM = 8
#: Largest single dimension a header may name (far above any real tensor).
MAX_DIM = 2**40

_DTYPES = {
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "bool": torch.bool,
}


def header_bytes(enc: Encoded) -> bytes:
    """The serialized header (kept for callers; the bytes come from :meth:`Encoded.header_bytes`)."""
    return enc.header_bytes()


def to_bytes(enc: Encoded) -> bytes:
    """The serialized payload: :func:`to_parts` joined."""
    return b"".join(to_parts(enc))


def to_parts(enc: Encoded) -> list:
    """:func:`to_bytes`'s bytes as a list of buffers, in order: the magic, length and header as
    one ``bytes``, then each array's bytes viewed in place (uint8 numpy views, no copy). For a
    writer that hashes and writes buffers in turn (``ObjectDB.put_raw``): ``tobytes`` copied each
    array with the GIL held (a fresh buffer's page faults included), and the join copied it again."""
    head = enc.header_bytes()
    parts: list = [MAGIC + struct.pack("<I", len(head)) + head]
    for a in enc.arrays.values():
        t = a.detach().contiguous().cpu()
        parts.append(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return parts


def _bad(msg: str) -> CorruptPayloadError:
    return CorruptPayloadError(f"encoded delta header: {msg}")


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _shape(value: Any, what: str, array: str | None = None) -> tuple[tuple[int, ...], int]:
    """The checked shape as a tuple, and its elements. ``what`` names it in an error, or with
    ``array`` it is that array's shape (the name formatted only for an error: a reader checks
    every array's shape of every payload). ``type(s) is int``: a JSON integer is an exact
    ``int``, and a JSON ``true`` is a ``bool``, which is refused."""
    if not isinstance(value, list) or len(value) > MAX_NDIM:
        raise _bad(f"{_what(what, array)} must be a list of at most {MAX_NDIM} sizes, got {_short(value)}")
    span = numel = 1
    for s in value:
        if type(s) is not int or not 0 <= s <= MAX_DIM:
            raise _bad(f"{_what(what, array)} must hold integers in [0, {MAX_DIM}], got {_short(value)}")
        numel *= s  # Python integers: no overflow, compared with the buffer before any allocation
        span *= s or 1
    if span > MAX_DIM:  # even beside a 0 (no elements), torch's strides of such a shape overflow int64
        raise _bad(f"{_what(what, array)} spans more than {MAX_DIM} elements, got {_short(value)}")
    return tuple(value), numel


def _what(what: str, array: str | None) -> str:
    return what if array is None else f"array {array!r} {what}"


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise _bad(f"{what} must be a short string, got {_short(value)}")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: One decoder for every header (``json.loads`` with an argument builds a new one a call).
_JSON = json.JSONDecoder(parse_constant=_reject_constant)
_HEAD_KEYS = ("codec", "version", "params", "shape", "dtype", "arrays")
_SPEC_KEYS = frozenset({"name", "dtype", "shape"})
_LEN = struct.Struct("<I")


class _Spec(NamedTuple):
    """One array as the header describes it, checked: what :func:`from_bytes` reads it with."""

    name: str
    dtype: torch.dtype
    np_dtype: np.dtype | None  # numpy's dtype of the same bytes, None where numpy has none (bfloat16)
    shape: tuple[int, ...]
    nbytes: int
    itemsize: int


#: Each array dtype a header may name: its torch dtype, numpy's (None for bfloat16) and its bytes
#: an element, looked up once here rather than per array (``torch.empty((), dtype)`` a call).
_ARRAY_DTYPES = {
    name: (d, None if d is torch.bfloat16 else torch.empty((), dtype=d).numpy().dtype, d.itemsize)
    for name, d in _DTYPES.items()
}


def _parse(raw: bytes | memoryview) -> tuple[dict[str, Any], list[_Spec]]:
    """:func:`parse_header`'s work, plus each array's checked spec for the reader, so its fields
    are read and checked once."""
    try:
        head = _JSON.decode(str(raw, "utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _bad(f"not JSON: {e}") from None
    if not isinstance(head, dict):
        raise _bad(f"must be a JSON object, got {type(head).__name__}")
    for key in _HEAD_KEYS:
        if key not in head:
            raise _bad(f"lacks {key!r}")
    _str(head["codec"], "codec")
    v = head["version"]
    if type(v) is not int or not 1 <= v <= 2**16:
        raise _bad(f"version must be a positive integer, got {_short(v)}")
    if not isinstance(head["params"], dict):
        raise _bad(f"params must be an object, got {_short(head['params'])}")
    if not isinstance(head.get("meta", {}), dict):
        raise _bad(f"meta must be an object, got {_short(head['meta'])}")
    _shape(head["shape"], "shape")
    dtype = _str(head["dtype"], "dtype")
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise _bad(f"dtype {dtype!r} is not a torch dtype")
    if not isinstance(head["arrays"], list):
        raise _bad(f"arrays must be a list, got {_short(head['arrays'])}")
    specs: list[_Spec] = []
    names: set[str] = set()
    for spec in head["arrays"]:
        if not isinstance(spec, dict) or spec.keys() != _SPEC_KEYS:
            raise _bad(f"an array is described by name, dtype and shape, got {_short(spec)}")
        name = _str(spec["name"], "array name")
        if name in names:
            raise _bad(f"array {name!r} appears twice")
        names.add(name)
        known = _ARRAY_DTYPES.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
        if known is None:
            raise _bad(f"array {name!r} has an unknown dtype {_short(spec['dtype'])}")
        shape, numel = _shape(spec["shape"], "shape", name)
        specs.append(_Spec(name, known[0], known[1], shape, numel * known[2], known[2]))
    return head, specs


def parse_header(raw: bytes) -> dict[str, Any]:
    """The header's JSON object with every field's type checked (arrays' specs included)."""
    return _parse(raw)[0]


def from_bytes(buf: bytes | bytearray | memoryview, check: bool = True, *, copy: bool = True) -> Encoded:
    """Parse a payload. With ``check`` (the default) it is also checked against what its codec
    would have written (``checks.check_payload``); without, only the structure is checked.

    ``copy`` (the default): every array owns its bytes (copied by numpy, with the GIL released),
    so the payload can be kept, changed or dropped. ``copy=False``, for a decode that reads the
    arrays and drops them (a checkout, ``tensor_bytes``): byte arrays, and wider arrays whose
    place in the buffer is aligned to their element, are views of ``buf`` (which they keep
    alive), not copies: copying every payload held the GIL for ~0.3 s of a 185 MB fine-tune
    checkout. Such views must not be written: over a read-only buffer (``bytes``) they would
    change bytes Python treats as immutable; no codec's decode writes its arrays.

    The header is parsed and checked once (:func:`_parse` hands each array's checked spec on),
    and per array it does what it must in numpy (a slice, typed and shaped there, one
    ``torch.from_numpy``) and no more: a checkout calls this once a tensor, between kernels that
    evict the interpreter's caches, where it costs 2-3x its time in a tight loop
    (benchmarks/probe_decode_overhead.py, a fine-tune's lossless payloads: ~33 us a tensor alone
    and ~80 in the decode loop before, ~18 and ~47 now)."""
    try:
        mv = memoryview(buf).cast("B")
    except TypeError:
        raise CorruptPayloadError(f"an encoded delta is bytes, got {type(buf).__name__}") from None
    total = len(mv)
    if total < 8 or mv[:4] != MAGIC:
        raise CorruptPayloadError("not an encoded delta (bad magic)")
    (hlen,) = _LEN.unpack_from(mv, 4)
    if 8 + hlen > total:
        raise CorruptPayloadError(f"encoded delta is truncated: its header claims {hlen} bytes, {total - 8} follow")
    head, specs = _parse(mv[8 : 8 + hlen])
    pos = 8 + hlen
    arrays: dict[str, torch.Tensor] = {}
    whole = np.frombuffer(mv, dtype=np.uint8)  # no copy; read-only where ``buf`` is
    base_addr = whole.__array_interface__["data"][0] if whole.size else 0
    alias = None  # ``whole`` as a writable-declared array where it is read-only: one per payload
    for s in specs:
        n = s.nbytes
        if pos + n > total:
            raise CorruptPayloadError(f"encoded delta is truncated: array {s.name!r} needs {n} bytes, {total - pos} are left")
        if n:
            if copy or (base_addr + pos) % s.itemsize:
                seg = whole[pos : pos + n].copy()
            else:
                if alias is None:
                    alias = whole if whole.flags.writeable else np.asarray(_Span(whole, base_addr, total))
                seg = alias[pos : pos + n]
            if s.dtype is torch.bool and seg.max() > 1:
                raise CorruptPayloadError(f"encoded delta: bool array {s.name!r} holds bytes other than 0 and 1")
            if s.np_dtype is None:
                t = torch.from_numpy(seg).view(s.dtype).reshape(s.shape)
            else:
                seg = seg.view(s.np_dtype)
                t = torch.from_numpy(seg if len(s.shape) == 1 else seg.reshape(s.shape))
        else:
            t = torch.empty(0, dtype=s.dtype).reshape(s.shape)
        arrays[s.name] = t
        pos += n
    if pos != total:
        raise CorruptPayloadError(f"encoded delta has {total - pos} trailing bytes")
    enc = Encoded(
        codec=head["codec"],
        version=head["version"],
        params=head["params"],
        shape=tuple(head["shape"]),
        dtype=head["dtype"],
        arrays=arrays,
        meta=head.get("meta", {}),
    )
    if check:
        check_payload(enc)
    return enc


class _Span:
    """``n`` bytes at ``addr`` as numpy sees them (``__array_interface__``), holding ``owner`` (the
    array whose buffer they lie in) alive. A tensor over a read-only numpy array is refused with a
    warning by torch; this one is declared writable, and :func:`from_bytes` says not to write it.
    :func:`from_bytes` makes one over the whole payload and slices it for each array."""

    def __init__(self, owner: np.ndarray, addr: int, n: int):
        self.owner = owner
        self.__array_interface__ = {"version": 3, "shape": (n,), "typestr": "|u1", "data": (addr, False)}
