"""Issue 12: a per-context entropy coder of the lossless fine-tune difference in natural order
(no grouping, no scatter), in numba: bytes and MB/s per core beside zipnn 0.5.4, format v3 and
the earlier rANS probe (benchmarks/probe_rans.py), alternating round by round.

    python benchmarks/probe_ctxcode.py FT_FILE [FT_FILE ...] [--repeat N] [--stages] [--c-kernel] [--out FILE]
    python benchmarks/probe_ctxcode.py --pair PREV_FILE NEXT_FILE   (bytes only, a checkpoint series' step)

A measurement, not a codec format. The coder (bf16 and fp16 words): ``z = zigzag(ordered(target)
- ordered(base))`` as in the lossless codec; each ``z`` is a symbol (``z`` itself below 8, else its
bit length and the two bits under its leading one: 60 symbols, as probe_rans.py) plus ``bitlen - 3``
raw low bits. The symbol is Huffman-coded (canonical, lengths <= MAXLEN = 11 bits) in the table of
the base word's exponent: one table per exponent with >= MIN_CONTEXT elements in the tensor, the
others pooled in one. Code and raw bits go LSB-first into one of four lanes (element i in lane
i % 4) of each chunk of CHUNK elements, so a chunk decodes alone given the tensor's tables and
the base's chunk (byte ranges kept).

Decoder: the tables are expanded per tensor into one 2048-entry row per exponent present (uint32
entry: bits taken | code length << 5 | the symbol's smallest z << 9), indexed straight by the base
word's exponent bits and the lane's next 11 bits (no context map in the loop). Per step each lane
reads 64 bits at its bit position (an unaligned 8-byte load LLVM forms from the byte loads) and
decodes two elements from them, the four lanes written out side by side (eight elements a step)
so their dependency chains overlap; z goes to a scratch array and a second, vectorized pass undoes
the difference (measured faster than fusing it: the fused loop spills). The fast loop checks
every 64 steps that no lane can read past the chunk; the rest runs a clamped loop. Decoding
checks that every lane ends at its stored bit count.

Bytes counted: the chunks' streams, 4 x 4 bytes of lane bit counts a chunk, per table its 60 code
lengths as nibbles (30 bytes), one byte per exponent present naming its table, a 16-byte tensor
header, plus the codec's per-tensor envelope (v1's payload bytes minus its stream, as
probe_layouts.py). rANS: probe_rans.py's own count plus the same envelope.

Speeds: MB of the changed tensors' bytes (zipnn: of the file) over CPU seconds of this process
(``time.process_time``), one thread, best of --repeat; zipnn, v3, this coder and the rANS probe
one after another in each round, every decode into a fresh array (as zipnn's decompress and the
codec's reconstruct). Per round each candidate's speed over zipnn's in that round: the median is
printed beside the best-of ratio. Every round trip is checked bit for bit. ``--stages``: the
coder's decode split into table expansion, the lane kernel, the undo pass and the fresh output's
page faults (ns an element, best of --repeat).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("DELTASTORE_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from numba import njit  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import probe_rans as pr  # noqa: E402

from deltastore.codec import from_bytes, to_bytes  # noqa: E402
from deltastore.codec.lossless import Lossless  # noqa: E402

MB = 1e6
NSYM = 64  # 60 used
MAXLEN = 11  # longest code: a table row has 2**MAXLEN entries
MAXBITS = 24  # the most bits one element takes (an 11-bit code and 13 raw bits)
CHUNK = 1 << 19  # elements a chunk (1 MiB of bf16, v3's chunk)
MIN_CONTEXT = 4096
BLOCK = 64  # steps between the fast loop's bounds checks
_U0, _U1 = np.uint64(0), np.uint64(1)
_PM = np.uint64((1 << MAXLEN) - 1)


ZBASE, NRAW, SYMTAB = pr.ZBASE, pr.NRAW, pr.SYMTAB  # the rANS probe's 60-symbol alphabet


@njit(cache=True, nogil=True, inline="always")
def _code16(x, y):
    x ^= (_U0 - (x >> np.uint64(15))) & np.uint64(0x7FFF)
    y ^= (_U0 - (y >> np.uint64(15))) & np.uint64(0x7FFF)
    d = (x - y) & np.uint64(0xFFFF)
    return ((d << _U1) ^ (_U0 - (d >> np.uint64(15)))) & np.uint64(0xFFFF)


@njit(cache=True, nogil=True)
def diff_z(target, base, z):
    """z of each element (uint16 words in and out); LLVM vectorizes it."""
    for i in range(target.size):
        x, y = np.int32(target[i]), np.int32(base[i])
        x ^= (-(x >> 15)) & 0x7FFF
        y ^= (-(y >> 15)) & 0x7FFF
        d = (x - y) & 0xFFFF
        z[i] = np.uint16(((d << 1) ^ (-(d >> 15))) & 0xFFFF)


@njit(cache=True, nogil=True)
def count(z, base, shift, cmask, symtab, hist, h4):
    """The (context, symbol) histogram (int64[256*64], added to), counted in four copies (``h4``:
    int64[4*256*64], zero, left zero) so consecutive equal bins do not wait on each other's store."""
    sh, cm = np.uint64(shift), np.uint64(cmask)
    n = z.size
    nm = n - n % 4
    S = np.uint64(256 * NSYM)
    K = np.uint64(NSYM)
    for i in range(0, nm, 4):
        u = np.uint64(i)
        h4[((np.uint64(base[u]) >> sh) & cm) * K + np.uint64(symtab[z[u]])] += 1
        h4[S + ((np.uint64(base[u + np.uint64(1)]) >> sh) & cm) * K + np.uint64(symtab[z[u + np.uint64(1)]])] += 1
        h4[S * np.uint64(2) + ((np.uint64(base[u + np.uint64(2)]) >> sh) & cm) * K + np.uint64(symtab[z[u + np.uint64(2)]])] += 1
        h4[S * np.uint64(3) + ((np.uint64(base[u + np.uint64(3)]) >> sh) & cm) * K + np.uint64(symtab[z[u + np.uint64(3)]])] += 1
    for i in range(nm, n):
        hist[((np.uint64(base[i]) >> sh) & cm) * K + np.uint64(symtab[z[i]])] += 1
    m = 256 * NSYM
    for k in range(m):
        hist[k] += h4[k] + h4[k + m] + h4[k + 2 * m] + h4[k + 3 * m]
        h4[k] = 0
        h4[k + m] = 0
        h4[k + 2 * m] = 0
        h4[k + 3 * m] = 0


