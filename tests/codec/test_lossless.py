"""The lossless codec gives back the exact bits: every dtype, every odd value, any thread count,
and refuses (with a CodecError) anything that does not decode, without allocating what a payload
merely claims."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
import torch
import zstandard

from deltastore.codec import CodecError, from_bytes, to_bytes
from deltastore.codec import planes
from deltastore.codec.errors import CorruptPayloadError
from deltastore.codec.lossless import Lossless

FLOATS = [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2]
INTS = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool]
_SINT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and torch.equal(bits(a), bits(b))


def weights(dtype: torch.dtype, shape, seed: int = 0, scale: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype)


def with_specials(t: torch.Tensor) -> torch.Tensor:
    """``t`` with +-0, +-inf, NaNs (quiet, signalling, payload bits, negative), subnormals, +-max
    written over its first elements (as many as fit)."""
    w = t.element_size()
    flat = t.reshape(-1).contiguous().view(_SINT[w]).clone()
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        pats = [0x00, 0x80, 0x01, 0x81, 0x7F, 0xFF] + ([0x7C, 0xFC, 0x7D, 0x7E] if t.dtype == torch.float8_e5m2 else [0x7E, 0xFE])
    else:
        nbits = 8 * w
        man = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23, torch.float64: 52}[t.dtype]
        exp_all = ((1 << (nbits - 1 - man)) - 1) << man
        sign = 1 << (nbits - 1)
        pats = [0, sign, exp_all, exp_all | sign,  # +-0, +-inf
                exp_all | (1 << (man - 1)),  # quiet NaN
                exp_all | 1,  # signalling NaN
                exp_all | (0b1011 << (man - 5)) | 3,  # NaN with payload bits
                sign | exp_all | (1 << (man - 1)) | 5,  # negative NaN with payload
                1, sign | 3, (1 << man) - 1,  # subnormals
                exp_all - 1, sign | (exp_all - 1)]  # +-max
    for i, p in enumerate(pats[: flat.numel()]):
        flat[i] = p - (1 << (8 * w)) if p >= 1 << (8 * w - 1) else p
    return flat.view(t.dtype).reshape(t.shape)


def finetune_of(base: torch.Tensor, seed: int = 1, ulps: int = 5, keep: float = 0.3) -> torch.Tensor:
    """A fine-tune's change: most elements moved a few units in the last place, some kept, and a
    few specials swapped (a NaN becomes a number, a number becomes inf or -0)."""
    g = torch.Generator().manual_seed(seed)
    w = base.element_size()
    ib = base.reshape(-1).contiguous().view(_SINT[w])
    step = torch.randint(-ulps, ulps + 1, ib.shape, generator=g).to(ib.dtype)
    out = torch.where(torch.rand(ib.shape, generator=g) < keep, ib, ib + step)
    if out.numel() > 12:
        out[4], out[9], out[11] = ib[1], ib[2], ib[5]
    return out.view(base.dtype).reshape(base.shape)


def roundtrip(codec: Lossless, target: torch.Tensor, base: torch.Tensor | None):
    enc = codec.encode(target, base)
    payload = to_bytes(enc)
    out = codec.reconstruct(from_bytes(payload), base)
    assert same_bits(out, target)
    return enc, payload


@pytest.mark.parametrize("by_exponent", [True, False])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(1,), (7, 13), (3, 5, 17), (1031,), (0,), (0, 4)])
def test_float_round_trip_is_exact(dtype, shape, by_exponent):
    codec = Lossless(by_exponent=by_exponent)
    base = with_specials(weights(dtype, shape, seed=3))
    target = finetune_of(base)
    enc, _ = roundtrip(codec, target, base)
    if target.numel() and dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
        assert enc.meta["mode"] == "diff"
        assert enc.version == (4 if by_exponent else 1)
    roundtrip(codec, target, None)  # alone: byte planes
    roundtrip(codec, base, target)  # the other way round


@pytest.mark.parametrize("dtype", INTS)
def test_integer_tensors_round_trip(dtype):
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0 if dtype in (torch.uint8, torch.bool) else -1000, 2 if dtype == torch.bool else 100,
                      (37, 3), generator=g).to(dtype)
    base = t.clone().reshape(-1)
    base[::5] = t.reshape(-1).roll(1)[::5]
    for codec in (Lossless(), Lossless(by_exponent=False)):
        enc, _ = roundtrip(codec, t, base.reshape(t.shape))
        assert enc.meta["mode"] == "plain" and enc.version == 1
        roundtrip(codec, t, None)


def test_a_base_of_another_dtype_or_shape_gives_a_plain_payload():
    t = weights(torch.bfloat16, (8, 9))
    for base in (t.to(torch.float32), weights(torch.bfloat16, (9, 8))):
        enc, _ = roundtrip(Lossless(), t, base)
        assert enc.meta["mode"] == "plain"


def test_tensor_over_one_chunk_round_trips_and_decodes_by_range():
    from deltastore.codec.lossless import GROUPED_CHUNK_BYTES, diff_code, exponent_contexts, tensor_u8

    n = planes.CHUNK_BYTES // 2 + 100_003  # bf16: over one chunk in either format, the last odd-sized
    base = with_specials(weights(torch.bfloat16, (n,), seed=5))
    target = finetune_of(base, ulps=40)
    enc1, _ = roundtrip(Lossless(by_exponent=False), target, base)
    assert len(planes.read_info(memoryview(enc1.arrays["stream"].numpy())).raw_lens) == 2
    enc, _ = roundtrip(Lossless(by_exponent=True), target, base)
    stream = enc.arrays["stream"].numpy()
    info = planes.read_info(memoryview(stream))
    assert len(info.raw_lens) == -(-2 * n // GROUPED_CHUNK_BYTES) and info.groups is not None
    # the stream's own byte-range decode across a chunk boundary, given the base's contexts
    code = diff_code(tensor_u8(target), tensor_u8(base), 2)
    ctx = exponent_contexts(tensor_u8(base), torch.bfloat16)
    lo, hi = 2 * GROUPED_CHUNK_BYTES - 1001, 2 * GROUPED_CHUNK_BYTES + 777
    assert np.array_equal(planes.decompress_range(stream, lo, hi, contexts=ctx), code[lo:hi])
    with pytest.raises(CorruptPayloadError):
        planes.decompress_range(stream, lo, hi)  # a grouped stream needs its contexts


def test_payload_bytes_do_not_depend_on_the_thread_count(monkeypatch):
    n = planes.CHUNK_BYTES // 4 * 3 + 11  # fp32: three chunks
    base = weights(torch.float32, (n,), seed=2)
    target = finetune_of(base, ulps=3000)
    out = {}
    for threads in ("1", "3"):
        monkeypatch.setenv("DELTASTORE_THREADS", threads)
        for by_exponent in (True, False):
            enc, payload = roundtrip(Lossless(by_exponent=by_exponent), target, base)
            out[threads, by_exponent] = payload
    for by_exponent in (True, False):
        assert out["1", by_exponent] == out["3", by_exponent]


def test_v2_is_smaller_than_v1_on_a_fine_tune_like_change():
    """A fine-tune moves weights by a similar step in value whatever their size (Adam): in units of
    the last place, large on small weights. v2 codes that with the base's exponent as context."""
    g = torch.Generator().manual_seed(0)
    base = (torch.randn(512, 1024, generator=g) * 0.03).to(torch.bfloat16)
    step = torch.randn(base.shape, generator=g) * 2e-4
    target = (base.float() + step).to(torch.bfloat16)
    v1 = len(to_bytes(Lossless(by_exponent=False).encode(target, base)))
    v2, _ = roundtrip(Lossless(by_exponent=True), target, base)
    assert len(to_bytes(v2)) < 0.95 * v1


