"""Bytes for an :class:`Encoded` payload, and back.

Layout (little-endian): ``b"DSE1"``, u32 header length, the header as compact sorted JSON, then
each array's raw bytes in header order. The header names every array's dtype and shape, so the
reader never guesses and never unpickles anything.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import torch

from .base import Encoded
from .errors import CorruptPayloadError

MAGIC = b"DSE1"

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
    return json.dumps(enc.header(), sort_keys=True, separators=(",", ":")).encode()


def to_bytes(enc: Encoded) -> bytes:
    head = header_bytes(enc)
    parts = [MAGIC, struct.pack("<I", len(head)), head]
    for a in enc.arrays.values():
        parts.append(tensor_bytes(a))
    return b"".join(parts)


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.uint8 else t.numpy().tobytes()


def from_bytes(buf: bytes | memoryview) -> Encoded:
    mv = memoryview(buf)
    if len(mv) < 8 or bytes(mv[:4]) != MAGIC:
        raise CorruptPayloadError("not an encoded delta (bad magic)")
    (hlen,) = struct.unpack("<I", mv[4:8])
    if 8 + hlen > len(mv):
        raise CorruptPayloadError("encoded delta is truncated (header)")
    try:
        head = json.loads(bytes(mv[8 : 8 + hlen]))
    except ValueError as e:
        raise CorruptPayloadError(f"encoded delta header is not JSON: {e}") from None
    pos = 8 + hlen
    arrays: dict[str, torch.Tensor] = {}
    for spec in head["arrays"]:
        dtype = _DTYPES.get(spec["dtype"])
        if dtype is None:
            raise CorruptPayloadError(f"encoded delta names an unknown array dtype {spec['dtype']!r}")
        shape = tuple(int(s) for s in spec["shape"])
        n = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        if pos + n > len(mv):
            raise CorruptPayloadError(f"encoded delta is truncated (array {spec['name']!r})")
        raw = torch.frombuffer(bytearray(mv[pos : pos + n]), dtype=torch.uint8) if n else torch.empty(0, dtype=torch.uint8)
        arrays[spec["name"]] = raw.view(dtype).reshape(shape)
        pos += n
    if pos != len(mv):
        raise CorruptPayloadError(f"encoded delta has {len(mv) - pos} trailing bytes")
    return Encoded(
        codec=head["codec"],
        version=int(head["version"]),
        params=head["params"],
        shape=tuple(head["shape"]),
        dtype=head["dtype"],
        arrays=arrays,
        meta=head.get("meta", {}),
    )
