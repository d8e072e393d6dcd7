"""The plain byte-plane streams (``b"DSP1"``: every tensor object of a base model) are the same
bytes whichever path makes them: the compiled split and join (codec._numba), the numpy reference,
``compress`` or ``compress_framed``, any thread count, any (odd) output offset.
The digests below were written by codec/planes.py at 71e5adc (numpy only), before the kernels, with
the zstd settings every object had until the encoder skipped ahead (``planes.ACCEL = 0``);
:data:`GOLDEN_ACCEL` pins the default settings' bytes since (written with ``ACCEL = 16``)."""

from __future__ import annotations

import hashlib
import numpy as np
import pytest

from deltastore.codec import _zstd, _zstd_encode, planes
from deltastore.codec.errors import CorruptPayloadError

FX = planes.fast()
needs_numba = pytest.mark.skipif(FX is None, reason="numba does not import here: only the numpy path runs")

#: sha256 of planes.compress(data, width, rotate=rotate, level=3) at 71e5adc, for _inputs()
GOLDEN = {
    "bf16": "2ee8bd0233650ebf883acd3ed10b003a04315471b2d8ac1215cc16a042a6a0a3",
    "bf16-norot": "230a41ede34de70f55b628c4c6e53194f7d26bcca28f11363b1fbcbfc4c005d1",
    "fp32": "f7237302905bf24393636e813da7a85f6cd12bba7b91ac9ce977b830bf7d5303",
    "int8": "3634a265eb514113e26de733f76cf344e4f0ab86ba8495774654051ea28fce46",
    "fp64": "62e75fb7d807682be634260f60c46fc2cc10f7007b2b6499f7dbd7e2ae1c6874",
}

#: the same inputs with the default encoder settings (planes.ACCEL = 16, codec/_zstd_encode.py)
GOLDEN_ACCEL = {
    "bf16": "25fc5756ebcf5a396cc253eb7b7d6cf0cef41353ab081565a19d79311ea5f52d",
    "bf16-norot": "1ba808aef41d958861fe39d502dcaaf6e5ccdaf75082600db7e61c07a57e136f",
    "fp32": "bc508e848b7865814502ef47b4a877a2442fb678fe28b13d1f07c9e5a3836624",
    "int8": "0833ec6559bb196702a1ebe1593f76663a8b988506b0b4188849fbdb57c9c701",
    "fp64": "54f11feeb394ee85c236c03e49bb1067968671b1cb33994e5cc34806b32d8d60",
}
needs_cffi = pytest.mark.skipif(_zstd_encode.make(16) is None, reason="cffi does not import here: the C extension's frames")


