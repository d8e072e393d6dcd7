"""Probe (issue 12, decode speed): per-exponent Huffman tables decoded in element order, fused with the
difference's undo, against today's format (v4: grouped by exponent, zstd, then the gather) and zipnn.

A measurement, not a codec format. Issue 12's open goal is v4's decode at zipnn's speed per core
(v4 0.69-0.81x, runs 66-67 of benchmarks/results/lossless_amd-epyc-2c.md): v4 decodes two
entropy-coded byte planes, then gathers the grouped words back into element order (AVX-512 expand)
and undoes the difference, where zipnn Huffman-decodes one byte an element and copies the other.
The question here: does a coder that reads the base's exponent as its context *per element* (no
grouping, so no gather) decode faster than v4, and at what bytes? The rANS probe of run 6
(probe_rans.py: ~30 scalar operations an element) said no at 0.27x zipnn; a table-driven Huffman
decode is the cheapest entropy decode there is, so it bounds what such a coder can do in numba.

The coding (bf16): ``z = zigzag(ordered(target) - ordered(base))`` as the lossless codec's; the
symbol is ``min(z, 255)``, 255 an escape whose ``z`` is stored raw (uint16) in an escape array in
element order. One length-limited (``L`` bits) Huffman table per exponent with at least
:data:`MIN_CONTEXT` elements in the tensor, one shared by the others. Four LSB-first bit streams,
element i on stream i % 4 (four independent dependency chains); the decoder refills each stream's
64-bit window once per four of its symbols (4 x L <= 56 bits).

Decoders (numba, unsigned indices throughout: a signed index costs a wrap-around select a load):
``symbols``: the symbols alone into a reused uint8 array (no escapes, no undo): the entropy decode's
floor. ``fused``: symbols with escapes into a reused uint16 scratch, then the undo into a fresh
uint16 array a tensor (a loop the compiler vectorizes), the store's shape of output.
Table bytes are counted as 128 a table (256 four-bit lengths), not written.

Variant B (the same decoder with what the entropy figures said to change): escapes as 12 bucket symbols
(``z >= 240``: bucket j holds 2**(j + 4) values) whose raw bits are a fifth stream in element order (read on
the decoder's rare branch, which leaves the four streams' windows alone: raw bits in the symbol's own stream,
its window taken again after them, measured 7x slower on one tensor), and tables per chunk of ``--chunk``
elements (the codec's 1 MiB), each chunk decodable alone; a table counted as a 256-bit map of its symbols
and a byte of length each.

Variant C: B with a second context, the stream's previous symbol (element i - 4) capped at 1 or 3, so
2 or 4 tables an exponent (`--variant-c`: beside B on three tensors). Measured (run 68): more bytes than B
with tables per chunk, and 2.6-2.9x slower (each lookup waits on the previous symbol).

    python benchmarks/probe_ctx_huffman.py FT_DIR [--repeat 7] [--L 11] [--chunk 524288]
    python benchmarks/probe_ctx_huffman.py --synthetic 8     (no zoo weights needed: a fresh machine, a CPU of another kind)
    python benchmarks/probe_ctx_huffman.py FT_DIR --variant-c   (variant C beside B on three tensors)
"""

from __future__ import annotations

