"""Plane mode 2, the palette chunk (codec/palette.py): exact round trips through planes on grids
that hold NaN payloads, +-inf, +-0 and subnormals, odd sizes and short blocks; the numba kernels
and the numpy reference write the same bytes and refuse the same hostile payloads with
CorruptPayloadError; any thread count gives the same stream; grid-less chunks stay in planes; the
store's tensor objects (ObjectDB over a real local backend) use it and serve byte ranges of it."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltastore.backend import Backend
from deltastore.codec import palette, planes
from deltastore.codec.errors import CorruptPayloadError
from deltastore.objects import ObjectDB

FX = palette.kernels()
needs_numba = pytest.mark.skipif(FX is None, reason="numba does not import here: only the numpy path runs")
PATHS = [False, pytest.param(True, marks=needs_numba)]
SPECIAL = np.array([0x7FC0, 0x7FC1, 0xFFA5, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x0001, 0x807F, 0x7F7F], np.uint16)


def _path(monkeypatch, compiled: bool) -> None:
    monkeypatch.setattr(palette, "_KERNELS", FX if compiled else None)


def grid(n: int, levels: int = 16, seed: int = 0, special: bool = True) -> np.ndarray:
    """bf16 words on a grid: ``levels`` values per aligned block of 32 (some of them special)."""
    rng = np.random.default_rng(seed)
    nb = max(-(-n // 32), 1)
    lv = ((rng.standard_normal((nb, levels)).astype(np.float32) * 0.02).view(np.uint32) >> 16).astype(np.uint16)
    if special:
        lv[::3, : min(levels, 4)] = rng.choice(SPECIAL, (lv[::3].shape[0], min(levels, 4)))
    return lv[np.arange(n) // 32, rng.integers(0, levels, n)]


def streams(words: np.ndarray, compiled: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not compiled:
        return palette.split_numpy(words)
    nb = -(-words.size // 32)
    ks, pd, idx = np.empty(nb, np.uint8), np.empty(nb * 96, np.uint8), np.zeros(nb * 20, np.uint8)
    q, p = FX.split(words.view(np.uint16), palette.WIDTH, ks, pd, idx)
    return ks, pd[:q], idx[:p]


def join(ks, pd, idx, n: int, compiled: bool) -> np.ndarray:  # noqa: ANN001
    out = np.empty(2 * n, np.uint8)
    if compiled:
        code = FX.join(palette.WIDTH, ks, pd, idx, out.view(np.uint16))
        if code:
            raise palette._corrupt(code)
    else:
        palette.join_numpy(ks, pd, idx, out)
    return out.view(np.uint16)


@needs_numba
@pytest.mark.parametrize("n", [1, 2, 31, 32, 33, 63, 64, 65, 1000, 4099])
@pytest.mark.parametrize("levels", [1, 2, 3, 4, 5, 8, 9, 16, 17, 31, 32])
def test_kernels_write_the_numpy_bytes(n, levels):
    """Every palette size (1..32 distinct words a block: index widths 0..5) and short last blocks."""
    w = grid(n, levels, seed=n * 33 + levels)
    want, got = streams(w, False), streams(w, True)
    assert all(np.array_equal(a, b) for a, b in zip(want, got))
    assert int(want[0].max()) + 1 <= min(levels, n)
    for compiled in (False, True):
        assert np.array_equal(join(*want, w.size, compiled), w)


@needs_numba
@pytest.mark.parametrize("levels", [9, 12, 15])
def test_the_4_bit_blocks_by_vpermw_are_the_scalar_words(levels):
    """The 4-bit blocks' gather by AVX-512 (one vpermw a block, where the host has it) writes the
    words of the scalar gather, and both refuse an index past a block's palette (-6) alike."""
    from deltastore.codec import _numba, _palette_numba as pn

    w = grid(64 * 32 + 7, levels, seed=levels)
    ks, pd, idx = streams(w, True)
    gathers = [pn._join_scalar] + ([pn._join_x512] if _numba.x512_available() else [])
    for join_with in gathers:
        out = np.empty(w.size, np.uint16)
        assert join_with(palette.WIDTH, ks, pd, idx, out) == 0
        assert np.array_equal(out, w)
        blk = next(j for j in range(ks.size - 1) if 9 <= int(ks[j]) + 1 < 16)  # a 4-bit block with room past its palette
        bad = idx.copy()
        bad[int(4 * palette.WIDTH[ks[:blk].astype(np.int64)].sum()) + 3] = 0xFF  # its lanes 6 and 7: index 15
        assert join_with(palette.WIDTH, ks, pd, bad, np.empty(w.size, np.uint16)) == -6
    if len(gathers) == 1:
        pytest.skip("this host has no AVX-512 BW and VBMI2 (or DELTASTORE_SIMD=0): the scalar gather alone")