def _inputs() -> list[tuple[str, np.ndarray, int, bool]]:
    """(name, bytes, width, rotate): bf16 weights over two 4 MiB chunks and a short third (stored
    mantissa planes and zstd exponent planes both), fp32 over one chunk, int8, fp64."""
    rng = np.random.default_rng(20261130)
    f32 = (0.02 * rng.standard_normal((9 << 20) // 2 + 3)).astype(np.float32)
    bf16 = (f32.view(np.uint32) >> 16).astype(np.uint16)
    bf16[::97] = 0
    return [("bf16", bf16.view(np.uint8), 2, True),
            ("bf16-norot", bf16[:300_001].view(np.uint8), 2, False),
            ("fp32", f32[: (5 << 20) // 4 + 1].view(np.uint8), 4, True),
            ("int8", rng.integers(-3, 4, 200_003, dtype=np.int8).view(np.uint8), 1, False),
            ("fp64", (0.02 * rng.standard_normal(70_001)).view(np.uint8), 8, True)]


def _path(monkeypatch, compiled: bool) -> None:
    monkeypatch.setattr(planes, "_FAST", FX if compiled else None)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=needs_numba)])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("accel", [0, pytest.param(16, marks=needs_cffi)])
def test_streams_are_the_bytes_written_before_the_kernels(compiled, threads, accel, monkeypatch):
    _path(monkeypatch, compiled)
    assert planes.ACCEL == 16  # the default the second digests pin
    monkeypatch.setattr(planes, "ACCEL", accel)
    golden = GOLDEN_ACCEL if accel else GOLDEN
    for name, data, width, rotate in _inputs():
        stream = planes.compress(data, width, rotate=rotate, level=3, threads=threads)
        assert hashlib.sha256(stream).hexdigest() == golden[name], name
        framed = planes.compress_framed(data, width, b"FRAME", rotate=rotate, level=3, threads=threads)
        assert framed.tobytes() == b"FRAME" + stream, name
        out = np.empty(data.size + 1, dtype=np.uint8)[1:]  # an odd offset, as a file window can be
        planes.decompress(stream, out=out, threads=threads)
        assert np.array_equal(out, data), name
    info = planes.read_info(memoryview(planes.compress(_inputs()[0][1], 2, rotate=True)))
    assert {0, 1} <= {m for ms in info.modes for m in ms}  # both plane modes were exercised


@needs_numba
@pytest.mark.parametrize("width", [2, 4, 8])
@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("n", [0, 1, 5, 65_537, 200_001])
def test_split_and_join_kernels_match_numpy(width, rotate, n):
    raw = np.random.default_rng(n + width).integers(0, 256, n * width, dtype=np.uint8)
    want = planes.split_planes(raw, width, rotate, compiled=False)
    got = FX.split_planes(raw, width, rotate)
    assert all(np.array_equal(a, b) for a, b in zip(want, got))
    frozen = [np.frombuffer(p.tobytes(), dtype=np.uint8) for p in got]  # read-only, as zstd's output is
    for out in (np.empty(raw.size, np.uint8), np.empty(raw.size + 1, np.uint8)[1:]):
        FX.join_planes(frozen, width, rotate, out)
        assert np.array_equal(out, raw)
        assert np.array_equal(planes.join_planes(frozen, width, rotate, compiled=False), raw)


def test_plain_streams_do_not_load_numba(monkeypatch):
    """A base model's add or checkout runs the numpy path unless the kernels are loaded already:
    loading them costs about a second, and on a thread beside the workers it cost more (GIL)."""
    monkeypatch.setattr(planes, "_FAST", False)  # not looked up yet, as in a fresh process
    name, data, width, rotate = _inputs()[0]
    stream = planes.compress(data, width, rotate=rotate, level=3, threads=2)
    assert np.array_equal(planes.decompress(stream, threads=2), data)
    assert planes._FAST is False and planes._loaded() is None


@needs_numba
@pytest.mark.skipif(_zstd.lib() is None, reason="no libzstd.so.1 here: python-zstandard decodes each plane")
def test_a_plain_chunk_decodes_in_one_compiled_call_and_refuses_what_the_other_path_refuses(monkeypatch):
    """With the kernels loaded, each plain chunk's frames and join run in one compiled call
    (``_numba.fill_join``); the bytes are the numpy path's. An altered stream is refused with
    CorruptPayloadError or decodes to bytes of its size on either path, never another exception;
    a cut one is refused by both. (An altered zstd frame may decode to other bytes on libzstd and
    on python-zstandard's own zstd, neither checking a frame's content: a tensor object's SHA-256
    is what refuses it, ``ObjectDB.get_array``.)"""
    calls = []
    real = FX.fill_join
    monkeypatch.setattr(FX, "fill_join", lambda *a: calls.append(a[5]) or real(*a))
    for name, data, width, rotate in _inputs():
        stream = planes.compress(data, width, rotate=rotate, level=3)
        _path(monkeypatch, True)
        got = planes.decompress(stream, threads=2)
        _path(monkeypatch, False)
        assert np.array_equal(got, data) and np.array_equal(planes.decompress(stream, threads=2), data), name
    assert sorted(set(calls)) == [2, 4, 8]  # every width but bytes (int8: nothing to join)
    stream = planes.compress(_inputs()[1][1], 2, rotate=False, level=3)
    data_n = _inputs()[1][1].size
    rng = np.random.default_rng(7)
    start = planes.read_info(memoryview(stream)).data_start
    for trial in range(60):
        bad = bytearray(stream)
        for p in rng.integers(start, len(bad), 1 + trial % 4):
            bad[p] = int(rng.integers(0, 256))
        if trial % 5 == 0:
            bad = bad[: int(rng.integers(start, len(bad)))]
        for compiled in (True, False):
            _path(monkeypatch, compiled)
            try:
                got = planes.decompress(bytes(bad))
            except CorruptPayloadError:
                continue
            assert trial % 5 and got.size == data_n, (trial, compiled)
