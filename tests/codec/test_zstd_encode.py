"""The planes' zstd compressor at levels 1..3 (codec/_zstd_encode.py): the frames it writes are
standard zstd frames that both decoders read back exactly, with the settings it claims (accel 0 is
the C extension's frames byte for byte), and it is what the planes use by default."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from deltastore.codec import _zstd, _zstd_encode, planes

pytestmark = pytest.mark.skipif(_zstd_encode.make(1) is None, reason="cffi does not import here")


def _samples() -> list[np.ndarray]:
    """Empty, one byte, all zeros, a difference-like low plane (mostly 0, a few small codes),
    an exponent-like plane, noise, and sizes past zstd's 128 KiB block."""
    rng = np.random.default_rng(7)
    low = rng.integers(1, 7, 300_001).astype(np.uint8)
    low[rng.random(low.size) > 0.4] = 0
    expo = np.clip(np.round(rng.normal(120, 2, 200_003)), 0, 255).astype(np.uint8)
    return [np.zeros(0, np.uint8), np.array([5], np.uint8), np.zeros(70_000, np.uint8), low, expo,
            rng.integers(0, 256, 131_073, dtype=np.uint8)]


def test_accel_zero_writes_the_c_extensions_frames():
    """Same parameters through the other backend: the same bytes (so ACCEL = 0 reproduces what
    every object before it had, whichever backend a machine has)."""
    old = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(**planes.LITERAL_PARAMS))
    new = _zstd_encode.LiteralCompressor(0)
    for a in _samples():
        assert new.compress(a) == old.compress(a.tobytes())


@pytest.mark.parametrize("accel", [1, 16, 1 << 17])
def test_frames_decode_exactly_with_both_decoders(accel):
    c = _zstd_encode.LiteralCompressor(accel)
    d = zstandard.ZstdDecompressor()
    for a in _samples():
        frame = c.compress(a)
        assert zstandard.get_frame_parameters(frame).content_size == a.size  # the planes' size check reads it
        assert d.decompress(frame) == a.tobytes()
        if _zstd.lib() is not None and a.size:
            src = np.frombuffer(frame, np.uint8)
            out = np.zeros(a.size, np.uint8)
            _zstd.decode_into(src, 0, src.size, out, 0, a.size)
            assert np.array_equal(out, a)
    strided = np.arange(40_000, dtype=np.uint8)[::2]  # not contiguous: compressed as its values
    assert d.decompress(c.compress(strided)) == strided.tobytes()


def test_skipping_ahead_keeps_huffman_literals():
    """What the module is for: with the search skipping ahead, a difference-like plane still
    shrinks to about its entropy (the C extension's skip-ahead, which drops Huffman coding,
    leaves it near raw)."""
    low = _samples()[3]
    counts = np.bincount(low, minlength=256) / low.size
    entropy = -(counts[counts > 0] * np.log2(counts[counts > 0])).sum() / 8  # of raw, order 0
    ours = len(_zstd_encode.LiteralCompressor(16).compress(low)) / low.size
    ext = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(
        **{**planes.LITERAL_PARAMS, "target_length": 16})).compress(low.tobytes())
    assert ours < 1.1 * entropy
    assert len(ext) / low.size > 0.5


def test_planes_use_it_by_default_and_fall_back_without_cffi(monkeypatch):
    assert isinstance(planes.compressor(3), _zstd_encode.LiteralCompressor)
    assert isinstance(planes.compressor(4), zstandard.ZstdCompressor)  # zstd's own levels above 3
    data = _samples()[4]
    default = planes.compress(data, 1, level=3)
    monkeypatch.setattr(_zstd_encode, "_BACKEND", None)  # as where cffi does not import
    monkeypatch.setattr(planes, "_LOCAL", type(planes._LOCAL)())  # no thread's cached compressor
    assert isinstance(planes.compressor(3), zstandard.ZstdCompressor)
    fallback = planes.compress(data, 1, level=3)
    monkeypatch.setattr(planes, "ACCEL", 0)
    assert fallback == planes.compress(data, 1, level=3)  # the accel-0 frames
    assert planes.decompress(default).tobytes() == planes.decompress(fallback).tobytes() == data.tobytes()