_CACHE_PROBE = """
import numpy as np
from deltastore.codec import palette, _palette_numba as pn
w = (np.arange(4096, dtype=np.uint16) % 9) * 3 + 0x3c00
nb = w.size // 32
ks, pd, idx = np.empty(nb, np.uint8), np.empty(nb * 96, np.uint8), np.zeros(nb * 20, np.uint8)
q, p = pn.split(w, palette.WIDTH, ks, pd, idx)
out = np.empty(w.size, np.uint16)
assert pn.join(palette.WIDTH, ks, pd[:q], idx[:p], out) == 0 and np.array_equal(out, w)
print(sum(sum(f.stats.cache_misses.values()) for f in vars(pn).values() if hasattr(getattr(f, "stats", None), "cache_misses")))
"""


def test_the_next_process_finds_the_join_in_numba_s_cache(tmp_path):
    """The palette's join is compiled once per machine, not once per process: a second process with
    the same numba cache compiles nothing (a cached function taking a function as an argument was
    never found: every process compiled it again and grew the cache's index)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    misses = [subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True, text=True, check=True).stdout.split()[-1]
              for _ in range(2)]
    assert misses[0] != "0" and misses[1] == "0"  # the first compiles (the split and the join), the next finds all


def test_every_bit_pattern_round_trips():
    w = np.arange(1 << 16, dtype=np.uint16)
    for words in (w, np.random.default_rng(1).permutation(w)):
        s = streams(words, False)
        assert np.array_equal(join(*s, words.size, False), words)
        if FX is not None:
            assert all(np.array_equal(a, b) for a, b in zip(s, streams(words, True)))
            assert np.array_equal(join(*s, words.size, True), words)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 30_000), levels=st.integers(1, 32), seed=st.integers(0, 2**32 - 1),
       chunk=st.sampled_from([64, 16_402, 20_000, 1 << 20]), compiled=st.booleans())
def test_planes_round_trip(n, levels, seed, chunk, compiled):
    """Odd sizes, any chunk size, NaN/inf/subnormal/+-0 levels: the exact bits back, with
    either path, whole and by range; numba and numpy write the same stream."""
    if compiled and FX is None:
        compiled = False
    old = palette._KERNELS
    try:
        palette._KERNELS = FX if compiled else None
        w = grid(n, levels, seed)
        raw = w.view(np.uint8)
        s = planes.compress(raw, 2, rotate=True, chunk_bytes=chunk, palette=True)
        assert np.array_equal(planes.decompress(s), raw)
        lo = seed % raw.size
        assert np.array_equal(planes.decompress_range(s, lo, lo + 777), raw[lo : lo + 777])
        palette._KERNELS = None if compiled else FX
        assert planes.compress(raw, 2, rotate=True, chunk_bytes=chunk, palette=True) == s
        assert np.array_equal(planes.decompress(s), raw)
    finally:
        palette._KERNELS = old


@pytest.mark.parametrize("compiled", PATHS)
def test_grid_chunks_take_the_palette_and_others_stay_in_planes(compiled, monkeypatch):
    _path(monkeypatch, compiled)
    small = grid(palette.MIN_ELEMENTS - 1).view(np.uint8)  # under the size worth a test: planes untried
    assert planes.compress(small, 2, rotate=True, palette=True) == planes.compress(small, 2, rotate=True)
    rng = np.random.default_rng(5)
    noise = (rng.standard_normal(300_000).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    w = np.concatenate([grid(300_000, 16, special=False), noise, grid(300_000, 12)])
    raw = w.view(np.uint8)
    s = planes.compress(raw, 2, rotate=True, chunk_bytes=600_000, palette=True)
    modes = planes.read_info(memoryview(s)).modes
    assert modes == [[2, 2], [1, 0], [2, 2]]
    plain = planes.compress(raw, 2, rotate=True, chunk_bytes=600_000)
    assert all(m[0] == 1 for m in planes.read_info(memoryview(plain)).modes) and len(s) < 0.85 * len(plain)
    noise_only = planes.compress(noise.view(np.uint8), 2, rotate=True, palette=True)
    assert noise_only == planes.compress(noise.view(np.uint8), 2, rotate=True)  # no grid: not a byte changes
    assert np.array_equal(planes.decompress(s), raw)
    assert planes.compress(raw, 2, rotate=False, chunk_bytes=600_000, palette=True) == \
        planes.compress(raw, 2, rotate=False, chunk_bytes=600_000)  # integers: never a palette


@pytest.mark.parametrize("compiled", PATHS)
def test_thread_count_does_not_change_the_stream(compiled, monkeypatch):
    _path(monkeypatch, compiled)
    raw = grid(700_001, 16).view(np.uint8)
    one = planes.compress(raw, 2, rotate=True, chunk_bytes=100_000, palette=True, threads=1)
    for t in (2, 5):
        assert planes.compress(raw, 2, rotate=True, chunk_bytes=100_000, palette=True, threads=t) == one
        assert planes.compress_framed(raw, 2, b"F", rotate=True, chunk_bytes=100_000, threads=t, palette=True).tobytes() == b"F" + one
        out = np.empty(raw.size + 1, np.uint8)[1:]  # an odd offset, as a file window can be
        planes.decompress(one, out=out, threads=t)
        assert np.array_equal(out, raw)


def test_store_tensor_objects_use_it_by_default(tmp_path, monkeypatch):
    """A real ObjectDB on a local backend: by default (palette.enabled) a grid tensor's object is a
    palette stream, decodes whole (hash checked) and by byte range through the chunk table; with
    DELTASTORE_PALETTE=0 it holds no palette chunk."""
    raw = grid((6 << 20) // 2 + 7, 16).view(np.uint8)
    monkeypatch.setenv("DELTASTORE_PALETTE", "0")
    plain = ObjectDB(Backend(str(tmp_path / "plain"))).put_tensor(raw, 2, True)
    assert plain.stored > 0.9 * len(planes.compress(raw, 2, rotate=True))
    monkeypatch.delenv("DELTASTORE_PALETTE")
    db = ObjectDB(Backend(str(tmp_path / "palette")))
    put = db.put_tensor(raw, 2, True)
    assert put.stored < 0.9 * len(planes.compress(raw, 2, rotate=True)) + 8
    assert np.array_equal(db.get_array(put.oid, nbytes=raw.size), raw)
    for lo, hi in ((0, 10), (4 << 20 - 3, (4 << 20) + 5), (raw.size - 9, raw.size)):
        assert db.get_range(put.oid, lo, hi) == raw[lo:hi].tobytes()


# -- hostile payloads --------------------------------------------------------------------------

H = planes._HEAD.size  # the stream header; the first chunk's table entry follows it


def _chunk_payload(stream: bytes) -> tuple[planes.StreamInfo, int, int]:
    info = planes.read_info(memoryview(stream))
    assert info.modes[0] == [2, 2]
    return info, info.data_start, info.plane_lens[0][0]


def _restream(stream: bytes, payload: bytes) -> bytes:
    """``stream`` (one palette chunk) with its payload replaced, the table's length fixed up."""
    info, start, ln = _chunk_payload(stream)
    head = bytearray(stream[:start])
    struct.pack_into("<I", head, H + 8, len(payload))
    return bytes(head) + payload