@njit(cache=True, nogil=True)
def huffman_lengths(counts, maxlen, out):
    """Code lengths (uint8) of the counted symbols, <= maxlen: Huffman's, cut at the limit, the
    Kraft sum repaired by lengthening the longest codes under it (rarest first), then the most
    frequent codes shortened while the sum leaves room. One symbol: length 0 (no code bits)."""
    for s in range(counts.size):
        out[s] = 0
    syms = np.flatnonzero(counts > 0)
    m = syms.size
    if m <= 1:
        return
    w = np.zeros(2 * m, np.int64)
    parent = np.full(2 * m, -1, np.int64)
    alive = np.zeros(2 * m, np.bool_)
    for k in range(m):
        w[k] = counts[syms[k]]
        alive[k] = True
    nn = m
    for _ in range(m - 1):
        a = -1
        b = -1
        for k in range(nn):
            if alive[k]:
                if a < 0 or w[k] < w[a]:
                    b = a
                    a = k
                elif b < 0 or w[k] < w[b]:
                    b = k
        alive[a] = False
        alive[b] = False
        w[nn] = w[a] + w[b]
        alive[nn] = True
        parent[a] = nn
        parent[b] = nn
        nn += 1
    ln = np.zeros(m, np.int64)
    for k in range(m):
        d, p = 0, parent[k]
        while p >= 0:
            d += 1
            p = parent[p]
        ln[k] = min(d, maxlen)
    full = 1 << maxlen
    kraft = 0
    for k in range(m):
        kraft += 1 << (maxlen - ln[k])
    while kraft > full:
        best = -1
        for k in range(m):
            if ln[k] < maxlen and (best < 0 or ln[k] > ln[best] or (ln[k] == ln[best] and w[k] < w[best])):
                best = k
        kraft -= 1 << (maxlen - ln[best] - 1)
        ln[best] += 1
    while True:
        best = -1
        for k in range(m):
            if ln[k] > 1 and kraft + (1 << (maxlen - ln[k])) <= full and (best < 0 or w[k] > w[best]):
                best = k
        if best < 0:
            break
        kraft += 1 << (maxlen - ln[best])
        ln[best] -= 1
    for k in range(m):
        out[syms[k]] = ln[k]


@njit(cache=True, nogil=True)
def canonical_codes(lens, maxlen, codes):
    """Canonical codes of ``lens``, bit-reversed for an LSB-first stream; returns the Kraft sum
    in units of 2**-maxlen (over 2**maxlen: not a prefix code)."""
    code = 0
    kraft = 0
    for ln in range(1, maxlen + 1):
        for s in range(lens.size):
            if lens[s] == ln:
                r, c = 0, code
                for _ in range(ln):
                    r = (r << 1) | (c & 1)
                    c >>= 1
                codes[s] = r
                code += 1
                kraft += 1 << (maxlen - ln)
        code <<= 1
    return kraft


@njit(cache=True, nogil=True)
def fill_row(lens, nraw, zbase, codes, dtab, row):
    """Row ``row`` of the decode table (2**MAXLEN uint32 entries: smallest z | code length << 16
    | bits taken << 24) from one table's code lengths. False: not a prefix code that fits."""
    size = 1 << MAXLEN
    off = row * size
    for s in range(lens.size):
        if lens[s] > MAXLEN:
            return False
    kraft = canonical_codes(lens, MAXLEN, codes)
    if kraft > size:
        return False
    if kraft < size:
        for k in range(size):
            dtab[off + k] = 0
    for s in range(lens.size):
        ln = lens[s]
        if ln == 0:
            continue
        e = np.uint32(zbase[s] | (ln << 16) | ((ln + nraw[s]) << 24))
        for k in range(codes[s], size, 1 << ln):
            dtab[off + k] = e
    return True


@njit(cache=True, nogil=True)
def enc_table(cmap, codes, lens, nraw, zbase, ctxs, etab):
    """The encoder's entry of each (context present, symbol): code | length << 16 | raw bits << 24
    | smallest z << 32 (uint64, ``etab[context * 64 + symbol]``)."""
    for c in ctxs:
        t = cmap[c]
        for s in range(NSYM):
            etab[c * NSYM + s] = (np.uint64(codes[t, s]) | (np.uint64(lens[t, s]) << np.uint64(16))
                                  | (np.uint64(nraw[s]) << np.uint64(24)) | (np.uint64(zbase[s]) << np.uint64(32)))


@njit(cache=True, nogil=True, inline="always")
def _put(z, y, sh, cm, symtab, etab, words, acc, cnt, p):
    """One element into a lane's bit accumulator; a word stored every time, kept when full."""
    zz = np.uint64(z)
    e = etab[((np.uint64(y) >> sh) & cm) * np.uint64(NSYM) + np.uint64(symtab[zz])]
    ln = (e >> np.uint64(16)) & np.uint64(31)
    acc |= ((e & np.uint64(0xFFFF)) | ((zz - (e >> np.uint64(32))) << ln)) << cnt
    cnt += ln + ((e >> np.uint64(24)) & np.uint64(31))
    words[p] = np.uint32(acc & np.uint64(0xFFFFFFFF))
    f = cnt >> np.uint64(5)
    return acc >> (f << np.uint64(5)), cnt - (f << np.uint64(5)), p + np.int64(f)


@njit(cache=True, nogil=True)
def encode_chunk(z, base, shift, cmask, symtab, etab, words, cap, lane_bits):
    """One chunk's four lanes, lane j at ``words[j * cap:]``; bit counts into ``lane_bits``. The
    four lanes' accumulators advance side by side (independent chains)."""
    n = z.size
    sh, cm = np.uint64(shift), np.uint64(cmask)
    a0 = a1 = a2 = a3 = _U0
    c0 = c1 = c2 = c3 = _U0
    p0, p1, p2, p3 = 0, cap, 2 * cap, 3 * cap
    nm = n - n % 4
    for i in range(0, nm, 4):
        a0, c0, p0 = _put(z[i], base[i], sh, cm, symtab, etab, words, a0, c0, p0)
        a1, c1, p1 = _put(z[i + 1], base[i + 1], sh, cm, symtab, etab, words, a1, c1, p1)
        a2, c2, p2 = _put(z[i + 2], base[i + 2], sh, cm, symtab, etab, words, a2, c2, p2)
        a3, c3, p3 = _put(z[i + 3], base[i + 3], sh, cm, symtab, etab, words, a3, c3, p3)
    for i in range(nm, n):  # lanes 0 .. n % 4 - 1 take one more
        if i % 4 == 0:
            a0, c0, p0 = _put(z[i], base[i], sh, cm, symtab, etab, words, a0, c0, p0)
        elif i % 4 == 1:
            a1, c1, p1 = _put(z[i], base[i], sh, cm, symtab, etab, words, a1, c1, p1)
        else:
            a2, c2, p2 = _put(z[i], base[i], sh, cm, symtab, etab, words, a2, c2, p2)
    for j, (a, c, p) in enumerate(((a0, c0, p0), (a1, c1, p1), (a2, c2, p2), (a3, c3, p3))):
        lane_bits[j] = (p - j * cap) * 32 + np.int64(c)
        if c:
            words[p] = np.uint32(a & np.uint64(0xFFFFFFFF))


@njit(cache=True, nogil=True, inline="always")
def _step(v, e):
    """(z in the low 16 bits, bits taken) from the lane's next bits and the table entry: the
    entry's low 16 bits are the symbol's smallest z, so z = entry + raw bits needs no shift (the
    bits above 16 are dropped by the 16-bit store); the code length's ``& 63`` is shrx's own."""
    tot = e >> np.uint64(24)
    ln = (e >> np.uint64(16)) & np.uint64(63)
    return e + ((v & ((_U1 << tot) - _U1)) >> ln), tot


