"""The per-chunk decode of stored counts in one compiled call (``_numba.fill_undiff_stored``: the
groups checked against the counts, the frames, the gather and the undoing) and the counts read by a
compiled loop (``_numba.unpack_counts``): the same bytes, and the same errors in the same words,
as the calls they replaced (``grouped_chunk_planes`` then ``ungroup_undiff_stored``; the numpy
reading of the counts), for good payloads and for each kind of bad one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_decode_overhead import _lossless
from test_lossless import finetune_of, weights, with_specials
from test_lossless_decode import _stream_with_frames

from deltastore.codec import _zstd, from_bytes, lossless, planes, to_bytes
from deltastore.codec.errors import CorruptPayloadError
from deltastore.codec.lossless import GROUPED_CHUNK_BYTES, Lossless, _base_u8, unpack_counts

FX = planes.fast()
needs_fused = pytest.mark.skipif(FX is None or _zstd.frame_functions() is None,
                                 reason="needs the compiled kernels and libzstd")


@pytest.fixture(params=["scalar", "x512"])
def gather(request, monkeypatch):
    """Each test once with the scalar gather and once with the AVX-512 one (where this CPU has it)."""
    if request.param == "x512" and not (FX is not None and FX.x512_available()):
        pytest.skip("no AVX-512 VBMI2 here")
    if FX is not None:
        monkeypatch.setattr(FX, "_X512", request.param == "x512")
    return request.param


def _former(buf, info, base_raw, out, stored):  # noqa: ANN001
    """Each chunk as decode_grouped_diff decoded stored counts of 2-byte words before the fused call."""
    offs, dst = info.chunk_offsets(), np.cumsum([0] + info.raw_lens).tolist()
    for i in range(len(info.raw_lens)):
        lo, hi = dst[i], dst[i + 1]
        grouped = lossless.grouped_chunk_planes(buf, info, i, offs[i], stored[i])
        if not FX.ungroup_undiff_stored(grouped, base_raw[lo:hi], 7, 8, stored[i], out[lo:hi], summed=True):
            raise CorruptPayloadError(lossless._NOT_THE_BASE)


def _both(enc, base, stored=None):  # noqa: ANN001
    """(bytes or the error's words) of the fused decode and of the former calls."""
    buf = enc.arrays["stream"].numpy()
    info = planes.read_info(memoryview(buf))
    if stored is None:
        stored = unpack_counts(enc.arrays["counts"].numpy(), info)
    base_raw = _base_u8(base, torch.bfloat16)
    got = []
    for fn in (lambda out: lossless.decode_grouped_diff(buf, info, base_raw, torch.bfloat16, out, stored=stored),
               lambda out: _former(buf, info, base_raw, out, stored)):
        out = np.zeros(base_raw.size, np.uint8)
        try:
            fn(out)
            got.append(out.tobytes())
        except CorruptPayloadError as e:
            got.append(str(e))
    return got


def _small(monkeypatch, n=3000):  # noqa: ANN001
    """A bf16 v4 payload of several chunks and several groups a chunk."""
    monkeypatch.setattr(lossless, "GROUPED_CHUNK_BYTES", 2048)
    monkeypatch.setattr(planes, "MIN_GROUP", 100)
    base = with_specials(weights(torch.bfloat16, (n,), seed=4))
    target = finetune_of(base, ulps=30)
    enc = Lossless().encode(target, base)
    info = planes.read_info(memoryview(enc.arrays["stream"].numpy()))
    assert len(info.raw_lens) > 1 and len(info.groups[0]) > 1
    return enc, base, target


@needs_fused
def test_fused_decode_gives_the_former_bytes(monkeypatch, gather):
    enc, base, target = _small(monkeypatch)
    fused, former = _both(enc, base)
    assert fused == former == target.view(torch.uint8).numpy().tobytes()
    for n in (1, 63, 64, 65, 2 * GROUPED_CHUNK_BYTES // 2 + 7):  # the x512 gather's block edges, full chunks
        b = with_specials(weights(torch.bfloat16, (n,), seed=n))
        t = finetune_of(b, ulps=3)
        fused, former = _both(Lossless().encode(t, b), b)
        assert fused == former == t.view(torch.uint8).numpy().tobytes()


@needs_fused
def test_fused_decode_refuses_what_the_former_calls_refused_in_the_same_words(monkeypatch, gather):
    enc, base, _ = _small(monkeypatch)
    info = planes.read_info(memoryview(enc.arrays["stream"].numpy()))
    good = unpack_counts(enc.arrays["counts"].numpy(), info)
    present = np.flatnonzero(good[0])
    cases = {}
    c = [g.copy() for g in good]
    c[0][present[0]] += 1  # do not sum to the chunk
    cases["sum"] = c
    c = [g.copy() for g in good]
    c[0][present[0]] += 1
    c[0][present[-1]] -= 1  # the sum kept: a group starts elsewhere, or the base is not these counts
    cases["moved"] = c
    c = [g.copy() for g in good]
    c[0][present[0]], c[0][present[1]] = good[0][present[1]], good[0][present[0]]  # two contexts swapped
    cases["swapped"] = c
    c = [g.copy() for g in good]
    gap = next(int(k) for k in present if k < 255 and good[0][k + 1] == 0)
    c[0][gap] -= 1
    c[0][gap + 1] += 1  # one element moved to a context the base has none of, inside its group
    cases["absent"] = c
    c = [g.copy() for g in good]
    c[0][present[0]] = 0
    c[0][present[1]] += good[0][present[0]]  # a group's first context emptied
    cases["empty"] = c
    seen = set()
    for name, stored in cases.items():
        fused, former = _both(enc, base, stored)
        assert fused == former, name
        assert isinstance(fused, str) and fused, name
        seen.add(fused)
    assert len(seen) >= 3  # the sum, the groups and the base's counts each named
    z = __import__("zstandard").ZstdCompressor()
    n = info.groups[0][0].n
    for frame in (z.compress(bytes(n - 1)), b"\x28\xb5\x2f\xfd" + bytes(12), b"not a frame", z.compress(bytes(64 << 10))):
        bad = from_bytes(to_bytes(enc))
        bad.arrays["stream"] = _stream_with_frames(enc, {1: frame})
        fused, former = _both(bad, base, good)
        assert fused == former and isinstance(fused, str), frame[:8]


@pytest.mark.skipif(FX is None, reason="needs the compiled kernels")
def test_counts_read_alike_and_refused_alike_on_both_paths(monkeypatch):
    enc = from_bytes(_lossless(5 * GROUPED_CHUNK_BYTES // 2 + 3))
    flat, info = enc.arrays["counts"].numpy(), planes.read_info(memoryview(enc.arrays["stream"].numpy()))
    got, want = unpack_counts(flat, info), lossless.unpack_counts_numpy(flat, info)
    assert len(got) == len(want) == len(info.raw_lens) > 1
    assert all(g.dtype == np.int64 and g.shape == (256,) and np.array_equal(g, w) for g, w in zip(got, want))
    k0 = int(np.unpackbits(flat[:8].astype("<u4").view(np.uint8)).sum())
    mutations = [flat[:0], flat[:5], flat[: 8 + k0 - 1], flat[: 8 + k0], flat[: 8 + k0 + 8 + 1], np.append(flat, np.int32(1)),
                 np.append(flat, np.zeros(9, np.int32))]
    for j, v in [(8, -1), (8, 0), (9, 2**31 - 1), (7, -(2**31)), (0, -1), (3, 0), (8 + k0 + 2, 1 << 20)]:
        m = flat.copy()
        m[j] = v
        mutations.append(m)
    z = flat.copy()
    z[8], z[9] = 0, flat[8] + flat[9]  # the sum kept, one present context with no element
    mutations.append(z)
    refused = 0
    for bad in mutations:
        refs = []
        for path in (None, FX):
            monkeypatch.setattr(planes, "_FAST", path)
            try:
                refs.append([r.tolist() for r in unpack_counts(bad, info)])
            except CorruptPayloadError as e:
                refs.append(str(e))
                refused += 1
        assert refs[0] == refs[1]
    assert refused == 2 * len(mutations)