def test_a_diff_payload_needs_its_base():
    base = weights(torch.bfloat16, (64, 64))
    enc = Lossless().encode(finetune_of(base), base)
    with pytest.raises(CodecError, match="base"):
        Lossless().reconstruct(enc, None)
    with pytest.raises(CodecError):
        Lossless().reconstruct(enc, weights(torch.bfloat16, (64, 65)))
    with pytest.raises(CodecError):
        Lossless().decode_delta(enc)


def test_another_base_is_refused_when_its_exponents_differ():
    base = weights(torch.bfloat16, (300, 200))
    enc = Lossless(by_exponent=True).encode(finetune_of(base), base)
    other = (base.float() * 8).to(torch.bfloat16)  # every exponent moved by 3
    with pytest.raises(CorruptPayloadError, match="another base"):
        Lossless().reconstruct(enc, other)


def test_a_newer_payload_version_says_upgrade():
    base = weights(torch.bfloat16, (16,))
    enc = Lossless(by_exponent=True).encode(finetune_of(base), base)
    enc.version = Lossless.version + 1
    with pytest.raises(CodecError, match="upgrade"):
        Lossless().reconstruct(enc, base)


def _grouped_stream_with_frame(frame: bytes, n: int) -> bytes:
    """A b"DSP2" stream of one 1-byte element group whose only plane is ``frame`` (mode zstd)."""
    head = struct.pack("<4sBBHIQ", planes.MAGIC_GROUPED, 1, 0, 0, 1, n)
    return head + struct.pack("<QH", n, 1) + struct.pack("<BII", 5, n, len(frame)) + bytes([1]) + frame


