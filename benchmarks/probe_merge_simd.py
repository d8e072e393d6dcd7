"""Probe: can a SIMD merge make a 2- or 4-class ungroup cheap on AVX2 (no AVX-512), from numba?

Why: format v3 groups a chunk's elements by the base's exponent byte (256 contexts), and its
decode must ungroup them (``out[i] = words[pos[ctx(base[i])]++]``, ``codec/_numba.py:_gather2``),
a scalar gather of ~1.3-1.45 ns an element that leaves v3's decode at 0.54-0.58x zipnn's speed
per core. ``probe_layouts.py`` measured layouts with 2 or 4 exponent classes (bytes 0.300x and
0.284x zipnn's, v3 0.279-0.291x) but merged them with scalar numba counters (0.61-0.67x and 0.38x
zipnn's decode). The README says v3's decode speed "waits on native SIMD code (an AVX-512
expand)". This probe measures the AVX2 (+ BMI2) alternative, from numba through ``@intrinsic``
(llvmlite IR calling LLVM's x86 intrinsics), on uint16 words (bf16 / fp16 differences):

  a stable K-way merge: out[i] = the next word of the stream of class(base[i]), the streams
  stored one after the other in ``words`` (class 0 first), class = how many of the thresholds
  t1 <= t2 <= t3 the exponent byte (base >> 7) & 0xFF reaches (as the codec's context).

Variants (every one checked bit for bit against the target on lengths 0 .. 100003 and all mixes,
and again at the timed sizes; the class mask of 8/16/32 elements comes from one vector and + a
signed compare per threshold + movemask: e >= t is (w & 0x7FFF) > (t << 7) - 1 for shift 7):

  scalar, branchy     the plain numba loop (if class: a else b): the reference kernel.
  scalar, branchless  the position chosen by masks (probe_layouts' merge), unsigned, 4 a step.
  pdep x4             BMI2: 4 words a 64-bit load per stream, pdep into the lanes of the class
                      (a 16-entry table of lane masks), OR-ed.
  pshufb x8           SSSE3 "expand via LUT": per 8 elements, per stream a 16-byte load at its
                      counter and a pshufb whose control comes from a 256 x 16-byte table indexed
                      by the stream's 8-bit mask (the k-th set bit takes the stream's k-th word,
                      other lanes zero), the streams OR-ed, one 16-byte store; each counter
                      advances by its mask's popcount.
  vpshufb x16         AVX2, 16 elements a step: per stream the two 8-lane halves in one ymm (the
                      second loaded at counter + popcount(low mask)), one vpshufb a stream.
  paired LUT row      pshufb x8 with both controls (m's and ~m's) in one 32-byte row.
  both streams in one ymm
                      stream 1's 16 bytes low, stream 0's high, one vpshufb with the 32-byte row,
                      the halves OR-ed: one shuffle per 8 elements.
  blend + pshufb      the 8 words needed (stream 1's c = popcount(m), then stream 0's) blended
                      into one vector (stream 0 loaded c words early, pblendvb by a 9-row mask
                      table), then one pshufb puts them in place (x16: two groups in one ymm).
  4-way one pass      K = 4 streams in the same step: pshufb x8 (4 shuffles), vpshufb x16, or
                      the streams two by two in one ymm (2 vpshufb per 8 elements).
  4 as 2 levels       classes {0,1} and {2,3} merged first (their masks compacted by pext into
                      bit streams), then the two results merged by class >= 2: 3 merges + masks.
  chunk decodes       a v3-like decode of one chunk with 2 or 4 classes: the byte planes joined
                      into words, the SIMD merge, the codec's difference undone (3 passes, as
                      the codec's _ungroup_undiff2); for 2 classes also all three fused in one
                      pass (each stream's planes loaded 8 bytes at its counter and interleaved,
                      the merged 16 words decoded in one ymm against the base).

Beside them: the codec's own ``_gather2`` (256 contexts, the same words grouped by the full
exponent byte) and the whole v3 chunk ungroup ``_ungroup_undiff2`` (planes joined, gathered,
difference undone), v1's ``_join_undiff2`` (planes joined, difference undone: what a v3-like
decode pays besides the ungroup), and a memcpy of the same bytes (np.copyto) as the floor.

Timing: ns per element (wall clock), best of --repeat (each repeat at 64K elements is a batch of
32 calls over the same chunk, L2-resident), one thread, outputs preallocated (no page faults).
The SIMD kernels read up to 15 words past a stream's end (the blend variants also up to 8 words
before class 0's): ``words`` and the planes carry 16 words of padding (the codec's scratch has
2n words). Needs a CPU with AVX2 + BMI2 (numba compiles for the host); the data are synthetic
(random words; exponents drawn per class in a random order, or bf16 of N(0, 0.02) weights with
thresholds at the exponent's quantiles).

    python benchmarks/probe_merge_simd.py [--repeat N] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from deltastore.codec import _numba

SHIFT = 7  # the exponent byte of a bf16 word: (w >> 7) & 0xFF
PAD = 16  # words of padding after the streams (a vector load may run 15 words past the last)

I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
V16I8, V32I8 = ir.VectorType(I8, 16), ir.VectorType(I8, 32)


# ---------------------------------------------------------------------------------------------
# intrinsics (llvmlite IR, inlined into the numba loops)
# ---------------------------------------------------------------------------------------------


def _data(context, builder, aty, aval):  # noqa: ANN001, ANN202
    return context.make_array(aty)(context, builder, aval).data


def _i64(context, builder, ty, v):  # noqa: ANN001, ANN202
    return context.cast(builder, v, ty, types.int64)


def _at(builder, data, idx, vty, align=1):  # noqa: ANN001, ANN202
    """A (vector) value of type vty loaded from &data[idx], unaligned."""
    return builder.load(builder.bitcast(builder.gep(data, [idx]), vty.as_pointer()), align=align)


def _put(builder, data, idx, v, align=1):  # noqa: ANN001, ANN202
    builder.store(v, builder.bitcast(builder.gep(data, [idx]), v.type.as_pointer()), align=align)


def _splat(builder, v, n):  # noqa: ANN001, ANN202
    vty = ir.VectorType(v.type, n)
    u = builder.insert_element(ir.Constant(vty, ir.Undefined), v, ir.Constant(I32, 0))
    return builder.shuffle_vector(u, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(I32, n), [0] * n))


def _fn(builder, name, ret, args):  # noqa: ANN001, ANN202
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _gt_masks_gen(width):  # noqa: ANN202
    def gen(typingctx, base, i, keep, gts):  # noqa: ANN001, ARG001
        """Bit j + width * k = (base[i + j] & keep) > gts[k] as int16, j < width, for each
        threshold k (a vector and, a signed compare per threshold, the compares packed and moved
        out by one movemask: e >= t is (w & 0x7FFF) > (t << 7) - 1 for shift 7, no shift needed)."""
        k = gts.count

        def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
            b, i_, kp, g = args
            data = _data(context, builder, sig.args[0], b)
            v = _at(builder, data, _i64(context, builder, sig.args[1], i_), ir.VectorType(I16, width))
            x = builder.and_(v, _splat(builder, builder.trunc(_i64(context, builder, sig.args[2], kp), I16), width))
            cs = [builder.icmp_signed(">", x, _splat(builder, builder.trunc(builder.extract_value(g, j), I16), width))
                  for j in range(k)]
            while len(cs) & (len(cs) - 1):
                cs.append(cs[-1])
            while len(cs) > 1:
                m = cs[0].type.count
                idx = ir.Constant(ir.VectorType(I32, 2 * m), list(range(2 * m)))
                cs = [builder.shuffle_vector(cs[j], cs[j + 1], idx) for j in range(0, len(cs), 2)]
            r = builder.bitcast(cs[0], ir.IntType(cs[0].type.count))
            return r if r.type.width == 64 else builder.zext(r, I64)

        return types.uint64(base, i, keep, gts), codegen

    return gen


_gt_masks8 = intrinsic(_gt_masks_gen(8))
_gt_masks16 = intrinsic(_gt_masks_gen(16))
_gt_masks32 = intrinsic(_gt_masks_gen(32))


@njit(cache=True, nogil=True, inline="always")
def _keep_gt(shift, t):
    """The and-mask and the signed threshold of (w & keep) > gt, equal to ((w >> shift) & 0xFF) >= t
    for shift <= 7 (gt = 0x7FFF, never exceeded, for t = 256)."""
    s = np.uint64(shift)
    keep = ((np.uint64(0xFF) << s) | ((np.uint64(1) << s) - np.uint64(1))) & np.uint64(0x7FFF)
    return keep, min((np.uint64(t) << s) - np.uint64(1), np.uint64(0x7FFF))


@intrinsic
def _popcnt(typingctx, x):  # noqa: ANN001, ARG001
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@intrinsic
def _pdep(typingctx, x, m):  # noqa: ANN001, ARG001
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        return builder.call(_fn(builder, "llvm.x86.bmi.pdep.64", I64, [I64, I64]), list(args))

    return types.uint64(types.uint64, types.uint64), codegen


@intrinsic
def _pext(typingctx, x, m):  # noqa: ANN001, ARG001
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        return builder.call(_fn(builder, "llvm.x86.bmi.pext.64", I64, [I64, I64]), list(args))

    return types.uint64(types.uint64, types.uint64), codegen


@intrinsic
def _load64(typingctx, a, p):  # noqa: ANN001, ARG001
    """Four uint16 words a[p .. p + 3] as one uint64 (unaligned)."""

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        data = _data(context, builder, sig.args[0], args[0])
        return _at(builder, data, _i64(context, builder, sig.args[1], args[1]), I64)

    return types.uint64(a, p), codegen


@intrinsic
def _store64(typingctx, a, i, v):  # noqa: ANN001, ARG001
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        data = _data(context, builder, sig.args[0], args[0])
        _put(builder, data, _i64(context, builder, sig.args[1], args[1]), args[2])
        return context.get_dummy_value()

    return types.void(a, i, types.uint64), codegen


def _out_words_lut(context, builder, sig, args):  # noqa: ANN001, ANN202
    """Data pointers of an expand intrinsic's out (argument 0), words (2) and lut (3) arrays."""
    return (_data(context, builder, sig.args[0], args[0]), _data(context, builder, sig.args[2], args[2]),
            _data(context, builder, sig.args[3], args[3]))


