"""Probe (issue 12): a context-coded bf16 difference with per-context rANS tables, decoded in one pass.

A measurement for ``bench_lossless.py --rans-probe``, not a codec format: it asks whether an
entropy coder that takes the base's exponent as its context directly (no grouping, no scatter)
decodes a fine-tune's difference at zipnn's speed, and at what bytes against format v2.

The coding (bf16 only): ``z = zigzag(ordered(target) - ordered(base))`` as in the lossless codec;
each ``z`` becomes a symbol (``z`` itself below 8, else its bit length and the two bits under its
leading one: 60 symbols) plus ``bitlen - 3`` raw low bits. The symbol is coded with rANS (32-bit
states, 16-bit renormalization, 12-bit probabilities) in a table chosen by the base's exponent:
one table per exponent per *tensor* (exponents with fewer than :data:`MIN_CONTEXT` elements share
one), so a chunk of 2^19 elements decodes alone given the tensor's tables (byte ranges kept). Four
states interleave over one word stream (element i on state i % 4) for instruction-level
parallelism; the raw bits are a separate forward bit stream.

Decoder (numba, the fastest variant measured): a 64-bit table entry per (exponent, slot), built from
the stored frequencies for each tensor (timed as part of the decode), holding freq | slot - cum | raw-bit count | the symbol's smallest ``z``, indexed by the exponent bits of
the base word directly; branchless renormalization; raw bits read at a bit position from two
32-bit words; ``z`` to a scratch array, then a separate (vectorizable) pass undoes the difference.
Table bytes are counted as a serialization would store them (:func:`table_bytes`), not written.
"""

from __future__ import annotations

import numpy as np
from numba import njit

PROB_BITS = 12
M = 1 << PROB_BITS
NSYM = 64  # 60 used
#: exponents (per tensor) with fewer elements than this share one table
MIN_CONTEXT = 4096
CHUNK = 1 << 19
_DTAB = np.zeros(256 * M, np.uint64)  # the decoder's table, reused (one thread)


def _symbols() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(smallest z of each symbol, its raw-bit count, the symbol of each 16-bit z)."""
    zbase, nraw = np.zeros(NSYM, np.int64), np.zeros(NSYM, np.int64)
    for s in range(60):
        if s >= 8:
            bitlen = (s >> 2) + 2
            nraw[s] = bitlen - 3
            zbase[s] = (4 + (s & 3)) << nraw[s]
        else:
            zbase[s] = s
    symtab = np.zeros(1 << 16, np.uint8)
    for s in range(60):
        symtab[zbase[s] : zbase[s] + (1 << nraw[s])] = s
    return zbase, nraw, symtab


ZBASE, NRAW, SYMTAB = _symbols()


@njit(nogil=True, cache=True)
def _prepare(t, b, symtab, zz, syms, hist):
    """z, its symbol and a histogram per (exponent, symbol) of one tensor's bf16 words."""
    for i in range(t.size):
        x, y = np.int32(t[i]), np.int32(b[i])
        x ^= (-(x >> 15)) & 0x7FFF
        y ^= (-(y >> 15)) & 0x7FFF
        d = np.int32(np.int16((x - y) & 0xFFFF))
        z = ((d << 1) ^ (d >> 31)) & 0xFFFF
        zz[i] = z
        s = symtab[z]
        syms[i] = s
        hist[((b[i] >> 7) & 0xFF) * 64 + s] += 1


def _normalize(counts: np.ndarray) -> np.ndarray:
    """Frequencies summing to M, every seen symbol at least 1 (the rest taken from the largest)."""
    f = np.where(counts > 0, np.maximum(1, np.round(counts * M / counts.sum())), 0).astype(np.int64)
    diff = M - int(f.sum())
    while diff:
        j = int(np.argmax(f))
        step = max(1 - int(f[j]), diff) if diff < 0 else diff
        f[j] += step
        diff -= step
    return f


