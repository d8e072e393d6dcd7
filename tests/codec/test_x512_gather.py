"""The grouped decode's AVX-512 gather (codec/_numba.py, its AVX-512 section) against the scalar one it replaces:
the same words in the same places for any mix of exponents, any length, any set of "frequent"
exponents (including ones absent from the chunk), and the same verdict on counts that are not the
base's. The kernel uses an AVX-512 instruction LLVM cannot emit for other CPUs, so its tests skip
where ``available()`` is False (the codec then never calls it: the scalar-path tests cover it)."""

from __future__ import annotations

import numpy as np
import pytest

from deltastore.codec import _numba
from deltastore.codec._numba import gather2_x512
from deltastore.codec._numba import x512_frequent

SHIFT, FMASK = np.uint16(7), np.uint16(0xFF)
needs_x512 = pytest.mark.skipif(not _numba.x512_available(), reason="needs AVX-512 VBMI2 (and DELTASTORE_SIMD not 0)")


def _chunk(n: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(base words whose exponents follow a rounded normal of the given spread, counts)."""
    rng = np.random.default_rng(seed)
    e = np.clip(np.round(120 + spread * rng.standard_normal(n)), 0, 255).astype(np.uint16)
    base = (e << SHIFT) | rng.integers(0, 128, n, dtype=np.uint16) | (rng.integers(0, 2, n, dtype=np.uint16) << np.uint16(15))
    return base.astype(np.uint16), np.bincount((base >> SHIFT) & FMASK, minlength=256).astype(np.int64)


def _gathers(base: np.ndarray, counts: np.ndarray, fctx: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = base.size
    words = np.random.default_rng(seed).integers(0, 1 << 16, 2 * n + _numba.X512_SLACK, dtype=np.uint16)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.uint32)
    want, got = np.zeros(n, np.uint16), np.zeros(n, np.uint16)
    p1, p2 = starts.copy(), starts.copy()
    _numba._gather2(words, base, SHIFT, FMASK, p1, want)
    gather2_x512(words, base, SHIFT, FMASK, p2, got, fctx)
    assert np.array_equal(p1, p2)
    return want, got


@needs_x512
@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 63, 64, 65, 95, 129, 1000, (1 << 19) + 5])  # blocks of 64: edges
@pytest.mark.parametrize("spread", [0.0, 2.0, 40.0])  # one exponent; SmolLM2-like; nearly every exponent
def test_the_expand_gather_is_the_scalar_gather(n, spread):
    base, counts = _chunk(n, spread, seed=n)
    want, got = _gathers(base, counts, x512_frequent(counts), seed=1)
    assert np.array_equal(got, want)


@needs_x512
def test_any_frequent_set_gives_the_same_words():
    """Empty, absent exponents, every present one, a duplicate: only speed may depend on the set."""
    base, counts = _chunk(4099, 3.0, seed=7)
    present = np.flatnonzero(counts).astype(np.uint16)
    for fctx in (np.zeros(0, np.uint16), np.array([0, 255, 3], np.uint16), present, present[::-1].copy(),
                 np.array([present[0], present[0]], np.uint16)[:1]):
        want, got = _gathers(base, counts, fctx, seed=2)
        assert np.array_equal(got, want), fctx


@needs_x512
def test_words_without_the_slack_are_refused():
    base, counts = _chunk(64, 1.0, seed=1)
    with pytest.raises(ValueError, match="SLACK"):
        gather2_x512(np.zeros(2 * 64, np.uint16), base, SHIFT, FMASK, np.zeros(256, np.uint32), np.zeros(64, np.uint16),
                     x512_frequent(counts))


def test_frequent_contexts_cover_the_chunk_with_few_present_exponents():
    base, counts = _chunk(1 << 16, 3.0, seed=3)
    f = x512_frequent(counts)
    assert len(set(f.tolist())) == f.size <= _numba.X512_MAX_K and (counts[f] > 0).all()
    assert counts[f].sum() >= _numba.X512_COVER * counts.sum() or f.size == _numba.X512_MAX_K
    assert x512_frequent(np.zeros(256, np.int64)).size == 0


@pytest.mark.parametrize("x512", [False, pytest.param(True, marks=needs_x512)])
def test_stored_counts_that_are_not_the_bases_are_refused_on_both_paths(x512, monkeypatch):
    """A v3 payload's counts are input: counts that sum to n but are not the base's make the
    kernel say False (the caller's CorruptPayloadError), never a read outside its scratch."""
    monkeypatch.setattr(_numba, "_X512", x512)
    n = 3000
    base, counts = _chunk(n, 2.0, seed=11)
    planes = np.random.default_rng(4).integers(0, 256, (2, n), dtype=np.uint8)
    out = np.zeros(2 * n, np.uint8)
    assert _numba.ungroup_undiff_stored(planes, base.view(np.uint8), 7, 8, counts, out)
    rng = np.random.default_rng(5)
    for _ in range(50):
        wrong = np.bincount(rng.integers(0, 256, n), minlength=256).astype(np.int64)
        assert not _numba.ungroup_undiff_stored(planes, base.view(np.uint8), 7, 8, wrong, out)


def test_deltastore_simd_0_turns_it_off(monkeypatch):
    monkeypatch.setattr(_numba, "_X512", None)
    monkeypatch.setenv("DELTASTORE_SIMD", "0")
    assert _numba.x512_available() is False


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 1000, (1 << 19) + 5])
@pytest.mark.parametrize("spread", [0.0, 2.0, 40.0])
def test_the_compress_scatter_writes_the_scalar_encodes_planes(n, spread):
    """The encode's scatter by compress-stores (LLVM's generic intrinsic: it compiles, scalarized,
    on any CPU, so this runs everywhere) writes the same grouped planes as the scalar scatter."""
    base, counts = _chunk(n, spread, seed=n + 1)
    target = np.random.default_rng(n).integers(0, 1 << 16, n, dtype=np.uint16)
    planes = {}
    for simd in (False, True):
        hi, lo = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
        _numba._diff_group_split2(target, base, SHIFT, FMASK, counts, hi, lo, np.zeros(n, np.uint16), np.zeros(n, np.uint16), simd)
        planes[simd] = (hi, lo)
    assert np.array_equal(planes[True][0], planes[False][0]) and np.array_equal(planes[True][1], planes[False][1])