def test_the_environment_picks_the_settings(monkeypatch):
    """DELTASTORE_ZSTD_ACCEL=0 writes the frames of before (an A/B in one install); a bad value is
    one clear error."""
    data = _samples()[3]
    monkeypatch.setenv("DELTASTORE_ZSTD_ACCEL", "0")
    old = planes.compress(data, 1, level=3)
    monkeypatch.setattr(planes, "ACCEL", 0)
    monkeypatch.delenv("DELTASTORE_ZSTD_ACCEL")
    assert planes.compress(data, 1, level=3) == old
    monkeypatch.setenv("DELTASTORE_ZSTD_ACCEL", "16")
    assert planes.compress(data, 1, level=3) != old
    for bad in ("-1", "x", "131073", "１"):
        monkeypatch.setenv("DELTASTORE_ZSTD_ACCEL", bad)
        with pytest.raises(planes.CodecError, match="DELTASTORE_ZSTD_ACCEL"):
            planes.compress(data, 1, level=3)


def test_compress_bound_is_zstds():
    ffi, lib = _zstd_encode._backend()
    sizes = [0, 1, 100, 4095, (128 << 10) - 1, 128 << 10, (128 << 10) + 1, 1 << 20, 123_456_789]
    got = _zstd_encode.compress_bound(np.array(sizes, dtype=np.uint64)).tolist()
    assert got == [lib.ZSTD_compressBound(n) for n in sizes] == [_zstd_encode._bound(n) for n in sizes]


@pytest.mark.skipif(planes.fast() is None, reason="numba does not import here")
def test_segments_in_one_call_are_the_frames_of_one_call_each():
    """The grouped planes' path (all of a chunk's frames in one compiled call, no GIL) writes the
    frames ``compress`` writes one at a time, for empty, tiny, incompressible and > 128 KiB
    segments, back to back and out of order, with the output buffer grown between calls."""
    src = np.concatenate(_samples())
    edges = np.cumsum([0] + [a.size for a in _samples()])
    c = _zstd_encode.LiteralCompressor(16)
    for order in (range(len(edges) - 1), [5, 0, 3, 3, 1]):
        starts = np.array([edges[i] for i in order], dtype=np.uint64)
        lens = np.array([edges[i + 1] - edges[i] for i in order], dtype=np.uint64)
        got = c.compress_segments(src, starts, lens, planes.fast().compress_frames)
        assert got == [c.compress(src[int(s):int(s + n)]) for s, n in zip(starts, lens)]


@pytest.mark.skipif(planes.fast() is None, reason="numba does not import here")
def test_grouped_chunk_frames_equal_with_and_without_the_compiled_loop(monkeypatch):
    rng = np.random.default_rng(3)
    grouped = np.clip(rng.normal(0, 6, (2, 250_000)), -127, 127).astype(np.int8).view(np.uint8)
    spans = [(0, 1000), (3, 0), (4, 120_000), (9, 129_000)]
    c = planes._thread_compressor(1)
    with_loop = planes._frames(c, grouped, spans)
    monkeypatch.setattr(planes, "_FAST", None)  # as where numba does not import
    assert planes._frames(c, grouped, spans) == with_loop
    assert with_loop[2] == b"" and with_loop[3] == b""


@pytest.mark.skipif(planes.fast() is None, reason="numba does not import here")
def test_the_compiled_loop_applies_the_same_sparse_ratio():
    assert int(planes.fast().SPARSE_RATIO) == _zstd_encode.SPARSE_RATIO


def test_a_sparse_plane_made_again_is_kept_only_where_smaller():
    """``again``: zstd's level-1 frame of a plane, or None where it takes the first frame's bytes or
    more (or where the compressor was made without the second context)."""
    c = _zstd_encode.LiteralCompressor(16)
    plane = _sparse_plane()
    first = c.compress(plane)
    second = c.again(plane, len(first))
    assert second is not None and len(second) < len(first)
    assert zstandard.ZstdDecompressor().decompress(second) == plane.tobytes()
    assert c.again(plane, len(second)) is None  # not smaller than a frame of its own size
    assert _zstd_encode.LiteralCompressor(16, sparse=False).again(plane, len(first)) is None
    assert _zstd_encode.LiteralCompressor(16, sparse=False).addresses()[2] == 0


def _sparse_plane(n: int = 400_003, changed: float = 0.01) -> np.ndarray:
    """A checkpoint series' plane: ~1% of the elements nonzero (small codes), the rest 0."""
    rng = np.random.default_rng(11)
    a = np.zeros(n, np.uint8)
    at = rng.random(n) < changed
    a[at] = rng.integers(1, 9, int(at.sum()))
    return a