def _expand8_gen(accumulate: bool):  # noqa: ANN202
    def gen(typingctx, out, i, words, lut, ps, ms):  # noqa: ANN001, ARG001
        """out[i .. i + 7] = (with ``accumulate``: |=) OR over streams k of pshufb(words[ps[k] ..],
        lut[ms[k]]): stream k's first popcount(ms[k]) words into the lanes of ms[k]'s set bits
        (SSSE3, 16 bytes)."""
        k = ps.count

        def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
            _, i_, _, _, ps_, ms_ = args
            od, wd, ld = _out_words_lut(context, builder, sig, args)
            shuf = _fn(builder, "llvm.x86.ssse3.pshuf.b.128", V16I8, [V16I8, V16I8])
            ii = _i64(context, builder, sig.args[1], i_)
            acc = _at(builder, od, ii, V16I8) if accumulate else None
            for j in range(k):
                p = builder.extract_value(ps_, j)
                m = builder.extract_value(ms_, j)
                v = _at(builder, wd, p, V16I8)
                c = _at(builder, ld, builder.shl(m, ir.Constant(I64, 4)), V16I8)
                r = builder.call(shuf, [v, c])
                acc = r if acc is None else builder.or_(acc, r)
            _put(builder, od, ii, acc)
            return context.get_dummy_value()

        return types.void(out, i, words, lut, ps, ms), codegen

    return gen


_expand8 = intrinsic(_expand8_gen(False))
#: the same OR-ed into what out[i .. i + 7] holds (benchmarks/probe_gather_simd.py: one context at a time)
_expand8_or = intrinsic(_expand8_gen(True))


@intrinsic
def _expand16(typingctx, out, i, words, lut, ps, ms):  # noqa: ANN001, ARG001
    """:func:`_expand8` for 16 elements with AVX2: per stream the two 8-lane halves loaded into
    one ymm (the high half at ps[k] + popcount(low byte of ms[k])), one vpshufb, one 32-byte store."""
    k = ps.count

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        _, i_, _, _, ps_, ms_ = args
        od, wd, ld = _out_words_lut(context, builder, sig, args)
        shuf = _fn(builder, "llvm.x86.avx2.pshuf.b", V32I8, [V32I8, V32I8])
        cat = ir.Constant(ir.VectorType(I32, 32), list(range(32)))
        ff = ir.Constant(I64, 0xFF)
        acc = None
        for j in range(k):
            p = builder.extract_value(ps_, j)
            m = builder.extract_value(ms_, j)
            lo = builder.and_(m, ff)
            hi = builder.lshr(m, ir.Constant(I64, 8))
            p2 = builder.add(p, builder.ctpop(lo))
            v = builder.shuffle_vector(_at(builder, wd, p, V16I8), _at(builder, wd, p2, V16I8), cat)
            c = builder.shuffle_vector(_at(builder, ld, builder.shl(lo, ir.Constant(I64, 4)), V16I8),
                                       _at(builder, ld, builder.shl(hi, ir.Constant(I64, 4)), V16I8), cat)
            r = builder.call(shuf, [v, c])
            acc = r if acc is None else builder.or_(acc, r)
        _put(builder, od, _i64(context, builder, sig.args[1], i_), acc)
        return context.get_dummy_value()

    return types.void(out, i, words, lut, ps, ms), codegen


@intrinsic
def _expand8_pair(typingctx, out, i, words, lut2, p1, p0, m):  # noqa: ANN001, ARG001
    """2 streams, 8 elements: lut2's 32-byte row m holds both controls (m's and ~m's)."""

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        _, i_, _, _, a1, a0, m_ = args
        od, wd, ld = _out_words_lut(context, builder, sig, args)
        shuf = _fn(builder, "llvm.x86.ssse3.pshuf.b.128", V16I8, [V16I8, V16I8])
        row = builder.shl(m_, ir.Constant(I64, 5))
        r1 = builder.call(shuf, [_at(builder, wd, a1, V16I8), _at(builder, ld, row, V16I8)])
        r0 = builder.call(shuf, [_at(builder, wd, a0, V16I8), _at(builder, ld, builder.add(row, ir.Constant(I64, 16)), V16I8)])
        _put(builder, od, _i64(context, builder, sig.args[1], i_), builder.or_(r1, r0))
        return context.get_dummy_value()

    return types.void(out, i, words, lut2, p1, p0, m), codegen


@intrinsic
def _expand8_ymm(typingctx, out, i, words, lut2, p1, p0, m):  # noqa: ANN001, ARG001
    """:func:`_expand8_pair` with both streams in one ymm (stream 1 low, stream 0 high), one
    vpshufb with the 32-byte row, the halves OR-ed."""

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        _, i_, _, _, a1, a0, m_ = args
        od, wd, ld = _out_words_lut(context, builder, sig, args)
        shuf = _fn(builder, "llvm.x86.avx2.pshuf.b", V32I8, [V32I8, V32I8])
        cat = ir.Constant(ir.VectorType(I32, 32), list(range(32)))
        v = builder.shuffle_vector(_at(builder, wd, a1, V16I8), _at(builder, wd, a0, V16I8), cat)
        r = builder.call(shuf, [v, _at(builder, ld, builder.shl(m_, ir.Constant(I64, 5)), V32I8)])
        lo = builder.shuffle_vector(r, r, ir.Constant(ir.VectorType(I32, 16), list(range(16))))
        hi = builder.shuffle_vector(r, r, ir.Constant(ir.VectorType(I32, 16), list(range(16, 32))))
        _put(builder, od, _i64(context, builder, sig.args[1], i_), builder.or_(lo, hi))
        return context.get_dummy_value()

    return types.void(out, i, words, lut2, p1, p0, m), codegen


def _uncode_vec(builder, u, y):  # noqa: ANN001, ANN202
    """codec/_numba.py's _uncode2 on a vector of int16 lanes (u: the zigzagged ordered
    difference, y: the base word): the target word."""
    n = u.type.count

    def c(v):  # noqa: ANN001, ANN202
        return _splat(builder, ir.Constant(I16, v), n)

    d = builder.xor(builder.lshr(u, c(1)), builder.sub(c(0), builder.and_(u, c(1))))
    ys = builder.xor(y, builder.and_(builder.ashr(y, c(15)), c(0x7FFF)))
    x = builder.add(d, ys)
    return builder.xor(x, builder.and_(builder.ashr(x, c(15)), c(0x7FFF)))


