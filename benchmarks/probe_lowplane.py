"""Probe (issue 12, bases): a bf16 base's low plane grouped by each element's own exponent before zstd.

A measurement for ``bench_lossless.py --base-contexts``, not a codec format. Today's planes store
a bf16 tensor's low byte (7 mantissa bits and the sign, after the rotation) raw: as a whole it is
near 8 bits of order-0 entropy. But SmolLM2's weights sit on a grid per aligned 32-element block
(equally spaced values: the trace of group-wise quantization), so neighbours of one exponent
often share their whole value; grouped by exponent (stably, per chunk of :data:`CHUNK`
elements) those become runs zstd codes. The decoder decodes the exponent plane first, so the
grouping costs no stored bytes, but it has to scatter the low bytes back (one pass, below).

The "runs" coding below skips the grouping and zstd on that plane: a flag per element ("my low
byte is the last one seen with my exponent") and the other bytes raw. It is smaller still and
encodes fast, but its decode loop carries a table through memory from element to element.

Layout measured for the grouping (sizes only, no container): per chunk the exponent plane as today's planes code
it (``planes.compressor``) and the grouped low plane at zstd ``level`` (or raw where zstd does not
shrink it), plus 16 bytes of lengths.
"""

from __future__ import annotations

import numpy as np
import zstandard
from numba import njit

from deltastore.codec import planes

CHUNK = 1 << 19


@njit(nogil=True, cache=True)
def split_group(w, e, gl):
    """``e``: the exponent byte of each bf16 word in ``w``; ``gl``: the low bytes (mantissa << 1 |
    sign) stably grouped by exponent."""
    counts = np.zeros(256, np.int64)
    for i in range(w.size):
        c = (w[i] >> 7) & 0xFF
        e[i] = c
        counts[c] += 1
    pos, s = np.zeros(256, np.int64), 0
    for c in range(256):
        pos[c] = s
        s += counts[c]
    for i in range(w.size):
        c = e[i]
        gl[pos[c]] = np.uint8(((w[i] & 0x7F) << 1) | (w[i] >> 15))
        pos[c] += 1


@njit(nogil=True, cache=True)
def ungroup(e, gl, out):
    """Inverse of :func:`split_group`: the bf16 words from the exponents and the grouped low bytes."""
    counts = np.zeros(256, np.int64)
    for i in range(e.size):
        counts[e[i]] += 1
    pos, s = np.zeros(256, np.int64), 0
    for c in range(256):
        pos[c] = s
        s += counts[c]
    for i in range(e.size):
        c = np.int64(e[i])
        lo = np.int64(gl[pos[c]])
        pos[c] += 1
        out[i] = np.uint16((c << 7) | (lo >> 1) | ((lo & 1) << 15))


def encode(w: np.ndarray, level: int) -> list[tuple[bytes, bytes, bool, int]]:
    """bf16 words (uint16) -> per chunk (exponent frame, low frame or raw low bytes, raw?, elements)."""
    ce, cl = planes.compressor(3), zstandard.ZstdCompressor(level=level)
    out = []
    for lo in range(0, w.size, CHUNK):
        x = w[lo : lo + CHUNK]
        e, gl = np.empty(x.size, np.uint8), np.empty(x.size, np.uint8)
        split_group(x, e, gl)
        fl = cl.compress(gl)
        raw = len(fl) >= x.size
        out.append((ce.compress(e), gl.tobytes() if raw else fl, raw, x.size))
    return out


def _decode_chunks(chunks: list, n: int, finish) -> np.ndarray:  # noqa: ANN001
    """The bf16 words of ``n`` elements: each chunk's exponent plane decoded, then
    ``finish(dz, exponents, a, b, out)`` with the chunk's other two fields fills its words."""
    dz = zstandard.ZstdDecompressor()
    out, p = np.empty(n, np.uint16), 0
    for fe, a, b, m in chunks:
        finish(dz, np.frombuffer(dz.decompress(fe, max_output_size=m), np.uint8), a, b, out[p : p + m])
        p += m
    return out


def decode(chunks: list[tuple[bytes, bytes, bool, int]], n: int) -> np.ndarray:
    """Inverse of :func:`encode`: the bf16 words (uint16)."""

    def finish(dz, e, fl, raw, out):  # noqa: ANN001
        ungroup(e, np.frombuffer(fl if raw else dz.decompress(fl, max_output_size=e.size), np.uint8), out)

    return _decode_chunks(chunks, n, finish)


