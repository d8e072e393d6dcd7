"""The compiled kernels (codec._numba) write exactly the bytes the numpy reference writes, and each
path decodes the other's payloads: every float dtype, special values, odd sizes, tensors over one
chunk, any thread count. The numpy path is what runs where numba does not import."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_lossless import FLOATS, finetune_of, same_bits, weights, with_specials

from deltastore.codec import from_bytes, planes, to_bytes
from deltastore.codec.lossless import (
    EXPONENT_FIELD, GROUPED_CHUNK_BYTES, Lossless, context_field, diff_code_numpy, diff_decode_numpy, exponent_contexts,
    exponent_contexts_numpy, tensor_u8,
)

FX = planes.fast()
pytestmark = pytest.mark.skipif(FX is None, reason="numba does not import here: only the numpy path runs")


def _numpy_path(monkeypatch, on: bool) -> None:
    monkeypatch.setattr(planes, "_FAST", None if on else FX)


def _random_bits(dtype: torch.dtype, shape, seed: int) -> torch.Tensor:
    """Every bit pattern equally likely: NaNs with payloads, infs, subnormals, -0 all turn up."""
    w = torch.empty((), dtype=dtype).element_size()
    if not int(np.prod(shape)):
        return torch.empty(shape, dtype=dtype)
    raw = np.random.default_rng(seed).integers(0, 256, int(np.prod(shape)) * w, dtype=np.uint8)
    return torch.from_numpy(raw).view(dtype).reshape(shape)


def _pairs(dtype: torch.dtype, shape):
    base = with_specials(weights(dtype, shape, seed=7))
    yield finetune_of(base), base  # a fine-tune-like change, specials swapped
    yield base, finetune_of(base, ulps=200)  # the other way round, large steps
    yield _random_bits(dtype, shape, 1), _random_bits(dtype, shape, 2)  # unrelated bit patterns
    yield _random_bits(dtype, shape, 3), base


def _both_paths(monkeypatch, target, base, codec=None):
    codec = codec or Lossless()
    payloads = []
    for numpy_path in (False, True):
        _numpy_path(monkeypatch, numpy_path)
        payloads.append(to_bytes(codec.encode(target, base)))
    _numpy_path(monkeypatch, False)
    return payloads


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(1,), (3,), (5,), (7, 13), (1031,), (0,), (4099,)])
def test_compiled_and_numpy_write_the_same_bytes_and_read_each_other(dtype, shape, monkeypatch):
    for target, base in _pairs(dtype, shape):
        fast, ref = _both_paths(monkeypatch, target, base)
        assert fast == ref
        enc = from_bytes(fast)
        for numpy_path in (False, True):
            _numpy_path(monkeypatch, numpy_path)
            assert same_bits(Lossless().reconstruct(enc, base), target)
        _numpy_path(monkeypatch, False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float8_e4m3fn, torch.float64])
def test_over_one_chunk_the_bytes_match_and_do_not_depend_on_threads(dtype, monkeypatch):
    w = torch.empty((), dtype=dtype).element_size()
    n = 2 * GROUPED_CHUNK_BYTES // w + 4093  # three chunks, the last odd-sized
    base = with_specials(weights(dtype, (n,), seed=11))
    target = finetune_of(base, ulps=60)
    out = {}
    for threads in ("1", "3"):
        monkeypatch.setenv("DELTASTORE_THREADS", threads)
        out[threads] = _both_paths(monkeypatch, target, base)
        enc = from_bytes(out[threads][0])
        assert len(planes.read_info(memoryview(enc.arrays["stream"].numpy())).raw_lens) == 3
        assert same_bits(Lossless().reconstruct(enc, base), target)
    assert out["1"][0] == out["1"][1] == out["3"][0] == out["3"][1]


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_difference_kernels_match_numpy(width):
    rng = np.random.default_rng(width)
    n = 3 * 4096 + 5
    base = rng.integers(0, 256, n * width, dtype=np.uint8)
    target = base.copy()
    target[::3] = rng.integers(0, 256, target[::3].size, dtype=np.uint8)
    code = FX.diff_code(target, base, width)
    assert np.array_equal(code, diff_code_numpy(target, base, width))
    assert np.array_equal(FX.diff_decode(code, base, width), diff_decode_numpy(code, base, width))
    assert np.array_equal(FX.diff_decode(code, base, width), target)


@pytest.mark.parametrize("dtype", FLOATS)
def test_exponent_contexts_match_numpy(dtype):
    raw = tensor_u8(_random_bits(dtype, (4099,), 5))
    assert np.array_equal(exponent_contexts(raw, dtype), exponent_contexts_numpy(raw, dtype))
    assert dtype in EXPONENT_FIELD


@pytest.mark.parametrize("width", [1, 2, 4, 8])
@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("contexts", ["all", "skewed", "one"])
def test_grouping_kernels_match_numpy(width, rotate, contexts, monkeypatch):
    """planes.compress / decompress with contexts of any kind (the generic grouped stream)."""
    rng = np.random.default_rng(width * 10 + rotate)
    n = 70_001
    raw = rng.integers(0, 256, n * width, dtype=np.uint8)
    ctx = {"all": rng.integers(0, 256, n, dtype=np.uint8),
           "skewed": np.minimum(rng.geometric(0.3, n) + 100, 255).astype(np.uint8),
           "one": np.full(n, 9, dtype=np.uint8)}[contexts]
    grouped, counts = FX.group_split(raw, ctx, width, rotate)
    _numpy_path(monkeypatch, True)
    want, want_counts = planes.group_split(raw, ctx, width, rotate)
    ref = planes.compress(raw, width, rotate=rotate, contexts=ctx, min_group=500, chunk_bytes=64 << 10)
    _numpy_path(monkeypatch, False)
    assert np.array_equal(grouped, want) and np.array_equal(counts, want_counts)
    out = np.empty_like(raw)
    FX.ungroup_join(grouped, ctx, counts, width, rotate, out)
    assert np.array_equal(out, raw)
    fast = planes.compress(raw, width, rotate=rotate, contexts=ctx, min_group=500, chunk_bytes=64 << 10)
    assert fast == ref
    assert np.array_equal(planes.decompress(fast, contexts=ctx), raw)
    assert np.array_equal(planes.decompress_range(fast, 1000, 200_003, contexts=ctx), raw[1000:200_003])


def test_deltastore_numba_0_selects_the_numpy_path(monkeypatch):
    monkeypatch.setattr(planes, "_FAST", False)
    monkeypatch.setenv("DELTASTORE_NUMBA", "0")
    assert planes.fast() is None
    monkeypatch.setattr(planes, "_FAST", False)
    monkeypatch.setenv("DELTASTORE_NUMBA", "1")
    assert planes.fast() is FX


@pytest.mark.parametrize("seed", range(6))
def test_compiled_group_merge_is_planes_merge_groups(seed):
    """The fused chunk encode merges contexts into groups in compiled code: the same groups."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(256, dtype=np.int64)
    live = rng.choice(256, size=int(rng.integers(1, 40)), replace=False)
    counts[live] = rng.integers(1, 40_000, live.size) * (rng.random(live.size) < 0.8)
    counts[live[0]] = max(1, counts[live[0]])
    for min_group in (1, 16384, 10**9):
        gctx, gn = np.empty(256, np.int64), np.empty(256, np.int64)
        ng = FX._merge_groups(counts, min_group, gctx, gn)
        assert list(zip(gctx[:ng].tolist(), gn[:ng].tolist())) == planes.merge_groups(counts, min_group)