@intrinsic
def _expand16_planes_undiff(typingctx, out, i, hi, lo, lut2, p1, p0, mm, base):  # noqa: ANN001, ARG001
    """Two :func:`_expand8_ymm` steps (mask mm: 16 bits) fused with the plane join and the
    difference's undo: per group and stream 8 bytes of each plane at its counter, interleaved
    into words; the 16 merged words decoded against base[i .. i + 15] in one ymm; one 32-byte
    store."""

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        o, i_, h, l_, lt, a1, a0, mm_, b = args
        od = _data(context, builder, sig.args[0], o)
        hd = _data(context, builder, sig.args[2], h)
        ldp = _data(context, builder, sig.args[3], l_)
        ld = _data(context, builder, sig.args[4], lt)
        bd = _data(context, builder, sig.args[8], b)
        ii = _i64(context, builder, sig.args[1], i_)
        v8 = ir.VectorType(I8, 8)
        inter = ir.Constant(ir.VectorType(I32, 16), [x for j in range(8) for x in (j, j + 8)])
        shuf = _fn(builder, "llvm.x86.avx2.pshuf.b", V32I8, [V32I8, V32I8])
        cat = ir.Constant(ir.VectorType(I32, 32), list(range(32)))
        lanes_lo = ir.Constant(ir.VectorType(I32, 16), list(range(16)))
        lanes_hi = ir.Constant(ir.VectorType(I32, 16), list(range(16, 32)))

        def words(p):  # noqa: ANN001, ANN202
            return builder.shuffle_vector(_at(builder, ldp, p, v8), _at(builder, hd, p, v8), inter)

        def group(q1, q0, m):  # noqa: ANN001, ANN202
            v = builder.shuffle_vector(words(q1), words(q0), cat)
            r = builder.call(shuf, [v, _at(builder, ld, builder.shl(m, ir.Constant(I64, 5)), V32I8)])
            return builder.or_(builder.shuffle_vector(r, r, lanes_lo), builder.shuffle_vector(r, r, lanes_hi))

        m1 = builder.and_(mm_, ir.Constant(I64, 0xFF))
        m2 = builder.lshr(mm_, ir.Constant(I64, 8))
        c = builder.ctpop(m1)
        g1 = group(a1, a0, m1)
        g2 = group(builder.add(a1, c), builder.sub(builder.add(a0, ir.Constant(I64, 8)), c), m2)
        u = builder.bitcast(builder.shuffle_vector(g1, g2, cat), ir.VectorType(I16, 16))
        y = _at(builder, bd, ii, ir.VectorType(I16, 16))
        _put(builder, od, ii, _uncode_vec(builder, u, y))
        return context.get_dummy_value()

    return types.void(out, i, hi, lo, lut2, p1, p0, mm, base), codegen


def pair_lut() -> np.ndarray:
    """uint8[256 * 32]: row m = expand control of m, then of ~m (for 2 streams)."""
    lut = expand_lut().reshape(256, 16)
    return np.concatenate([lut, lut[np.arange(256) ^ 0xFF]], axis=1).reshape(-1).copy()


@intrinsic
def _expand8_pairs(typingctx, out, i, words, lut, ps, ms):  # noqa: ANN001, ARG001
    """:func:`_expand8` with the streams two by two in one ymm (stream 2j low, 2j + 1 high, their
    two 16-byte control rows likewise), one vpshufb a pair, the results and then the halves
    OR-ed (AVX2; an even number of streams)."""
    k = ps.count

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        _, i_, _, _, ps_, ms_ = args
        od, wd, ld = _out_words_lut(context, builder, sig, args)
        shuf = _fn(builder, "llvm.x86.avx2.pshuf.b", V32I8, [V32I8, V32I8])
        cat = ir.Constant(ir.VectorType(I32, 32), list(range(32)))
        acc = None
        for j in range(0, k, 2):
            pa, pb = builder.extract_value(ps_, j), builder.extract_value(ps_, j + 1)
            ma, mb = builder.extract_value(ms_, j), builder.extract_value(ms_, j + 1)
            v = builder.shuffle_vector(_at(builder, wd, pa, V16I8), _at(builder, wd, pb, V16I8), cat)
            c = builder.shuffle_vector(_at(builder, ld, builder.shl(ma, ir.Constant(I64, 4)), V16I8),
                                       _at(builder, ld, builder.shl(mb, ir.Constant(I64, 4)), V16I8), cat)
            r = builder.call(shuf, [v, c])
            acc = r if acc is None else builder.or_(acc, r)
        lo = builder.shuffle_vector(acc, acc, ir.Constant(ir.VectorType(I32, 16), list(range(16))))
        hi = builder.shuffle_vector(acc, acc, ir.Constant(ir.VectorType(I32, 16), list(range(16, 32))))
        _put(builder, od, _i64(context, builder, sig.args[1], i_), builder.or_(lo, hi))
        return context.get_dummy_value()

    return types.void(out, i, words, lut, ps, ms), codegen


def _blend8(builder, wd, ld, bd, pa, pb, m):  # noqa: ANN001, ANN202
    """One 8-element group as one shuffle: v = stream 1's first c words then stream 0's (c =
    popcount(m): stream 0 loaded c words early, blended by the mask row c), then the control
    row m puts v's lanes where the output needs them. Returns (v, control, c)."""
    c = builder.ctpop(m)
    a = _at(builder, wd, pa, V16I8)
    b = _at(builder, wd, builder.sub(pb, c), V16I8)
    bm = _at(builder, bd, builder.shl(c, ir.Constant(I64, 4)), V16I8)
    ctl = _at(builder, ld, builder.shl(m, ir.Constant(I64, 4)), V16I8)
    return a, b, bm, ctl, c


@intrinsic
def _merge8_blend(typingctx, out, i, words, ctl, bmask, pa, pb, m):  # noqa: ANN001, ARG001
    """out[i .. i + 7] from stream 1 at pa and stream 0 at pb, mask m (bit j: stream 1), with one
    pblendvb and one pshufb (SSE4.1). Reads up to 8 words before pb."""

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        _, i_, _, _, bt, pa_, pb_, m_ = args
        od, wd, ld = _out_words_lut(context, builder, sig, args)
        bd = _data(context, builder, sig.args[4], bt)
        a, b, bm, ctl, _ = _blend8(builder, wd, ld, bd, pa_, pb_, m_)
        blend = _fn(builder, "llvm.x86.sse41.pblendvb", V16I8, [V16I8, V16I8, V16I8])
        shuf = _fn(builder, "llvm.x86.ssse3.pshuf.b.128", V16I8, [V16I8, V16I8])
        r = builder.call(shuf, [builder.call(blend, [b, a, bm]), ctl])
        _put(builder, od, _i64(context, builder, sig.args[1], i_), r)
        return context.get_dummy_value()

    return types.void(out, i, words, ctl, bmask, pa, pb, m), codegen


@intrinsic
def _merge16_blend(typingctx, out, i, words, ctl, bmask, pa, pb, m):  # noqa: ANN001, ARG001
    """:func:`_merge8_blend` for two 8-element groups in one ymm (mask m: 16 bits): one
    vpblendvb, one vpshufb, one 32-byte store (AVX2)."""

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        _, i_, _, _, bt, pa_, pb_, m_ = args
        od, wd, ld = _out_words_lut(context, builder, sig, args)
        bd = _data(context, builder, sig.args[4], bt)
        lo = builder.and_(m_, ir.Constant(I64, 0xFF))
        hi = builder.lshr(m_, ir.Constant(I64, 8))
        a1, b1, bm1, c1_, c1 = _blend8(builder, wd, ld, bd, pa_, pb_, lo)
        pa2 = builder.add(pa_, c1)
        pb2 = builder.sub(builder.add(pb_, ir.Constant(I64, 8)), c1)
        a2, b2, bm2, c2_, _ = _blend8(builder, wd, ld, bd, pa2, pb2, hi)
        cat = ir.Constant(ir.VectorType(I32, 32), list(range(32)))
        blend = _fn(builder, "llvm.x86.avx2.pblendvb", V32I8, [V32I8, V32I8, V32I8])
        shuf = _fn(builder, "llvm.x86.avx2.pshuf.b", V32I8, [V32I8, V32I8])
        v = builder.call(blend, [builder.shuffle_vector(b1, b2, cat), builder.shuffle_vector(a1, a2, cat),
                                 builder.shuffle_vector(bm1, bm2, cat)])
        r = builder.call(shuf, [v, builder.shuffle_vector(c1_, c2_, cat)])
        _put(builder, od, _i64(context, builder, sig.args[1], i_), r)
        return context.get_dummy_value()

    return types.void(out, i, words, ctl, bmask, pa, pb, m), codegen


