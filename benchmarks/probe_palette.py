"""Probe (issue 12, bases): a bf16 base coded as a palette per aligned 32-element block.

A measurement for ``bench_lossless.py --palette``, not a codec format. SmolLM2's base weights
sit on a grid per aligned block of 32 elements (~16 distinct values a block: the trace of the
4-bit GGUF it was dequantized from). The runs coding in ``probe_lowplane.py`` exploits that and
is 12% under zipnn, but its decode carries a table through memory from element to element (a
store-to-load chain) and runs at half zipnn's speed. Here every block is coded on its own, so
the decode has no chain across elements:

* ``k``: the block's count of distinct bf16 words, less one (the ``ks`` stream, a byte a block);
* the palette (``pal``): the block's distinct words, each rotated left by one bit (magnitude
  above the sign, so +x sits beside -x) and sorted; coded from the largest down, the largest as
  its zigzagged difference from the previous block's largest (neighbouring blocks have like
  scales), then each gap to the next smaller; a value under 255 is one byte, else 255 and two;
* the indices (``idx``): each element's rank in its block's palette, ``WIDTH[k]`` bits each (0
  bits for a constant block, at most 5), 4 * width bytes a block (a short last block padded).

The split and join are the store's kernels (``codec._palette_numba``, plane mode 2 of
codec/planes.py; this probe keeps its own chunking and zstd settings around them, and no pad
byte after ``idx`` since the kernels were bounds-checked). The decode is one loop a block: rebuild <= 32 palette words from the gaps, then one table
lookup an element straight into the bf16 word (no exponent plane, no plane join; two indices a
byte when the width is 4, a 16-level grid's case). The three streams of each chunk of
:data:`CHUNK` elements go through zstd where that shrinks them, or raw (``encode``'s ``raw``).
A chunk the palette does not bring under 1.4 bytes an element (no grid: SmolLM2's embedding,
real fp weights: ~29-32 distinct words a block) is also coded as today's byte planes
(``planes.compress``), and the smaller kept; one whose first 8192 elements' palette streams
take over 1.5 bytes an element before zstd (SmolLM2: 1.0 on the grid, 1.67 on the embedding) goes to today's planes untried (encode time).

Run 10 (3cda513) coded the palette as 16-bit ascending differences in a high- and a low-byte
stream: 0.5% fewer bytes than this layout through zstd, but zstd's decode of the high-byte
stream cost as much as the palette join; the escape code here needs no zstd on the palette.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zstandard

from deltastore.codec import _palette_numba as K
from deltastore.codec import planes
from deltastore.codec.palette import BLOCK, WIDTH

CHUNK = 1 << 19  # elements: a multiple of BLOCK
_SAMPLE = 32 << 10  # bytes of a stream zstd is tried on first
_TRY_PLANES = 1.4  # bytes an element above which the chunk is also coded as today's planes
_PROBE = 8192  # elements at a chunk's start whose raw palette size decides ...
_SKIP_PALETTE = 1.5  # ... above this many bytes an element: today's planes without trying the palette


def palette_split(w: np.ndarray, width: np.ndarray, ks: np.ndarray, pd: np.ndarray, idx: np.ndarray) -> tuple[int, int]:
    """The store's kernel (``codec._palette_numba.split``) on bf16 words ``w``: (pal bytes, idx bytes)."""
    return K.split(w.view(np.uint16), width, ks, pd, idx)


def palette_join(width: np.ndarray, ks: np.ndarray, pd: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """The store's kernel (``codec._palette_numba.join``) into bf16 words ``out`` (bounds-checked)."""
    code = K.join(width, ks, pd, idx, out)
    if code:
        raise ValueError(f"palette probe stream does not decode ({code})")


@dataclass
class Chunk:
    """One chunk's coding: ``planes`` (today's planes stream) or the palette's three streams
    (:data:`STREAMS`), each a zstd frame or raw bytes (``raw`` flags; ``sizes``: decoded bytes)."""

    n: int
    planes: bytes | None = None
    streams: tuple[bytes, ...] = ()
    raw: tuple[bool, ...] = ()
    sizes: tuple[int, ...] = ()

    @property
    def nbytes(self) -> int:
        """Stored bytes, with 3 * 4 bytes of stream lengths and a byte of flags for a palette chunk."""
        return len(self.planes) if self.planes is not None else sum(map(len, self.streams)) + 13


STREAMS = ("ks", "pal", "idx")


def _maybe_zstd(cctx: zstandard.ZstdCompressor, a: np.ndarray) -> tuple[bytes, bool]:
    """``a`` as a zstd frame, or raw where zstd does not bring it under ``planes.RAW_IF_ABOVE`` of
    its size (judged on its first :data:`_SAMPLE` bytes first, so a raw stream costs little encode time)."""
    cut = planes.RAW_IF_ABOVE
    if a.size > 4 * _SAMPLE and len(cctx.compress(a[:_SAMPLE])) > cut * _SAMPLE:
        return a.tobytes(), True
    f = cctx.compress(a)
    return (a.tobytes(), True) if len(f) > cut * a.size else (f, False)


def _raw_size(x: np.ndarray) -> int:
    """Bytes of ``x``'s palette streams before zstd."""
    nb = (x.size + BLOCK - 1) // BLOCK
    q, p = palette_split(x, WIDTH, np.empty(nb, np.uint8), np.empty(nb * BLOCK * 3, np.uint8), np.zeros(nb * 20, np.uint8))
    return nb + q + p


def encode(w: np.ndarray, level: int = 3, raw: tuple[str, ...] = ()) -> list[Chunk]:
    """bf16 words (uint16) -> per chunk of :data:`CHUNK` elements, a palette :class:`Chunk` (or
    today's planes where the palette does not pay). Streams through ``planes.compressor(level)``
    (at levels 1..3 zstd's fast literal coding, as today's planes) where that shrinks them; the
    streams named in ``raw`` (of :data:`STREAMS`) are stored raw untried: on SmolLM2 zstd takes
    only a few % off ``pal`` and ``idx`` and their decode costs about as much as the palette join itself."""
    if not set(raw) <= set(STREAMS):
        raise ValueError(f"raw streams must be among {STREAMS}, not {raw}")
    cctx = planes.compressor(level)
    out = []
    for s in range(0, w.size, CHUNK):
        x = w[s : s + CHUNK]
        if x.size > 4 * _PROBE and _raw_size(x[:_PROBE]) > _SKIP_PALETTE * _PROBE:  # no grid here
            out.append(Chunk(x.size, planes.compress(x.view(np.uint8), 2, rotate=True)))
            continue
        nb = (x.size + BLOCK - 1) // BLOCK
        ks, pd = np.empty(nb, np.uint8), np.empty(nb * BLOCK * 3, np.uint8)
        idx = np.zeros(nb * 4 * 5, np.uint8)
        q, p = palette_split(x, WIDTH, ks, pd, idx)
        parts = [(a.tobytes(), True) if name in raw else _maybe_zstd(cctx, a)
                 for name, a in zip(STREAMS, (ks, pd[:q], idx[:p]))]
        c = Chunk(x.size, None, tuple(f for f, _ in parts), tuple(r for _, r in parts), (nb, q, p))
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
            ks, pd, idx = (np.frombuffer(f if r else dz.decompress(f, max_output_size=m), np.uint8)
                               for f, r, m in zip(c.streams, c.raw, c.sizes))
            palette_join(WIDTH, ks, pd, idx, o)
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