@pytest.mark.parametrize("n", [1, 7, 16_385, 1 << 19])
def test_one_call_chunk_encode_writes_the_three_call_groups(n):
    """planes.diff_groups (histogram, difference, grouping, merge and every zstd frame in one
    compiled call, payloads back to back) against the same chunk through diff_group_split and
    _compress_grouped_planes: the same groups, modes, payload bytes and stream, the same counts;
    stored planes (noise) too."""
    if planes.diff_groups(np.zeros(2, np.uint8), np.zeros(2, np.uint8), 2, 7, 8, 3) is None:
        pytest.skip("the skip-ahead compressor (cffi) does not load here")
    base = weights(torch.bfloat16, (n,), seed=n)
    for target in (finetune_of(base), _random_bits(torch.bfloat16, (n,), 5)):
        t, b = tensor_u8(target), tensor_u8(base)
        shift, bits = context_field(torch.bfloat16)
        groups, counts = planes.diff_groups(t, b, 2, shift, bits, 3)
        grouped, counts3 = FX.diff_group_split(t, b, 2, shift, bits)
        want = planes._compress_grouped_planes(grouped, counts3, 3, planes.MIN_GROUP)
        assert np.array_equal(counts, counts3)
        assert [(g.context, g.n, g.modes) for g in groups] == [(g.context, g.n, g.modes) for g in want]
        assert groups.blob == b"".join(p for g in want for p in g.payloads)
        assert planes._pack_grouped([groups, groups], 2, False, 4 * n) == planes._pack_grouped([want, want], 2, False, 4 * n)
    assert 0 in {m for g in groups for m in g.modes}  # the noise target's planes were stored