def blend_luts() -> tuple[np.ndarray, np.ndarray]:
    """uint8[256 * 16] shuffle controls for the blended vector (stream 1's c words, then stream
    0's): lane j of mask m takes word rank_1(j) if bit j is set, else c + rank_0(j); and
    uint8[9 * 16] blend masks: 0xFF in the bytes of the first c words."""
    ctl = np.zeros((256, 16), dtype=np.uint8)
    for m in range(256):
        c = bin(m).count("1")
        k1 = k0 = 0
        for j in range(8):
            src = k1 if m >> j & 1 else c + k0
            if m >> j & 1:
                k1 += 1
            else:
                k0 += 1
            ctl[m, 2 * j], ctl[m, 2 * j + 1] = 2 * src, 2 * src + 1
    bm = np.zeros((9, 16), dtype=np.uint8)
    for c in range(9):
        bm[c, : 2 * c] = 0xFF
    return ctl.reshape(-1), bm.reshape(-1)


def expand_lut() -> np.ndarray:
    """uint8[256 * 16]: for an 8-bit mask m, the pshufb control putting word k of the source into
    the lane of m's k-th set bit (bytes 2k, 2k + 1), 0x80 (zero) into the other lanes."""
    lut = np.full((256, 16), 0x80, dtype=np.uint8)
    for m in range(256):
        k = 0
        for lane in range(8):
            if m >> lane & 1:
                lut[m, 2 * lane] = 2 * k
                lut[m, 2 * lane + 1] = 2 * k + 1
                k += 1
    return lut.reshape(-1)


def lane_lut() -> np.ndarray:
    """uint64[16]: for a 4-bit mask, 0xFFFF in the 16-bit lanes of its set bits (for pdep)."""
    return np.array([sum(0xFFFF << (16 * j) for j in range(4) if m >> j & 1) for m in range(16)], dtype=np.uint64)


# ---------------------------------------------------------------------------------------------
# 2-way merges: out[i] = words[p1++] if class(base[i]) >= t else words[p0++]; p0 = 0, p1 = n0
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def merge2_scalar(words, n0, base, shift, t, out):
    """The plain loop (the reference kernel): a branch on the class."""
    p0 = np.uint64(0)
    p1 = np.uint64(n0)
    for i in range(base.size):
        if ((base[i] >> shift) & np.uint16(0xFF)) >= t:
            out[i] = words[p1]
            p1 += np.uint64(1)
        else:
            out[i] = words[p0]
            p0 += np.uint64(1)
    return p1


@njit(cache=True, nogil=True, inline="always")
def _pick2(words, base, i, shift, t, p0, p1):
    c = np.uint64(((base[i] >> shift) & np.uint16(0xFF)) >= t)
    m = np.uint64(0) - c
    return words[(p1 & m) | (p0 & ~m)], c


@njit(cache=True, nogil=True)
def merge2_branchless(words, n0, base, shift, t, out):
    """The position chosen by masks (no branch), unsigned, 4 elements a step (probe_layouts)."""
    n = base.size
    p0 = np.uint64(0)
    p1 = np.uint64(n0)
    one = np.uint64(1)
    m4 = n - n % 4
    for i in range(0, m4, 4):
        w, c = _pick2(words, base, i, shift, t, p0, p1)
        out[i] = w
        p1 += c
        p0 += one - c
        w, c = _pick2(words, base, i + 1, shift, t, p0, p1)
        out[i + 1] = w
        p1 += c
        p0 += one - c
        w, c = _pick2(words, base, i + 2, shift, t, p0, p1)
        out[i + 2] = w
        p1 += c
        p0 += one - c
        w, c = _pick2(words, base, i + 3, shift, t, p0, p1)
        out[i + 3] = w
        p1 += c
        p0 += one - c
    for i in range(m4, n):
        w, c = _pick2(words, base, i, shift, t, p0, p1)
        out[i] = w
        p1 += c
        p0 += one - c
    return p1


@njit(cache=True, nogil=True, inline="always")
def _tail2(words, base, shift, t, out, lo, p0, p1):
    for i in range(lo, base.size):
        w, c = _pick2(words, base, i, shift, t, p0, p1)
        out[i] = w
        p1 += c
        p0 += np.uint64(1) - c
    return p1


@njit(cache=True, nogil=True)
def merge2_pshufb8(words, n0, base, shift, t, lut, out):
    """SSSE3 expand via LUT, 8 elements a step."""
    n = base.size
    p0 = np.uint64(0)
    p1 = np.uint64(n0)
    keep, gt = _keep_gt(shift, t)
    m8 = n - n % 8
    for i in range(0, m8, 8):
        m = _gt_masks8(base, i, keep, (gt,))
        _expand8(out, i, words, lut, (p1, p0), (m, m ^ np.uint64(0xFF)))
        c = _popcnt(m)
        p1 += c
        p0 += np.uint64(8) - c
    return _tail2(words, base, shift, t, out, m8, p0, p1)


@njit(cache=True, nogil=True)
def merge2_pshufb8x2(words, n0, base, shift, t, lut, out):
    """merge2_pshufb8 unrolled to 16 elements a step (one 16-lane compare for both masks)."""
    n = base.size
    p0 = np.uint64(0)
    p1 = np.uint64(n0)
    keep, gt = _keep_gt(shift, t)
    m16 = n - n % 16
    for i in range(0, m16, 16):
        mm = _gt_masks16(base, i, keep, (gt,))
        m = mm & np.uint64(0xFF)
        _expand8(out, i, words, lut, (p1, p0), (m, m ^ np.uint64(0xFF)))
        c = _popcnt(m)
        p1 += c
        p0 += np.uint64(8) - c
        m = mm >> np.uint64(8)
        _expand8(out, i + 8, words, lut, (p1, p0), (m, m ^ np.uint64(0xFF)))
        c = _popcnt(m)
        p1 += c
        p0 += np.uint64(8) - c
    return _tail2(words, base, shift, t, out, m16, p0, p1)


@njit(cache=True, nogil=True)
def merge2_vpshufb16(words, n0, base, shift, t, lut, out):
    """AVX2 expand via LUT, 16 elements a step (one vpshufb a stream)."""
    n = base.size
    p0 = np.uint64(0)
    p1 = np.uint64(n0)
    keep, gt = _keep_gt(shift, t)
    m16 = n - n % 16
    for i in range(0, m16, 16):
        m = _gt_masks16(base, i, keep, (gt,))
        _expand16(out, i, words, lut, (p1, p0), (m, m ^ np.uint64(0xFFFF)))
        c = _popcnt(m)
        p1 += c
        p0 += np.uint64(16) - c
    return _tail2(words, base, shift, t, out, m16, p0, p1)


@njit(cache=True, nogil=True)
def merge2_pair8(words, n0, base, shift, t, lut2, out):
    """merge2_pshufb8 with both controls in one 32-byte table row (no xor for ~m), 16 a step."""
    n = base.size
    p0 = np.uint64(0)
    p1 = np.uint64(n0)
    keep, gt = _keep_gt(shift, t)
    m16 = n - n % 16
    for i in range(0, m16, 16):
        mm = _gt_masks16(base, i, keep, (gt,))
        m = mm & np.uint64(0xFF)
        _expand8_pair(out, i, words, lut2, p1, p0, m)
        c = _popcnt(m)
        p1 += c
        p0 += np.uint64(8) - c
        m = mm >> np.uint64(8)
        _expand8_pair(out, i + 8, words, lut2, p1, p0, m)
        c = _popcnt(m)
        p1 += c
        p0 += np.uint64(8) - c
    return _tail2(words, base, shift, t, out, m16, p0, p1)


