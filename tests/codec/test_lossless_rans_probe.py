"""benchmarks/probe_rans.py (issue 12's per-context rANS probe) gives back the exact bits it coded,
so the bytes and speeds bench_lossless.py --rans-probe reports are of a working coder: every bf16
bit pattern (NaN payloads, infs, +-0, subnormals), sizes that are not a multiple of its four
states, tensors over one chunk, and exponents rare enough to share a table; likewise
benchmarks/probe_lowplane.py (--base-contexts' low plane grouped by exponent)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_lossless import finetune_of, weights, with_specials

pytest.importorskip("numba")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # a benchmark's module, not the package
import probe_rans as pr  # noqa: E402


def _words(t: torch.Tensor) -> np.ndarray:
    return t.reshape(-1).view(torch.int16).numpy().view(np.uint16)


def _round_trip(t: np.ndarray, b: np.ndarray) -> pr.Coded:
    c = pr.encode(t, b)
    out = pr.decode(c, b, np.empty(t.size, np.uint16))
    assert np.array_equal(out, t)
    return c


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 1001, pr.CHUNK - 1, pr.CHUNK + 3])
def test_finetune_like_and_specials(n: int) -> None:
    base = with_specials(weights(torch.bfloat16, (n,), seed=n))
    _round_trip(_words(finetune_of(base)), _words(base))
    _round_trip(_words(base), _words(finetune_of(base, ulps=200)))


def test_every_bit_pattern_and_unrelated_tensors() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(1 << 16, dtype=np.uint16)  # every bf16 pattern, against random bases
    _round_trip(t, rng.integers(0, 1 << 16, t.size, dtype=np.uint16))
    _round_trip(rng.permutation(t), t)


def test_skewed_contexts_share_a_table_and_shrink() -> None:
    """A change that is small on most weights codes far below 2 bytes an element; exponents under
    MIN_CONTEXT elements share one table (the count of tables says so)."""
    base = weights(torch.bfloat16, (3 * pr.MIN_CONTEXT + 17,), seed=3)
    c = _round_trip(_words(finetune_of(base)), _words(base))
    used = np.unique((_words(base) >> 7) & 0xFF).size
    assert c.ntab < used
    assert c.nbytes < base.numel()  # under one byte an element (raw: two)


def test_lowplane_probe_round_trip() -> None:
    """benchmarks/probe_lowplane.py (a base's low plane grouped by exponent, or as runs): exact on every bf16
    pattern, odd sizes and over one chunk, and runs of equal values in a group shrink the plane."""
    import probe_lowplane as pl

    rng = np.random.default_rng(1)
    for w in (np.arange(1 << 16, dtype=np.uint16), rng.integers(0, 1 << 16, pl.CHUNK + 7, dtype=np.uint16),
              np.array([0x8000, 0x7F80, 0xFF81, 1], dtype=np.uint16)):
        assert np.array_equal(pl.decode(pl.encode(w, 3), w.size), w)
        assert np.array_equal(pl.decode_runs(pl.encode_runs(w), w.size), w)
    grid = _words(torch.tensor(rng.integers(-7, 8, 1 << 16) * 0.013, dtype=torch.bfloat16))  # few values a block
    assert pl.nbytes(pl.encode(grid, 3)) < 0.75 * 2 * grid.size
    assert np.array_equal(pl.decode_runs(pl.encode_runs(grid), grid.size), grid)
    assert pl.nbytes_runs(pl.encode_runs(grid)) < 0.75 * 2 * grid.size
    assert pl.distinct_per_block(grid, 32)[0] <= 15 * (grid.size // 32)