@pytest.mark.parametrize("n", [1, 7, 1 << 19, 3 * (1 << 19) + 11, 2_500_001, 17 * (1 << 19) + 5])
@pytest.mark.parametrize("threads", [1, 3])
def test_whole_tensor_encode_writes_the_chunk_by_chunk_stream(n, threads):
    """planes.diff_stream (groups of chunks a compiled call, one more for the table and the moves)
    writes the bytes compress_grouped writes from diff_groups' chunks, with the same counts per
    chunk and the same packed v3 counts; one chunk, chunks with a short last one, noise (stored
    planes), a compressed and a stored plane in one group; items of several chunks (18 chunks: 2 a
    call); any thread count."""
    if planes.diff_groups(np.zeros(2, np.uint8), np.zeros(2, np.uint8), 2, 7, 8, 3) is None:
        pytest.skip("the skip-ahead compressor (cffi) does not load here")
    from deltastore.codec.lossless import _pack_counts

    base = weights(torch.bfloat16, (n,), seed=n)
    shift, bits = context_field(torch.bfloat16)
    step = planes.chunk_step(2, GROUPED_CHUNK_BYTES)
    codes = np.random.default_rng(n).integers(0, 256, n).astype(np.uint16)  # high plane zero, low plane noise
    mixed = torch.from_numpy(diff_decode_numpy(codes.view(np.uint8), tensor_u8(base), 2).view(np.int16)).view(torch.bfloat16)
    for target in (finetune_of(base), _random_bits(torch.bfloat16, (n,), 5), mixed):
        t, b = tensor_u8(target), tensor_u8(base)
        seen = {}

        def chunk(lo, hi, t=t, b=b, seen=seen):
            groups, counts = planes.diff_groups(t[lo:hi], b[lo:hi], 2, shift, bits, 3)
            seen[lo] = counts
            return groups

        want = planes.compress_grouped(t.size, 2, chunk, level=3, chunk_bytes=GROUPED_CHUNK_BYTES, threads=threads)
        got, counts = planes.diff_stream(t, b, shift, bits, 3, chunk_bytes=GROUPED_CHUNK_BYTES, threads=threads)
        assert got.dtype == np.uint8 and got.tobytes() == want
        rows = [seen[lo] for lo in range(0, t.size, step)]
        assert counts.shape == (len(rows), 256) and all(np.array_equal(c, r) for c, r in zip(counts, rows))
        one_by_one = [np.concatenate([np.packbits(c > 0, bitorder="little").view("<u4").astype(np.int64), c[c > 0]])
                      for c in rows]  # the format's counts, a chunk at a time
        assert np.array_equal(_pack_counts(counts), np.concatenate(one_by_one).astype(np.int32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_default_encode_takes_the_whole_tensor_path_and_writes_the_same_payload(monkeypatch, dtype):
    """Lossless().encode of a 2-byte fine-tune over several chunks (what an add runs) goes through
    planes.diff_stream, and its payload (stream and counts) is the one the chunk-by-chunk path
    writes, and decodes to the fine-tune's bits."""
    if planes.diff_groups(np.zeros(2, np.uint8), np.zeros(2, np.uint8), 2, 7, 8, 3) is None:
        pytest.skip("the skip-ahead compressor (cffi) does not load here")
    base = with_specials(weights(dtype, (3 * (1 << 19) + 5,), seed=3))
    target = finetune_of(base)
    calls = []
    real = planes.diff_stream
    monkeypatch.setattr(planes, "diff_stream", lambda *a, **k: calls.append(1) or real(*a, **k))
    enc = Lossless().encode(target, base)
    assert calls
    monkeypatch.setattr(planes, "diff_stream", lambda *a, **k: None)
    chunked = Lossless().encode(target, base)
    assert to_bytes(enc) == to_bytes(chunked)
    assert same_bits(Lossless().reconstruct(from_bytes(to_bytes(enc)), base), target)


def _series_step(base: torch.Tensor, changed: float, seed: int = 5) -> torch.Tensor:
    """The next save of a small-lr run: ``changed`` of the elements moved 1-3 units in the last place."""
    g = torch.Generator().manual_seed(seed)
    ib = base.reshape(-1).view(torch.int16)
    step = torch.randint(1, 4, ib.shape, generator=g, dtype=torch.int16) * (torch.randint(0, 2, ib.shape, generator=g, dtype=torch.int16) * 2 - 1)
    return torch.where(torch.rand(ib.shape, generator=g) < changed, ib + step, ib).view(base.dtype).reshape(base.shape)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_sparse_delta_gets_the_smaller_frames_on_every_path(dtype, monkeypatch):
    """Two saves of a checkpoint series (1% of the elements changed), over two chunks: the groups'
    low planes are sparse, so their frames are made again at zstd's level 1 (codec/_zstd_encode,
    sparse groups): the compiled loop and the numpy path write the same payload, at most 0.9x the
    bytes without the rule (``DELTASTORE_ZSTD_SPARSE=0``), and it decodes to the exact bits. A dense
    fine-tune's delta (70% changed) is not sparse: the same bytes either way."""
    n = GROUPED_CHUNK_BYTES // 2 + 75_001
    base = weights(dtype, (n,), seed=3)
    sparse, dense = _series_step(base, 0.01), finetune_of(base)
    got = {}
    for rule in ("1", "0"):
        monkeypatch.setenv("DELTASTORE_ZSTD_SPARSE", rule)
        for name, target in (("sparse", sparse), ("dense", dense)):
            fast, ref = _both_paths(monkeypatch, target, base)
            assert fast == ref, (rule, name)
            assert same_bits(Lossless().reconstruct(from_bytes(fast), base), target)
            got[rule, name] = fast
    assert len(got["1", "sparse"]) <= 0.9 * len(got["0", "sparse"]), (len(got["1", "sparse"]), len(got["0", "sparse"]))
    assert got["1", "dense"] == got["0", "dense"]