@njit(cache=True, nogil=True, inline="always")
def _ld64(b8, k):
    """8 bytes at ``k``, little-endian (LLVM makes it one unaligned load)."""
    return (np.uint64(b8[k]) | (np.uint64(b8[k + _U1]) << np.uint64(8)) | (np.uint64(b8[k + np.uint64(2)]) << np.uint64(16))
            | (np.uint64(b8[k + np.uint64(3)]) << np.uint64(24)) | (np.uint64(b8[k + np.uint64(4)]) << np.uint64(32))
            | (np.uint64(b8[k + np.uint64(5)]) << np.uint64(40)) | (np.uint64(b8[k + np.uint64(6)]) << np.uint64(48))
            | (np.uint64(b8[k + np.uint64(7)]) << np.uint64(56)))


_RM16 = np.uint64(0xFF << 7)  # bf16: the exponent's bits, and the shift that makes them a row
_RS16 = np.uint64(MAXLEN - 7)


@njit(cache=True, nogil=True, inline="always")
def _lane2(b8, bp, ya, yb, dtab, rm, rs):
    """Two elements of one lane from one 64-bit read: (z_a, z_b, the lane's next bit)."""
    v = _ld64(b8, bp >> np.uint64(3)) >> (bp & np.uint64(7))
    za, ta = _step(v, np.uint64(dtab[((ya & rm) << rs) | (v & _PM)]))
    v >>= ta
    zb, tb = _step(v, np.uint64(dtab[((yb & rm) << rs) | (v & _PM)]))
    return za, zb, bp + ta + tb


@njit(cache=True, nogil=True)
def decode_chunk(b8, starts, base, rowmask, rowshift, dtab, zs, ends):
    """The chunk's z (see :func:`_decode_chunk`); bf16's row mask and shift as constants (two
    registers fewer in the loop: ~8% faster)."""
    if rowmask == 0xFF << 7 and rowshift == MAXLEN - 7:
        _decode_chunk(b8, starts, base, _RM16, _RS16, dtab, zs, ends)
    else:
        _decode_chunk(b8, starts, base, np.uint64(rowmask), np.uint64(rowshift), dtab, zs, ends)


@njit(cache=True, nogil=True, inline="always")
def _decode_chunk(b8, starts, base, rm, rs, dtab, zs, ends):
    """z of one chunk into ``zs`` from its lanes (``b8``: the chunk's stream as bytes, ``starts``:
    each lane's first bit); the table row of an element is ``(base & rowmask) << rowshift``.
    Each lane's end bit into ``ends``."""
    n = base.size
    nb = np.uint64(b8.size)
    b0, b1, b2, b3 = np.uint64(starts[0]), np.uint64(starts[1]), np.uint64(starts[2]), np.uint64(starts[3])
    nm = n - n % 8
    limit = nb * np.uint64(8)
    reach = np.uint64(BLOCK * 2 * MAXBITS + 128)
    i = 0
    while i + 8 * BLOCK <= nm:
        if max(max(b0, b1), max(b2, b3)) + reach > limit:
            break
        for _ in range(BLOCK):  # each lane's two z stored at once (shorter live ranges: fewer spills)
            u = np.uint64(i)
            za, zb, b0 = _lane2(b8, b0, np.uint64(base[u]), np.uint64(base[u + np.uint64(4)]), dtab, rm, rs)
            zs[u] = np.uint16(za & np.uint64(0xFFFF))
            zs[u + np.uint64(4)] = np.uint16(zb & np.uint64(0xFFFF))
            za, zb, b1 = _lane2(b8, b1, np.uint64(base[u + np.uint64(1)]), np.uint64(base[u + np.uint64(5)]), dtab, rm, rs)
            zs[u + np.uint64(1)] = np.uint16(za & np.uint64(0xFFFF))
            zs[u + np.uint64(5)] = np.uint16(zb & np.uint64(0xFFFF))
            za, zb, b2 = _lane2(b8, b2, np.uint64(base[u + np.uint64(2)]), np.uint64(base[u + np.uint64(6)]), dtab, rm, rs)
            zs[u + np.uint64(2)] = np.uint16(za & np.uint64(0xFFFF))
            zs[u + np.uint64(6)] = np.uint16(zb & np.uint64(0xFFFF))
            za, zb, b3 = _lane2(b8, b3, np.uint64(base[u + np.uint64(3)]), np.uint64(base[u + np.uint64(7)]), dtab, rm, rs)
            zs[u + np.uint64(3)] = np.uint16(za & np.uint64(0xFFFF))
            zs[u + np.uint64(7)] = np.uint16(zb & np.uint64(0xFFFF))
            i += 8
    ends[0], ends[1], ends[2], ends[3] = b0, b1, b2, b3
    for k in range(i, n):  # the rest: one element at a time, reads clamped to the chunk
        j = k & 3
        bp = ends[j]
        v = _U0
        q = bp >> np.uint64(3)
        for m in range(8):
            if q + np.uint64(m) < nb:
                v |= np.uint64(b8[q + np.uint64(m)]) << np.uint64(8 * m)
        v >>= bp & np.uint64(7)
        zz, t = _step(v, np.uint64(dtab[((np.uint64(base[k]) & rm) << rs) | (v & _PM)]))
        ends[j] = bp + t
        zs[k] = np.uint16(zz & np.uint64(0xFFFF))


@njit(cache=True, nogil=True)
def undo(zs, base, out):
    """The target's words from z and the base's (vectorized by LLVM)."""
    for k in range(base.size):
        z, y = np.int32(zs[k]), np.int32(base[k])
        y ^= (-(y >> 15)) & 0x7FFF
        o = (y + ((z >> 1) ^ -(z & 1))) & 0xFFFF
        out[k] = np.uint16(o ^ ((-(o >> 15)) & 0x7FFF))


FIELDS = {torch.bfloat16: (7, 0xFF), torch.float16: (10, 0x1F)}  # (shift, mask) of the exponent


class Coded:
    """One tensor: its contexts' tables, per chunk (stream bytes, lane bit counts), bytes."""

    def __init__(self, shift, cmask, ctxs, cmap, lens, chunks, nbytes):
        self.shift, self.cmask, self.ctxs, self.cmap, self.lens, self.chunks, self.nbytes = shift, cmask, ctxs, cmap, lens, chunks, nbytes