def nbytes(chunks: list[tuple[bytes, bytes, bool, int]]) -> int:
    return sum(len(fe) + len(fl) + 16 for fe, fl, _, _ in chunks)


def distinct_per_block(w: np.ndarray, block: int, offset: int = 0) -> tuple[int, int]:
    """(distinct values summed over the blocks, blocks) of ``w``'s ``block``-element blocks from
    ``offset``: aligned blocks of a grid-quantized tensor hold far fewer than shifted ones."""
    n = (w.size - offset) // block * block
    if n <= 0:
        return 0, 0
    s = np.sort(w[offset : offset + n].reshape(-1, block), axis=1)
    return int((s[:, 1:] != s[:, :-1]).sum()) + s.shape[0], s.shape[0]


# The "runs" coding of the low plane: no grouping, no zstd on it. Per element a flag "my low byte
# is the last low byte seen with my exponent" (bit-packed, raw), else the byte itself as a raw
# literal. The decoder walks the elements in order with a 256-entry table of last values, fused
# with the plane join, so nothing is scattered. A tensor where fewer than 1 in 8 elements repeat
# (the flags would cost more than they save) keeps today's raw low plane.


@njit(nogil=True, cache=True)
def runs_split(w, e, flags, lits):
    """Exponent plane ``e``, packed flags and literals of bf16 words ``w``; returns the literal count."""
    last = np.full(256, -1, np.int64)
    flags[:] = 0
    q = 0
    for i in range(w.size):
        c = np.int64((w[i] >> 7) & 0xFF)
        v = np.int64(((w[i] & 0x7F) << 1) | (w[i] >> 15))
        e[i] = c
        if v == last[c]:
            flags[i >> 3] |= np.uint8(1 << (i & 7))
        else:
            lits[q] = v
            q += 1
        last[c] = v
    return q


@njit(nogil=True, cache=True)
def runs_join(e, flags, lits, out):
    """Inverse of :func:`runs_split` into bf16 words; ``lits`` padded by one byte (read ahead)."""
    last = np.zeros(256, np.int64)
    q = 0
    for i in range(e.size):
        c = np.int64(e[i])
        f = (np.int64(flags[i >> 3]) >> (i & 7)) & 1
        lit = np.int64(lits[q])
        v = lit ^ ((lit ^ last[c]) & -f)
        q += 1 - f
        last[c] = v
        out[i] = np.uint16((c << 7) | (v >> 1) | ((v & 1) << 15))


def encode_runs(w: np.ndarray) -> list[tuple[bytes, bytes, bytes, int]]:
    """bf16 words -> per chunk (exponent frame, packed flags or b"" for a raw low plane, literals, elements)."""
    ce = planes.compressor(3)
    out = []
    for lo in range(0, w.size, CHUNK):
        x = w[lo : lo + CHUNK]
        e, flags, lits = np.empty(x.size, np.uint8), np.empty((x.size + 7) // 8, np.uint8), np.empty(x.size + 1, np.uint8)
        q = runs_split(x, e, flags, lits)
        if x.size - q < x.size // 8:  # too few repeats: the flags would cost more
            low = (((x & 0x7F) << 1) | (x >> 15)).astype(np.uint8)
            out.append((ce.compress(e), b"", low.tobytes(), x.size))
        else:
            out.append((ce.compress(e), flags.tobytes(), lits[:q].tobytes(), x.size))
    return out


def decode_runs(chunks: list[tuple[bytes, bytes, bytes, int]], n: int) -> np.ndarray:
    """Inverse of :func:`encode_runs`."""

    def finish(dz, e, fl, lt, out):  # noqa: ANN001
        if fl:
            runs_join(e, np.frombuffer(fl, np.uint8), np.frombuffer(lt + b"\0", np.uint8), out)
        else:
            low = np.frombuffer(lt, np.uint8).astype(np.uint16)
            out[:] = (e.astype(np.uint16) << 7) | (low >> 1) | ((low & 1) << 15)

    return _decode_chunks(chunks, n, finish)


def nbytes_runs(chunks: list[tuple[bytes, bytes, bytes, int]]) -> int:
    return sum(len(fe) + len(fl) + len(lt) + 16 for fe, fl, lt, _ in chunks)