@njit(cache=True, nogil=True)
def merge2_ymm8(words, n0, base, shift, t, lut2, out):
    """Both streams of an 8-element step in one ymm, one vpshufb (AVX2), 16 a step."""
    n = base.size
    p0 = np.uint64(0)
    p1 = np.uint64(n0)
    keep, gt = _keep_gt(shift, t)
    m16 = n - n % 16
    for i in range(0, m16, 16):
        mm = _gt_masks16(base, i, keep, (gt,))
        m = mm & np.uint64(0xFF)
        _expand8_ymm(out, i, words, lut2, p1, p0, m)
        c = _popcnt(m)
        p1 += c
        p0 += np.uint64(8) - c
        m = mm >> np.uint64(8)
        _expand8_ymm(out, i + 8, words, lut2, p1, p0, m)
        c = _popcnt(m)
        p1 += c
        p0 += np.uint64(8) - c
    return _tail2(words, base, shift, t, out, m16, p0, p1)


@njit(cache=True, nogil=True)
def merge2_ymm8x4(words, n0, base, shift, t, lut2, out):
    """merge2_ymm8, 32 elements a step (one 32-lane compare and movemask for four expands)."""
    n = base.size
    p0 = np.uint64(0)
    p1 = np.uint64(n0)
    keep, gt = _keep_gt(shift, t)
    m32 = n - n % 32
    eight = np.uint64(8)
    ff = np.uint64(0xFF)
    for i in range(0, m32, 32):
        mm = _gt_masks32(base, i, keep, (gt,))
        for k in range(4):
            m = (mm >> np.uint64(8 * k)) & ff
            _expand8_ymm(out, i + 8 * k, words, lut2, p1, p0, m)
            c = _popcnt(m)
            p1 += c
            p0 += eight - c
    return _tail2(words, base, shift, t, out, m32, p0, p1)


@njit(cache=True, nogil=True)
def merge2_blend8(words, n0, base, shift, t, ctl, bmask, out):
    """One pblendvb + one pshufb per 8 elements (the streams blended into one vector first).
    ``words`` starts with PAD words of padding: class 0's stream at PAD, class 1's at PAD + n0."""
    n = base.size
    p0 = np.uint64(PAD)
    p1 = np.uint64(PAD) + np.uint64(n0)
    keep, gt = _keep_gt(shift, t)
    m16 = n - n % 16
    eight = np.uint64(8)
    for i in range(0, m16, 16):
        mm = _gt_masks16(base, i, keep, (gt,))
        m = mm & np.uint64(0xFF)
        _merge8_blend(out, i, words, ctl, bmask, p1, p0, m)
        c = _popcnt(m)
        p1 += c
        p0 += eight - c
        m = mm >> eight
        _merge8_blend(out, i + 8, words, ctl, bmask, p1, p0, m)
        c = _popcnt(m)
        p1 += c
        p0 += eight - c
    return _tail2(words, base, shift, t, out, m16, p0, p1)


@njit(cache=True, nogil=True)
def merge2_blend16(words, n0, base, shift, t, ctl, bmask, out):
    """merge2_blend8 with two groups in one ymm: one vpblendvb + one vpshufb per 16 elements."""
    n = base.size
    p0 = np.uint64(PAD)
    p1 = np.uint64(PAD) + np.uint64(n0)
    keep, gt = _keep_gt(shift, t)
    m32 = n - n % 32
    sixteen = np.uint64(16)
    for i in range(0, m32, 32):
        mm = _gt_masks32(base, i, keep, (gt,))
        m = mm & np.uint64(0xFFFF)
        _merge16_blend(out, i, words, ctl, bmask, p1, p0, m)
        c = _popcnt(m)
        p1 += c
        p0 += sixteen - c
        m = mm >> sixteen
        _merge16_blend(out, i + 16, words, ctl, bmask, p1, p0, m)
        c = _popcnt(m)
        p1 += c
        p0 += sixteen - c
    return _tail2(words, base, shift, t, out, m32, p0, p1)


@njit(cache=True, nogil=True)
def merge2_pdep4(words, n0, base, shift, t, lanes, out):
    """BMI2: per 4 elements, pdep of 4 words of each stream into its lanes, OR-ed."""
    n = base.size
    p0 = np.uint64(0)
    p1 = np.uint64(n0)
    keep, gt = _keep_gt(shift, t)
    m8 = n - n % 8
    for i in range(0, m8, 8):
        mm = _gt_masks8(base, i, keep, (gt,))
        m = mm & np.uint64(0xF)
        lm = lanes[m]
        _store64(out, i, _pdep(_load64(words, p1), lm) | _pdep(_load64(words, p0), ~lm))
        c = _popcnt(m)
        p1 += c
        p0 += np.uint64(4) - c
        m = mm >> np.uint64(4)
        lm = lanes[m]
        _store64(out, i + 4, _pdep(_load64(words, p1), lm) | _pdep(_load64(words, p0), ~lm))
        c = _popcnt(m)
        p1 += c
        p0 += np.uint64(4) - c
    return _tail2(words, base, shift, t, out, m8, p0, p1)


# ---------------------------------------------------------------------------------------------
# 4-way merges: class = (e >= t1) + (e >= t2) + (e >= t3), t1 <= t2 <= t3; streams at s0=0, s1, s2, s3
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def merge4_scalar(words, s1, s2, s3, base, shift, t1, t2, t3, out):
    """The plain loop: a branch on the class (the reference kernel)."""
    p0 = np.uint64(0)
    p1 = np.uint64(s1)
    p2 = np.uint64(s2)
    p3 = np.uint64(s3)
    one = np.uint64(1)
    for i in range(base.size):
        e = (base[i] >> shift) & np.uint16(0xFF)
        if e >= t2:
            if e >= t3:
                out[i] = words[p3]
                p3 += one
            else:
                out[i] = words[p2]
                p2 += one
        elif e >= t1:
            out[i] = words[p1]
            p1 += one
        else:
            out[i] = words[p0]
            p0 += one
    return p3


@njit(cache=True, nogil=True, inline="always")
def _pick4(words, base, i, shift, t1, t2, t3, p0, p1, p2, p3):
    e = (base[i] >> shift) & np.uint16(0xFF)
    a = np.uint64(e >= t1)
    b = np.uint64(e >= t2)
    d = np.uint64(e >= t3)
    z = np.uint64(0)
    k0, k1, k2, k3 = np.uint64(1) - a, a - b, b - d, d  # one-hot
    p = (p0 & (z - k0)) | (p1 & (z - k1)) | (p2 & (z - k2)) | (p3 & (z - k3))
    return words[p], k0, k1, k2, k3


@njit(cache=True, nogil=True, inline="always")
def _tail4(words, base, shift, t1, t2, t3, out, lo, p0, p1, p2, p3):
    for i in range(lo, base.size):
        w, k0, k1, k2, k3 = _pick4(words, base, i, shift, t1, t2, t3, p0, p1, p2, p3)
        out[i] = w
        p0 += k0
        p1 += k1
        p2 += k2
        p3 += k3
    return p3


@njit(cache=True, nogil=True)
def merge4_branchless(words, s1, s2, s3, base, shift, t1, t2, t3, out):
    """One-hot masks choose the counter (probe_layouts' merge4, unsigned)."""
    return _tail4(words, base, shift, t1, t2, t3, out, 0, np.uint64(0), np.uint64(s1), np.uint64(s2), np.uint64(s3))


