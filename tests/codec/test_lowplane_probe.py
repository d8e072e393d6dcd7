"""benchmarks/probe_palette.py (issue 12, bases: a palette per aligned 32-element block) gives back
the exact bits it coded, so the bytes and speeds ``bench_lossless.py --palette`` reports are of a
working coder: every bf16 bit pattern, every palette size 1..32 (every index width 0..5, the
nibble fast path and the two-byte window), short last blocks, tensors over one chunk, chunks
that fall back to today's planes, and both stream settings. A grid-quantized tensor shrinks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("numba")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # a benchmark's module, not the package
import probe_palette as pp  # noqa: E402

RAWS = [(), ("pal", "idx"), pp.STREAMS]


def _round_trip(w: np.ndarray, raw: tuple[str, ...] = ()) -> list[pp.Chunk]:
    c = pp.encode(w, 3, raw)
    out = pp.decode(c, w.size)
    assert out.dtype == np.uint16 and np.array_equal(out, w)
    return c


def _grid(n: int, levels: int, seed: int) -> np.ndarray:
    """bf16 words of ``n`` weights on a ``levels``-level grid per aligned 32-element block (scale
    and offset per block), as a 4-bit GGUF dequantizes to."""
    rng = np.random.default_rng(seed)
    nb = -(-n // 32)
    d = np.repeat(rng.uniform(1e-3, 3e-2, nb), 32)[:n]
    m = np.repeat(rng.uniform(-0.2, 0.0, nb), 32)[:n]
    v = d * rng.integers(0, levels, n) + m
    return torch.tensor(v, dtype=torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


@pytest.mark.parametrize("raw", RAWS)
def test_every_bit_pattern(raw: tuple[str, ...]) -> None:
    rng = np.random.default_rng(0)
    every = np.arange(1 << 16, dtype=np.uint16)  # NaN payloads, infs, +-0, subnormals
    _round_trip(every, raw)
    _round_trip(rng.permutation(every), raw)
    _round_trip(np.array([0x8000, 0x0000, 0x7F80, 0xFF80, 0x7FC1, 0xFFFF, 1, 0x8001], np.uint16), raw)


@pytest.mark.parametrize("n", [1, 2, 31, 32, 33, 63, 1001, pp.CHUNK - 1, pp.CHUNK + 37])
def test_odd_sizes_and_over_one_chunk(n: int) -> None:
    _round_trip(_grid(n, 16, n))
    _round_trip(np.random.default_rng(n).integers(0, 1 << 16, n, dtype=np.uint16), ("pal", "idx"))


def test_every_palette_size() -> None:
    """Blocks of exactly k distinct words for k = 1..32 (index widths 0..5), words chosen so the
    palette differences cross the sign and need the high byte; a last block of 7 elements."""
    rng = np.random.default_rng(2)
    blocks = []
    for k in range(1, 33):
        vals = rng.choice(1 << 16, k, replace=False).astype(np.uint16)
        blocks.append(vals[np.concatenate([np.arange(k), rng.integers(0, k, 32 - k)])][rng.permutation(32)])
    w = np.concatenate(blocks * 3 + [blocks[5][:7]])
    c = _round_trip(w)
    assert c[0].planes is None  # coded as a palette, not today's planes
    for raw in RAWS[1:]:
        _round_trip(w, raw)


def test_grid_shrinks_and_no_grid_falls_back_to_planes() -> None:
    """A 16-level grid per block codes well under today's planes; random words (32 distinct a
    block) keep today's planes, so the palette never costs much more than they do."""
    from deltastore.codec import planes

    g = _grid(1 << 18, 16, 5)
    today = len(planes.compress(g.view(np.uint8), 2, rotate=True))
    assert pp.nbytes(_round_trip(g)) < 0.85 * today
    assert pp.nbytes(_round_trip(g, ("pal", "idx"))) < 0.9 * today
    noise = torch.randn(1 << 18, dtype=torch.float32).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    c = _round_trip(noise)
    assert all(ch.planes is not None for ch in c)
    assert pp.nbytes(c) == len(planes.compress(noise.view(np.uint8), 2, rotate=True))


def test_stream_settings() -> None:
    g = _grid(5000, 16, 7)
    c = pp.encode(g, 3, ("pal", "idx"))[0]
    assert c.raw[1] and c.raw[2] and not c.raw[0]
    assert sum(pp.stream_bytes([c]).values()) + 13 == c.nbytes
    with pytest.raises(ValueError, match="raw streams"):
        pp.encode(g, 3, ("exponent",))