def test_a_frame_claiming_more_than_the_table_says_is_refused_before_allocating():
    big = zstandard.ZstdCompressor().compress(bytes(64 << 20))  # claims 64 MiB, 2 KB on disk
    for stream in (
        _grouped_stream_with_frame(big, 10),
        struct.pack("<4sBBHIQ", planes.MAGIC, 1, 0, 0, 1, 10) + struct.pack("<QIB", 10, len(big), 1) + big,
    ):
        with pytest.raises(CorruptPayloadError, match="claims"):
            planes.decompress(stream, contexts=np.full(10, 5, np.uint8))
    # a frame without a size in its header is capped at the table's size while it is decoded
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(1 << 20))
    with pytest.raises(CorruptPayloadError):
        planes.decompress(_grouped_stream_with_frame(unsized, 10), contexts=np.full(10, 5, np.uint8))
    assert np.array_equal(planes.decompress(_grouped_stream_with_frame(
        zstandard.ZstdCompressor(write_content_size=False).compress(bytes(10)), 10), contexts=np.full(10, 5, np.uint8)),
        np.zeros(10, np.uint8))


def test_a_payload_claiming_another_size_than_its_shape_is_refused():
    base = weights(torch.bfloat16, (32, 32))
    enc = Lossless().encode(finetune_of(base), base)
    enc.shape = (32, 33)
    with pytest.raises(CodecError):
        Lossless().reconstruct(enc, weights(torch.bfloat16, (32, 33)))
    enc.shape = (1 << 40,)
    with pytest.raises(CodecError):
        Lossless().reconstruct(enc, None)