@njit(cache=True, nogil=True)
def merge4_pshufb8(words, s1, s2, s3, base, shift, t1, t2, t3, lut, out):
    """One pass, 4 streams in each 8-element SSSE3 step."""
    n = base.size
    p0 = np.uint64(0)
    p1 = np.uint64(s1)
    p2 = np.uint64(s2)
    p3 = np.uint64(s3)
    ff = np.uint64(0xFF)
    keep, gt1 = _keep_gt(shift, t1)
    gt2 = _keep_gt(shift, t2)[1]
    gt3 = _keep_gt(shift, t3)[1]
    m8 = n - n % 8
    for i in range(0, m8, 8):
        g = _gt_masks8(base, i, keep, (gt1, gt2, gt3))
        g1 = g & ff
        g2 = (g >> np.uint64(8)) & ff
        g3 = (g >> np.uint64(16)) & ff
        m0 = g1 ^ ff
        m1 = g1 & ~g2
        m2 = g2 & ~g3
        _expand8(out, i, words, lut, (p0, p1, p2, p3), (m0, m1, m2, g3))
        p0 += _popcnt(m0)
        p1 += _popcnt(m1)
        p2 += _popcnt(m2)
        p3 += _popcnt(g3)
    return _tail4(words, base, shift, t1, t2, t3, out, m8, p0, p1, p2, p3)


@njit(cache=True, nogil=True)
def merge4_vpshufb16(words, s1, s2, s3, base, shift, t1, t2, t3, lut, out):
    """One pass, 4 streams in each 16-element AVX2 step."""
    n = base.size
    p0 = np.uint64(0)
    p1 = np.uint64(s1)
    p2 = np.uint64(s2)
    p3 = np.uint64(s3)
    ff = np.uint64(0xFFFF)
    keep, gt1 = _keep_gt(shift, t1)
    gt2 = _keep_gt(shift, t2)[1]
    gt3 = _keep_gt(shift, t3)[1]
    m16 = n - n % 16
    for i in range(0, m16, 16):
        g = _gt_masks16(base, i, keep, (gt1, gt2, gt3))
        g1 = g & ff
        g2 = (g >> np.uint64(16)) & ff
        g3 = (g >> np.uint64(32)) & ff
        m0 = g1 ^ ff
        m1 = g1 & ~g2
        m2 = g2 & ~g3
        _expand16(out, i, words, lut, (p0, p1, p2, p3), (m0, m1, m2, g3))
        p0 += _popcnt(m0)
        p1 += _popcnt(m1)
        p2 += _popcnt(m2)
        p3 += _popcnt(g3)
    return _tail4(words, base, shift, t1, t2, t3, out, m16, p0, p1, p2, p3)


@njit(cache=True, nogil=True)
def merge4_pairs8(words, s1, s2, s3, base, shift, t1, t2, t3, lut, out):
    """One pass, 8 elements a step, streams (0, 1) and (2, 3) each in one ymm (two vpshufb a
    step); the counters advanced by 3 popcounts (c0 = 8 - n1, c1 = n1 - n2, c2 = n2 - n3)."""
    n = base.size
    p0 = np.uint64(0)
    p1 = np.uint64(s1)
    p2 = np.uint64(s2)
    p3 = np.uint64(s3)
    ff = np.uint64(0xFF)
    eight = np.uint64(8)
    keep, gt1 = _keep_gt(shift, t1)
    gt2 = _keep_gt(shift, t2)[1]
    gt3 = _keep_gt(shift, t3)[1]
    m16 = n - n % 16
    for i in range(0, m16, 16):
        g = _gt_masks16(base, i, keep, (gt1, gt2, gt3))
        for h in range(2):
            sh = np.uint64(8 * h)
            g1 = (g >> sh) & ff
            g2 = (g >> (sh + np.uint64(16))) & ff
            g3 = (g >> (sh + np.uint64(32))) & ff
            _expand8_pairs(out, i + 8 * h, words, lut, (p0, p1, p2, p3), (g1 ^ ff, g1 & ~g2, g2 & ~g3, g3))
            n1 = _popcnt(g1)
            n2 = _popcnt(g2)
            n3 = _popcnt(g3)
            p0 += eight - n1
            p1 += n1 - n2
            p2 += n2 - n3
            p3 += n3
    return _tail4(words, base, shift, t1, t2, t3, out, m16, p0, p1, p2, p3)


@njit(cache=True, nogil=True)
def split_masks4(base, shift, t1, t2, t3, g2bits, lbits, hbits):
    """The masks of the 2-level 4-way merge, 64 elements a word (uint64 arrays): g2bits = class
    >= 2 (the top merge); lbits = over the elements of class < 2 in order, class == 1 (pext of
    e >= t1 under class < 2), hbits = over those of class >= 2, class == 3. Returns the bit
    counts of lbits and hbits."""
    n = base.size
    nl = np.uint64(0)
    nh = np.uint64(0)
    s = np.uint64(6)
    m63 = np.uint64(63)
    keep, gt1 = _keep_gt(shift, t1)
    gt2 = _keep_gt(shift, t2)[1]
    gt3 = _keep_gt(shift, t3)[1]
    for w in range((n + 63) // 64):
        g1 = np.uint64(0)
        g2 = np.uint64(0)
        g3 = np.uint64(0)
        for k in range(8):
            i = w * 64 + 8 * k
            if i + 8 <= n:
                sh = np.uint64(8 * k)
                g = _gt_masks8(base, i, keep, (gt1, gt2, gt3))
                g1 |= (g & np.uint64(0xFF)) << sh
                g2 |= ((g >> np.uint64(8)) & np.uint64(0xFF)) << sh
                g3 |= ((g >> np.uint64(16)) & np.uint64(0xFF)) << sh
            else:
                for j in range(i, min(i + 8, n)):
                    e = (base[j] >> shift) & np.uint16(0xFF)
                    b = np.uint64(j - w * 64)
                    g1 |= np.uint64(e >= t1) << b
                    g2 |= np.uint64(e >= t2) << b
                    g3 |= np.uint64(e >= t3) << b
        valid = np.uint64(0xFFFFFFFFFFFFFFFF) if w * 64 + 64 <= n else (np.uint64(1) << np.uint64(n - w * 64)) - np.uint64(1)
        g2bits[w] = g2
        low = valid & ~g2
        x = _pext(g1, low)
        c = _popcnt(low)
        q = nl >> s
        r = nl & m63
        lbits[q] |= x << r
        if r != np.uint64(0):
            lbits[q + np.uint64(1)] |= x >> (np.uint64(64) - r)
        nl += c
        x = _pext(g3, g2)
        c = _popcnt(g2)
        q = nh >> s
        r = nh & m63
        hbits[q] |= x << r
        if r != np.uint64(0):
            hbits[q + np.uint64(1)] |= x >> (np.uint64(64) - r)
        nh += c
    return nl, nh


@njit(cache=True, nogil=True, inline="always")
def _byte(bits, k):
    return (bits[k >> 3] >> np.uint64(8 * (k & 7))) & np.uint64(0xFF)


@njit(cache=True, nogil=True)
def merge2_bits(words, a0, a1, bits, n, lut, out):
    """2-way merge of n elements driven by a bit stream: out[i] = words[a1++] if bit i else
    words[a0++] (pshufb x8; bits: uint64 words, 64 elements each)."""
    p0 = np.uint64(a0)
    p1 = np.uint64(a1)
    m8 = n - n % 8
    for i in range(0, m8, 8):
        m = _byte(bits, i >> 3)
        _expand8(out, i, words, lut, (p1, p0), (m, m ^ np.uint64(0xFF)))
        c = _popcnt(m)
        p1 += c
        p0 += np.uint64(8) - c
    for i in range(m8, n):
        if (bits[i >> 6] >> np.uint64(i & 63)) & np.uint64(1):
            out[i] = words[p1]
            p1 += np.uint64(1)
        else:
            out[i] = words[p0]
            p0 += np.uint64(1)
    return p1


def merge4_two_level(words, s1, s2, s3, base, shift, t1, t2, t3, lut, out, scratch):  # noqa: ANN001, ANN201
    """4 classes as 2 levels of the pshufb 2-way merge: masks (pext), {0,1} and {2,3} merged
    into one buffer (the low group then the high group, padded), then merged by class >= 2."""
    n = base.size
    g2bits, lbits, hbits, mid = scratch
    lbits[:] = 0
    hbits[:] = 0
    nl, nh = split_masks4(base, shift, t1, t2, t3, g2bits, lbits, hbits)
    nl, nh = int(nl), int(nh)
    merge2_bits(words, 0, s1, lbits, nl, lut, mid)
    merge2_bits(words, s2, s3, hbits, nh, lut, mid[nl:])
    merge2_bits(mid, 0, nl, g2bits, n, lut, out)


# ---------------------------------------------------------------------------------------------
# a v3-like chunk decode with K classes: planes joined, SIMD merge, difference undone (3 passes,
# as the codec's _ungroup_undiff2 with its gather replaced by the merge)
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def decode2_simd(hi, lo, base, shift, t, n0, lut2, words, out):
    for i in range(hi.size):
        words[i] = (np.uint16(hi[i]) << np.uint16(8)) | np.uint16(lo[i])
    p1 = merge2_ymm8(words, n0, base, shift, t, lut2, out)
    for i in range(base.size):
        out[i] = _numba._uncode2(np.int64(out[i]), np.int64(base[i]))
    return p1


@njit(cache=True, nogil=True)
def decode4_simd(hi, lo, base, shift, s1, s2, s3, t1, t2, t3, lut, words, out):
    for i in range(hi.size):
        words[i] = (np.uint16(hi[i]) << np.uint16(8)) | np.uint16(lo[i])
    p3 = merge4_vpshufb16(words, s1, s2, s3, base, shift, t1, t2, t3, lut, out)
    for i in range(base.size):
        out[i] = _numba._uncode2(np.int64(out[i]), np.int64(base[i]))
    return p3


@njit(cache=True, nogil=True)
def decode2_fused(hi, lo, base, shift, t, n0, lut2, out):
    """One pass: planes joined, merged and the difference undone in registers, 16 elements a
    step (:func:`_expand16_planes_undiff`). hi and lo carry 16 bytes of padding."""
    n = base.size
    p0 = np.uint64(0)
    p1 = np.uint64(n0)
    keep, gt = _keep_gt(shift, t)
    m16 = n - n % 16
    for i in range(0, m16, 16):
        mm = _gt_masks16(base, i, keep, (gt,))
        _expand16_planes_undiff(out, i, hi, lo, lut2, p1, p0, mm, base)
        c = _popcnt(mm)
        p1 += c
        p0 += np.uint64(16) - c
    for i in range(m16, n):
        c = np.uint64(((base[i] >> shift) & np.uint16(0xFF)) >= t)
        msk = np.uint64(0) - c
        p = (p1 & msk) | (p0 & ~msk)
        out[i] = _numba._uncode2((np.int64(hi[p]) << 8) | np.int64(lo[p]), np.int64(base[i]))
        p1 += c
        p0 += np.uint64(1) - c
    return p1


# ---------------------------------------------------------------------------------------------
# floors and the codec's kernels
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def copy_loop(src, out):
    for i in range(out.size):
        out[i] = src[i]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def make_base(n: int, shares: list[float], rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, ...]]:
    """uint16 base words whose exponent byte falls in class k with probability shares[k], in a
    random order, and the thresholds. Exponents near bf16 weights' (~ 2^-7 .. 2^-2): class k
    draws from 3 exponents of its own; the mantissa and sign random."""
    k = len(shares)
    cls = rng.choice(k, size=n, p=np.asarray(shares) / sum(shares))
    e = (116 + 3 * cls + rng.integers(0, 3, size=n)).astype(np.uint16)
    base = (e << 7) | rng.integers(0, 128, size=n, dtype=np.uint16) | (rng.integers(0, 2, size=n, dtype=np.uint16) << 15)
    ts = tuple(116 + 3 * j for j in range(1, k))
    return base.astype(np.uint16), ts


