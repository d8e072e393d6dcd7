"""Probe (issue 12, bases): a bf16 base coded as a palette per aligned 32-element block.

A measurement for ``bench_lossless.py --palette``, not a codec format. SmolLM2's base weights
sit on a grid per aligned block of 32 elements (~16 distinct values a block: the trace of the
4-bit GGUF it was dequantized from). The runs coding in ``probe_lowplane.py`` exploits that and
is 12% under zipnn, but its decode carries a table through memory from element to element (a
store-to-load chain) and runs at half zipnn's speed. Here every block is coded on its own, so
the decode has no chain across elements:

* ``k``: the block's count of distinct whole bf16 words, less one (one byte a block);
* the palette: the block's distinct words in ascending order, as 16-bit differences (the first
  against the previous block's first word: neighbouring blocks share a range), split into a
  high-byte and a low-byte stream;
* the indices: each element's position in its block's palette, ``WIDTH[k]`` bits each (0 bits
  for a constant block, at most 5), 4 * width bytes a block (a short last block padded with 0).

The decode is one loop a block: rebuild <= 32 palette words by a prefix sum, then one gather a
element straight into the bf16 word (no exponent plane, no plane join). The four streams of each
chunk of :data:`CHUNK` elements go through zstd where that shrinks them (else raw). A chunk the
palette does not shrink below 1.4 bytes an element (no grid: real fp weights hold ~32 distinct
values a block) is coded as today's byte planes instead (``planes.compress``), whichever is smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zstandard
from numba import njit

from deltastore.codec import planes

CHUNK = 1 << 19  # elements: a multiple of BLOCK
BLOCK = 32
# index bits for a palette of k + 1 words (k = 0..31)
WIDTH = np.array([0 if k == 0 else int(np.ceil(np.log2(k + 1))) for k in range(BLOCK)], np.int64)
_SAMPLE = 32 << 10  # bytes of a stream zstd is tried on first
_TRY_PLANES = 1.4  # bytes an element above which the chunk is also coded as today's planes


@njit(nogil=True, cache=True, inline="always")
def _rotl(x):  # noqa: ANN001
    """A bf16 word rotated left by one (magnitude bits above the sign): a palette sorted by it
    puts +x beside -x and walks up in magnitude, so its differences stay small."""
    x = np.int64(x)
    return ((x << 1) | (x >> 15)) & 0xFFFF


@njit(nogil=True, cache=True)
def palette_split(w, width, ks, hi, lo, idx):  # noqa: ANN001
    """Palette streams of bf16 words ``w``: fills ``ks`` (a byte a block), ``hi``/``lo`` (palette
    differences) and ``idx`` (zeroed by the caller, 4 * 5 bytes a block at most); returns
    (palette words, index bytes) written. Distinct values and ranks through two 65536-entry
    tables (a block stamp and a rank), so the cost per element does not grow with the palette."""
    n = w.size
    rank = np.zeros(1 << 16, np.uint8)  # rank + 1 of each word of the block; 0: not in it
    pal = np.zeros(BLOCK, np.int64)
    uniq = np.zeros(BLOCK, np.int64)
    q = 0
    p = 0
    first = 0
    for blk in range((n + BLOCK - 1) // BLOCK):
        s = blk * BLOCK
        m = min(BLOCK, n - s)
        k = 0
        for j in range(m):  # the distinct words, in order of first appearance
            v = _rotl(w[s + j])
            new = rank[v] == 0
            rank[v] = 1
            uniq[k] = v
            k += new
        for t in range(k):  # sorted without branches: each word's place is how many are smaller
            v = uniq[t]
            r = 0
            for u in range(k):
                r += uniq[u] < v
            pal[r] = v
        ks[blk] = k - 1
        prev = first
        for t in range(k):
            d = (pal[t] - prev) & 0xFFFF
            hi[q] = d >> 8
            lo[q] = d & 0xFF
            rank[pal[t]] = t + 1
            prev = pal[t]
            q += 1
        first = pal[0]
        b = width[k - 1]
        if b == 4:
            for j in range(m):
                idx[p + (j >> 1)] |= np.uint8((np.int64(rank[_rotl(w[s + j])]) - 1) << ((j & 1) << 2))
        elif b:
            for j in range(m):
                a = np.int64(rank[_rotl(w[s + j])]) - 1
                bp = j * b
                sh = bp & 7
                idx[p + (bp >> 3)] |= np.uint8((a << sh) & 0xFF)
                if sh + b > 8:
                    idx[p + (bp >> 3) + 1] |= np.uint8(a >> (8 - sh))
        for t in range(k):
            rank[pal[t]] = 0
        p += 4 * b
    return q, p


@njit(nogil=True, cache=True)
def palette_join(width, ks, hi, lo, idx, out):  # noqa: ANN001
    """Inverse of :func:`palette_split` into bf16 words ``out``; ``idx`` padded by one byte
    (each index of a width other than 4 is read from a two-byte window). Blocks do not depend on each other's outputs,
    only on the running stream offsets (a prefix over ``ks``) and the previous block's first word."""
    n = out.size
    pal = np.zeros(BLOCK, np.uint16)
    q = 0
    p = 0
    first = 0
    for blk in range((n + BLOCK - 1) // BLOCK):
        k = np.int64(ks[blk]) + 1
        b = width[k - 1]
        v = (first + ((np.int64(hi[q]) << 8) | np.int64(lo[q]))) & 0xFFFF
        first = v
        pal[0] = (v >> 1) | ((v & 1) << 15)
        for t in range(1, k):
            v = (v + ((np.int64(hi[q + t]) << 8) | np.int64(lo[q + t]))) & 0xFFFF
            pal[t] = (v >> 1) | ((v & 1) << 15)
        q += k
        s = blk * BLOCK
        m = min(BLOCK, n - s)
        if b == 4 and m == BLOCK:  # the common case on a 16-level grid: two indices a byte
            for t in range(BLOCK // 2):
                c = idx[p + t]
                out[s + 2 * t] = pal[c & 15]
                out[s + 2 * t + 1] = pal[c >> 4]
        else:
            mask = (1 << b) - 1
            for j in range(m):
                bp = j * b
                x = ((np.int64(idx[p + (bp >> 3)]) | (np.int64(idx[p + (bp >> 3) + 1]) << 8)) >> (bp & 7)) & mask
                out[s + j] = pal[x]
        p += 4 * b


@dataclass
class Chunk:
    """One chunk's coding: ``planes`` (today's planes stream) or the palette's four streams,
    each a zstd frame or raw bytes (``raw`` flags, in the order ks, hi, lo, idx)."""

    n: int
    planes: bytes | None = None
    streams: tuple[bytes, bytes, bytes, bytes] = (b"", b"", b"", b"")
    raw: tuple[bool, bool, bool, bool] = (True, True, True, True)
    sizes: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def nbytes(self) -> int:
        """Stored bytes, with 4 * 4 bytes of stream lengths and a byte of flags for a palette chunk."""
        return len(self.planes) if self.planes is not None else sum(map(len, self.streams)) + 17


STREAMS = ("ks", "hi", "lo", "idx")


def _maybe_zstd(cctx: zstandard.ZstdCompressor, a: np.ndarray) -> tuple[bytes, bool]:
    """``a`` as a zstd frame, or raw where zstd does not bring it under ``planes.RAW_IF_ABOVE`` of
    its size (judged on its first :data:`_SAMPLE` bytes first, so a raw stream costs little encode time)."""
    cut = planes.RAW_IF_ABOVE
    if a.size > 4 * _SAMPLE and len(cctx.compress(a[:_SAMPLE])) > cut * _SAMPLE:
        return a.tobytes(), True
    f = cctx.compress(a)
    return (a.tobytes(), True) if len(f) > cut * a.size else (f, False)


def encode(w: np.ndarray, level: int = 3, raw: tuple[str, ...] = ()) -> list[Chunk]:
    """bf16 words (uint16) -> per chunk of :data:`CHUNK` elements, a palette :class:`Chunk` (or
    today's planes where the palette does not pay). Streams through ``planes.compressor(level)``
    (at levels 1..3 zstd's fast literal coding, as today's planes) where that shrinks them; the
    streams named in ``raw`` (of :data:`STREAMS`) are stored raw untried: on SmolLM2 zstd takes
    only 6-10% off ``lo`` and ``idx`` and their decode costs more than the palette join itself."""
    if not set(raw) <= set(STREAMS):
        raise ValueError(f"raw streams must be among {STREAMS}, not {raw}")
    cctx = planes.compressor(level)
    out = []
    for s in range(0, w.size, CHUNK):
        x = w[s : s + CHUNK]
        nb = (x.size + BLOCK - 1) // BLOCK
        ks, hi, lo = np.empty(nb, np.uint8), np.empty(nb * BLOCK, np.uint8), np.empty(nb * BLOCK, np.uint8)
        idx = np.zeros(nb * 4 * 5 + 1, np.uint8)
        q, p = palette_split(x, WIDTH, ks, hi, lo, idx)
        parts = [(a.tobytes(), True) if name in raw else _maybe_zstd(cctx, a)
                 for name, a in zip(STREAMS, (ks, hi[:q], lo[:q], idx[: p + 1]))]  # idx: one pad byte
        c = Chunk(x.size, None, tuple(f for f, _ in parts), tuple(r for _, r in parts), (nb, q, q, p + 1))
        if c.nbytes > _TRY_PLANES * x.size:
            pc = planes.compress(x.view(np.uint8), 2, rotate=True)
            if len(pc) < c.nbytes:
                c = Chunk(x.size, pc)
        out.append(c)
    return out


def decode(chunks: list[Chunk], n: int) -> np.ndarray:
    """Inverse of :func:`encode`: the ``n`` bf16 words (uint16)."""
    dz = zstandard.ZstdDecompressor()
    out, s = np.empty(n, np.uint16), 0
    for c in chunks:
        o = out[s : s + c.n]
        if c.planes is not None:
            o[:] = planes.decompress(c.planes).view(np.uint16)
        else:
            ks, hi, lo, idx = (np.frombuffer(f if r else dz.decompress(f, max_output_size=m), np.uint8)
                               for f, r, m in zip(c.streams, c.raw, c.sizes))
            palette_join(WIDTH, ks, hi, lo, idx, o)
        s += c.n
    return out


def nbytes(chunks: list[Chunk]) -> int:
    return sum(c.nbytes for c in chunks)


def stream_bytes(chunks: list[Chunk]) -> dict[str, int]:
    """Stored bytes by stream over all chunks (``planes``: chunks coded as today's planes)."""
    tot = dict.fromkeys((*STREAMS, "planes"), 0)
    for c in chunks:
        if c.planes is not None:
            tot["planes"] += len(c.planes)
        else:
            for k, f in zip(STREAMS, c.streams):
                tot[k] += len(f)
    return tot