import argparse
import heapq
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("DELTASTORE_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from numba import njit  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from deltastore.codec import from_bytes, to_bytes  # noqa: E402
from deltastore.codec._numba import _code2, _uncode2, x512_available  # noqa: E402
from deltastore.codec.lossless import Lossless  # noqa: E402
from deltastore.zoo.smollm2 import smollm2_dir  # noqa: E402

from bench_lossless import cpu_split  # noqa: E402  (benchmarks/ on the path: this file's folder, or the test's)
from probe_decode_user_sys import changed_bf16  # noqa: E402

MIN_CONTEXT = 4096
U = np.uint64


def huffman_lengths(freq: np.ndarray, limit: int) -> np.ndarray:
    """Code lengths of a Huffman code of ``freq`` (256 counts), longest ``limit``: the heap
    construction, then lengths over the limit cut to it and the Kraft sum repaired by lengthening
    the rarest symbols, then any slack given back to the most frequent."""
    syms = [s for s in range(256) if freq[s] > 0]
    lens = np.zeros(256, np.int64)
    if len(syms) == 1:
        lens[syms[0]] = 1
        return lens
    heap = [(int(freq[s]), s, (s,)) for s in syms]
    heapq.heapify(heap)
    k = 256
    while len(heap) > 1:
        f1, _, a = heapq.heappop(heap)
        f2, _, b = heapq.heappop(heap)
        for s in a + b:
            lens[s] += 1
        heapq.heappush(heap, (f1 + f2, k, a + b))
        k += 1
    if lens.max() <= limit:
        return lens
    lens[lens > limit] = limit
    kraft = sum(1 << (limit - int(lens[s])) for s in syms)
    for s in sorted(syms, key=lambda s: (freq[s], -s)):  # rarest first
        while kraft > (1 << limit) and lens[s] < limit:
            kraft -= 1 << (limit - int(lens[s]) - 1)
            lens[s] += 1
    for s in sorted(syms, key=lambda s: -freq[s]):
        while lens[s] > 1 and kraft + (1 << (limit - int(lens[s]))) <= (1 << limit):
            kraft += 1 << (limit - int(lens[s]))
            lens[s] -= 1
    return lens


def canonical(lens: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical codes bit-reversed (LSB-first streams) and the decode table (``symbol | length << 8``
    at every ``limit``-bit window whose low bits are the code)."""
    codes, table = np.zeros(256, np.uint64), np.zeros(1 << limit, np.uint16)
    code = prev = 0
    for s in sorted((s for s in range(256) if lens[s] > 0), key=lambda s: (lens[s], s)):
        n = int(lens[s])
        code <<= n - prev
        prev = n
        r = int(format(code, f"0{n}b")[::-1], 2)
        codes[s] = r
        table[r | (np.arange(1 << (limit - n)) << n)] = s | (n << 8)
        code += 1
    return codes, table


@njit(cache=True, nogil=True)
def _symbols_of(t, b):
    z = np.empty(t.size, np.uint16)
    for i in range(t.size):
        z[i] = _code2(np.int64(t[i]), np.int64(b[i]))
    return z


@njit(cache=True, nogil=True)
def _histograms(sym, b, tabof, ntab, nclass):
    h = np.zeros((ntab * nclass, 256), np.int64)
    for i in range(sym.size):
        h[tabof[b[i] >> 7] * nclass + _class_of(sym, i, nclass), sym[i]] += 1
    return h


@njit(cache=True, nogil=True, inline="always")
def _class_of(sym, i, nclass):
    """Variant C's second context: the stream's previous symbol (element i - 4; 1 before the first),
    capped at nclass - 1 (0 when nclass is 1)."""
    prev = sym[i - 4] if i >= 4 else 1
    return min(prev, nclass - 1)


@njit(cache=True, nogil=True, inline="always")
def _put_bits(out64, w, acc, fill, c, n):
    """``n`` bits ``c`` appended LSB-first to the words at ``w`` (``acc`` holds ``fill`` pending bits)."""
    acc |= c << U(fill)
    fill += n
    if fill >= 64:
        out64[w] = acc
        w += 1
        fill -= 64
        acc = (c >> U(n - fill)) if fill > 0 else U(0)
    return w, acc, fill


@njit(cache=True, nogil=True)
def _write_streams(sym, b, tabof, codes, lens, out64, wstart, nclass):
    """Each symbol's code in its table (the base word's exponent's) into four streams, element i on
    stream i % 4, stream s from word ``wstart[s]``; returns the bits written."""
    total = 0
    for s in range(4):
        acc, fill, w = U(0), 0, wstart[s]
        for i in range(s, sym.size, 4):
            t = tabof[b[i] >> 7] * nclass + _class_of(sym, i, nclass)
            n = lens[t, sym[i]]
            w, acc, fill = _put_bits(out64, w, acc, fill, codes[t, sym[i]], n)
            total += n
        out64[w] = acc
    return total


def context_tables(sym: np.ndarray, b: np.ndarray, limit: int, nclass: int = 1) -> tuple:
    """(tabof, codes, lens, decode tables, histograms) of symbols ``sym`` under the base words ``b``: a
    table per exponent with MIN_CONTEXT or more elements (both signs share it; ``tabof`` is indexed by the
    word >> 7), table 0 for the rest."""
    cc = np.bincount((b >> 7) & 0xFF, minlength=256)
    tabof = np.zeros(512, np.int64)
    for j, c in enumerate(c for c in range(256) if cc[c] >= MIN_CONTEXT):
        tabof[c] = tabof[c + 256] = j + 1
    ntab = int(tabof.max()) + 1
    ntab *= nclass  # (variant C: nclass tables an exponent, by the stream's previous symbol)
    h = _histograms(sym, b, tabof, ntab // nclass, nclass)
    codes, lens = np.zeros((ntab, 256), np.uint64), np.zeros((ntab, 256), np.int64)
    tabs = np.zeros((ntab, 1 << limit), np.uint16)
    for j in range(ntab):
        if h[j].any():
            lens[j] = huffman_lengths(h[j], limit)
            codes[j], tabs[j] = canonical(lens[j], limit)
    return tabof, codes, lens, tabs, h


def encode(t: np.ndarray, b: np.ndarray, limit: int) -> dict:
    """One tensor (uint16 words of target and base) coded; ``bytes``: streams + escapes + tables."""
    z = _symbols_of(t, b)
    sym = np.minimum(z, 255)
    tabof, codes, lens, tabs, h = context_tables(sym, b, limit)
    ntab = tabs.shape[0]
    per = (t.size // 4 + 1) * limit // 64 + 2
    starts = np.arange(4, dtype=np.int64) * per
    out64 = np.zeros(4 * per + 2, np.uint64)
    _write_streams(sym, b, tabof, codes, lens, out64, starts, 1)
    esc = z[z >= 255]
    nbits = int((h * lens).sum())
    return {"words": out64, "starts": starts.astype(np.uint64) * U(64), "off": (tabof << limit).astype(np.uint64),
            "table": tabs.reshape(-1).copy(), "limit": limit, "esc": esc,
            "bytes": (nbits + 4 * 7) // 8 + 2 * esc.size + 128 * ntab}


@njit(cache=True, nogil=True, inline="always")
def _peek(a, p):
    q, r = p >> U(6), p & U(63)
    return (a[q] >> r) | ((a[q + U(1)] << U(1)) << (U(63) - r))


@njit(cache=True, nogil=True, inline="always")
def _sym(table, off, x, p, y, mask):
    e = U(table[off[y >> U(7)] + (x & mask)])
    n = e >> U(8)
    return x >> n, p + n, e & U(255)


@njit(cache=True, nogil=True, inline="always")
def _four(table, off, x0, x1, x2, x3, p0, p1, p2, p3, b, j, mask):
    """Elements j .. j + 3, one from each stream: the windows, positions and symbols after them."""
    x0, p0, s0 = _sym(table, off, x0, p0, U(b[j]), mask)
    x1, p1, s1 = _sym(table, off, x1, p1, U(b[j + U(1)]), mask)
    x2, p2, s2 = _sym(table, off, x2, p2, U(b[j + U(2)]), mask)
    x3, p3, s3 = _sym(table, off, x3, p3, U(b[j + U(3)]), mask)
    return x0, x1, x2, x3, p0, p1, p2, p3, s0, s1, s2, s3


@njit(cache=True, nogil=True, inline="always")
def _put(sc, i, s, esc, ei):
    """sc[i] = s, or the next escape's z where s is the escape; the escape count after."""
    if s == U(255):
        sc[i] = esc[ei]
        return ei + U(1)
    sc[i] = s
    return ei


@njit(cache=True, nogil=True)
def decode_symbols(a, starts, b, off, table, limit, sc):
    """The symbols alone (uint8 ``sc``), 16 elements a step; elements past the last multiple of 16
    left out (a floor, not a decoder)."""
    n, mask = U(b.size), U((1 << limit) - 1)
    p0, p1, p2, p3 = starts[0], starts[1], starts[2], starts[3]
    i = U(0)
    while i + U(16) <= n:
        x0, x1, x2, x3 = _peek(a, p0), _peek(a, p1), _peek(a, p2), _peek(a, p3)
        for k in range(4):  # four symbols a stream per refill
            j = i + U(4 * k)
            x0, x1, x2, x3, p0, p1, p2, p3, s0, s1, s2, s3 = _four(table, off, x0, x1, x2, x3, p0, p1, p2, p3, b, j, mask)
            sc[j], sc[j + U(1)], sc[j + U(2)], sc[j + U(3)] = s0, s1, s2, s3
        i += U(16)
    return p0 + p1 + p2 + p3


@njit(cache=True, nogil=True)
def decode_fused(a, starts, b, off, table, limit, esc, sc, out):
    """Every element: symbols with escapes into ``sc`` (uint16), then ``out = undo(sc, b)``."""
    n, mask = U(b.size), U((1 << limit) - 1)
    p = starts.copy()
    ei = U(0)
    i = U(0)
    while i + U(16) <= n:
        p0, p1, p2, p3 = p[0], p[1], p[2], p[3]
        x0, x1, x2, x3 = _peek(a, p0), _peek(a, p1), _peek(a, p2), _peek(a, p3)
        for k in range(4):
            j = i + U(4 * k)
            x0, x1, x2, x3, p0, p1, p2, p3, s0, s1, s2, s3 = _four(table, off, x0, x1, x2, x3, p0, p1, p2, p3, b, j, mask)
            ei = _put(sc, j, s0, esc, ei)
            ei = _put(sc, j + U(1), s1, esc, ei)
            ei = _put(sc, j + U(2), s2, esc, ei)
            ei = _put(sc, j + U(3), s3, esc, ei)
        p[0], p[1], p[2], p[3] = p0, p1, p2, p3
        i += U(16)
    while i < n:
        k = i & U(3)
        x, p[k], s = _sym(table, off, _peek(a, p[k]), p[k], U(b[i]), mask)
        ei = _put(sc, i, s, esc, ei)
        i += U(1)
    for i in range(b.size):
        out[i] = _uncode2(np.int64(sc[i]), np.int64(b[i]))
    return ei


def decode(c: dict, b: np.ndarray, sc16: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.empty(b.size, np.uint16) if out is None else out[: b.size]
    decode_fused(c["words"], c["starts"], b, c["off"], c["table"], c["limit"], c["esc"], sc16, out)
    return out


def ideal_bits(pairs, words) -> dict[str, float]:
    """Order-0 entropy (bits, per-tensor tables, no table cost) of the difference under contexts this
    coder could read per element for free: the symbol ``min(z, 255)`` with escapes raw (as coded
    here), escapes instead as 12 bucket symbols (``z >= 240``: bucket j holds 2**(j + 4) values)
    plus their raw bits, and the bucketed symbols with the same stream's previous symbol (element
    i - 4, 4 columns left in a row) as a second context."""
    starts = 240 + 16 * ((1 << np.arange(13)) - 1)
    out: dict[str, float] = {}

    def h(keys: np.ndarray) -> float:
        c = np.bincount(keys, minlength=256)
        c = np.pad(c, (0, -c.size % 256)).reshape(-1, 256)
        tot = c.sum(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(-(c * np.log2(np.where(c > 0, c / np.maximum(tot, 1), 1))).sum())

    for t, b in pairs:
        tw, bw = words(t), words(b)
        z = _symbols_of(tw, bw).astype(np.int64)
        e = (bw >> 7).astype(np.int64) & 0xFF
        j = np.searchsorted(starts, z, side="right") - 1
        sym = np.where(z < 240, z, 240 + j)
        extra = float(np.where(z < 240, 0, j + 4).sum())
        prev = np.minimum(np.concatenate([np.ones(4, np.int64), sym[:-4]]), 3)
        # each exponent's symbols renamed by their frequency rank in it (a byte table the decoder would
        # apply after a context-free entropy decode): one table for all, if the contexts differed only in
        # which symbols are common
        cnt = np.bincount(e * 256 + sym, minlength=65536).reshape(256, 256)
        rank_of = np.empty((256, 256), np.int64)
        rank_of[np.arange(256)[:, None], np.argsort(-cnt, axis=1, kind="stable")] = np.arange(256)[None, :]
        ranked = rank_of[e, sym]
        for name, bits in (
            ("exponent; escapes raw (this probe's coding)", h(e * 256 + np.minimum(z, 255)) + 16.0 * (z >= 255).sum()),
            ("exponent; escapes bucketed", h(e * 256 + sym) + extra),
            ("exponent x previous symbol of the stream (0, 1, 2, 3+); escapes bucketed", h((e * 4 + prev) * 256 + sym) + extra),
            ("no context (order 0); escapes bucketed", h(sym) + extra),
            ("each exponent's symbols renamed by frequency rank, no context; escapes bucketed", h(ranked) + extra),
        ):
            out[name] = out.get(name, 0.0) + bits
    return out


# -- variant B: escapes as bucket symbols with their raw bits in the stream, tables per chunk ----------------------
#: symbols 0..239 are z itself; 240 + j is bucket j: z in [BUCKET_START[j], BUCKET_START[j + 1]), its offset in j + 4 raw bits
LITERALS = 240
BUCKET_START = (240 + 16 * ((1 << np.arange(13)) - 1)).astype(np.uint64)


@njit(cache=True, nogil=True)
def _bucket_symbols(z, starts):
    s = np.empty(z.size, np.int64)
    for i in range(z.size):
        v = z[i]
        if v < LITERALS:
            s[i] = v
        else:
            j = 0
            while U(v) >= starts[j + 1]:
                j += 1
            s[i] = LITERALS + j
    return s


@njit(cache=True, nogil=True)
def _write_raw(z, sym, starts, raw64):
    """Every bucket symbol's j + 4 raw bits, in element order (variant B's fifth stream); returns the bits."""
    acc, fill, w, total = U(0), 0, 0, 0
    for i in range(z.size):
        k = sym[i]
        if k >= LITERALS:
            n = k - LITERALS + 4
            w, acc, fill = _put_bits(raw64, w, acc, fill, U(z[i]) - starts[k - LITERALS], n)
            total += n
    raw64[w] = acc
    return total


def encode_b(t: np.ndarray, b: np.ndarray, limit: int, chunk: int, nclass: int = 1) -> list[dict]:
    """Variant B of one tensor: chunks of ``chunk`` elements, each with its own tables and four streams;
    ``nclass`` > 1: variant C (tables also by the stream's previous symbol, capped at nclass - 1)."""
    out = []
    for lo in range(0, t.size, chunk):
        tc, bc = t[lo : lo + chunk], b[lo : lo + chunk]
        z = _symbols_of(tc, bc)
        sym = _bucket_symbols(z, BUCKET_START)
        tabof, codes, lens, tabs, h = context_tables(sym, bc, limit, nclass)
        ntab = tabs.shape[0]
        per = (tc.size // 4 + 1) * (limit + 16) // 64 + 2
        wstart = np.arange(4, dtype=np.int64) * per
        out64 = np.zeros(4 * per + 2, np.uint64)
        nraw = int(sym[sym >= LITERALS].sum() - (LITERALS - 4) * (sym >= LITERALS).sum())
        raw64 = np.zeros(nraw // 64 + 2, np.uint64)
        nbits = _write_streams(sym, bc, tabof, codes, lens, out64, wstart, nclass) + _write_raw(z, sym, BUCKET_START, raw64)
        used = int((h > 0).sum())  # a table stored as a 256-bit map of its symbols and a byte of length each
        out.append({"words": out64, "starts": wstart.astype(np.uint64) * U(64), "off": ((tabof * nclass) << limit).astype(np.uint64),
                    "nclass": nclass,
                    "table": tabs.reshape(-1).copy(), "limit": limit, "lo": lo, "raw": raw64,
                    "bytes": (nbits + 4 * 7) // 8 + used + 32 * ntab + 16})
    return out


@njit(cache=True, nogil=True, inline="always")
def _put_b(sc, i, s, raw, rp, starts):
    """sc[i] = s, or for a bucket symbol its z from the next raw bits; the raw stream's position after."""
    if s >= U(LITERALS):
        nb = s - U(LITERALS - 4)
        sc[i] = starts[s - U(LITERALS)] + (_peek(raw, rp) & ((U(1) << nb) - U(1)))
        return rp + nb
    sc[i] = s
    return rp


@njit(cache=True, nogil=True)
def decode_fused_b(a, starts, b, off, table, limit, bstarts, raw, sc, out):
    """Variant B's chunk: z into ``sc`` (uint16) in element order (:func:`decode_fused`'s loop, a bucket's
    raw bits read from their own stream on the rare branch), then ``out = undo(sc, b)``."""
    n, mask = U(b.size), U((1 << limit) - 1)
    p = starts.copy()
    rp = U(0)
    i = U(0)
    while i + U(16) <= n:
        p0, p1, p2, p3 = p[0], p[1], p[2], p[3]
        x0, x1, x2, x3 = _peek(a, p0), _peek(a, p1), _peek(a, p2), _peek(a, p3)
        for k in range(4):
            j = i + U(4 * k)
            x0, x1, x2, x3, p0, p1, p2, p3, s0, s1, s2, s3 = _four(table, off, x0, x1, x2, x3, p0, p1, p2, p3, b, j, mask)
            rp = _put_b(sc, j, s0, raw, rp, bstarts)
            rp = _put_b(sc, j + U(1), s1, raw, rp, bstarts)
            rp = _put_b(sc, j + U(2), s2, raw, rp, bstarts)
            rp = _put_b(sc, j + U(3), s3, raw, rp, bstarts)
        p[0], p[1], p[2], p[3] = p0, p1, p2, p3
        i += U(16)
    while i < n:
        k = i & U(3)
        x, p[k], s = _sym(table, off, _peek(a, p[k]), p[k], U(b[i]), mask)
        rp = _put_b(sc, i, s, raw, rp, bstarts)
        i += U(1)
    for i in range(b.size):
        out[i] = _uncode2(np.int64(sc[i]), np.int64(b[i]))


@njit(cache=True, nogil=True, inline="always")
def _sym_c(table, off, x, p, y, mask, prev, top, limit):
    """:func:`_sym` with variant C's second context: the stream's previous symbol, capped at ``top``."""
    e = U(table[off[y >> U(7)] + (min(prev, top) << limit) + (x & mask)])
    n = e >> U(8)
    return x >> n, p + n, e & U(255)


@njit(cache=True, nogil=True)
def decode_fused_c(a, starts, b, off, table, limit, bstarts, raw, nclass, sc, out):
    """Variant C's chunk: variant B's decode with each symbol's table chosen by its exponent and the
    previous symbol of its stream (a dependency from one symbol's lookup to the next one's)."""
    n, mask, top, lim = U(b.size), U((1 << limit) - 1), U(nclass - 1), U(limit)
    p0, p1, p2, p3 = starts[0], starts[1], starts[2], starts[3]
    s0 = s1 = s2 = s3 = U(1)
    rp = U(0)
    i = U(0)
    while i + U(16) <= n:
        x0, x1, x2, x3 = _peek(a, p0), _peek(a, p1), _peek(a, p2), _peek(a, p3)
        for k in range(4):
            j = i + U(4 * k)
            x0, p0, s0 = _sym_c(table, off, x0, p0, U(b[j]), mask, s0, top, lim)
            x1, p1, s1 = _sym_c(table, off, x1, p1, U(b[j + U(1)]), mask, s1, top, lim)
            x2, p2, s2 = _sym_c(table, off, x2, p2, U(b[j + U(2)]), mask, s2, top, lim)
            x3, p3, s3 = _sym_c(table, off, x3, p3, U(b[j + U(3)]), mask, s3, top, lim)
            rp = _put_b(sc, j, s0, raw, rp, bstarts)
            rp = _put_b(sc, j + U(1), s1, raw, rp, bstarts)
            rp = _put_b(sc, j + U(2), s2, raw, rp, bstarts)
            rp = _put_b(sc, j + U(3), s3, raw, rp, bstarts)
        i += U(16)
    p = np.array([p0, p1, p2, p3], np.uint64)
    prev = np.array([s0, s1, s2, s3], np.uint64)
    while i < n:
        k = i & U(3)
        x, p[k], prev[k] = _sym_c(table, off, _peek(a, p[k]), p[k], U(b[i]), mask, prev[k], top, lim)
        rp = _put_b(sc, i, prev[k], raw, rp, bstarts)
        i += U(1)
    for i in range(b.size):
        out[i] = _uncode2(np.int64(sc[i]), np.int64(b[i]))


def decode_b(chunks: list[dict], b: np.ndarray, sc16: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.empty(b.size, np.uint16) if out is None else out[: b.size]
    for i, c in enumerate(chunks):
        hi = chunks[i + 1]["lo"] if i + 1 < len(chunks) else b.size
        if c["nclass"] > 1:
            decode_fused_c(c["words"], c["starts"], b[c["lo"] : hi], c["off"], c["table"], c["limit"], BUCKET_START, c["raw"],
                           c["nclass"], sc16, out[c["lo"] : hi])
        else:
            decode_fused_b(c["words"], c["starts"], b[c["lo"] : hi], c["off"], c["table"], c["limit"], BUCKET_START, c["raw"],
                           sc16, out[c["lo"] : hi])
    return out


def synthetic_pairs(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n (fine-tune, base) pairs of 4096 x 4096 bf16: the base N(0, 0.02), the fine-tune the base plus an
    N(0, 3e-4) step in value, rounded (a step of one size is many units in the last place on a small
    weight and few on a large one, as a real fine-tune's: about three quarters of the elements change)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        b = torch.randn(4096, 4096, generator=g) * 0.02
        out.append(((b + torch.randn(4096, 4096, generator=g) * 3e-4).to(torch.bfloat16), b.to(torch.bfloat16)))
    return out


def variant_c(pairs, words, repeat: int) -> None:
    """Variant C beside B on the given tensors: B plus the stream's previous symbol (capped at 1 or 3) as a
    second context, 11- to 9-bit tables (C multiplies the tables an exponent). Bytes and the decode of the
    tensors into one reused array, best of ``repeat`` (wall time, rows interleaved)."""
    data = [(words(t), words(b)) for t, b in pairs]
    nel = sum(t.size for t, _ in data)
    sc = np.empty(max(t.size for t, _ in data), np.uint16)
    o = np.empty_like(sc)
    variants = {"B, 11-bit tables": (11, 1), "C (previous symbol 0 / 1+), 11-bit": (11, 2), "C (0 / 1+), 10-bit": (10, 2),
                "C (0 / 1 / 2 / 3+), 10-bit": (10, 4), "C (0 / 1 / 2 / 3+), 9-bit": (9, 4)}
    enc = {k: [encode_b(t, b, L, 1 << 19, nc) for t, b in data] for k, (L, nc) in variants.items()}
    for k, cs in enc.items():
        for cb, (t, b) in zip(cs, data):
            assert np.array_equal(decode_b(cb, b, sc), t), k
    best = {k: float("inf") for k in enc}
    for _ in range(repeat + 1):  # (the first round compiles)
        for k, cs in enc.items():
            t0 = time.perf_counter()
            for cb, (_, b) in zip(cs, data):
                decode_b(cb, b, sc, o)
            best[k] = min(best[k], time.perf_counter() - t0)
    print(f"Variant C beside B: {len(pairs)} tensors, {nel:,} elements, best of {repeat}\n")
    print("| variant | bytes | decode, ns an element |\n|---|---:|---:|")
    for k in enc:
        print(f"| {k} | {sum(c['bytes'] for cs in enc[k] for c in cs):,} | {best[k] / nel * 1e9:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ft", type=Path, nargs="?", help="the fine-tune's HF directory (of the zoo's SmolLM2 base)")
    ap.add_argument("--synthetic", type=int, default=0, metavar="N",
                    help="instead: N tensors of 4096 x 4096 (a machine without the zoo's weights)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--L", type=int, default=11)
    ap.add_argument("--chunk", type=int, default=1 << 19, help="variant B's chunk, elements (the codec's: 1 MiB of bf16)")
    ap.add_argument("--variant-c", nargs="*", metavar="TENSOR", default=None,
                    help="only variant C beside B on these tensors (default three of SmolLM2's layers)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    words = lambda x: x.contiguous().view(torch.int16).numpy().reshape(-1).view(np.uint16)  # noqa: E731
    if args.synthetic:
        if args.variant_c is not None:
            ap.error("--variant-c reads the fine-tune directory's tensors")
        pairs = synthetic_pairs(args.synthetic)
    elif args.ft is None:
        ap.error("give a fine-tune directory or --synthetic N")
    elif args.variant_c is not None:
        base = load_file(str(smollm2_dir() / "model.safetensors"))
        ft = load_file(str(args.ft / "model.safetensors"))
        names = args.variant_c or ["model.layers.10.mlp.down_proj.weight", "model.layers.20.mlp.up_proj.weight",
                                   "model.layers.5.self_attn.q_proj.weight"]
        print(f"# python benchmarks/probe_ctx_huffman.py {args.ft} --variant-c {' '.join(args.variant_c)}\n")
        return variant_c([(ft[k], base[k]) for k in names], words, args.repeat)
    else:
        pairs = changed_bf16(str(args.ft / "model.safetensors"))
    nel = sum(t.numel() for t, _ in pairs)
    l4 = Lossless()
    p4 = [to_bytes(l4.encode(t, b)) for t, b in pairs]
    hc = [encode(words(t), words(b), args.L) for t, b in pairs]
    hb = [encode_b(words(t), words(b), args.L, args.chunk) for t, b in pairs]
    biggest = max(t.numel() for t, _ in pairs)
    sc8, sc16, reused = np.empty(biggest, np.uint8), np.empty(biggest, np.uint16), np.empty(biggest, np.uint16)
    for c, cb, (t, b) in zip(hc, hb, pairs):
        assert np.array_equal(decode(c, words(b), sc16), words(t)), "not exact"
        assert np.array_equal(decode_b(cb, words(b), sc16), words(t)), "variant B not exact"
    rows = {}
    try:
        from zipnn import ZipNN
    except ImportError:  # (a device host's image has no zipnn: the ratios against v4 stand alone)
        comp = b""
    else:
        z = ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=1)
        raw = bytearray(b"".join(words(t).tobytes() for t, _ in pairs))
        comp = z.compress(bytearray(raw))  # (zipnn may reorder its input in place)
        assert bytes(z.decompress(comp)) == bytes(raw), "zipnn not exact"
        rows["zipnn 0.5.4: the changed tensors' bytes, one buffer"] = lambda: z.decompress(comp)
    bw = [words(b) for _, b in pairs]
    rows |= {
        "v4 (today's default) as the store calls it, a fresh array a tensor": lambda: [
            l4.reconstruct(from_bytes(p, copy=False), b) for p, (_, b) in zip(p4, pairs)],
        "per-exponent Huffman, fused: symbols + escapes, then the undo into a fresh array a tensor": lambda: [
            decode(c, b, sc16) for c, b in zip(hc, bw)],
        "per-exponent Huffman, fused, into one reused array (no page faults)": lambda: [
            decode(c, b, sc16, reused) for c, b in zip(hc, bw)],
        "variant B (bucketed escapes, tables per chunk), fused, a fresh array a tensor": lambda: [
            decode_b(c, b, sc16) for c, b in zip(hb, bw)],
        "variant B, into one reused array": lambda: [decode_b(c, b, sc16, reused) for c, b in zip(hb, bw)],
        "per-exponent Huffman, the symbols alone (no escapes, no undo; reused array)": lambda: [
            decode_symbols(c["words"], c["starts"], b, c["off"], c["table"], c["limit"], sc8) for c, b in zip(hc, bw)],
    }
    times = {k: [] for k in rows}
    for _ in range(args.repeat):
        for k, f in rows.items():
            times[k].append(cpu_split(f))
    src = f"--synthetic {args.synthetic}" if args.synthetic else str(args.ft)
    print(f"# python benchmarks/probe_ctx_huffman.py {src} --repeat {args.repeat} --L {args.L} --chunk {args.chunk}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; AVX-512 VBMI2 (v4's gather): {x512_available()}")
    print(f"\n{len(pairs)} changed bf16 tensors, {nel:,} elements; one thread, process CPU time (user + system), "
          f"median and best of {args.repeat}, rows interleaved; load average {os.getloadavg()[0]:.1f}\n")
    print(f"Bytes: zipnn {f'{len(comp) / 1e6:.3f} MB' if comp else 'not installed'}, v4 {sum(map(len, p4)) / 1e6:.3f} MB, per-exponent Huffman "
          f"(L={args.L}) {sum(c['bytes'] for c in hc) / 1e6:.3f} MB "
          f"(escapes {sum(c['esc'].size for c in hc) / nel:.2%} of elements); variant B (chunks of {args.chunk:,} elements) "
          f"{sum(c['bytes'] for cs in hb for c in cs) / 1e6:.3f} MB\n")
    print("Order-0 entropy of the difference under contexts read per element (per-tensor tables, no table bytes: "
          "what an ideal entropy coder would reach; Huffman adds its rounding):\n")
    print("| contexts | MB |\n|---|---:|")
    for k, v in ideal_bits(pairs, words).items():
        print(f"| {k} | {v / 8e6:.3f} |")
    print()
    ref = next(iter(rows))  # zipnn's row, or v4's without zipnn
    print(f"| decode | ns an element, median | best | of which system time (median) | x {ref.split(':')[0].split(' (')[0]} (median) |\n"
          "|---|---:|---:|---:|---:|")
    zmed = statistics.median(t for t, _ in times[ref])
    for k, v in times.items():
        med, sys_med = statistics.median(t for t, _ in v), statistics.median(s for _, s in v)
        print(f"| {k} | {med / nel * 1e9:.3f} | {min(t for t, _ in v) / nel * 1e9:.3f} | {sys_med / nel * 1e9:.3f} | {zmed / med:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
