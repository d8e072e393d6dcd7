"""benchmarks/probe_ctx_huffman.py (issue 12's per-exponent Huffman probe) gives back the exact bits it coded,
so the bytes and decode times it reports are of a working coder, every variant (A, B, C): every bf16 bit pattern
(NaN payloads, infs, +-0, subnormals), sizes that are not a multiple of its four streams or its 16-element
steps, escapes and every bucket, tensors over one chunk, and exponents rare enough to share a table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_lossless import finetune_of, weights, with_specials

pytest.importorskip("numba")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # a benchmark's module, not the package
import probe_ctx_huffman as ph  # noqa: E402


def _words(t: torch.Tensor) -> np.ndarray:
    return t.reshape(-1).view(torch.int16).numpy().view(np.uint16)


def _round_trip(t: np.ndarray, b: np.ndarray, chunk: int = 1 << 19) -> tuple[dict, list[dict]]:
    sc = np.empty(max(t.size, 1), np.uint16)
    a = ph.encode(t, b, 11)
    assert np.array_equal(ph.decode(a, b, sc), t)
    vb = ph.encode_b(t, b, 11, chunk)
    assert np.array_equal(ph.decode_b(vb, b, sc), t)
    for nclass, limit in ((2, 11), (4, 9)):  # variant C
        assert np.array_equal(ph.decode_b(ph.encode_b(t, b, limit, chunk, nclass), b, sc), t)
    return a, vb


@pytest.mark.parametrize("n", [1, 3, 4, 15, 16, 17, 1001, 4099])
def test_finetune_like_and_specials(n: int) -> None:
    base = with_specials(weights(torch.bfloat16, (n,), seed=n))
    _round_trip(_words(finetune_of(base)), _words(base))
    _round_trip(_words(base), _words(finetune_of(base, ulps=200)), chunk=256)


def test_every_bit_pattern_and_unrelated_tensors() -> None:
    """Differences of every size: escapes (variant A) and all 12 buckets (variant B) occur."""
    rng = np.random.default_rng(0)
    t = np.arange(1 << 16, dtype=np.uint16)  # every bf16 pattern, against random bases
    b = rng.integers(0, 1 << 16, t.size, dtype=np.uint16)
    a, _ = _round_trip(t, b, chunk=5000)
    assert a["esc"].size > t.size // 2
    z = ph._symbols_of(t, b)
    assert set(ph._bucket_symbols(z, ph.BUCKET_START)[z >= ph.LITERALS].tolist()) == set(range(240, 252))
    _round_trip(rng.permutation(t), t)


def test_skewed_contexts_share_a_table_and_shrink() -> None:
    """A change of a few units in the last place codes far below 2 bytes an element in both
    variants; exponents under MIN_CONTEXT elements share table 0."""
    base = weights(torch.bfloat16, (3 * ph.MIN_CONTEXT + 17,), seed=3)
    b, t = _words(base), _words(finetune_of(base))
    a, vb = _round_trip(t, b)
    assert a["bytes"] < t.size and sum(c["bytes"] for c in vb) < t.size
    counts = np.bincount((b >> 7) & 0xFF, minlength=256)
    rare = [c for c in range(256) if 0 < counts[c] < ph.MIN_CONTEXT]
    assert rare and all(a["off"][c] == 0 for c in rare)  # table 0: the shared one
