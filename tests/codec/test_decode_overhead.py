"""The per-tensor reading cut down (benchmarks/probe_decode_overhead.py): ``from_bytes`` parses and
checks the header once and types its views in numpy, ``planes.read_info`` reads its table with
precompiled structs, ``unpack_counts`` places the counts with numpy, and the lossless decode takes
the base's bytes in two torch calls. Each still refuses what it refused, with the same words, and
reads what it read."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from test_lossless import finetune_of, weights

from deltastore.codec import Encoded, from_bytes, planes, to_bytes
from deltastore.codec.errors import CorruptPayloadError
from deltastore.codec.lossless import GROUPED_CHUNK_BYTES, Lossless, _base_u8, tensor_u8, unpack_counts
from deltastore.codec.serialize import MAGIC


def _lossless(n: int = 3 * GROUPED_CHUNK_BYTES // 2 + 5) -> bytes:
    base = weights(torch.bfloat16, (n,), seed=3)
    return to_bytes(Lossless().encode(finetune_of(base, ulps=5), base))


def _rewrite(buf: bytes, edit=None, text=None) -> bytes:  # noqa: ANN001
    (hlen,) = struct.unpack("<I", buf[4:8])
    if text is None:
        head = json.loads(buf[8 : 8 + hlen])
        edit(head)
        text = json.dumps(head)
    raw = text.encode()
    return MAGIC + struct.pack("<I", len(raw)) + raw + buf[8 + hlen :]


def _spec(i: int, **kw):  # noqa: ANN201
    return lambda h: h["arrays"][i].update(**kw)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda h: h.update(version=True), "version must be a positive integer"),
        (lambda h: h.update(shape=[True]), "shape must hold integers"),
        (lambda h: h.update(shape=[0, 2**40, 2**40]), "shape spans more than"),
        (_spec(0, shape=[True]), "array 'stream' shape must hold integers"),
        (_spec(0, shape="6"), "array 'stream' shape must be a list"),
        (_spec(1, shape=[0, 2**40, 2]), "array 'counts' shape spans more than"),
        (_spec(0, dtype=["uint8"]), "array 'stream' has an unknown dtype"),
        (_spec(0, extra=1), "described by name, dtype and shape"),
        (_spec(1, name="stream"), "array 'stream' appears twice"),
        (lambda h: h.pop("arrays"), "lacks 'arrays'"),
        (lambda h: h.update(meta=[]), "meta must be an object"),
    ],
)
@pytest.mark.parametrize("copy", [True, False])
def test_header_checks_name_what_is_wrong(edit, message, copy):
    with pytest.raises(CorruptPayloadError, match=message):
        from_bytes(_rewrite(_lossless(4099), edit), copy=copy)


def test_a_header_that_is_not_json_is_refused():
    raw = _lossless(4099)
    (hlen,) = struct.unpack("<I", raw[4:8])
    text = raw[8 : 8 + hlen].decode().replace('"level":3', '"level":NaN')
    for bad in (_rewrite(raw, text=text), _rewrite(raw, text="[" * 100_000), raw[:8] + b"\xff" * (hlen) + raw[8 + hlen :]):
        with pytest.raises(CorruptPayloadError, match="not JSON"):
            from_bytes(bad)


def _every_dtype() -> Encoded:
    g = torch.Generator().manual_seed(0)
    arrays = {
        "u8": torch.randint(0, 255, (7,), dtype=torch.uint8, generator=g),
        "i8": torch.randint(-100, 100, (3, 2), dtype=torch.int8, generator=g),
        "i16": torch.randint(-(2**15), 2**15, (5,), dtype=torch.int16, generator=g),
        "i32": torch.randint(-(2**31), 2**31, (2, 3), dtype=torch.int32, generator=g),
        "i64": torch.randint(-(2**62), 2**62, (3,), dtype=torch.int64, generator=g),
        "f16": torch.randn(2, 2, generator=g).half(),
        "bf16": torch.randn(3, 1, 2, generator=g).bfloat16(),
        "f32": torch.randn((), generator=g),
        "f64": torch.randn(4, generator=g).double(),
        "b": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3, dtype=torch.int32),
    }
    return Encoded(codec="lossless", version=1, params={}, shape=(1,), dtype="bfloat16", arrays=arrays)


@pytest.mark.parametrize("pad", [0, 1, 2, 3])
def test_every_array_dtype_reads_the_same_viewed_or_copied(pad):
    enc = _every_dtype()
    raw = to_bytes(enc)
    for buf in (memoryview(b"x" * pad + raw)[pad:], memoryview(bytearray(b"x" * pad + raw))[pad:]):
        for copy in (True, False):
            got = from_bytes(buf, check=False, copy=copy)
            assert list(got.arrays) == list(enc.arrays)
            for name, want in enc.arrays.items():
                t = got.arrays[name]
                assert t.dtype == want.dtype and t.shape == want.shape and t.is_contiguous()
                assert torch.equal(t.view(torch.uint8) if t.dim() else t, want.view(torch.uint8) if t.dim() else want)
            assert to_bytes(got) == raw


def test_a_bool_array_of_other_bytes_is_refused_viewed_or_copied():
    raw = bytearray(to_bytes(_every_dtype()))
    assert raw[-3:] == bytes([1, 0, 1])  # the bool array's bytes, last (the empty array after it has none)
    raw[-2] = 2
    for copy in (True, False):
        with pytest.raises(CorruptPayloadError, match="holds bytes other than 0 and 1"):
            from_bytes(bytes(raw), check=False, copy=copy)


def _grouped_stream() -> bytes:
    return bytes(from_bytes(_lossless()).arrays["stream"].numpy())


def _plain_stream() -> bytes:
    return planes.compress(tensor_u8(weights(torch.bfloat16, (5000,), seed=1)), 2, rotate=True, chunk_bytes=4096)


HEAD = 20  # planes._HEAD: magic, width, flags, reserved, chunks, raw bytes
G = 1 + 4 + 2 * 4 + 2  # a 2-byte stream's group entry: context, elements, 2 plane lengths, 2 modes
P = 8 + 2 * 4 + 2  # a 2-byte plain stream's chunk entry: raw bytes, 2 plane lengths, 2 modes


def _edit(buf: bytes, at: int, fmt: str, value: int) -> bytes:
    b = bytearray(buf)
    struct.pack_into(fmt, b, at, value)
    return bytes(b)


def _grouped_mutations(s: bytes) -> list[tuple[bytes, str]]:
    g0, g1 = HEAD + 10, HEAD + 10 + G
    nonzero_len = next(k for k in range(2) if struct.unpack_from("<I", s, g0 + 5 + 4 * k)[0])
    return [
        (s[:HEAD - 1], "truncated \\(header\\)"),
        (s[:HEAD + 5], "truncated \\(chunk table\\)"),
        (_edit(s, HEAD + 8, "<H", 60000), "truncated \\(group table\\)"),
        (_edit(s, g1, "<B", s[g0]), "groups are out of order"),
        (_edit(s, g0 + 1, "<I", struct.unpack_from("<I", s, g0 + 1)[0] + 1), "group table does not add up"),
        (_edit(s, g0 + 13 + nonzero_len, "<B", planes.ZERO_MODE), "a zero plane has a payload"),
        (_edit(s, 12, "<Q", struct.unpack_from("<Q", s, 12)[0] + 2), "chunk table does not add up"),
        (s + b"\0", "truncated or has trailing bytes"),
        (s[:-1], "truncated or has trailing bytes"),
        (_edit(s, 4, "<B", 3), "bad magic or width"),
    ]


def _plain_mutations(s: bytes) -> list[tuple[bytes, str]]:
    return [
        (s[:HEAD + 3], "truncated \\(chunk table\\)"),
        (_edit(s, 12, "<Q", struct.unpack_from("<Q", s, 12)[0] + 2), "chunk table does not add up"),
        (_edit(s, HEAD, "<Q", struct.unpack_from("<Q", s, HEAD)[0] + 1), "chunk table does not add up"),
        (_edit(s, HEAD + 16, "<B", 2), "malformed palette chunk entry"),
        (_edit(s, HEAD + 16, "<B", planes.ZERO_MODE), "a zero plane has a payload"),
        (s + b"\0", "truncated or has trailing bytes"),
    ]


def test_stream_tables_read_as_before():
    for s in (_grouped_stream(), _plain_stream()):
        info = planes.read_info(memoryview(s))
        assert all(type(v) is list for v in (info.raw_lens, info.plane_lens, info.modes))
        assert all(type(x) is int for lens in info.plane_lens + info.modes for x in lens)
        assert info.chunk_offsets()[-1] == len(s)
        if info.groups is not None:
            assert [[ln for g in gs for ln in g.payloads] for gs in info.groups] == info.plane_lens
            assert [sum(g.n for g in gs) * info.width for gs in info.groups] == info.raw_lens


@pytest.mark.parametrize("kind", ["grouped", "plain"])
def test_stream_tables_refuse_what_they_refused(kind):
    s = _grouped_stream() if kind == "grouped" else _plain_stream()
    for bad, message in (_grouped_mutations(s) if kind == "grouped" else _plain_mutations(s)):
        with pytest.raises(CorruptPayloadError, match=message):
            planes.read_info(memoryview(bad))


def test_context_counts_refuse_what_they_refused():
    enc = from_bytes(_lossless(5 * GROUPED_CHUNK_BYTES // 2 + 3))
    flat, info = enc.arrays["counts"].numpy(), planes.read_info(memoryview(enc.arrays["stream"].numpy()))
    k0 = int(np.unpackbits(flat[:8].astype("<u4").view(np.uint8)).sum())
    low, high = flat.copy(), flat.copy()
    low[8] -= 1
    high[8 + k0 - 1] += 1
    zero = flat.copy()
    zero[8], zero[9] = 0, flat[8] + flat[9]  # the sum kept, one present context with no element
    for bad, message in [
        (flat[:5], "stop before chunk 0"),
        (flat[: 8 + k0 - 1], "stop inside chunk 0"),
        (flat[: 8 + k0 + 8 + 1], "stop inside chunk 1"),
        (np.append(flat, np.int32(1)), "has 1 context counts more than its chunks"),
        (low, "counts of chunk 0 do not add up"),
        (high, "counts of chunk 0 do not add up"),
        (zero, "counts of chunk 0 do not add up"),
    ]:
        with pytest.raises(CorruptPayloadError, match=message):
            unpack_counts(bad, info)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(6, 4).bfloat16(),
        lambda: torch.randn(6, 4).bfloat16().t(),  # not contiguous
        lambda: torch.randn(6, 4).bfloat16()[:, 1:],
        lambda: torch.randn(6, 4),  # another dtype: converted
        lambda: torch.randn(6, 4).bfloat16().requires_grad_(),
        lambda: torch.randn(()).bfloat16(),
        lambda: torch.zeros(0, 4, dtype=torch.bfloat16),
    ],
)
def test_the_base_bytes_are_tensor_u8s(make):
    base = make()
    got, want = _base_u8(base, torch.bfloat16), tensor_u8(base.to(torch.bfloat16))
    assert got.dtype == np.uint8 and got.ndim == 1 and np.array_equal(got, want)
