"""Compiled (numba) kernels of the palette plane mode (codec/palette.py): the same bytes as its
numpy reference, which also runs where numba does not import.

Loaded only by ``palette.kernels()`` (never at import of the codec), and only once a chunk shows
a grid, so a process that stores grid-less weights never pays numba's start-up. Like
``codec._numba``: ``nogil`` (the plane pool's threads run chunks in parallel) and ``cache=True``.
The encoder reads uint16 words (a view of the chunk's bytes: an unaligned window works); the
decoder writes uint16 words (the caller passes an aligned view, or scratch it copies from).

The decode trusts nothing it reads: :func:`join` returns a negative code (``palette.ERRORS``) for a
palette size over 32 or over a short block's length, a read past the ``pal`` or ``idx`` stream, a
zero gap, a palette below zero, an escape for a value under 255, an index past its palette, or
streams with bytes left over; the caller turns it into a ``CorruptPayloadError``.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._numba import x512_available

BLOCK = 32
#: indices cast to unsigned: numba then leaves out its negative-index wrap-around on each access
_U = np.uint64


@njit(nogil=True, cache=True, inline="always")
def _put(pd, q, v):  # noqa: ANN001
    """``v`` (0..65535) at ``pd[q]``: one byte under 255, else 255 and two bytes; the next position."""
    if v < 255:
        pd[_U(q)] = v
        return q + 1
    pd[_U(q)] = 255
    pd[_U(q + 1)] = v & 0xFF
    pd[_U(q + 2)] = v >> 8
    return q + 3


@njit(nogil=True, cache=True, inline="always")
def _cx(a, b):  # noqa: ANN001
    return min(a, b), max(a, b)


@njit(nogil=True, cache=True)
def split(words, width, ks, pd, idx):  # noqa: ANN001
    """Palette streams of the 16-bit words ``words`` (uint16, native order = little-endian; an
    unaligned view works): fills ``ks`` (a byte a block), ``pd`` (at most 3 * 32 bytes a block) and
    ``idx`` (zeroed by the caller, at most 20 bytes a block); returns (bytes of ``pd``, bytes of
    ``idx``) written. Distinct words through a 65536-entry table, every word of a block written
    there before any is read back (a read after each write had every element wait on the store
    before it); a palette of up to 16 words (every block of a 4-bit grid) is sorted by Batcher's
    63-comparator network on 16 registers (branch-free: the pairwise count it replaces was a third
    of the encode), a larger one by counting smaller words."""
    n = words.size
    rank = np.zeros(1 << 16, np.uint8)  # per word of the block: its last position + 1, then its rank + 1
    pal = np.zeros(BLOCK, np.int64)
    uniq = np.zeros(BLOCK, np.int64)
    key = np.zeros(BLOCK, np.int64)
    q = p = top = 0  # positions in pd and idx; the previous block's largest (rotated) word
    for blk in range((n + BLOCK - 1) // BLOCK):
        s = blk * BLOCK
        m = min(BLOCK, n - s)
        for j in range(m):  # each word's last position in the block: stores only, so no load waits on a store
            x = np.int64(words[_U(s + j)])
            v = ((x << 1) | (x >> 15)) & 0xFFFF
            key[_U(j)] = v
            rank[_U(v)] = j + 1
        k = 0
        for j in range(m):  # the distinct words: each at its last position
            v = key[_U(j)]
            uniq[_U(k)] = v
            k += rank[_U(v)] == j + 1
        if k <= 16:
            for t in range(k, 16):
                uniq[_U(t)] = 1 << 16  # above every word: sorted to the end, never read
            a0, a1, a2, a3, a4, a5, a6, a7 = uniq[0], uniq[1], uniq[2], uniq[3], uniq[4], uniq[5], uniq[6], uniq[7]
            a8, a9, a10, a11, a12, a13, a14, a15 = uniq[8], uniq[9], uniq[10], uniq[11], uniq[12], uniq[13], uniq[14], uniq[15]
            a0, a1 = _cx(a0, a1)
            a2, a3 = _cx(a2, a3)
            a0, a2 = _cx(a0, a2)
            a1, a3 = _cx(a1, a3)
            a1, a2 = _cx(a1, a2)
            a4, a5 = _cx(a4, a5)
            a6, a7 = _cx(a6, a7)
            a4, a6 = _cx(a4, a6)
            a5, a7 = _cx(a5, a7)
            a5, a6 = _cx(a5, a6)
            a0, a4 = _cx(a0, a4)
            a2, a6 = _cx(a2, a6)
            a2, a4 = _cx(a2, a4)
            a1, a5 = _cx(a1, a5)
            a3, a7 = _cx(a3, a7)
            a3, a5 = _cx(a3, a5)
            a1, a2 = _cx(a1, a2)
            a3, a4 = _cx(a3, a4)
            a5, a6 = _cx(a5, a6)
            a8, a9 = _cx(a8, a9)
            a10, a11 = _cx(a10, a11)
            a8, a10 = _cx(a8, a10)
            a9, a11 = _cx(a9, a11)
            a9, a10 = _cx(a9, a10)
            a12, a13 = _cx(a12, a13)
            a14, a15 = _cx(a14, a15)
            a12, a14 = _cx(a12, a14)
            a13, a15 = _cx(a13, a15)
            a13, a14 = _cx(a13, a14)
            a8, a12 = _cx(a8, a12)
            a10, a14 = _cx(a10, a14)
            a10, a12 = _cx(a10, a12)
            a9, a13 = _cx(a9, a13)
            a11, a15 = _cx(a11, a15)
            a11, a13 = _cx(a11, a13)
            a9, a10 = _cx(a9, a10)
            a11, a12 = _cx(a11, a12)
            a13, a14 = _cx(a13, a14)
            a0, a8 = _cx(a0, a8)
            a4, a12 = _cx(a4, a12)
            a4, a8 = _cx(a4, a8)
            a2, a10 = _cx(a2, a10)
            a6, a14 = _cx(a6, a14)
            a6, a10 = _cx(a6, a10)
            a2, a4 = _cx(a2, a4)
            a6, a8 = _cx(a6, a8)
            a10, a12 = _cx(a10, a12)
            a1, a9 = _cx(a1, a9)
            a5, a13 = _cx(a5, a13)
            a5, a9 = _cx(a5, a9)
            a3, a11 = _cx(a3, a11)
            a7, a15 = _cx(a7, a15)
            a7, a11 = _cx(a7, a11)
            a3, a5 = _cx(a3, a5)
            a7, a9 = _cx(a7, a9)
            a11, a13 = _cx(a11, a13)
            a1, a2 = _cx(a1, a2)
            a3, a4 = _cx(a3, a4)
            a5, a6 = _cx(a5, a6)
            a7, a8 = _cx(a7, a8)
            a9, a10 = _cx(a9, a10)
            a11, a12 = _cx(a11, a12)
            a13, a14 = _cx(a13, a14)
            pal[0], pal[1], pal[2], pal[3], pal[4], pal[5], pal[6], pal[7] = a0, a1, a2, a3, a4, a5, a6, a7
            pal[8], pal[9], pal[10], pal[11], pal[12], pal[13], pal[14], pal[15] = a8, a9, a10, a11, a12, a13, a14, a15
        else:
            for t in range(k):
                v = uniq[_U(t)]
                r = 0
                for u in range(k):
                    r += uniq[_U(u)] < v
                pal[_U(r)] = v
        ks[_U(blk)] = k - 1
        d = ((pal[_U(k - 1)] - top + 0x8000) & 0xFFFF) - 0x8000
        q = _put(pd, q, (d << 1) ^ (d >> 63))
        top = pal[_U(k - 1)]
        for t in range(k - 2, -1, -1):
            q = _put(pd, q, pal[_U(t + 1)] - pal[_U(t)])
        for t in range(k):
            rank[_U(pal[_U(t)])] = t + 1
        b = width[_U(k - 1)]
        if b == 4 and m == BLOCK:
            for t in range(BLOCK // 2):
                idx[_U(p + t)] = (rank[_U(key[_U(2 * t)])] - 1) | ((rank[_U(key[_U(2 * t + 1)])] - 1) << 4)
        elif b:
            for j in range(m):
                a = np.int64(rank[_U(key[_U(j)])]) - 1
                bp = j * b
                sh = bp & 7
                idx[_U(p + (bp >> 3))] |= np.uint8((a << sh) & 0xFF)
                if sh + b > 8:
                    idx[_U(p + (bp >> 3) + 1)] |= np.uint8(a >> (8 - sh))
        p += 4 * b
    return q, p


@njit(nogil=True, cache=True, inline="always")
def _get(pd, q, rest):  # noqa: ANN001
    """The value at ``pd[q]`` (a byte, or 255 and two bytes), the next position, and 0 or an error
    code: -3 where the escape or the ``rest`` values of the block still to come (a byte at least
    each) would run past ``pd``, -4 for an escape of a value under 255."""
    z = np.int64(pd[_U(q)])
    q += 1
    if z != 255:
        return z, q, 0
    if q + 2 > pd.size:
        return z, q, -3
    z = np.int64(pd[_U(q)]) | (np.int64(pd[_U(q + 1)]) << 8)
    q += 2
    if z < 255:
        return z, q, -4
    return z, q, -3 if q + rest > pd.size else 0


# -- the 4-bit blocks' gather ---------------------------------------------------------------------------
# A 16-level grid's block (SmolLM2's base: 210 of its 285 chunks are palettes, nearly every block 4-bit)
# is 16 bytes of indices and a palette of at most 16 words. Scalar, that is 32 table loads and stores a
# block (~0.75 ns an element of the join's ~1.5 on the dev VM: run 32 of lossless_amd-epyc-2c.md); with
# AVX-512 BW one vpermw looks up all 32 lanes in the palette held in a register (its 32 words: the
# palette array's, truncated), so the block is a load, a nibble split, the permute and one store.
# Kept in this file with the kernel that inlines it (numba invalidates a cached kernel when its own
# file changes). The permute is an x86 intrinsic: :func:`_gather4_x512` is compiled only where
# ``codec._numba.x512_available()`` (the host has AVX-512 BW and VBMI2; ``DELTASTORE_SIMD=0`` off).

_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_V16I8, _V16I16, _V32I16, _V32I32 = (ir.VectorType(_I8, 16), ir.VectorType(_I16, 16), ir.VectorType(_I16, 32),
                                     ir.VectorType(_I32, 32))


def _splat(builder, v, n):  # noqa: ANN001, ANN202
    vty = ir.VectorType(v.type, n)
    u = builder.insert_element(ir.Constant(vty, ir.Undefined), v, ir.Constant(_I32, 0))
    return builder.shuffle_vector(u, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(_I32, n), [0] * n))


@intrinsic
def _vperm_block(typingctx, out, s, idx, p, pal, k):  # noqa: ANN001, ANN202, ARG001
    """out[s : s + 32] = pal[the 32 nibbles of idx[p : p + 16], low nibble first] by one vpermw;
    returns the lanes whose index is k or more (uint32, bit j = lane j)."""
    sig = types.uint32(out, s, idx, p, pal, k)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202, ARG001
        def data(j):  # noqa: ANN001, ANN202
            return context.make_array(signature.args[j])(context, builder, args[j]).data

        def i64(j):  # noqa: ANN001, ANN202
            return context.cast(builder, args[j], signature.args[j], types.int64)

        raw = builder.load(builder.bitcast(builder.gep(data(2), [i64(3)]), _V16I8.as_pointer()), align=1)
        w = builder.zext(raw, _V16I16)
        lo = builder.and_(w, _splat(builder, ir.Constant(_I16, 15), 16))
        hi = builder.lshr(w, _splat(builder, ir.Constant(_I16, 4), 16))
        lanes = builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_I32, 32), [j // 2 + 16 * (j % 2) for j in range(32)]))
        tab = builder.trunc(builder.load(builder.bitcast(data(4), _V32I32.as_pointer()), align=4), _V32I16)
        perm = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V32I16, [_V32I16, _V32I16]),
                                              "llvm.x86.avx512.permvar.hi.512")
        builder.store(builder.call(perm, [tab, lanes]), builder.bitcast(builder.gep(data(0), [i64(1)]), _V32I16.as_pointer()), align=2)
        kk = builder.trunc(i64(5), _I16)
        return builder.bitcast(builder.icmp_unsigned(">=", lanes, _splat(builder, kk, 32)), _I32)

    return sig, codegen


@njit(nogil=True, cache=True, inline="always")
def _gather4_scalar(out, s, idx, p, pal, k):  # noqa: ANN001
    """A whole block of 4-bit indices: out[s + 2t], out[s + 2t + 1] = pal[low, high nibble of idx[p + t]];
    whether an index is k or more."""
    top_index = 0
    for t in range(BLOCK // 2):
        c = np.int64(idx[_U(p + t)])
        top_index = max(top_index, c & 15, c >> 4)
        out[_U(s + 2 * t)] = pal[_U(c & 15)]
        out[_U(s + 2 * t + 1)] = pal[_U(c >> 4)]
    return top_index >= k


@njit(nogil=True, cache=True, inline="always")
def _gather4_x512(out, s, idx, p, pal, k):  # noqa: ANN001
    """:func:`_gather4_scalar` by one vpermw (:func:`_vperm_block`)."""
    return _vperm_block(out, s, idx, p, pal, k) != 0


@njit(nogil=True, cache=True, inline="always")
def _join(width, ks, pd, idx, out, gather4):  # noqa: ANN001
    """Inverse of :func:`split` into the 16-bit words ``out`` (uint16); 0, or a negative error
    code (see the module docstring) before any read past a stream. ``gather4``: how a whole block
    of 4-bit indices is written (:func:`_gather4_scalar` or :func:`_gather4_x512`). Inlined into
    :func:`_join_scalar` and :func:`_join_x512`, the cached entry points: a cached function that
    takes a function as an argument is never found in numba's cache (the argument's type holds the
    function object), so every process compiled it again, appended it to the index (146 entries,
    761 KB, in this tree's cache) and at times failed saving it ("underlying object has vanished")."""
    n = out.size
    nq = pd.size
    npi = idx.size
    pal = np.zeros(BLOCK, np.uint32)  # uint32 words: measured ~10% faster than uint16 here
    q = p = top = 0  # positions in pd and idx; the previous block's largest (rotated) word
    for blk in range((n + BLOCK - 1) // BLOCK):
        s = blk * BLOCK
        m = min(BLOCK, n - s)
        k = np.int64(ks[_U(blk)]) + 1
        if k > m:
            return -1
        b = width[_U(k - 1)]
        if p + 4 * b > npi:
            return -2
        if q + k > nq:  # k values of at least a byte each
            return -3
        z, q, code = _get(pd, q, k - 1)  # the largest: a zigzagged step from the previous block's largest
        if code:
            return code
        v = (top + ((z >> 1) ^ -(z & 1))) & 0xFFFF
        top = v
        pal[_U(k - 1)] = (v >> 1) | ((v & 1) << 15)
        for t in range(k - 2, -1, -1):  # then each gap down to the next smaller
            z, q, code = _get(pd, q, t)
            if code:
                return code
            if z == 0 or z > v:
                return -5
            v -= z
            pal[_U(t)] = (v >> 1) | ((v & 1) << 15)
        if b == 4 and m == BLOCK:  # a 16-level grid's common case: two indices a byte
            if gather4(out, s, idx, p, pal, k):  # (checked once the block is written: pal has 32 entries)
                return -6
        else:
            mask = (1 << b) - 1
            for j in range(m):
                bp = j * b
                sh = bp & 7
                x = np.int64(idx[_U(p + (bp >> 3))]) >> sh
                if sh + b > 8:
                    x |= np.int64(idx[_U(p + (bp >> 3) + 1)]) << (8 - sh)
                x &= mask
                if x >= k:
                    return -6
                out[_U(s + j)] = pal[_U(x)]
        p += 4 * b
    if q != nq or p != npi:
        return -7
    return 0


@njit(nogil=True, cache=True)
def _join_scalar(width, ks, pd, idx, out):  # noqa: ANN001
    """:func:`_join` with the scalar 4-bit gather."""
    return _join(width, ks, pd, idx, out, _gather4_scalar)


@njit(nogil=True, cache=True)
def _join_x512(width, ks, pd, idx, out):  # noqa: ANN001
    """:func:`_join` with the 4-bit blocks by vpermw (compiled only where the host has AVX-512)."""
    return _join(width, ks, pd, idx, out, _gather4_x512)


def join(width: np.ndarray, ks: np.ndarray, pd: np.ndarray, idx: np.ndarray, out: np.ndarray) -> int:
    """Inverse of :func:`split` into the 16-bit words ``out`` (uint16); 0, or a negative error code
    (see the module docstring) before any read past a stream. The 4-bit blocks by AVX-512 where
    ``codec._numba.x512_available()``; the same words either way (tests/codec/test_palette.py)."""
    return (_join_x512 if x512_available() else _join_scalar)(width, ks, pd, idx, out)