def make_bf16_base(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, ...]]:
    """bf16 words of N(0, 0.02) weights and k - 1 exponent thresholds at the exponent's quantiles."""
    f = (rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)).view(np.uint32)
    base = (f >> 16).astype(np.uint16)
    e = (base >> SHIFT) & 0xFF
    cum = np.cumsum(np.bincount(e, minlength=256))
    ts = tuple(sorted({min(max(int(np.searchsorted(cum, n * q / k, side="right")), 1), 255) for q in range(1, k)}))
    return base, ts


def classes(base: np.ndarray, ts: tuple[int, ...]) -> np.ndarray:
    e = (base >> SHIFT) & 0xFF
    return sum((e >= t).astype(np.int64) for t in ts)


def grouped(target: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """target's words stably grouped by key (padded by PAD words), and each key's count."""
    order = np.argsort(key, kind="stable")
    words = np.zeros(target.size + PAD, dtype=np.uint16)
    words[: target.size] = target[order]
    return words, np.bincount(key, minlength=int(key.max(initial=0)) + 1)


def ts4(ts: tuple[int, ...]) -> tuple[int, int, int]:
    t = list(ts) + [256] * (3 - len(ts))  # 256: a class that never occurs
    return t[0], t[1], t[2]


# ---------------------------------------------------------------------------------------------
# the variants, as calls on one prepared case
# ---------------------------------------------------------------------------------------------


class Case:
    def __init__(self, name: str, base: np.ndarray, ts: tuple[int, ...], rng: np.random.Generator) -> None:
        self.name, self.base, self.ts = name, base, ts
        n = self.n = base.size
        self.target = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
        cls = classes(base, ts)
        self.words, _ = grouped(self.target, cls)
        cnt = np.bincount(cls, minlength=len(ts) + 1)
        self.starts = np.concatenate([[0], np.cumsum(cnt)]).astype(np.int64)
        self.shares = cnt / max(n, 1)
        # the codec's 256 contexts: the same target grouped by the full exponent byte
        ctx = ((base >> SHIFT) & 0xFF).astype(np.int64)
        self.words256, _ = grouped(self.target, ctx)
        self.counts256 = np.bincount(ctx, minlength=256).astype(np.int64)
        self.pos256 = np.concatenate([[0], np.cumsum(self.counts256)[:-1]]).astype(np.uint32)
        self.out = np.empty(n, dtype=np.uint16)
        self.lut = expand_lut()
        self.lut2 = pair_lut()
        self.bctl, self.bmask = blend_luts()
        self.words_fp = np.concatenate([np.zeros(PAD, np.uint16), self.words])  # padding in front too
        self.lanes = lane_lut()
        nw = (n + 63) // 64 + 2
        self.scratch = (np.zeros(nw, np.uint64), np.zeros(nw, np.uint64), np.zeros(nw, np.uint64),
                        np.zeros(n + 2 * PAD, np.uint16))
        # v3 / v1 whole-chunk decodes: planes of the codec's own difference
        self.hi = np.empty(n, np.uint8)
        self.lo = np.empty(n, np.uint8)
        self.v3words = np.empty(2 * n + PAD, np.uint16)
        tmp = np.empty(n, np.uint16)
        _numba._diff_group_split2(self.target, base, np.uint16(SHIFT), np.uint16(0xFF), self.counts256,
                                  self.hi, self.lo, tmp, self.v3words)
        self.hi1 = np.empty(n, np.uint8)
        self.lo1 = np.empty(n, np.uint8)
        code = np.empty(n, np.uint16)
        _v1_code(self.target, base, code)
        self.hi1[:] = (code >> 8).astype(np.uint8)
        self.lo1[:] = (code & 0xFF).astype(np.uint8)
        gcode, _ = grouped(code, cls)  # the K-class layout's planes: the difference grouped by class
        self.hik = (gcode >> 8).astype(np.uint8)  # (PAD bytes of padding each)
        self.lok = (gcode & 0xFF).astype(np.uint8)
        self.kwords = np.zeros(n + PAD, np.uint16)

    def variants(self) -> dict:
        """name -> (callable, check): check True where out must equal the target."""
        b, w, o, lut = self.base, self.words, self.out, self.lut
        sh = np.uint16(SHIFT)
        k = len(self.ts) + 1
        v = {}
        if k == 2:
            n0 = np.uint64(self.starts[1])
            t = np.uint16(self.ts[0])
            v["2-way scalar, branchy (reference)"] = lambda: merge2_scalar(w, n0, b, sh, t, o)
            v["2-way scalar, branchless x4"] = lambda: merge2_branchless(w, n0, b, sh, t, o)
            v["2-way pdep x4 (BMI2)"] = lambda: merge2_pdep4(w, n0, b, sh, t, self.lanes, o)
            v["2-way pshufb x8 (SSSE3)"] = lambda: merge2_pshufb8(w, n0, b, sh, t, lut, o)
            v["2-way pshufb x8, 16 a step"] = lambda: merge2_pshufb8x2(w, n0, b, sh, t, lut, o)
            v["2-way vpshufb x16 (AVX2)"] = lambda: merge2_vpshufb16(w, n0, b, sh, t, lut, o)
            v["2-way pshufb x8, paired LUT row, 16 a step"] = lambda: merge2_pair8(w, n0, b, sh, t, self.lut2, o)
            v["2-way both streams in one ymm, 16 a step"] = lambda: merge2_ymm8(w, n0, b, sh, t, self.lut2, o)
            v["2-way both streams in one ymm, 32 a step"] = lambda: merge2_ymm8x4(w, n0, b, sh, t, self.lut2, o)
            v["2-way blend + pshufb x8 (SSE4.1), 16 a step"] = lambda: merge2_blend8(
                self.words_fp, n0, b, sh, t, self.bctl, self.bmask, o)
            v["2-way blend + vpshufb x16 (AVX2), 32 a step"] = lambda: merge2_blend16(
                self.words_fp, n0, b, sh, t, self.bctl, self.bmask, o)
        else:
            s1, s2, s3 = (np.uint64(x) for x in self.starts[1:4])
            t1, t2, t3 = (np.uint16(x) for x in ts4(self.ts))
            v["4-way scalar, branchy (reference)"] = lambda: merge4_scalar(w, s1, s2, s3, b, sh, t1, t2, t3, o)
            v["4-way scalar, branchless"] = lambda: merge4_branchless(w, s1, s2, s3, b, sh, t1, t2, t3, o)
            v["4-way pshufb x8, one pass"] = lambda: merge4_pshufb8(w, s1, s2, s3, b, sh, t1, t2, t3, lut, o)
            v["4-way stream pairs in one ymm x8, one pass"] = lambda: merge4_pairs8(
                w, s1, s2, s3, b, sh, t1, t2, t3, lut, o)
            v["4-way vpshufb x16, one pass"] = lambda: merge4_vpshufb16(w, s1, s2, s3, b, sh, t1, t2, t3, lut, o)
            v["4-way as 2 levels of pshufb x8 (+pext masks)"] = lambda: merge4_two_level(
                w, s1, s2, s3, b, sh, t1, t2, t3, lut, o, self.scratch)
        pos = self.pos256
        w256 = self.words256
        fm = np.uint16(0xFF)
        v["codec _gather2, 256 contexts"] = lambda: _numba._gather2(w256, b, sh, fm, pos.copy(), o)
        return v

    def extras(self) -> dict:
        """Whole-chunk decodes (out = the target) and the floors (out = the grouped words)."""
        sh, fm = np.uint16(SHIFT), np.uint16(0xFF)
        n = self.n
        src = self.words[:n]
        o = self.out
        if len(self.ts) == 1:
            t, n0 = np.uint16(self.ts[0]), np.uint64(self.starts[1])
            dec = {"2-class chunk decode: join + ymm merge + undiff": lambda: decode2_simd(
                self.hik[:n], self.lok[:n], self.base, sh, t, n0, self.lut2, self.kwords, o),
                   "2-class chunk decode fused: join, ymm merge, undiff in one pass": lambda: decode2_fused(
                self.hik, self.lok, self.base, sh, t, n0, self.lut2, o)}
        else:
            s1, s2, s3 = (np.uint64(x) for x in self.starts[1:4])
            t1, t2, t3 = (np.uint16(x) for x in ts4(self.ts))
            dec = {"4-class chunk decode: join + vpshufb x16 merge + undiff": lambda: decode4_simd(
                self.hik[:n], self.lok[:n], self.base, sh, s1, s2, s3, t1, t2, t3, self.lut, self.kwords, o)}
        return {
            **dec,
            "codec v3 chunk: _ungroup_undiff2 (join + gather + undiff)": lambda: _numba._ungroup_undiff2(
                self.hi, self.lo, self.base, sh, fm, self.counts256, o, self.v3words),
            "codec v1 chunk: _join_undiff2 (join + undiff)": lambda: _numba._join_undiff2(self.hi1, self.lo1, self.base, o),
            "memcpy (np.copyto)": lambda: np.copyto(o, src),
            "copy loop (numba)": lambda: copy_loop(src, o),
        }


@njit(cache=True, nogil=True)
def _v1_code(target, base, out):
    for i in range(out.size):
        out[i] = _numba._code2(np.int64(target[i]), np.int64(base[i]))


# ---------------------------------------------------------------------------------------------
# checks and timing
# ---------------------------------------------------------------------------------------------


MIXES2 = [("2 classes 50/50", [0.5, 0.5]), ("2 classes 80/20", [0.8, 0.2]), ("2 classes 95/5", [0.95, 0.05])]
MIXES4 = [("4 classes 40/30/20/10", [0.4, 0.3, 0.2, 0.1]), ("4 classes 70/20/7/3", [0.7, 0.2, 0.07, 0.03])]


def cases(n: int, rng: np.random.Generator) -> list[Case]:
    out = [Case(name, *make_base(n, shares, rng), rng) for name, shares in MIXES2]
    out.append(Case("2 classes bf16 N(0,.02), median", *make_bf16_base(n, 2, rng), rng))
    out += [Case(name, *make_base(n, shares, rng), rng) for name, shares in MIXES4]
    out.append(Case("4 classes bf16 N(0,.02), quartiles", *make_bf16_base(n, 4, rng), rng))
    return out


def check(rng: np.random.Generator) -> int:
    """Every variant against the target on odd lengths; the codec's v3/v1 decodes too."""
    done = 0
    for n in (0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 1000, 4097, 65537, 100003):
        for c in cases(n, rng):
            for name, f in c.variants().items():
                c.out[:] = 0xABCD
                f()
                assert np.array_equal(c.out, c.target), (name, c.name, n)
                done += 1
            for name, f in list(c.extras().items())[:-2]:
                c.out[:] = 0xABCD
                f()
                assert np.array_equal(c.out, c.target), (name, c.name, n)
    return done


def best_ns(f, n: int, repeat: int, batch: int) -> float:  # noqa: ANN001
    f()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(batch):
            f()
        best = min(best, (time.perf_counter_ns() - t0) / batch)
    return best / n


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=25)
    ap.add_argument("--out", type=str, default=None)
    args = ap.parse_args()
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), [])
    say(f"machine: {cpu}, {os.cpu_count()} cores, avx2={'avx2' in flags} bmi2={'bmi2' in flags} "
        f"avx512f={'avx512f' in flags}; python {platform.python_version()}, numpy {np.__version__}")
    rng = np.random.default_rng(12)
    t0 = time.perf_counter()
    nchk = check(rng)
    say(f"checked: {nchk} variant runs bit for bit equal to the target (lengths 0 .. 100003, all mixes) "
        f"in {time.perf_counter() - t0:.1f} s (compile included)")
    say(f"load before: {uptime()}")
    say()
    for n, batch in ((1 << 21, 1), (1 << 16, 32)):
        allcases = cases(n, rng)
        for k in (2, 4):
            cs = [c for c in allcases if c.name.startswith(f"{k} classes")]
            say(f"### {k} classes, {n} elements ({n * 2 / 2**20:g} MiB of words): ns per element, best of "
                f"{args.repeat}" + (f" batches of {batch} calls" if batch > 1 else " calls"))
            say()
            say("| variant | " + " | ".join(c.name[len(f"{k} classes "):] for c in cs) + " |")
            say("|---|" + "---:|" * len(cs))
            say("| (class shares) | " + " | ".join("/".join(f"{x:.2f}" for x in c.shares) for c in cs) + " |")
            rows: dict[str, list[str]] = {}
            for j, c in enumerate(cs):
                for name, f in {**c.variants(), **c.extras()}.items():
                    ns = best_ns(f, n, args.repeat, batch)
                    rows.setdefault(name, ["-"] * len(cs))[j] = f"{ns:.3f}"
                for name, f in list(c.variants().items()) + list(c.extras().items())[:-2]:
                    f()  # still the target at this size
                    assert np.array_equal(c.out, c.target), (name, c.name, n)
            for name, r in rows.items():
                say(f"| {name} | " + " | ".join(r) + " |")
            say()
    say(f"load after: {uptime()}")
    if args.out:
        cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        with open(args.out, "w") as fh:
            fh.write(f"# SIMD merge probe (dev VM)\n\n`{cmd}`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
