"""Compiled (numba) kernels of the palette plane mode (codec/palette.py): the same bytes as its
numpy reference, which also runs where numba does not import.

Loaded only by ``palette.kernels()`` (never at import of the codec), and only once a chunk shows
a grid, so a process that stores grid-less weights never pays numba's start-up. Like
``codec._numba``: ``nogil`` (the plane pool's threads run chunks in parallel) and ``cache=True``.
The encoder reads the words from little-endian uint8 (an unaligned window works); the decoder
writes uint16 words (the caller passes an aligned view, or scratch it copies from).

The decode trusts nothing it reads: :func:`join` returns a negative code (``palette.ERRORS``) for a
palette size over 32 or over a short block's length, a read past the ``pal`` or ``idx`` stream, a
zero gap, a palette below zero, an escape for a value under 255, an index past its palette, or
streams with bytes left over; the caller turns it into a ``CorruptPayloadError``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

BLOCK = 32


@njit(nogil=True, cache=True, inline="always")
def _put(pd, q, v):  # noqa: ANN001
    """``v`` (0..65535) at ``pd[q]``: one byte under 255, else 255 and two bytes; the next position."""
    if v < 255:
        pd[q] = v
        return q + 1
    pd[q] = 255
    pd[q + 1] = v & 0xFF
    pd[q + 2] = v >> 8
    return q + 3


@njit(nogil=True, cache=True)
def split(raw, width, ks, pd, idx):  # noqa: ANN001
    """Palette streams of the 16-bit words in ``raw`` (uint8, little-endian): fills ``ks`` (a byte
    a block), ``pd`` (at most 3 * 32 bytes a block) and ``idx`` (zeroed by the caller, at most 20
    bytes a block); returns (bytes of ``pd``, bytes of ``idx``) written. Distinct words and their
    ranks through a 65536-entry table; each distinct word's place is how many are smaller."""
    n = raw.size // 2
    rank = np.zeros(1 << 16, np.uint8)  # rank + 1 of each word of the block; 0: not in it
    pal = np.zeros(BLOCK, np.int64)
    uniq = np.zeros(BLOCK, np.int64)
    key = np.zeros(BLOCK, np.int64)
    q = p = top = 0  # positions in pd and idx; the previous block's largest (rotated) word
    for blk in range((n + BLOCK - 1) // BLOCK):
        s = blk * BLOCK
        m = min(BLOCK, n - s)
        k = 0
        for j in range(m):  # the distinct rotated words, in order of first appearance
            x = np.int64(raw[2 * (s + j)]) | (np.int64(raw[2 * (s + j) + 1]) << 8)
            v = ((x << 1) | (x >> 15)) & 0xFFFF
            key[j] = v
            new = rank[v] == 0
            rank[v] = 1
            uniq[k] = v
            k += new
        for t in range(k):
            v = uniq[t]
            r = 0
            for u in range(k):
                r += uniq[u] < v
            pal[r] = v
        ks[blk] = k - 1
        d = ((pal[k - 1] - top + 0x8000) & 0xFFFF) - 0x8000
        q = _put(pd, q, (d << 1) ^ (d >> 63))
        top = pal[k - 1]
        for t in range(k - 2, -1, -1):
            q = _put(pd, q, pal[t + 1] - pal[t])
        for t in range(k):
            rank[pal[t]] = t + 1
        b = width[k - 1]
        if b == 4 and m == BLOCK:
            for t in range(BLOCK // 2):
                idx[p + t] = (rank[key[2 * t]] - 1) | ((rank[key[2 * t + 1]] - 1) << 4)
        elif b:
            for j in range(m):
                a = np.int64(rank[key[j]]) - 1
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
def join(width, ks, pd, idx, out):  # noqa: ANN001
    """Inverse of :func:`split` into the 16-bit words ``out`` (uint16); 0, or a negative error
    code (see the module docstring) before any read past a stream."""
    n = out.size
    nq = pd.size
    npi = idx.size
    pal = np.zeros(BLOCK, np.uint16)
    q = p = top = 0  # positions in pd and idx; the previous block's largest (rotated) word
    for blk in range((n + BLOCK - 1) // BLOCK):
        s = blk * BLOCK
        m = min(BLOCK, n - s)
        k = np.int64(ks[blk]) + 1
        if k > m:
            return -1
        b = width[k - 1]
        if p + 4 * b > npi:
            return -2
        if q + k > nq:  # k values of at least a byte each
            return -3
        v = top
        for t in range(k - 1, -1, -1):
            z = np.int64(pd[q])
            q += 1
            if z == 255:
                if q + 2 > nq:
                    return -3
                z = np.int64(pd[q]) | (np.int64(pd[q + 1]) << 8)
                q += 2
                if z < 255 or q + t > nq:
                    return -4 if z < 255 else -3
            if t == k - 1:  # the largest: a zigzagged step from the previous block's largest
                v = (v + ((z >> 1) ^ -(z & 1))) & 0xFFFF
                top = v
            elif z == 0 or z > v:
                return -5
            else:
                v -= z
            pal[t] = (v >> 1) | ((v & 1) << 15)
        if b == 4 and m == BLOCK:  # a 16-level grid's common case: two indices a byte
            top_index = 0  # checked once the block is written (pal has 32 entries: no read past it)
            for t in range(BLOCK // 2):
                c = np.int64(idx[p + t])
                top_index = max(top_index, c & 15, c >> 4)
                out[s + 2 * t] = pal[c & 15]
                out[s + 2 * t + 1] = pal[c >> 4]
            if top_index >= k:
                return -6
        else:
            mask = (1 << b) - 1
            for j in range(m):
                bp = j * b
                sh = bp & 7
                x = np.int64(idx[p + (bp >> 3)]) >> sh
                if sh + b > 8:
                    x |= np.int64(idx[p + (bp >> 3) + 1]) << (8 - sh)
                x &= mask
                if x >= k:
                    return -6
                out[s + j] = pal[x]
        p += 4 * b
    if q != nq or p != npi:
        return -7
    return 0
