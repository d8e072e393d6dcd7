"""The v2 decode path (codec.lossless.decode_grouped_diff): zstd frames decoded in place by the
system's libzstd (codec._zstd) or, where it does not load, by python-zstandard; both give the same
bytes and the same errors, on valid payloads and altered ones. ``reconstruct_into`` writes what
``reconstruct`` returns."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from test_lossless import FLOATS, finetune_of, same_bits, weights, with_specials

from deltastore.codec import _zstd, from_bytes, lossless, planes, to_bytes
from deltastore.codec.errors import CodecError, CorruptPayloadError
from deltastore.codec.lossless import Lossless

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "codec" / "lossless"
HAVE_LIB = _zstd.lib() is not None
BACKENDS = ["libzstd", "python-zstandard"] if HAVE_LIB else ["python-zstandard"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Each test once per frame decoder this machine has."""
    if request.param == "python-zstandard":
        monkeypatch.setattr(_zstd, "_LIB", None)
    return request.param


def test_libzstd_loads_here_unless_switched_off(monkeypatch):
    """The dev VM and the device machine have libzstd.so.1; DELTASTORE_LIBZSTD=0 turns it off."""
    monkeypatch.setenv("DELTASTORE_LIBZSTD", "0")
    assert _zstd._load() is None
    monkeypatch.setenv("DELTASTORE_LIBZSTD", "1")
    lib = _zstd._load()
    if lib is None:
        pytest.skip("no libzstd.so.1 on this machine: python-zstandard decodes")
    assert lib.ZSTD_versionNumber() >= _zstd.MIN_VERSION


@pytest.mark.parametrize("by_exponent", [True, False])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(1,), (7,), (9,), (7, 13), (4099,), (2_100_001,)])
def test_both_frame_decoders_give_the_exact_bits(dtype, shape, by_exponent, backend):
    """v2 and v1 (each with a decode path of its own); odd sizes (the gather's eight-element steps
    leave tails), and over one chunk (v2's 1 MiB, v1's 4 MiB)."""
    if shape == (2_100_001,) and dtype not in (torch.bfloat16, torch.float32):
        pytest.skip("one 2-byte and one 4-byte dtype over a chunk is enough")
    base = with_specials(weights(dtype, shape, seed=3))
    target = finetune_of(base, ulps=40)
    enc = from_bytes(to_bytes(Lossless(by_exponent=by_exponent).encode(target, base)))
    assert enc.version == (4 if by_exponent else 1)
    assert same_bits(Lossless().reconstruct(enc, base), target)


def test_golden_v2_payloads_decode_on_both(backend):
    inputs = load_file(str(FIXTURES / "v2" / "inputs.safetensors"))
    for p in sorted((FIXTURES / "v2").glob("*.bin")):
        name = p.stem
        out = Lossless().reconstruct(from_bytes(p.read_bytes()), inputs.get(f"{name}.base"))
        assert same_bits(out, inputs[f"{name}.target"]), name


def test_thread_count_does_not_change_the_bytes(monkeypatch):
    base = weights(torch.bfloat16, (1_100_000,), seed=5)
    target = finetune_of(base)
    enc = Lossless().encode(target, base)
    for threads in ("1", "2", "4"):
        monkeypatch.setenv("DELTASTORE_THREADS", threads)
        assert same_bits(Lossless().reconstruct(enc, base), target)