@pytest.mark.parametrize("by_exponent", [True, False])
def test_malformed_payloads_give_codec_errors(by_exponent):
    """Truncations, byte flips and bad header fields: a CodecError, or (a flip in stored mantissa
    bytes) other bits, never another exception."""
    base = with_specials(weights(torch.bfloat16, (40_000,), seed=9))
    target = finetune_of(base, ulps=20)
    codec = Lossless(by_exponent=by_exponent)
    payload = to_bytes(codec.encode(target, base))
    rng = random.Random(0)
    cases = [payload[:k] for k in (0, 3, 8, 20, len(payload) // 2, len(payload) - 1)]
    cases += [payload + b"\0"]
    for _ in range(300):
        b = bytearray(payload)
        for _ in range(rng.choice((1, 1, 2, 8))):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        cases.append(bytes(b))
    for _ in range(50):  # garbage after a valid header
        head_len = 8 + struct.unpack("<I", payload[4:8])[0]
        cases.append(payload[:head_len] + rng.randbytes(len(payload) - head_len))
    for bad in cases:
        try:
            out = codec.reconstruct(from_bytes(bad), base)
        except CodecError:
            continue
        assert out.dtype == target.dtype and out.shape == target.shape


@pytest.mark.parametrize("meta", [{"mode": "nope"}, {"mode": "diff", "context": "row"}, {}])
def test_unknown_modes_are_refused(meta):
    base = weights(torch.bfloat16, (16,))
    enc = Lossless(by_exponent=True).encode(finetune_of(base), base)
    enc.meta = meta
    with pytest.raises(CodecError):
        Lossless().reconstruct(enc, base)


def test_config_round_trips_and_checks_its_values():
    c = Lossless(level=5, by_exponent=True)
    assert Lossless.from_config(c.get_config()) == c
    assert Lossless() == Lossless(level=3, by_exponent=True, context_counts=True)  # v3 is the default (see the module)
    with pytest.raises(CodecError):
        Lossless(level=0)
    with pytest.raises(CodecError):
        Lossless(by_exponent="yes")
    with pytest.raises(CodecError):
        Lossless(context_counts=1)


# -- hostile streams, with hypothesis ------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_BASE = with_specials(weights(torch.bfloat16, (3000,), seed=4))
_CTX = None


def _valid_streams() -> list[bytes]:
    from deltastore.codec.lossless import diff_code, exponent_contexts, tensor_u8

    global _CTX
    code = diff_code(tensor_u8(finetune_of(_BASE, ulps=30)), tensor_u8(_BASE), 2)
    _CTX = exponent_contexts(tensor_u8(_BASE), torch.bfloat16)
    return [planes.compress(code, 2, contexts=_CTX, min_group=200, chunk_bytes=2048),
            planes.compress(code, 2, chunk_bytes=2048)]


_STREAMS = _valid_streams()


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 1), edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, 1 << 20), tail=st.binary(max_size=16))
def test_altered_plane_streams_give_corrupt_payload_errors(which, edits, cut, tail):
    """Bytes set anywhere, a truncation, junk appended: decoding gives the right size or a
    CorruptPayloadError, never another exception and never an allocation the table did not allow."""
    b = bytearray(_STREAMS[which])
    for pos, val in edits:
        b[pos % len(b)] = val
    b = bytes(b[: max(cut % (len(b) + 1), 1)]) + tail
    try:
        out = planes.decompress(b, out=np.empty(6000, np.uint8), contexts=_CTX)
    except CorruptPayloadError:
        return
    assert out.size == 6000


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_give_corrupt_payload_errors(data):
    try:
        out = planes.decompress(data, out=np.empty(6000, np.uint8), contexts=_CTX)
    except CorruptPayloadError:
        return
    assert out.size == 6000


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_blocked_difference_is_the_textbook_formula(width):
    """diff_code works in blocks with reused temporaries; it must equal the one-line definition,
    zigzag(ordered(target) - ordered(base)), across block edges and for every bit pattern kind."""
    from deltastore.codec.lossless import BLOCK, _SINT, diff_code, diff_decode, ordered, zigzag

    rng = np.random.default_rng(width)
    n = BLOCK + 3
    base = rng.integers(0, 256, n * width, dtype=np.uint8)
    target = base.copy()
    target[::3] = rng.integers(0, 256, target[::3].size, dtype=np.uint8)
    with np.errstate(over="ignore"):
        want = zigzag(ordered(target.view(_SINT[width])) - ordered(base.view(_SINT[width]))).view(np.uint8)
    code = diff_code(target, base, width)
    assert np.array_equal(code, want)
    assert np.array_equal(diff_decode(code, base, width), target)