def build_tables(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per exponent (256 rows): the encoder's freq and cum (what a stream would store), and the
    number of distinct tables."""
    h = hist.reshape(256, NSYM)
    tot = h.sum(1)
    big = [c for c in range(256) if tot[c] >= MIN_CONTEXT]
    rare = [c for c in range(256) if 0 < tot[c] < MIN_CONTEXT]
    freq, cum = np.zeros((256, NSYM), np.int64), np.zeros((256, NSYM), np.int64)
    rows = [(h[c], [c]) for c in big]
    if rare:
        rows.append((h[rare].sum(0), rare))
    for r, cs in rows:
        f = _normalize(r)
        c0 = np.concatenate([[0], np.cumsum(f)[:-1]])
        for c in cs:
            freq[c], cum[c] = f, c0
    return freq, cum, len(rows)


@njit(nogil=True, cache=True)
def fill_dtab(freq, cum, nraw, zbase, dtab):
    """The decoder's 64-bit entries (freq | slot - cum | raw-bit count | smallest z) of every
    exponent that has a table; ``dtab`` (256 x M) is reused, other rows are left as they are."""
    for c in range(256):
        for s in range(NSYM):
            f = freq[c, s]
            for k in range(f):
                dtab[c * M + cum[c, s] + k] = np.uint64(f | (k << 13) | (nraw[s] << 25) | (zbase[s] << 32))


def table_bytes(hist: np.ndarray) -> int:
    """What the tensor's tables would cost stored: per table a u8 context list entry per exponent,
    a 64-bit bitmap of its symbols and each frequency as a 1- or 2-byte varint."""
    freq, _, ntab = build_tables(hist)
    used = np.flatnonzero(hist.reshape(256, NSYM).sum(1))
    seen, nbytes = set(), 1 + 2 * len(used)
    for c in used:
        key = freq[c].tobytes()
        if key in seen:
            continue
        seen.add(key)
        f = freq[c][freq[c] > 0]
        nbytes += 8 + len(f) + int((f >= 128).sum())
    return nbytes


@njit(nogil=True, cache=True)
def encode_chunk(zz, syms, b, freq, cum, nraw, zbase, words, raw):
    """rANS words (in decode order) and raw bits of one chunk: (n words, n raw 32-bit words)."""
    n = syms.size
    acc, cnt, q = np.uint64(0), 0, 0
    for i in range(n):
        s = syms[i]
        r = nraw[s]
        if r:
            acc |= np.uint64(zz[i] - zbase[s]) << np.uint64(cnt)
            cnt += r
            if cnt >= 32:
                raw[q] = np.uint32(acc & np.uint64(0xFFFFFFFF))
                q += 1
                acc >>= np.uint64(32)
                cnt -= 32
    if cnt:
        raw[q] = np.uint32(acc & np.uint64(0xFFFFFFFF))
        q += 1
    st = np.full(4, 1 << 16, np.int64)
    p = 0
    for i in range(n - 1, -1, -1):
        c = (np.int64(b[i]) >> 7) & 0xFF
        s = syms[i]
        f, c0 = freq[c, s], cum[c, s]
        x = st[i & 3]
        if x >= (f << 20):
            words[p] = np.uint16(x & 0xFFFF)
            p += 1
            x >>= 16
        st[i & 3] = ((x // f) << PROB_BITS) + (x % f) + c0
    for j in range(4):
        words[p] = np.uint16(st[j] & 0xFFFF)
        words[p + 1] = np.uint16(st[j] >> 16)
        p += 2
    words[:p] = words[:p][::-1].copy()
    return p, q


@njit(nogil=True, cache=True, inline="always")
def _advance(x, e, nxt):
    """One state's decode step given its table entry ``e``: the next state and whether it took
    ``nxt`` (the next stream word, read either way: branchless renormalization). Scalars only: an
    array argument to an inlined helper puts numba's reference counting inside the loop."""
    x = (e & 8191) * (x >> 12) + ((e >> 13) & 4095)
    r = np.int64(x < 65536)
    return (x << (r << 4)) | (nxt & -r), r


@njit(nogil=True, cache=True, inline="always")
def _z(e, lo, hi, bp):
    """The element's z: the symbol's smallest z from ``e`` plus its raw bits at bit ``bp`` of the
    raw stream (``lo``, ``hi``: the two 32-bit words from ``bp // 32``); and the next bit position."""
    nr = (e >> 25) & 15
    v = (lo | (hi << 32)) >> (bp & 31)
    return (e >> 32) + (v & ((1 << nr) - 1)), bp + nr


@njit(nogil=True, cache=True)
def decode_chunk(w, raw, base, dtab, zs, out):
    """Inverse of :func:`encode_chunk` fused with the base's exponent as context; ``w`` and ``raw``
    padded with a few zero words (the branchless reads look one word ahead)."""
    n = base.size
    x3 = (np.int64(w[0]) << 16) | np.int64(w[1])
    x2 = (np.int64(w[2]) << 16) | np.int64(w[3])
    x1 = (np.int64(w[4]) << 16) | np.int64(w[5])
    x0 = (np.int64(w[6]) << 16) | np.int64(w[7])
    p, bp = 8, np.int64(0)
    nm = n - n % 4
    for i in range(0, nm, 4):  # four states written out: their chains overlap in the core
        e0 = np.int64(dtab[((np.int64(base[i]) << 5) & 0xFF000) | (x0 & 4095)])
        e1 = np.int64(dtab[((np.int64(base[i + 1]) << 5) & 0xFF000) | (x1 & 4095)])
        e2 = np.int64(dtab[((np.int64(base[i + 2]) << 5) & 0xFF000) | (x2 & 4095)])
        e3 = np.int64(dtab[((np.int64(base[i + 3]) << 5) & 0xFF000) | (x3 & 4095)])
        x0, r = _advance(x0, e0, np.int64(w[p]))
        p += r
        x1, r = _advance(x1, e1, np.int64(w[p]))
        p += r
        x2, r = _advance(x2, e2, np.int64(w[p]))
        p += r
        x3, r = _advance(x3, e3, np.int64(w[p]))
        p += r
        for j in range(4):
            e = e0 if j == 0 else (e1 if j == 1 else (e2 if j == 2 else e3))
            z, bp2 = _z(e, np.int64(raw[bp >> 5]), np.int64(raw[(bp >> 5) + 1]), bp)
            zs[i + j] = np.uint16(z)
            bp = bp2
    for i in range(nm, n):  # the tail: states 0 .. n % 4 - 1
        x = x0 if i % 4 == 0 else (x1 if i % 4 == 1 else x2)
        e = np.int64(dtab[((np.int64(base[i]) << 5) & 0xFF000) | (x & 4095)])
        x, r = _advance(x, e, np.int64(w[p]))
        p += r
        if i % 4 == 0:
            x0 = x
        elif i % 4 == 1:
            x1 = x
        else:
            x2 = x
        z, bp = _z(e, np.int64(raw[bp >> 5]), np.int64(raw[(bp >> 5) + 1]), bp)
        zs[i] = np.uint16(z)
    for i in range(n):  # undo the difference (no loop-carried state: LLVM vectorizes it)
        z, y = np.int32(zs[i]), np.int32(base[i])
        y ^= (-(y >> 15)) & 0x7FFF
        o = (y + ((z >> 1) ^ -(z & 1))) & 0xFFFF
        out[i] = np.uint16(o ^ ((-(o >> 15)) & 0x7FFF))


class Coded:
    """One tensor coded: its decoder table, chunks (padded words, padded raw bits) and bytes."""

    def __init__(self, freq: np.ndarray, cum: np.ndarray, chunks: list[tuple[np.ndarray, np.ndarray]], nbytes: int, ntab: int):
        self.freq, self.cum, self.chunks, self.nbytes, self.ntab = freq, cum, chunks, nbytes, ntab


def encode(t: np.ndarray, b: np.ndarray) -> Coded:
    """bf16 words of a target and its base (uint16, same size) -> :class:`Coded`."""
    n = t.size
    zz, syms, hist = np.empty(n, np.int64), np.empty(n, np.uint8), np.zeros(256 * NSYM, np.int64)
    _prepare(t, b, SYMTAB, zz, syms, hist)
    freq, cum, ntab = build_tables(hist)
    chunks, nbytes = [], table_bytes(hist) + 16
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        words, raw = np.zeros(hi - lo + 16, np.uint16), np.zeros((hi - lo) * 13 // 32 + 4, np.uint32)
        nw, nr = encode_chunk(zz[lo:hi], syms[lo:hi], b[lo:hi], freq, cum, NRAW, ZBASE, words, raw)
        chunks.append((np.concatenate([words[:nw], np.zeros(4, np.uint16)]), np.concatenate([raw[:nr], np.zeros(2, np.uint32)])))
        nbytes += 2 * nw + 4 * nr + 8  # + a chunk's two lengths
    return Coded(freq, cum, chunks, nbytes, ntab)


def decode(c: Coded, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The target's bf16 words from :func:`encode`'s output and the base's."""
    zs, dtab = np.empty(min(CHUNK, b.size), np.uint16), _DTAB
    fill_dtab(c.freq, c.cum, NRAW, ZBASE, dtab)  # the decoder builds its table from what is stored
    for k, lo in enumerate(range(0, b.size, CHUNK)):
        hi = min(b.size, lo + CHUNK)
        decode_chunk(c.chunks[k][0], c.chunks[k][1], b[lo:hi], dtab, zs[: hi - lo], out[lo:hi])
    return out