@pytest.mark.parametrize("by_exponent", [True, False])
def test_reconstruct_into_writes_what_reconstruct_returns(by_exponent):
    base = with_specials(weights(torch.float16, (3, 1000), seed=2))
    target = finetune_of(base)
    codec = Lossless(by_exponent=by_exponent)
    for b in (base, None):  # a difference, and a plain payload
        enc = codec.encode(target, b)
        want = codec.reconstruct(enc, b).reshape(-1).view(torch.uint8).numpy()
        window = np.zeros(want.size + 10, np.uint8)
        got = codec.reconstruct_into(enc, b, window[5:-5])
        assert np.array_equal(got, want) and np.array_equal(window[5:-5], want)
        assert not window[:5].any() and not window[-5:].any()  # nothing written outside its window
    enc = codec.encode(target, base)
    ro = np.empty(want.size, np.uint8)
    ro.flags.writeable = False
    for bad in (np.empty(want.size - 1, np.uint8), np.empty(want.size // 2, np.uint16), ro,
                np.empty((2, want.size), np.uint8)[:, 0]):
        with pytest.raises(CodecError, match="out must be"):
            codec.reconstruct_into(enc, base, bad)


# -- altered payloads: the same refusals on both frame decoders --------------------------------------


def _stream_with_frames(enc, frames: dict[int, bytes]) -> torch.Tensor:
    """``enc``'s grouped stream with plane payload k (in stream order) replaced by ``frames[k]``
    (mode zstd), the group table's lengths rewritten to match."""
    buf = enc.arrays["stream"].numpy().tobytes()
    info = planes.read_info(memoryview(buf))
    w = info.width
    head, pos = [buf[:20]], info.data_start
    payloads, k = [], 0
    for groups in info.groups:
        head.append(struct.pack("<QH", sum(g.n for g in groups) * w, len(groups)))
        for g in groups:
            lens, modes = [], []
            for mode, ln in zip(g.modes, g.payloads):
                piece = buf[pos : pos + ln]
                pos += ln
                if k in frames:
                    piece, mode = frames[k], 1
                payloads.append(piece)
                lens.append(len(piece))
                modes.append(mode)
                k += 1
            head.append(struct.pack(f"<BI{w}I", g.context, g.n, *lens) + bytes(modes))
    return torch.frombuffer(bytearray(b"".join(head + payloads)), dtype=torch.uint8)


def _small_v2(monkeypatch):
    """A bf16 v2 payload of several chunks and groups (smaller chunks and groups than the defaults,
    which only the encoder chooses)."""
    monkeypatch.setattr(lossless, "GROUPED_CHUNK_BYTES", 2048)
    monkeypatch.setattr(planes, "MIN_GROUP", 100)
    base = with_specials(weights(torch.bfloat16, (3000,), seed=4))
    target = finetune_of(base, ulps=30)
    enc = Lossless().encode(target, base)
    assert len(planes.read_info(memoryview(enc.arrays["stream"].numpy())).groups[0]) > 1
    return enc, base, target


def test_frames_of_another_size_or_not_zstd_are_refused(monkeypatch, backend):
    enc, base, target = _small_v2(monkeypatch)
    info = planes.read_info(memoryview(enc.arrays["stream"].numpy()))
    n = info.groups[0][0].n
    z = zstandard.ZstdCompressor()
    for frame, why in [
        (z.compress(bytes(64 << 20)), "claims|too small|decode"),  # claims 64 MiB, 2 KB stored
        (z.compress(bytes(n - 1)), "claims|table says|length"),  # one byte short
        (zstandard.ZstdCompressor(write_content_size=False).compress(bytes(n + 1)), "decode|length|small"),
        (b"\x28\xb5\x2f\xfd" + bytes(12), "decode|frame"),  # a zstd magic, then junk
        (b"not a frame at all", "frame"),
    ]:
        enc.arrays["stream"] = _stream_with_frames(enc, {1: frame})  # the first group's low plane
        with pytest.raises(CorruptPayloadError, match=why):
            Lossless().reconstruct(enc, base)
    for frame in (z.compress(bytes(n // 2)) + z.compress(bytes(n - n // 2)),):  # two frames: the first only is read
        enc.arrays["stream"] = _stream_with_frames(enc, {1: frame})
        with pytest.raises(CorruptPayloadError):
            Lossless().reconstruct(enc, base)
    # the right size decodes, junk after the frame ignored (python-zstandard's reading, kept on libzstd)
    for frame in (z.compress(bytes(n)), z.compress(bytes(n)) + b"junk"):
        enc.arrays["stream"] = _stream_with_frames(enc, {1: frame})
        assert Lossless().reconstruct(enc, base).shape == target.shape


_ALTER = dict(pos=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6),
              cut=st.integers(0, 1 << 20))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(**_ALTER)
def test_altered_streams_decode_to_the_right_size_or_refuse_alike(monkeypatch, pos, cut):
    """Bytes set anywhere in a v2 or a v1 stream, or a truncation: both frame decoders raise the same
    error class (CorruptPayloadError) or return the same bytes; never another exception."""
    monkeypatch.setattr(lossless, "GROUPED_CHUNK_BYTES", 2048)
    monkeypatch.setattr(planes, "MIN_GROUP", 100)
    enc = Lossless(by_exponent=pos[0][1] % 2 == 0).encode(_T, _B)
    b = bytearray(enc.arrays["stream"].numpy().tobytes())
    for p, v in pos:
        b[p % len(b)] = v
    if cut % 4 == 0:
        b = b[: max(cut % (len(b) + 1), 1)]
    enc.arrays["stream"] = torch.frombuffer(bytearray(b), dtype=torch.uint8)
    results = []
    for lib in ([_zstd.lib()] if HAVE_LIB else []) + [None]:
        monkeypatch.setattr(_zstd, "_LIB", lib)
        try:
            results.append(Lossless().reconstruct(enc, _B).view(torch.uint8).numpy().tobytes())
        except CorruptPayloadError:
            results.append("refused")
    assert len(set(results)) == 1, "the two frame decoders disagree"


_B = with_specials(weights(torch.bfloat16, (3000,), seed=4))
_T = finetune_of(_B, ulps=30)