def _raw_streams(words: np.ndarray) -> tuple[bytes, list[np.ndarray]]:
    """A one-chunk palette stream with every stream stored (no zstd), and its three streams."""
    s = planes.compress(words.view(np.uint8), 2, rotate=True, palette=True)
    ks, pd, idx = palette.split_numpy(words)
    return s, [ks, pd, idx]


def _tokens(pd: np.ndarray) -> list[int]:
    """The values of a ``pal`` stream's escape code."""
    out, q = [], 0
    while q < pd.size:
        if pd[q] == 255:
            out.append(int(pd[q + 1]) | int(pd[q + 2]) << 8)
            q += 3
        else:
            out.append(int(pd[q]))
            q += 1
    return out


def _escape(vals: list[int]) -> np.ndarray:
    return np.array([b for v in vals for b in ([v] if v < 255 else [255, v & 255, v >> 8])], np.uint8)


def _payload(ks, pd, idx, flags: int = 0) -> bytes:  # noqa: ANN001
    lens = [v for a in (ks, pd, idx) for v in (len(a), len(a))]
    return struct.pack("<B6I", flags, *lens) + bytes(ks) + bytes(pd) + bytes(idx)


def _refused(stream: bytes) -> None:
    with pytest.raises(CorruptPayloadError):
        planes.decompress(stream)


