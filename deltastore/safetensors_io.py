"""Reading safetensors files ourselves, tensor by tensor, checking everything the header claims.

We parse the header rather than calling ``safetensors.safe_open`` for three reasons: the header
bytes are kept verbatim (so a checkout is byte-identical), tensors are read one at a time with
plain file reads (so peak memory is one tensor, not the model), and every claim the header makes
(dtype, shape, offsets, file length) is checked against the file before anything is stored.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import torch

from .errors import BadSafetensorsError

#: safetensors dtype code -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
}
for _code, _name in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _name):
        DTYPES[_code] = (getattr(torch, _name), int(_code[1:]) // 8)
TORCH_TO_CODE = {v[0]: k for k, v in DTYPES.items()}
FLOAT_CODES = {"F64", "F32", "F16", "BF16"}
MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # offset of the data, relative to the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][0]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    raw: bytes  # the 8-byte length prefix + JSON header, verbatim
    tensors: tuple[TensorInfo, ...]  # in data-offset order
    metadata: dict[str, str] | None

    @property
    def data_start(self) -> int:
        return len(self.raw)

    @property
    def data_size(self) -> int:
        return self.tensors[-1].end if self.tensors else 0

    @property
    def file_size(self) -> int:
        return self.data_start + self.data_size


def parse_header(raw: bytes, file_size: int | None, where: str) -> SafetensorsHeader:
    """Parse and check a header (``raw`` = length prefix + JSON) against the file's size."""
    if len(raw) < 8:
        raise BadSafetensorsError(f"{where}: file is too short to be safetensors ({len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > MAX_HEADER:
        raise BadSafetensorsError(f"{where}: header claims {n} bytes; not a safetensors file, or corrupt")
    if len(raw) < 8 + n:
        raise BadSafetensorsError(f"{where}: file is truncated inside its header")
    try:
        head = json.loads(raw[8 : 8 + n])
    except (ValueError, UnicodeDecodeError) as e:
        raise BadSafetensorsError(f"{where}: header is not valid JSON ({e})") from None
    except RecursionError:  # "[[[[..." nested past the parser's depth: hostile, not a header
        raise BadSafetensorsError(f"{where}: header is not valid JSON (nested too deeply)") from None
    if not isinstance(head, dict):
        raise BadSafetensorsError(f"{where}: header is not a JSON object")
    metadata = head.pop("__metadata__", None)
    infos = []
    for name, spec in head.items():
        if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= set(spec):
            raise BadSafetensorsError(f"{where}: tensor {name!r} lacks dtype/shape/data_offsets")
        code = spec["dtype"]
        if code not in DTYPES:
            raise BadSafetensorsError(f"{where}: tensor {name!r} has unknown dtype {code!r}")
        shape = spec["shape"]
        offs = spec["data_offsets"]
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise BadSafetensorsError(f"{where}: tensor {name!r} has a bad shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) and o >= 0 for o in offs)):
            raise BadSafetensorsError(f"{where}: tensor {name!r} has bad data_offsets {offs!r}")
        start, end = offs
        want = math.prod(shape) * DTYPES[code][1]
        if end - start != want:
            raise BadSafetensorsError(
                f"{where}: header lies about tensor {name!r}: {code}{shape} needs {want} bytes, offsets give {end - start}"
            )
        infos.append(TensorInfo(name, code, tuple(shape), start, end))
    infos.sort(key=lambda t: (t.start, t.end))
    pos = 0
    for t in infos:
        if t.start != pos:
            what = "overlap" if t.start < pos else "leave a gap"
            raise BadSafetensorsError(f"{where}: header lies about offsets: tensor {t.name!r} would {what} at byte {t.start}")
        pos = t.end
    if file_size is not None:
        expect = 8 + n + pos
        if file_size < expect:
            raise BadSafetensorsError(f"{where}: file is truncated: header needs {expect} bytes, file has {file_size}")
        if file_size > expect:
            raise BadSafetensorsError(f"{where}: file has {file_size - expect} bytes past the last tensor")
    return SafetensorsHeader(bytes(raw[: 8 + n]), tuple(infos), metadata)


def read_header(path: Path) -> SafetensorsHeader:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise BadSafetensorsError(f"{path}: file is too short to be safetensors ({size} bytes)")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER:
            raise BadSafetensorsError(f"{path}: header claims {n} bytes; not a safetensors file, or corrupt")
        raw = prefix + f.read(n)
    return parse_header(raw, size, str(path))


def read_tensor_bytes(f: BinaryIO, header: SafetensorsHeader, t: TensorInfo) -> bytearray:
    """One tensor's raw bytes, read with a plain seek + readinto (no mmap of the whole file)."""
    buf = bytearray(t.nbytes)
    f.seek(header.data_start + t.start)
    got = f.readinto(buf)
    if got != t.nbytes:
        raise BadSafetensorsError(f"{getattr(f, 'name', '?')}: truncated while reading tensor {t.name!r}")
    return buf


def iter_tensors(path: Path, header: SafetensorsHeader | None = None) -> Iterator[tuple[TensorInfo, bytearray]]:
    header = header or read_header(path)
    with open(path, "rb") as f:
        for t in header.tensors:
            yield t, read_tensor_bytes(f, header, t)


def as_tensor(t: TensorInfo, raw: bytes | bytearray | memoryview) -> torch.Tensor:
    """View raw little-endian bytes as a tensor of the header's dtype and shape (no copy)."""
    if t.nbytes == 0:
        return torch.empty(t.shape, dtype=t.torch_dtype)
    return torch.frombuffer(raw, dtype=torch.uint8).view(t.torch_dtype).reshape(t.shape)


def build_header(tensors: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None) -> tuple[bytes, list[tuple[int, int]]]:
    """A fresh header for (name, dtype code, shape) in the given order; used when --dtype changes sizes."""
    head: dict[str, object] = {}
    if metadata is not None:
        head["__metadata__"] = metadata
    offs, pos = [], 0
    for name, code, shape in tensors:
        n = math.prod(shape) * DTYPES[code][1]
        head[name] = {"dtype": code, "shape": list(shape), "data_offsets": [pos, pos + n]}
        offs.append((pos, pos + n))
        pos += n
    js = json.dumps(head, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(js)) + js, offs