def encode(t: np.ndarray, b: np.ndarray, dtype=torch.bfloat16) -> Coded:
    """uint16 words of a target and its base -> :class:`Coded`."""
    shift, cmask = FIELDS[dtype]
    n = t.size
    z = np.empty(n, np.uint16)
    hist = np.zeros(256 * NSYM, np.int64)
    if "h4" not in _TLS:
        _TLS["h4"] = np.zeros(4 * 256 * NSYM, np.int64)
        _TLS["etab"] = np.zeros(256 * NSYM, np.uint64)
    diff_z(t, b, z)
    count(z, b, shift, cmask, SYMTAB, hist, _TLS["h4"])
    h = hist.reshape(256, NSYM)
    tot = h.sum(1)
    own = [c for c in range(256) if tot[c] >= MIN_CONTEXT]
    rare = [c for c in range(256) if 0 < tot[c] < MIN_CONTEXT]
    rows = [h[c] for c in own]
    cmap = np.zeros(256, np.uint8)
    for k, c in enumerate(own):
        cmap[c] = k
    if rare:
        for c in rare:
            cmap[c] = len(rows)
        rows.append(h[rare].sum(0))
    ntab = len(rows)
    lens = np.zeros((max(ntab, 1), NSYM), np.uint8)
    codes = np.zeros((max(ntab, 1), NSYM), np.uint32)
    for k, r in enumerate(rows):
        huffman_lengths(r, MAXLEN, lens[k])
        canonical_codes(lens[k], MAXLEN, codes[k])
        if (lens[k] == 0).all():  # one symbol: its length 0 stored as a marker (nibble 1 = length 0)
            lens[k, int(np.flatnonzero(r)[0])] = 0
    etab = _TLS["etab"]
    enc_table(cmap, codes, lens, NRAW, ZBASE, np.array(own + rare, np.int64), etab)
    chunks, nbytes = [], 16 + ntab * 30 + len(own) + len(rare)
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        cap = ((hi - lo) // 4 + 1) * MAXBITS // 32 + 2
        words = np.empty(4 * cap, np.uint32)  # every word a lane keeps is written
        lane_bits = np.zeros(4, np.int64)
        encode_chunk(z[lo:hi], b[lo:hi], shift, cmask, SYMTAB, etab, words, cap, lane_bits)
        stream = bytearray()
        for j in range(4):  # lane j's bytes, byte-aligned
            stream += words[j * cap:].view(np.uint8)[: (int(lane_bits[j]) + 7) // 8].tobytes()
        chunks.append((np.frombuffer(bytes(stream), np.uint8), lane_bits))
        nbytes += len(stream) + 16
    # the only symbol of one-symbol tables: kept for the decoder (a real format stores it as its nibble)
    single = np.array([int(np.flatnonzero(r)[0]) if (np.count_nonzero(r) == 1) else -1 for r in rows] or [-1], np.int64)
    return Coded(shift, cmask, np.array(own + rare, np.int64), cmap, (lens, single), chunks, nbytes)


_TLS: dict = {}


def expand_tables(c: Coded) -> np.ndarray:
    """The decode table: one row per context present (this thread's, reused; 256 rows)."""
    dtab = _TLS.get("dtab")
    if dtab is None:
        dtab = _TLS["dtab"] = np.zeros(256 << MAXLEN, np.uint32)
        _TLS["codes"] = np.zeros(NSYM, np.uint32)
    lens, single = c.lens
    done: dict[int, int] = {}
    for ctx in c.ctxs.tolist():
        k = int(c.cmap[ctx])
        if k in done:  # a pooled table: copy its row
            src = done[k] << MAXLEN
            dtab[ctx << MAXLEN: (ctx + 1) << MAXLEN] = dtab[src: src + (1 << MAXLEN)]
            continue
        if single[k] >= 0:
            s = int(single[k])
            dtab[ctx << MAXLEN: (ctx + 1) << MAXLEN] = ZBASE[s] | (NRAW[s] << 24)
        elif not fill_row(lens[k], NRAW, ZBASE, _TLS["codes"], dtab, ctx):
            raise ValueError("code lengths are not a prefix code")
        done[k] = ctx
    return dtab


def _lane_starts(lb: np.ndarray) -> np.ndarray:
    """Bit offset of each of a chunk's 4 lanes in its stream (each lane padded to whole bytes)."""
    starts = np.zeros(4, np.int64)
    starts[1:] = np.cumsum((lb + 7) // 8)[:3] * 8
    return starts


def decode(c: Coded, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    dtab = expand_tables(c)
    rowmask, rowshift = c.cmask << c.shift, MAXLEN - c.shift
    zs = _TLS.get("zs")
    if zs is None:
        zs = _TLS["zs"] = np.empty(CHUNK, np.uint16)
    ends = np.zeros(4, np.uint64)
    for k, lo in enumerate(range(0, b.size, CHUNK)):
        hi = min(b.size, lo + CHUNK)
        b8, lb = c.chunks[k]
        starts = _lane_starts(lb)
        decode_chunk(b8, starts, b[lo:hi], rowmask, rowshift, dtab, zs, ends)
        if not np.array_equal(ends.astype(np.int64) - starts, lb):
            raise ValueError(f"chunk {k}: lanes end at {ends.astype(np.int64) - starts}, expected {lb}")
        undo(zs[: hi - lo], b[lo:hi], out[lo:hi])
    return out


def _kernel_only(c: Coded, b: np.ndarray) -> None:
    """The lane kernel alone over every chunk (tables already expanded), z into scratch."""
    dtab, zs, ends = _TLS["dtab"], _TLS["zs"], np.zeros(4, np.uint64)
    rowmask, rowshift = c.cmask << c.shift, MAXLEN - c.shift
    for k, lo in enumerate(range(0, b.size, CHUNK)):
        hi = min(b.size, lo + CHUNK)
        b8, lb = c.chunks[k]
        starts = _lane_starts(lb)
        decode_chunk(b8, starts, b[lo:hi], rowmask, rowshift, dtab, zs, ends)


def _undo_only(c: Coded, b: np.ndarray, out: np.ndarray) -> None:
    zs = _TLS["zs"]
    for lo in range(0, b.size, CHUNK):
        hi = min(b.size, lo + CHUNK)
        undo(zs[: hi - lo], b[lo:hi], out[lo:hi])


def _cpu(fn) -> float:
    gc.collect()
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def measure(ft_file: Path, base: dict, repeat: int, say, stages: bool) -> None:
    from zipnn import ZipNN

    ft = load_file(str(ft_file))
    pairs = [(n, ft[n], base[n]) for n in ft if n in base and ft[n].dtype == torch.bfloat16
             and not torch.equal(ft[n].view(torch.uint8), base[n].view(torch.uint8))]
    words = [(t.view(torch.uint16).reshape(-1).numpy(), b.view(torch.uint16).reshape(-1).numpy()) for _, t, b in pairs]
    raw = sum(t.numel() * 2 for _, t, _ in pairs)
    nel = raw // 2
    changed = sum(int((t.view(torch.int16) != b.view(torch.int16)).sum()) for _, t, b in pairs)
    data = ft_file.read_bytes()
    z = ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=1)
    v3 = Lossless(zero_planes=False)  # the format this probe's runs measured (the default writes v4 now)
    say(f"### {ft_file.parent.parent.name}/{ft_file.parent.name}")
    say("")
    say(f"{len(pairs)} of {len(ft)} tensors changed (bf16); {changed / nel:.1%} of their elements changed; "
        f"{raw / MB:.1f} MB of changed tensors, file {len(data) / MB:.1f} MB; load average before {os.getloadavg()[0]:.2f}.")
    say("")
    names = ["zipnn", "v3", "ctx", "rans"]
    te = {k: [] for k in names}
    td = {k: [] for k in names}
    nb: dict[str, int] = {}
    st = {k: [] for k in ("tables", "kernel", "undo", "reused", "fresh")}
    for r in range(repeat):
        # zipnn on the file
        buf = bytearray(data)
        te["zipnn"].append(_cpu(lambda: te.__setitem__("_zc", z.compress(buf))))
        comp = te.pop("_zc")
        td["zipnn"].append(_cpu(lambda: td.__setitem__("_zo", z.decompress(comp))))
        zo = td.pop("_zo")
        if r == 0:
            assert hashlib.sha256(zo).digest() == hashlib.sha256(data).digest()
            nb["zipnn"] = len(comp)
        del zo, buf
        # v3: the codec's own encode and reconstruct
        hold: dict = {}
        te["v3"].append(_cpu(lambda: hold.__setitem__("e", [v3.encode(t, b) for _, t, b in pairs])))
        encs = [from_bytes(to_bytes(e)) for e in hold.pop("e")]
        td["v3"].append(_cpu(lambda: hold.__setitem__("o", [v3.reconstruct(e, b) for e, (_, _, b) in zip(encs, pairs)])))
        if r == 0:
            for o, (n, t, _) in zip(hold["o"], pairs):
                assert torch.equal(o.view(torch.uint8), t.view(torch.uint8)), f"v3: {n}"
            nb["v3"] = sum(len(to_bytes(e)) for e in encs)
            env = sum(len(to_bytes(e)) - e.arrays["stream"].numel() - 4 * e.arrays["counts"].numel() for e in encs)
        hold.clear()
        del encs
        # this coder
        te["ctx"].append(_cpu(lambda: hold.__setitem__("c", [encode(t, b) for t, b in words])))
        cs = hold.pop("c")
        td["ctx"].append(_cpu(lambda: hold.__setitem__("o", [decode(c, b, np.empty_like(t)) for c, (t, b) in zip(cs, words)])))
        if r == 0:
            for o, (t, _) in zip(hold["o"], words):
                assert np.array_equal(o, t), "ctx: round trip"
            nb["ctx"] = sum(c.nbytes for c in cs) + env
        hold.clear()
        if stages:
            outs = [np.empty_like(t) for t, _ in words]
            for c, (t, b), o in zip(cs, words, outs):  # warm the outputs (no page faults below)
                decode(c, b, o)
            st["fresh"].append(td["ctx"][-1])
            st["reused"].append(_cpu(lambda: [decode(c, b, o) for c, (_, b), o in zip(cs, words, outs)]))
            st["tables"].append(_cpu(lambda: [expand_tables(c) for c in cs]))

            def kern_undo():
                ku = [0.0, 0.0]
                for c, (_, b), o in zip(cs, words, outs):
                    expand_tables(c)
                    t0 = time.process_time()
                    _kernel_only(c, b)
                    t1 = time.process_time()
                    _undo_only(c, b, o)
                    ku[0] += t1 - t0
                    ku[1] += time.process_time() - t1
                return ku

            gc.collect()
            k_, u_ = kern_undo()
            st["kernel"].append(k_)
            st["undo"].append(u_)
            del outs
        del cs
        # the rANS probe (benchmarks/probe_rans.py)
        te["rans"].append(_cpu(lambda: hold.__setitem__("c", [pr.encode(t, b) for t, b in words])))
        rc = hold.pop("c")
        td["rans"].append(_cpu(lambda: hold.__setitem__("o", [pr.decode(c, b, np.empty_like(t)) for c, (t, b) in zip(rc, words)])))
        if r == 0:
            for o, (t, _) in zip(hold["o"], words):
                assert np.array_equal(o, t), "rans: round trip"
            nb["rans"] = sum(c.nbytes for c in rc) + env
        hold.clear()
        del rc
    zenc, zdec = len(data) / min(te["zipnn"]) / MB, len(data) / min(td["zipnn"]) / MB
    label = {"zipnn": "zipnn 0.5.4, the file alone", "v3": "v3 (today's default: grouped planes + zstd)",
             "ctx": "this probe: per-exponent Huffman, 4 lanes, natural order", "rans": "rANS probe (probe_rans.py)"}
    say(f"Load average after: {os.getloadavg()[0]:.2f}. Best of {repeat} rounds; per-round ratio = the candidate's MB/s "
        f"over zipnn's in the same round.")
    say("")
    say("| coder | MB | x zipnn | x v3 | encode MB/s/core | decode MB/s/core | x zipnn enc / dec (best of) | "
        "per-round median x zipnn enc / dec | decode ns/element (best) |")
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in names:
        size = len(data) if k == "zipnn" else raw
        enc, dec = size / min(te[k]) / MB, size / min(td[k]) / MB
        re_ = statistics.median((size / a) / (len(data) / b_) for a, b_ in zip(te[k], te["zipnn"]))
        rd_ = statistics.median((size / a) / (len(data) / b_) for a, b_ in zip(td[k], td["zipnn"]))
        ns = min(td[k]) / (size / 2) * 1e9
        say(f"| {label[k]} | {nb[k] / MB:.2f} | {nb[k] / nb['zipnn']:.3f} | {nb[k] / nb['v3']:.3f} | {enc:,.0f} | {dec:,.0f} | "
            f"{enc / zenc:.2f} / {dec / zdec:.2f} | {re_:.2f} / {rd_:.2f} | {ns:.2f} |")
    say("")
    if stages:
        say("This probe's decode by stage (ns an element, best of the rounds; kernel and undo summed over tensors):")
        say("")
        say("| stage | ns / element |")
        say("|---|---:|")
        for k, lab in (("tables", "table expansion (per tensor, rows of the exponents present)"),
                       ("kernel", "lane kernel (z into scratch)"), ("undo", "undo pass (vectorized)"),
                       ("reused", "whole decode into warm outputs"), ("fresh", "whole decode into fresh outputs (the row above)")):
            say(f"| {lab} | {min(st[k]) / nel * 1e9:.2f} |")
        say(f"| page faults of fresh outputs (fresh - warm) | {(min(st['fresh']) - min(st['reused'])) / nel * 1e9:.2f} |")
        say(f"| zipnn's whole decode (for scale) | {min(td['zipnn']) / (len(data) / 2) * 1e9:.2f} |")
        say("")


@njit(cache=True, nogil=True)
def encode_lanes(z, base, shift, cmask, symtab, etab, lanes, words, cap, lane_bits):
    """:func:`encode_chunk` for any number of lanes (element i in lane i % lanes), one lane after
    another (for --c-kernel's AVX2 kernels: 8 and 32 lanes)."""
    n = z.size
    sh, cm = np.uint64(shift), np.uint64(cmask)
    for j in range(lanes):
        acc, cnt, p = _U0, _U0, j * cap
        for i in range(j, n, lanes):
            acc, cnt, p = _put(z[i], base[i], sh, cm, symtab, etab, words, acc, cnt, p)
        lane_bits[j] = (p - j * cap) * 32 + np.int64(cnt)
        if cnt:
            words[p] = np.uint32(acc & np.uint64(0xFFFFFFFF))


def lanes_chunks(c: Coded, t: np.ndarray, b: np.ndarray, lanes: int) -> list:
    """Tensor ``t`` (coded as ``c``: its tables) in ``lanes`` lanes a chunk: (stream bytes + 8 zero
    bytes, each lane's first bit as int32, bit counts) per chunk."""
    lens, _ = c.lens
    codes = np.zeros(lens.shape, np.uint32)
    for k in range(lens.shape[0]):
        canonical_codes(lens[k], MAXLEN, codes[k])
    etab = np.zeros(256 * NSYM, np.uint64)
    enc_table(c.cmap, codes, lens, NRAW, ZBASE, c.ctxs, etab)
    z = np.empty(t.size, np.uint16)
    diff_z(t, b, z)
    out = []
    for lo in range(0, t.size, CHUNK):
        hi = min(t.size, lo + CHUNK)
        cap = ((hi - lo) // lanes + 1) * MAXBITS // 32 + 2
        words = np.empty(lanes * cap, np.uint32)
        lb = np.zeros(lanes, np.int64)
        encode_lanes(z[lo:hi], b[lo:hi], c.shift, c.cmask, SYMTAB, etab, lanes, words, cap, lb)
        nbs = (lb + 7) // 8
        buf = np.concatenate([words[j * cap:].view(np.uint8)[: nbs[j]] for j in range(lanes)] + [np.zeros(8, np.uint8)])
        st = np.zeros(lanes, np.int32)
        st[1:] = np.cumsum(nbs)[:-1] * 8
        out.append((buf, st, lb))
    return out


#: --c-kernel: the same bf16 lane kernel in C (and the same with two chunks' lanes in one loop:
#: eight independent chains), compiled at run time with the system's cc and called through ctypes:
#: a measurement of whether numba's code or the design sets the speed, not a dependency.
C_KERNEL = r"""#include <stdint.h>
#include <immintrin.h>
#include <string.h>
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
#define STEP(v, e, z, t) do { uint64_t tt_ = (e) >> 24, ln_ = ((e) >> 16) & 63; \
    z = (uint16_t)((e) + (((v) & ((1ULL << tt_) - 1)) >> ln_)); t = tt_; } while (0)
#define ROW(y) (((uint64_t)(y) & 0x7F80) << 4)
#define LANE2(bp, ya, yb, za, zb) do { uint64_t v = ld64(b8 + ((bp) >> 3)) >> ((bp) & 7), ta, tb; \
    uint64_t ea = dtab[ROW(ya) | (v & 2047)]; STEP(v, ea, za, ta); v >>= ta; \
    uint64_t eb = dtab[ROW(yb) | (v & 2047)]; STEP(v, eb, zb, tb); bp += ta + tb; } while (0)
/* returns elements done; lane ends in ends */
int64_t decode_bf16(const uint8_t *b8, int64_t nb, const int64_t *starts, const uint16_t *base, int64_t n,
                    const uint32_t *dtab, uint16_t *zs, uint64_t *ends) {
    uint64_t b0 = starts[0], b1 = starts[1], b2 = starts[2], b3 = starts[3];
    int64_t nm = n - n % 8, i = 0;
    uint64_t limit = (uint64_t)nb * 8, reach = 64 * 2 * 24 + 128;
    while (i + 8 * 64 <= nm) {
        uint64_t mx = b0 > b1 ? b0 : b1; mx = mx > b2 ? mx : b2; mx = mx > b3 ? mx : b3;
        if (mx + reach > limit) break;
        for (int s = 0; s < 64; s++, i += 8) {
            const uint16_t *y = base + i; uint16_t *o = zs + i;
            LANE2(b0, y[0], y[4], o[0], o[4]);
            LANE2(b1, y[1], y[5], o[1], o[5]);
            LANE2(b2, y[2], y[6], o[2], o[6]);
            LANE2(b3, y[3], y[7], o[3], o[7]);
        }
    }
    ends[0] = b0; ends[1] = b1; ends[2] = b2; ends[3] = b3;
    return i;
}
void undo16(const uint16_t *zs, const uint16_t *base, int64_t n, uint16_t *out) {
    for (int64_t k = 0; k < n; k++) {
        int32_t z = zs[k], y = base[k];
        y ^= (-(y >> 15)) & 0x7FFF;
        int32_t o = (y + ((z >> 1) ^ -(z & 1))) & 0xFFFF;
        out[k] = (uint16_t)(o ^ ((-(o >> 15)) & 0x7FFF));
    }
}
/* two chunks of equal size decoded in one loop: eight independent lane chains */
int64_t decode_bf16_x2(const uint8_t *b8, int64_t nb, const int64_t *starts, const uint16_t *base,
                       const uint8_t *c8, int64_t nc, const int64_t *startsc, const uint16_t *basec, int64_t n,
                       const uint32_t *dtab, uint16_t *zs, uint16_t *zsc, uint64_t *ends) {
    uint64_t b0 = starts[0], b1 = starts[1], b2 = starts[2], b3 = starts[3];
    uint64_t c0 = startsc[0], c1 = startsc[1], c2 = startsc[2], c3 = startsc[3];
    int64_t nm = n - n % 8, i = 0;
    uint64_t limit = (uint64_t)nb * 8, limitc = (uint64_t)nc * 8, reach = 64 * 2 * 24 + 128;
    while (i + 8 * 64 <= nm) {
        uint64_t mx = b0 > b1 ? b0 : b1; mx = mx > b2 ? mx : b2; mx = mx > b3 ? mx : b3;
        uint64_t mc = c0 > c1 ? c0 : c1; mc = mc > c2 ? mc : c2; mc = mc > c3 ? mc : c3;
        if (mx + reach > limit || mc + reach > limitc) break;
        for (int s = 0; s < 64; s++, i += 8) {
            const uint16_t *y = base + i; uint16_t *o = zs + i;
            const uint16_t *yc = basec + i; uint16_t *oc = zsc + i;
            LANE2(b0, y[0], y[4], o[0], o[4]);
            { const uint8_t *b8 = c8; LANE2(c0, yc[0], yc[4], oc[0], oc[4]); }
            LANE2(b1, y[1], y[5], o[1], o[5]);
            { const uint8_t *b8 = c8; LANE2(c1, yc[1], yc[5], oc[1], oc[5]); }
            LANE2(b2, y[2], y[6], o[2], o[6]);
            { const uint8_t *b8 = c8; LANE2(c2, yc[2], yc[6], oc[2], oc[6]); }
            LANE2(b3, y[3], y[7], o[3], o[7]);
            { const uint8_t *b8 = c8; LANE2(c3, yc[3], yc[7], oc[3], oc[7]); }
        }
    }
    ends[0] = b0; ends[1] = b1; ends[2] = b2; ends[3] = b3; ends[4] = c0; ends[5] = c1; ends[6] = c2; ends[7] = c3;
    return i;
}
/* 32 lanes (4 groups of 8): element i in lane i % 32; lane starts in bits (int32); fused undo.
   Decodes n elements (n % 32 == 0) of a chunk whose buffer has >= 8 bytes of padding. */
void decode32(const uint8_t *buf, const int32_t *starts, const uint16_t *base, int64_t n,
              const uint32_t *dtab, uint16_t *out, int32_t *ends) {
    __m256i bp0 = _mm256_loadu_si256((const __m256i *)(starts + 0));
    __m256i bp1 = _mm256_loadu_si256((const __m256i *)(starts + 8));
    __m256i bp2 = _mm256_loadu_si256((const __m256i *)(starts + 16));
    __m256i bp3 = _mm256_loadu_si256((const __m256i *)(starts + 24));
    const __m256i m7 = _mm256_set1_epi32(7), pm = _mm256_set1_epi32(2047), rm = _mm256_set1_epi32(0x7F80);
    const __m256i m63 = _mm256_set1_epi32(63), one = _mm256_set1_epi32(1), mffff = _mm256_set1_epi32(0xFFFF);
    const __m256i m7fff = _mm256_set1_epi32(0x7FFF), zero = _mm256_setzero_si256();
#define GROUP(bp, off) do { \
    __m256i y = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(base + i + (off)))); \
    __m256i w = _mm256_i32gather_epi32((const int *)buf, _mm256_srli_epi32(bp, 3), 1); \
    __m256i v = _mm256_srlv_epi32(w, _mm256_and_si256(bp, m7)); \
    __m256i idx = _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(y, rm), 4), _mm256_and_si256(v, pm)); \
    __m256i e = _mm256_i32gather_epi32((const int *)dtab, idx, 4); \
    __m256i tot = _mm256_srli_epi32(e, 24); \
    __m256i ln = _mm256_and_si256(_mm256_srli_epi32(e, 16), m63); \
    __m256i mask = _mm256_sub_epi32(_mm256_sllv_epi32(one, tot), one); \
    __m256i z = _mm256_and_si256(_mm256_add_epi32(e, _mm256_srlv_epi32(_mm256_and_si256(v, mask), ln)), mffff); \
    bp = _mm256_add_epi32(bp, tot); \
    /* undo: y ordered, + unzigzag(z), ordered back */ \
    __m256i yo = _mm256_xor_si256(y, _mm256_and_si256(_mm256_sub_epi32(zero, _mm256_srli_epi32(y, 15)), m7fff)); \
    __m256i d = _mm256_xor_si256(_mm256_srli_epi32(z, 1), _mm256_sub_epi32(zero, _mm256_and_si256(z, one))); \
    __m256i o = _mm256_and_si256(_mm256_add_epi32(yo, d), mffff); \
    o = _mm256_xor_si256(o, _mm256_and_si256(_mm256_sub_epi32(zero, _mm256_srli_epi32(o, 15)), m7fff)); \
    __m128i p = _mm_packus_epi32(_mm256_castsi256_si128(o), _mm256_extracti128_si256(o, 1)); \
    _mm_storeu_si128((__m128i *)(out + i + (off)), p); \
} while (0)
    for (int64_t i = 0; i < n; i += 32) {
        GROUP(bp0, 0); GROUP(bp1, 8); GROUP(bp2, 16); GROUP(bp3, 24);
    }
    _mm256_storeu_si256((__m256i *)(ends + 0), bp0); _mm256_storeu_si256((__m256i *)(ends + 8), bp1);
    _mm256_storeu_si256((__m256i *)(ends + 16), bp2); _mm256_storeu_si256((__m256i *)(ends + 24), bp3);
}
/* the same with 8 lanes only (one group): latency-bound reference */
void decode8(const uint8_t *buf, const int32_t *starts, const uint16_t *base, int64_t n,
             const uint32_t *dtab, uint16_t *out, int32_t *ends) {
    __m256i bp0 = _mm256_loadu_si256((const __m256i *)(starts + 0));
    const __m256i m7 = _mm256_set1_epi32(7), pm = _mm256_set1_epi32(2047), rm = _mm256_set1_epi32(0x7F80);
    const __m256i m63 = _mm256_set1_epi32(63), one = _mm256_set1_epi32(1), mffff = _mm256_set1_epi32(0xFFFF);
    const __m256i m7fff = _mm256_set1_epi32(0x7FFF), zero = _mm256_setzero_si256();
    for (int64_t i = 0; i < n; i += 8) { GROUP(bp0, 0); }
    _mm256_storeu_si256((__m256i *)(ends + 0), bp0);
}
"""


def c_kernel(ft_file: Path, base: dict, repeat: int, say) -> None:
    """The lane kernel alone (z into scratch, tables expanded outside the timing) on every pair of
    full chunks of the largest changed tensors: numba, C with 4 chains, C with 8; ns an element."""
    import ctypes
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        src, so = Path(d) / "k.c", Path(d) / "k.so"
        src.write_text(C_KERNEL)
        subprocess.run(["cc", "-O2", "-march=native", "-mavx2", "-mbmi2", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
        lib = ctypes.CDLL(str(so))
    P, I = ctypes.c_void_p, ctypes.c_int64
    lib.decode_bf16.argtypes = [P, I, P, P, I, P, P, P]
    lib.decode_bf16.restype = I
    lib.decode_bf16_x2.argtypes = [P, I, P, P, P, I, P, P, I, P, P, P, P]
    lib.decode_bf16_x2.restype = I
    lib.decode32.argtypes = lib.decode8.argtypes = [P, P, P, I, P, P, P]
    ft = load_file(str(ft_file))
    names = sorted((n for n in ft if n in base and ft[n].dtype == torch.bfloat16), key=lambda n: -ft[n].numel())[:12]
    work = []  # (coded, chunk a, chunk b, target words of b): pairs of full chunks of one tensor
    simd = []  # (coded, 4-lane chunk, 32-lane chunk, 8-lane chunk, base chunk, target chunk): full chunks
    for n in names:
        t, b = ft[n].view(torch.uint16).reshape(-1).numpy(), base[n].view(torch.uint16).reshape(-1).numpy()
        c = encode(t, b)
        l32, l8 = lanes_chunks(c, t, b, 32), lanes_chunks(c, t, b, 8)
        for k, lo in enumerate(range(0, b.size - CHUNK + 1, CHUNK)):
            simd.append((c, c.chunks[k], l32[k], l8[k], b[lo: lo + CHUNK], t[lo: lo + CHUNK]))
        full = [k for k, lo in enumerate(range(0, b.size, CHUNK)) if lo + CHUNK <= b.size]
        for k in full[: len(full) // 2 * 2: 2]:
            chunk = []
            for kk in (k, k + 1):
                b8, lb = c.chunks[kk]
                st = np.zeros(4, np.int64)
                st[1:] = np.cumsum((lb + 7) // 8)[:3] * 8
                chunk.append((b8, st, b[kk * CHUNK: (kk + 1) * CHUNK], t[kk * CHUNK: (kk + 1) * CHUNK]))
            work.append((c, chunk[0], chunk[1]))
    nel = 2 * CHUNK * len(work)
    zs, zs2 = np.empty(CHUNK, np.uint16), np.empty(CHUNK, np.uint16)
    ends, e8 = np.zeros(4, np.uint64), np.zeros(8, np.uint64)

    def run(kind: str) -> float:
        tt = 0.0
        for c, a, b in work:
            d = expand_tables(c)
            t0 = time.process_time()
            if kind == "numba":
                for b8, st, bb, _ in (a, b):
                    decode_chunk(b8, st, bb, 0xFF << 7, MAXLEN - 7, d, zs, ends)
            elif kind == "c4":
                for b8, st, bb, _ in (a, b):
                    lib.decode_bf16(b8.ctypes.data, b8.size, st.ctypes.data, bb.ctypes.data, bb.size, d.ctypes.data,
                                    zs.ctypes.data, ends.ctypes.data)
            else:
                lib.decode_bf16_x2(a[0].ctypes.data, a[0].size, a[1].ctypes.data, a[2].ctypes.data, b[0].ctypes.data,
                                   b[0].size, b[1].ctypes.data, b[2].ctypes.data, CHUNK, d.ctypes.data, zs.ctypes.data,
                                   zs2.ctypes.data, e8.ctypes.data)
            tt += time.process_time() - t0
        return tt

    c, a, b = work[0]  # the C kernels' z, checked against the target over what they decode
    d = expand_tables(c)
    i = lib.decode_bf16_x2(a[0].ctypes.data, a[0].size, a[1].ctypes.data, a[2].ctypes.data, b[0].ctypes.data, b[0].size,
                           b[1].ctypes.data, b[2].ctypes.data, CHUNK, d.ctypes.data, zs.ctypes.data, zs2.ctypes.data,
                           e8.ctypes.data)
    o = np.empty(i, np.uint16)
    undo(zs2[:i], b[2][:i], o)
    assert np.array_equal(o, b[3][:i]), "C kernel: z differ"
    out, e32 = np.empty(CHUNK, np.uint16), np.zeros(32, np.int32)
    nsimd = CHUNK * len(simd)

    def run_fused(kind: str) -> float:
        """Kernel + undo over the full chunks: numba (4 lanes, then the undo pass) or AVX2 (gathers,
        the undo in the same vectors)."""
        tt = 0.0
        for c, (b8, lb), x32, x8, bb, _ in simd:
            d = expand_tables(c)
            t0 = time.process_time()
            if kind == "numba":
                st = np.zeros(4, np.int64)
                st[1:] = np.cumsum((lb + 7) // 8)[:3] * 8
                decode_chunk(b8, st, bb, 0xFF << 7, MAXLEN - 7, d, zs, ends)
                undo(zs, bb, out)
            else:
                x = x32 if kind == "avx2-32" else x8
                (lib.decode32 if kind == "avx2-32" else lib.decode8)(x[0].ctypes.data, x[1].ctypes.data, bb.ctypes.data,
                                                                      bb.size, d.ctypes.data, out.ctypes.data, e32.ctypes.data)
            tt += time.process_time() - t0
        return tt

    for c, _, x32, x8, bb, tt_ in simd[:4]:  # the AVX2 kernels' output checked
        d = expand_tables(c)
        for f, x in ((lib.decode32, x32), (lib.decode8, x8)):
            f(x[0].ctypes.data, x[1].ctypes.data, bb.ctypes.data, bb.size, d.ctypes.data, out.ctypes.data, e32.ctypes.data)
            assert np.array_equal(out, tt_) and np.array_equal(e32[: x[1].size] - x[1], x[2]), "AVX2 kernel"
    fused = {k: [] for k in ("numba", "avx2-32", "avx2-8")}
    for k in fused:
        run_fused(k)
    for _ in range(repeat):
        for k in fused:
            fused[k].append(run_fused(k))
    res = {k: [] for k in ("numba", "c4", "c8")}
    for k in res:
        run(k)
    for _ in range(repeat):
        for k in res:
            res[k].append(run(k))
    say(f"Lane kernel alone ({len(work)} pairs of full chunks of {ft_file.parent.name}'s largest tensors; load average "
        f"{os.getloadavg()[0]:.2f}; ns an element, best / median of {repeat}, alternating):")
    say("")
    say("| kernel | ns / element, best | median |")
    say("|---|---:|---:|")
    for k, lab in (("numba", "numba (the probe's)"), ("c4", "C, gcc -O2 -march=native, 4 lanes"),
                   ("c8", "C, two chunks in one loop (8 independent chains)")):
        say(f"| {lab} | {min(res[k]) / nel * 1e9:.2f} | {statistics.median(res[k]) / nel * 1e9:.2f} |")
    say("")
    say(f"Kernel and undo together ({len(simd)} full chunks; AVX2: 8 lanes a vector, z gathered 32 bits at the "
        f"lane's byte, the entry gathered, the undo in the same vectors; ns an element, best / median of {repeat}):")
    say("")
    say("| decode | ns / element, best | median |")
    say("|---|---:|---:|")
    for k, lab in (("numba", "numba: 4 lanes, then the undo pass"), ("avx2-32", "C AVX2 gathers, 32 lanes (4 vectors a step)"),
                   ("avx2-8", "C AVX2 gathers, 8 lanes (one vector a step)")):
        say(f"| {lab} | {min(fused[k]) / nsimd * 1e9:.2f} | {statistics.median(fused[k]) / nsimd * 1e9:.2f} |")
    say("")


def pair_bytes(prev: Path, nxt: Path, say) -> None:
    """Bytes only: checkpoint ``nxt`` against ``prev`` (a series' step, as the store chains it), v3
    against this coder (its tables and lane counts included, the per-tensor envelope not)."""
    a, b = load_file(str(prev)), load_file(str(nxt))
    pairs = [(b[n], a[n]) for n in b if n in a and b[n].dtype == torch.bfloat16
             and not torch.equal(b[n].view(torch.int16), a[n].view(torch.int16))]
    nel = sum(t.numel() for t, _ in pairs)
    ch = sum(int((t.view(torch.int16) != s.view(torch.int16)).sum()) for t, s in pairs)
    v3 = sum(len(to_bytes(Lossless(zero_planes=False).encode(t, s))) for t, s in pairs)
    cx = sum(encode(t.view(torch.uint16).reshape(-1).numpy(), s.view(torch.uint16).reshape(-1).numpy()).nbytes for t, s in pairs)
    say(f"{nxt.parent.parent.name}: {nxt.parent.name} against {prev.parent.name}: {len(pairs)} tensors changed, "
        f"{ch / nel:.2%} of their elements; v3 {v3 / MB:.3f} MB (payloads), this coder {cx / MB:.3f} MB "
        f"(without the envelope) = {cx / v3:.2f}x v3.")
    say("")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", type=Path, nargs="*", help="fine-tune model.safetensors files (bf16)")
    ap.add_argument("--base", type=Path, help="base HF dir (default: the zoo's SmolLM2 bf16)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stages", action="store_true")
    ap.add_argument("--c-kernel", action="store_true", help="the lane kernel in C beside numba's (needs cc)")
    ap.add_argument("--pair", type=Path, nargs=2, action="append", default=[], metavar=("PREV", "NEXT"),
                    help="bytes only: checkpoint NEXT against PREV, v3 and this coder")
    ap.add_argument("--machine", default="dev VM (AMD EPYC, 2 cores, shared)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.base is None:
        from deltastore.zoo.smollm2 import smollm2_dir

        args.base = smollm2_dir()
    base = load_file(str(args.base / "model.safetensors"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    lines = [f"Command: `python benchmarks/probe_ctxcode.py {shlex.join(argv if argv is not None else sys.argv[1:])}`  ",
             f"Commit {commit}; machine: {args.machine}; load average at start {os.getloadavg()[0]:.2f}; "
             f"Python {platform.python_version()}, numpy {np.__version__}  ", ""]
    print("\n".join(lines), flush=True)

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    # compile (or load the cache) before any timing
    w = np.arange(4096, dtype=np.uint16)
    decode(encode(w, w[::-1].copy()), w[::-1].copy(), np.empty_like(w))
    pr.decode(pr.encode(w, w[::-1].copy()), w[::-1].copy(), np.empty_like(w))
    for f in args.files:
        measure(f, base, args.repeat, say, args.stages)
    if args.c_kernel and args.files:
        c_kernel(args.files[0], base, max(args.repeat, 5), say)
    for prev, nxt in args.pair:
        pair_bytes(prev, nxt, say)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