@pytest.mark.parametrize("compiled", PATHS)
def test_hostile_palette_payloads_are_refused(compiled, monkeypatch):
    _path(monkeypatch, compiled)
    w = grid(9000, 5, special=False)  # 3-bit indices: values 5..7 point past the palette
    s, (ks, pd, idx) = _raw_streams(w)
    good = _payload(ks, pd, idx)
    tok = _tokens(pd)
    assert ks[0] >= 1 and _escape(tok).tobytes() == pd.tobytes()
    assert np.array_equal(planes.decompress(_restream(s, good)).view(np.uint16), w)
    cases = {
        "truncated payload": good[:-1],
        "trailing byte": good + b"\0",
        "header cut": good[:10],
        "ks count over 32": _payload(np.where(np.arange(ks.size) == 3, 200, ks).astype(np.uint8), pd, idx),
        "ks count over a short block": _payload(np.concatenate([ks[:-1], [31]]).astype(np.uint8), pd, idx),
        "ks larger (streams run out)": _payload(np.minimum(ks + 1, 31).astype(np.uint8), pd, idx),
        "ks smaller (bytes left over)": _payload(np.maximum(ks.astype(int) - 1, 0).astype(np.uint8), pd, idx),
        "ks short": _payload(ks[:-1], pd, idx),
        "pal cut": _payload(ks, pd[:-2], idx),
        "pal extra": _payload(ks, np.append(pd, 1).astype(np.uint8), idx),
        "escape at the end": _payload(ks, np.append(pd[:-1], 255).astype(np.uint8), idx),
        "escape of a small value": _payload(ks, np.concatenate([[255, 3, 0], _escape(tok[1:])]), idx),
        "zero gap": _payload(ks, _escape(tok[:1] + [0] + tok[2:]), idx),
        "gap below zero": _payload(ks, _escape([0] + tok[1:]), idx),
        "index past the palette": _payload(ks, pd, np.full(idx.size, 0xFF, np.uint8)),
        "idx cut": _payload(ks, pd, idx[:-1]),
        "idx extra": _payload(ks, pd, np.append(idx, 0).astype(np.uint8)),
        "unknown flag": _payload(ks, pd, idx, flags=8),
        "zstd flag on a stored stream": _payload(ks, pd, idx, flags=1),
    }
    for name, payload in cases.items():
        try:
            _refused(_restream(s, payload))
        except BaseException as e:
            raise AssertionError(f"{name}: {e!r}") from None


def test_hostile_tables_are_refused():
    w = grid(9000, 5)
    s = planes.compress(w.view(np.uint8), 2, rotate=True, palette=True)
    info, start, ln = _chunk_payload(s)
    mode_at = H + 8 + 8  # header, raw_len, two u32 lengths: the two mode bytes
    for bad in ([2, 1], [0, 2]):
        t = bytearray(s)
        t[mode_at : mode_at + 2] = bytes(bad)
        _refused(bytes(t))
    t = bytearray(s)  # plane 1's slot not empty: the payload split across two slots
    struct.pack_into("<II", t, H + 8, ln - 5, 5)
    _refused(bytes(t))
    raw4 = planes.compress(np.zeros(64, np.uint8), 4)  # mode 2 on a 4-byte stream
    t = bytearray(raw4)
    t[H + 8 + 16 : H + 8 + 20] = b"\2\2\2\2"
    _refused(bytes(t))
    with pytest.raises(CorruptPayloadError):  # a grouped stream never holds palette chunks
        g = bytearray(planes.compress(w.view(np.uint8), 2, contexts=np.zeros(9000, np.uint8)))
        g[H + 10 + 1 + 4 + 8] = 2  # the first group's first mode byte
        planes.decompress(bytes(g), contexts=np.zeros(9000, np.uint8))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_palette_payloads_never_crash(data):
    """Random byte flips, cuts and extensions of a palette stream: CorruptPayloadError, or the
    chunk's length of bytes (a changed gap or index can decode to other valid words: the store's
    sha256 of the whole object is what catches those), on both paths."""
    w = grid(8300, data.draw(st.integers(1, 32)), seed=data.draw(st.integers(0, 99)))
    s = bytearray(planes.compress(w.view(np.uint8), 2, rotate=True, palette=True))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(planes._HEAD.size, len(s) - 1))
        s[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.sampled_from([0, 0, 1, 7]))
    buf = bytes(s[: len(s) - cut]) + bytes(data.draw(st.integers(0, 2)))
    for k in ([None, FX] if FX is not None else [None]):
        old = palette._KERNELS
        palette._KERNELS = k
        try:
            out = planes.decompress(buf)
            assert out.size == w.size * 2
        except CorruptPayloadError:
            pass
        finally:
            palette._KERNELS = old


@pytest.mark.parametrize("compiled", PATHS)
def test_fp16_grid_round_trips(compiled, monkeypatch):
    """fp16 (also width 2, rotated, so also tried): a dequantized-looking grid with fp16's NaN
    payloads, +-inf, +-0 and subnormals among its levels takes the palette and comes back exact."""
    _path(monkeypatch, compiled)
    rng = np.random.default_rng(16)
    nb = 1000
    lv = (rng.standard_normal((nb, 16)) * 0.02).astype(np.float16).view(np.uint16)
    lv[::4, :6] = [0x7E01, 0xFE00, 0x7C00, 0xFC00, 0x8000, 0x0001]
    w = lv[np.arange(nb * 32 - 5) // 32, rng.integers(0, 16, nb * 32 - 5)]
    s = planes.compress(w.view(np.uint8), 2, rotate=True, palette=True)
    assert planes.read_info(memoryview(s)).modes == [[2, 2]]
    assert np.array_equal(planes.decompress(s).view(np.uint16), w)
