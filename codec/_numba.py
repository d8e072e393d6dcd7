"""Compiled (numba) hot loops of the lossless codec: the same bytes as the numpy code, several times faster.

Format v2 groups each chunk's elements by a context byte (the base weight's exponent) before
byte planes + zstd. numpy has no counting sort that returns an order, so the numpy path
(``planes.group_order``: a stable argsort, a gather and a scatter) spends 10-14 ns an element
on what a counting sort does in a few: here a histogram, prefix sums and a stable scatter
straight into the byte planes (and, on decode, the inverse gather straight from them). For the
lossless codec's difference the whole chunk is one pass each way: the exponent, the difference
(ordered ints, subtract, zigzag) and the scatter fused (:func:`diff_group_split`,
:func:`ungroup_undiff`), so no tensor-sized temporary is written and read back (on the dev VM a
fresh tensor-sized array costs more in page faults than the arithmetic).

The numpy functions in ``planes`` and ``lossless`` stay the reference: tests check these kernels
against them byte for byte, and they run where numba does not import (``planes.fast()``).

All kernels are ``nogil``, so the plane pipeline's worker threads run them in parallel, and
``cache=True``, so the compiled code is kept in ``codec/__pycache__`` (or numba's user cache
where that is not writable) and a later process loads it instead of compiling. Every kernel
takes uint8 arrays (the words assembled from their little-endian bytes, width as an argument),
so each compiles once, not once per element dtype. Arithmetic is on uint64 masked to the word's
width: numba types a mix of uint64 and a signed integer as float64, so every constant is a
``np.uint64``.
"""

from __future__ import annotations

import array
import os
import threading

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U8 = np.uint64(8)
_FF = np.uint64(0xFF)


# -- AVX-512 (VBMI2) kernels of the grouped stream -------------------------------------------------------
# Kept in this file on purpose: numba invalidates a cached kernel when its own file changes, not when a
# kernel it calls from another file does, so the kernels and the intrinsics they inline live together.
#
# Format v2/v3 decode ends in a gather: ``out[i] = words[pos[c_i]++]`` with ``c_i`` the base weight's
# exponent, ``words`` the chunk's difference grouped by exponent; the encode's grouping is the inverse
# scatter. Scalar, each is a load-increment-store through ``pos`` per element (~0.8 ns an element on the
# dev VM, the largest stage of either). AVX-512 VBMI2 has the instructions for them: an expand
# (``vpexpandw``) puts the first popcount(mask) words of a vector in the mask's lanes, in order; a
# compress-store writes the mask's lanes contiguously. Per 32 elements: the lanes' exponents compared
# with each of the chunk's K most frequent exponents (those covering 99% of its elements: 9-10 on
# SmolLM2); decode: the group's next 32 words loaded (a plain load: the expand's own memory form measured
# 1.25x slower on Zen 5) and expanded into the block's register under that mask, one store a block;
# encode: one compress-store a frequent exponent (LLVM's generic intrinsic, which compiles on any CPU);
# ``pos`` advanced by the mask's popcount; the few lanes of other exponents one by one as before. A
# fixed loop of K a block, no branch on the data but the rare lanes': on the dev VM's Zen 5 the gather
# takes a third of the scalar one's time, the scatter half (``python benchmarks/probe_x512.py``).
#
# Reads stay inside ``words`` whatever a payload's counts say, by the scalar kernel's argument: group
# c's counter starts at most at n - counts[c] and each expand moves it by the number of base elements
# of exponent c it served, so it never passes 2n; a block's load reads 32 words from it, so ``words``
# holds 2n + X512_SLACK entries (checked). The encode's counts are the base's own histogram.
#
# ``x512_available()`` says whether to use them: numba compiles for the host, whose CPU has AVX-512 BW
# and VBMI2 (as LLVM sees it), and ``DELTASTORE_SIMD`` is not ``0``. The gather's expand is an x86
# intrinsic LLVM cannot emit for other CPUs, so its kernels are compiled only where it is available.

_I1, _I16, _I32, _I64 = ir.IntType(1), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_V32I16, _V32I1 = ir.VectorType(_I16, 32), ir.VectorType(_I1, 32)
#: a chunk's frequent exponents cover this share of its elements (the rest: one by one)
X512_COVER = 0.99
#: and are at most this many (each costs a compare, a load and an expand, or a compress-store, a block)
X512_MAX_K = 16


def _data(context, builder, aty, aval):  # noqa: ANN001, ANN202
    return context.make_array(aty)(context, builder, aval).data


def _fn(builder, name, ret, args):  # noqa: ANN001, ANN202
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _splat(builder, v, n):  # noqa: ANN001, ANN202
    vty = ir.VectorType(v.type, n)
    u = builder.insert_element(ir.Constant(vty, ir.Undefined), v, ir.Constant(_I32, 0))
    return builder.shuffle_vector(u, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(_I32, n), [0] * n))


def _block_args(context, builder, signature, args):  # noqa: ANN001, ANN202
    """What both block intrinsics (arguments ``a, i, b, base, shift, fmask, pos, fctx, k``) start
    from: the data pointers of a, b, pos and fctx, i and k as int64, and the 32 lanes' exponents."""
    a, b, bd, pd, fd = (_data(context, builder, signature.args[j], args[j]) for j in (0, 2, 3, 6, 7))
    at = context.cast(builder, args[1], signature.args[1], types.int64)
    kk = context.cast(builder, args[8], signature.args[8], types.int64)
    v = builder.load(builder.bitcast(builder.gep(bd, [at]), _V32I16.as_pointer()), align=2)
    sh = _splat(builder, context.cast(builder, args[4], signature.args[4], types.uint16), 32)
    fm = _splat(builder, context.cast(builder, args[5], signature.args[5], types.uint16), 32)
    return a, b, pd, fd, at, kk, builder.and_(builder.lshr(v, sh), fm)


_I8 = ir.IntType(8)


def _block64_args(context, builder, signature, args):  # noqa: ANN001, ANN202
    """:func:`_block_args` for 64 elements: the data pointers, i and i + 32, k, and the 64 lanes'
    exponents as one byte each (<64 x i8>; a context is one byte: fmask <= 0xFF)."""
    od, wd, pd, fd, at, kk, ctx0 = _block_args(context, builder, signature, args)
    bd = _data(context, builder, signature.args[3], args[3])
    at1 = builder.add(at, ir.Constant(_I64, 32))
    v1 = builder.load(builder.bitcast(builder.gep(bd, [at1]), _V32I16.as_pointer()), align=2)
    sh = _splat(builder, context.cast(builder, args[4], signature.args[4], types.uint16), 32)
    fm = _splat(builder, context.cast(builder, args[5], signature.args[5], types.uint16), 32)
    v8 = ir.VectorType(_I8, 32)
    c8 = builder.shuffle_vector(builder.trunc(ctx0, v8), builder.trunc(builder.and_(builder.lshr(v1, sh), fm), v8),
                                ir.Constant(ir.VectorType(_I32, 64), list(range(64))))
    return od, wd, pd, fd, at, at1, kk, c8


@intrinsic
def _block64(typingctx, out, i, words, base, shift, fmask, pos, fctx, k):  # noqa: ANN001, ANN202, ARG001
    """For the 64 elements at ``i``: every lane whose exponent is one of ``fctx[:k]`` gets its word
    by an expand-load from ``words[pos[c]:]`` (the first 32 lanes' from there, the next 32 from
    where those end; ``pos[c]`` advanced by the lanes served), the 64 one-byte exponents compared
    with each frequent one in one compare; returns the mask of the other lanes (uint64, bit j =
    lane j). 64 a block rather than 32: the expands (one a frequent exponent and 32 lanes) bound the
    gather, and the rest of a step (compare, counter, masks) is paid once for both halves: 0.92-0.94x
    the gather's time of 32 a block (benchmarks/probe_gather64.py, run 60 of
    benchmarks/results/lossless_amd-epyc-2c.md)."""
    sig = types.uint64(out, i, words, base, shift, fmask, pos, fctx, k)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202, ARG001
        od, wd, pd, fd, at, at1, kk, c8 = _block64_args(context, builder, signature, args)
        expand = _fn(builder, "llvm.x86.avx512.mask.expand.v32i16", _V32I16, [_V32I16, _V32I16, _V32I1])
        popc = _fn(builder, "llvm.ctpop.i32", _I32, [_I32])
        served = cgutils.alloca_once_value(builder, ir.Constant(_I64, 0))
        acc0 = cgutils.alloca_once_value(builder, ir.Constant(_V32I16, None))  # the block's words, in registers
        acc1 = cgutils.alloca_once_value(builder, ir.Constant(_V32I16, None))
        with cgutils.for_range(builder, kk) as loop:
            c = builder.load(builder.gep(fd, [loop.index]))
            bits = builder.bitcast(builder.icmp_unsigned("==", c8, _splat(builder, builder.trunc(c, _I8), 64)), _I64)
            lo = builder.trunc(bits, _I32)
            hi = builder.trunc(builder.lshr(bits, ir.Constant(_I64, 32)), _I32)
            slot = builder.gep(pd, [builder.zext(c, _I64)])
            p = builder.load(slot)
            src = builder.bitcast(builder.gep(wd, [builder.zext(p, _I64)]), _V32I16.as_pointer())
            builder.store(builder.call(expand, [builder.load(src, align=2), builder.load(acc0), builder.bitcast(lo, _V32I1)]), acc0)
            p1 = builder.add(p, builder.call(popc, [lo]))
            src1 = builder.bitcast(builder.gep(wd, [builder.zext(p1, _I64)]), _V32I16.as_pointer())
            builder.store(builder.call(expand, [builder.load(src1, align=2), builder.load(acc1), builder.bitcast(hi, _V32I1)]), acc1)
            builder.store(builder.add(p1, builder.call(popc, [hi])), slot)
            builder.store(builder.or_(builder.load(served), bits), served)
        builder.store(builder.load(acc0), builder.bitcast(builder.gep(od, [at]), _V32I16.as_pointer()), align=2)  # the rare
        builder.store(builder.load(acc1), builder.bitcast(builder.gep(od, [at1]), _V32I16.as_pointer()), align=2)  # lanes after
        return builder.xor(builder.load(served), ir.Constant(_I64, 0xFFFFFFFFFFFFFFFF))

    return sig, codegen


@intrinsic
def _lowest(typingctx, x):  # noqa: ANN001, ANN202, ARG001
    """The index of the lowest set bit of a nonzero 32- or 64-bit mask (uint32 or uint64)."""
    sig = types.int64(x)
    wide = getattr(x, "bitwidth", 32) == 64

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202, ARG001
        t, ty = (_I64, types.uint64) if wide else (_I32, types.uint32)
        v = context.cast(builder, args[0], signature.args[0], ty)
        tz = builder.call(_fn(builder, f"llvm.cttz.i{t.width}", t, [t, _I1]), [v, ir.Constant(_I1, 1)])
        return tz if wide else builder.zext(tz, _I64)

    return sig, codegen


#: entries ``words`` must have beyond twice the chunk: each frequent exponent's 32 words are read
#: by one plain 64-byte load from its position (the expand then uses the first popcount of them)
X512_SLACK = 32


@njit(cache=True, nogil=True)
def gather2_x512(words, base, shift, fmask, pos, out, fctx):
    """``out[i] = words[pos[context of base[i]]++]`` for every i (as ``_numba._gather2``), the
    frequent exponents ``fctx`` (uint16) by expands of 32 lanes (:func:`_block64`: two a block of
    64 elements), the rest one by one. ``words`` must hold ``2 * n + X512_SLACK`` entries:
    positions stay under 2n (the section's note above), and an expand reads 32 words from one."""
    n = base.size
    if words.size < 2 * n + X512_SLACK:
        raise ValueError("gather2_x512: words must hold 2 * n + X512_SLACK entries")
    k = fctx.size
    m = n - n % 64
    for i in range(0, m, 64):
        rare = _block64(out, i, words, base, shift, fmask, pos, fctx, k)
        while rare != np.uint64(0):
            j = i + _lowest(rare)
            c = (base[j] >> shift) & fmask
            out[j] = words[pos[c]]
            pos[c] += np.uint32(1)
            rare &= rare - np.uint64(1)
    for i in range(m, n):
        c = (base[i] >> shift) & fmask
        out[i] = words[pos[c]]
        pos[c] += np.uint32(1)


@intrinsic
def _compress_block32(typingctx, words, i, src, base, shift, fmask, pos, fctx, k):  # noqa: ANN001, ANN202, ARG001
    """The encode's inverse of the gather's expands (:func:`_block64`, 32 lanes a half): the 32 words ``src[i:i + 32]`` whose exponent is
    one of ``fctx[:k]`` compress-stored at ``words[pos[c]:]`` (exactly the lanes of c, in order;
    ``pos[c]`` advanced); returns the mask of the other lanes. Where the host has VBMI2: a register
    compress and a masked store of the first popcount lanes (:func:`_host_vbmi2`: on Zen 4 the
    memory form of the compress, which LLVM's generic compress-store becomes, is microcoded: the
    whole grouping ran 5x slower than with the scalar scatter); elsewhere LLVM's generic
    compress-store, lowered to scalar stores on a CPU without VBMI2 (correct), so this compiles anywhere."""
    sig = types.uint32(words, i, src, base, shift, fmask, pos, fctx, k)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202, ARG001
        wd, sd, pd, fd, at, kk, ctx = _block_args(context, builder, signature, args)
        data = builder.load(builder.bitcast(builder.gep(sd, [at]), _V32I16.as_pointer()), align=2)
        reg = _host_vbmi2()
        if reg:  # compress in a register, then store its first popcount lanes (see _host_vbmi2)
            comp = _fn(builder, "llvm.x86.avx512.mask.compress.v32i16", _V32I16, [_V32I16, _V32I16, _V32I1])
            mstore = _fn(builder, "llvm.masked.store.v32i16.p0", ir.VoidType(), [_V32I16, _V32I16.as_pointer(), _I32, _V32I1])
        else:
            store = _fn(builder, "llvm.masked.compressstore.v32i16", ir.VoidType(), [_V32I16, wd.type, _V32I1])
        served = cgutils.alloca_once_value(builder, ir.Constant(_I32, 0))
        with cgutils.for_range(builder, kk) as loop:
            c = builder.load(builder.gep(fd, [loop.index]))
            lanes = builder.icmp_unsigned("==", ctx, _splat(builder, c, 32))
            slot = builder.gep(pd, [builder.zext(c, _I64)])
            p = builder.load(slot)
            dst = builder.gep(wd, [builder.zext(p, _I64)])
            bits = builder.bitcast(lanes, _I32)
            n = builder.ctpop(bits)
            if reg:
                packed = builder.call(comp, [data, ir.Constant(_V32I16, None), lanes])
                # the first n lanes: ~0 >> (32 - n), and none for n = 0 (a shift by 32 is poison)
                first = builder.select(builder.icmp_unsigned("==", n, ir.Constant(_I32, 0)), ir.Constant(_I32, 0),
                                       builder.lshr(ir.Constant(_I32, 0xFFFFFFFF), builder.sub(ir.Constant(_I32, 32), n)))
                builder.call(mstore, [packed, builder.bitcast(dst, _V32I16.as_pointer()), ir.Constant(_I32, 2),
                                      builder.bitcast(first, _V32I1)])
            else:
                builder.call(store, [data, dst, lanes])
            builder.store(builder.add(p, n), slot)
            builder.store(builder.or_(builder.load(served), bits), served)
        return builder.xor(builder.load(served), ir.Constant(_I32, 0xFFFFFFFF))

    return sig, codegen


@njit(cache=True, nogil=True)
def scatter2_x512(src, base, shift, fmask, pos, words, fctx):
    """``words[pos[context of base[i]]++] = src[i]`` for every i (the encode's scatter, inverse of
    :func:`gather2_x512`), the frequent exponents by compress-stores 32 lanes at a time, the rest
    one by one. Writes exactly each group's elements (positions from the base's own histogram)."""
    n = base.size
    k = fctx.size
    m = n - n % 32
    for i in range(0, m, 32):
        rare = np.uint32(_compress_block32(words, i, src, base, shift, fmask, pos, fctx, k))
        while rare != np.uint32(0):
            j = i + _lowest(rare)
            c = (base[j] >> shift) & fmask
            words[pos[c]] = src[j]
            pos[c] += np.uint32(1)
            rare &= rare - np.uint32(1)
    for i in range(m, n):
        c = (base[i] >> shift) & fmask
        words[pos[c]] = src[i]
        pos[c] += np.uint32(1)


@njit(cache=True, nogil=True)
def x512_frequent(counts):
    """The chunk's most frequent exponents (uint16, most frequent first) that together cover
    :data:`X512_COVER` of its elements (``counts``: int64[256]), at most :data:`X512_MAX_K`. Which
    exponents the AVX-512 kernels take changes their speed only, never the bytes; compiled, as the
    encode's chunk kernels call it (they count the base there) and the decode's kernels do.

    By selection over the present exponents (ties: the lower exponent first), not a sort of all
    256 counts: a chunk has 20-40, and ``np.argsort`` of the 256 took ~3 us a call, ~10 us a tensor
    inside the decode loop (dev VM, 150-step fine-tune; ``probe_decode_overhead.py --stages``)."""
    present = np.empty(256, dtype=np.int64)  # the present exponents' counts, then -1 once taken
    ctx = np.empty(256, dtype=np.uint16)
    p = 0
    total = 0
    for c in range(256):
        if counts[c] > 0:
            present[p] = counts[c]
            ctx[p] = c
            p += 1
            total += counts[c]
    out = np.empty(X512_MAX_K, dtype=np.uint16)
    k = 0
    got = 0
    while k < X512_MAX_K and k < p and got < X512_COVER * total:
        best = 0
        for j in range(1, p):
            if present[j] > present[best]:
                best = j
        out[k] = ctx[best]
        got += present[best]
        present[best] = -1
        k += 1
    return out[:k]


_X512: bool | None = None


def _host_vbmi2() -> bool:
    """Whether LLVM compiles for a host with AVX-512 BW and VBMI2 (numba's own target: the host
    unless NUMBA_CPU_NAME says otherwise, e.g. "generic" for a portable cache: then LLVM would not
    emit the instructions, and the scalar kernels are faster). :func:`x512_available` asks it once a
    process; it is also read when a kernel is generated: it picks the scatter's form (:func:`_compress_block32`). Measured on the dev VMs (run 53 of
    benchmarks/results/lossless_amd-epyc-2c.md): on a Zen 4 EPYC the generic compress-store (the
    memory form of vpcompressw, microcoded there) made the grouping 9-11 ns an element against the
    scalar scatter's 1.6-2.4, and the register form 1.6-2.1; on the Zen 5 of run 52 the generic
    form's scatter was 0.41 against the scalar 0.81 ns, and the register form 0.38."""
    try:
        from llvmlite import binding
        from numba.core import config

        feats = binding.get_host_cpu_features()
        return config.CPU_NAME in (None, "host") and bool(feats.get("avx512bw")) and bool(feats.get("avx512vbmi2"))
    except Exception:  # noqa: BLE001 - no features known: the scalar kernels, the generic form
        return False


def x512_available() -> bool:
    """Whether the grouped kernels take their AVX-512 paths (:func:`gather2_x512`, :func:`scatter2_x512`):
    the host CPU has AVX-512 BW and VBMI2 and ``DELTASTORE_SIMD`` is not ``0`` (read once a process)."""
    global _X512
    if _X512 is None:
        _X512 = os.environ.get("DELTASTORE_SIMD", "1").strip() != "0" and _host_vbmi2()
    return _X512


@njit(cache=True, nogil=True, inline="always")
def _mask(width):
    if width == 8:
        return ~_U0
    return (_U1 << np.uint64(8 * width)) - _U1


@njit(cache=True, nogil=True, inline="always")
def _load(a, i, width):
    """Word i of the little-endian bytes ``a``."""
    if width == 2:
        return np.uint64(a[2 * i]) | (np.uint64(a[2 * i + 1]) << _U8)
    if width == 1:
        return np.uint64(a[i])
    w = _U0
    for k in range(width - 1, -1, -1):
        w = (w << _U8) | np.uint64(a[width * i + k])
    return w


@njit(cache=True, nogil=True, inline="always")
def _store(a, i, width, w):
    if width == 2:
        a[2 * i] = np.uint8(w & _FF)
        a[2 * i + 1] = np.uint8((w >> _U8) & _FF)
        return
    for k in range(width):
        a[width * i + k] = np.uint8((w >> np.uint64(8 * k)) & _FF)


@njit(cache=True, nogil=True, inline="always")
def _ordered(x, top, mag):
    """Float bits -> an integer in float order (flip the magnitude bits of negatives). Involution."""
    return x ^ ((_U0 - (x >> top)) & mag)


@njit(cache=True, nogil=True, inline="always")
def _starts_into(counts, pos):
    """pos[c] = elements of the contexts below c (each context's first sorted position)."""
    s = 0
    for c in range(256):
        pos[c] = s
        s += counts[c]
    return pos


@njit(cache=True, nogil=True, inline="always")
def _starts(counts):
    return _starts_into(counts, np.empty(256, dtype=np.int64))


@njit(cache=True, nogil=True)
def _histogram(ctx, counts):
    """counts[c] = number of elements of context c. Four partial histograms, so a run of one
    context does not wait on one counter's store."""
    n = ctx.size
    part = np.zeros((4, 256), dtype=np.int64)
    m = n - n % 4
    for i in range(0, m, 4):
        part[0, ctx[i]] += 1
        part[1, ctx[i + 1]] += 1
        part[2, ctx[i + 2]] += 1
        part[3, ctx[i + 3]] += 1
    for i in range(m, n):
        part[0, ctx[i]] += 1
    for c in range(256):
        counts[c] = part[0, c] + part[1, c] + part[2, c] + part[3, c]


@njit(cache=True, nogil=True)
def _exp_histogram(base, width, shift, fmask, counts):
    """counts of the exponent contexts ``(word >> shift) & fmask`` of the words in ``base``."""
    n = base.size // width
    part = np.zeros((2, 256), dtype=np.int64)
    m = n - n % 2
    for i in range(0, m, 2):
        part[0, (_load(base, i, width) >> shift) & fmask] += 1
        part[1, (_load(base, i + 1, width) >> shift) & fmask] += 1
    for i in range(m, n):
        part[0, (_load(base, i, width) >> shift) & fmask] += 1
    for c in range(256):
        counts[c] = part[0, c] + part[1, c]


def context_counts(ctx: np.ndarray) -> np.ndarray:
    """Elements per context (int64[256]) of one chunk's contexts (uint8)."""
    counts = np.empty(256, dtype=np.int64)
    _histogram(ctx, counts)
    return counts


@njit(cache=True, nogil=True)
def _group_split(raw, ctx, counts, width, rotate, out):
    """Stable counting-sort scatter of the words in ``raw`` by ``ctx`` straight into byte planes:
    ``out[k, p]`` = byte k (most significant first) of the (rotated) word at sorted position p."""
    pos = _starts(counts)
    mask = _mask(width)
    top = np.uint64(8 * width - 1)
    for i in range(ctx.size):
        c = ctx[i]
        p = pos[c]
        pos[c] = p + 1
        w = _load(raw, i, width)
        if rotate:
            w = ((w << _U1) | (w >> top)) & mask
        for k in range(width):
            out[k, p] = np.uint8((w >> np.uint64(8 * (width - 1 - k))) & _FF)


@njit(cache=True, nogil=True)
def _ungroup_join(planes, ctx, counts, width, rotate, out):
    """Inverse of :func:`_group_split`: the word of element i from the planes at its sorted position."""
    pos = _starts(counts)
    mask = _mask(width)
    top = np.uint64(8 * width - 1)
    for i in range(ctx.size):
        c = ctx[i]
        p = pos[c]
        pos[c] = p + 1
        w = _U0
        for k in range(width):
            w = (w << _U8) | np.uint64(planes[k, p])
        if rotate:
            w = ((w >> _U1) | (w << top)) & mask
        _store(out, i, width, w)


def group_split(raw: np.ndarray, ctx: np.ndarray, width: int, rotate: bool) -> tuple[np.ndarray, np.ndarray]:
    """(planes, counts): ``planes[k]`` is plane k of the words (uint8 ``raw``) stably grouped by
    context (what ``split_planes`` of ``raw``'s words in ``group_order(ctx)`` gives), ``counts`` the
    elements per context."""
    counts = context_counts(ctx)
    out = np.empty((width, ctx.size), dtype=np.uint8)
    _group_split(raw, ctx, counts, width, bool(rotate and width > 1), out)
    return out, counts


def ungroup_join(planes: np.ndarray, ctx: np.ndarray, counts: np.ndarray, width: int, rotate: bool,
                 out: np.ndarray) -> None:
    """Write into ``out`` (uint8, width bytes per context) the words whose grouped planes are
    ``planes`` (width x n uint8); ``counts`` = :func:`context_counts` of ``ctx``."""
    _ungroup_join(planes, ctx, counts, width, bool(rotate and width > 1), out)


@njit(cache=True, nogil=True, inline="always")
def _put(out, p, z, width):
    """Word z's bytes into the planes at position p, most significant plane first."""
    if width == 2:
        out[0, p] = np.uint8(z >> _U8)
        out[1, p] = np.uint8(z & _FF)
    else:
        for k in range(width):
            out[k, p] = np.uint8((z >> np.uint64(8 * (width - 1 - k))) & _FF)


@njit(cache=True, nogil=True, inline="always")
def _get(planes, p, width):
    if width == 2:
        return (np.uint64(planes[0, p]) << _U8) | np.uint64(planes[1, p])
    u = _U0
    for k in range(width):
        u = (u << _U8) | np.uint64(planes[k, p])
    return u


@njit(cache=True, nogil=True, inline="always")
def _code(target, y, i, width, top, mag, mask):
    """zigzag(ordered(target word i) - ordered(y)) in the width."""
    d = (_ordered(_load(target, i, width), top, mag) - _ordered(y, top, mag)) & mask
    return ((d << _U1) ^ (_U0 - (d >> top))) & mask


@njit(cache=True, nogil=True, inline="always")
def _uncode(u, y, top, mag, mask):
    d = (u >> _U1) ^ (_U0 - (u & _U1))
    return _ordered((d + _ordered(y, top, mag)) & mask, top, mag)


@njit(cache=True, nogil=True)
def _diff_group_split(target, base, width, shift, fmask, counts, out):
    """The lossless codec's encode of one chunk in one pass: code = zigzag(ordered(target) -
    ordered(base)) in the words' width, scattered by the base's exponent context (stable) into
    byte planes ``out`` (width x n, most significant first). ``counts``: :func:`_exp_histogram`.
    Any width; :func:`_diff_group_split2` is the same for 2-byte words, unrolled."""
    pos = _starts(counts)
    mask = _mask(width)
    top = np.uint64(8 * width - 1)
    mag = mask >> _U1
    for i in range(target.size // width):
        y = _load(base, i, width)
        c = (y >> shift) & fmask
        p = pos[c]
        pos[c] = p + 1
        _put(out, p, _code(target, y, i, width, top, mag, mask), width)


@njit(cache=True, nogil=True)
def _ungroup_undiff(planes, base, width, shift, fmask, counts, out):
    """Inverse of :func:`_diff_group_split`: the target's bytes into ``out``."""
    pos = _starts(counts)
    mask = _mask(width)
    top = np.uint64(8 * width - 1)
    mag = mask >> _U1
    for i in range(base.size // width):
        y = _load(base, i, width)
        c = (y >> shift) & fmask
        p = pos[c]
        pos[c] = p + 1
        _store(out, i, width, _uncode(_get(planes, p, width), y, top, mag, mask))


@njit(cache=True, nogil=True, inline="always")
def _code2(t, y):
    """:func:`_code` for 2-byte words (int64 arithmetic, constants folded)."""
    x = t ^ (-(t >> 15) & 0x7FFF)
    y = y ^ (-(y >> 15) & 0x7FFF)
    d = (x - y) & 0xFFFF
    return ((d << 1) ^ -(d >> 15)) & 0xFFFF


@njit(cache=True, nogil=True, inline="always")
def _uncode2(u, y):
    d = (u >> 1) ^ -(u & 1)
    x = (d + (y ^ (-(y >> 15) & 0x7FFF))) & 0xFFFF
    return x ^ (-(x >> 15) & 0x7FFF)


@njit(cache=True, nogil=True)
def _diff_group_split2(target, base, shift, fmask, counts, hi, lo, tmp, words, simd=False):
    """:func:`_diff_group_split` for 2-byte words (bf16, fp16: nearly every weight); target, base,
    tmp, words: uint16 (tmp, words: scratch of n); shift, fmask: uint16; hi, lo: the two planes.
    Three passes: the difference into ``tmp`` (a loop the compiler vectorizes); the scatter of
    whole words into ``words`` at their grouped positions, eight elements a step (two
    :func:`_claim4u`: unsigned positions and contexts, no wrap-around checks; one store an element
    instead of one a plane); the grouped words split into the planes (vectorized). The scatter
    straight into the two planes with signed positions, four a step, was 1.4x slower (dev VM,
    thread CPU time); the one fused loop before it 1.4x slower again. The inverse of
    :func:`_ungroup_undiff2`'s gather. ``simd``: the scatter by AVX-512 compress-stores
    (:func:`scatter2_x512`: 2x faster on the dev VM's Zen 5; the same bytes)."""
    n = target.size
    for i in range(n):
        tmp[i] = _code2(np.int64(target[i]), np.int64(base[i]))
    pos = _starts_into(counts, np.empty(256, dtype=np.uint32))
    if simd:
        scatter2_x512(tmp, base, shift, fmask, pos, words, x512_frequent(counts))
    else:
        m = n - n % 8
        for i in range(0, m, 8):
            p0, p1, p2, p3, q0, q1, q2, q3 = _claim8u(pos, base, i, shift, fmask)
            words[p0] = tmp[i]
            words[p1] = tmp[i + 1]
            words[p2] = tmp[i + 2]
            words[p3] = tmp[i + 3]
            words[q0] = tmp[i + 4]
            words[q1] = tmp[i + 5]
            words[q2] = tmp[i + 6]
            words[q3] = tmp[i + 7]
        for i in range(m, n):
            words[_claim1u(pos, base[i], shift, fmask)] = tmp[i]
    for i in range(n):
        w = words[i]
        hi[i] = np.uint8(w >> np.uint16(8))
        lo[i] = np.uint8(w)


@njit(cache=True, nogil=True, inline="always")
def _claim4u(pos, c0, c1, c2, c3):
    """Sorted positions of four consecutive elements of contexts c0..c3, and ``pos`` (uint32)
    advanced past them. The four loads go out together and equal contexts are resolved by
    comparison: the obvious one-at-a-time loop waits on the previous store to ``pos`` whenever one
    context repeats (most elements of a layer share two or three exponents), about 1.5x slower.
    Unsigned positions: an unsigned index needs no negative-index wrap-around check, which numba
    adds to every load through a signed one (a compare and a select an element here). For equal
    contexts the later store, with the larger position, wins."""
    p0 = pos[c0]
    p1 = pos[c1] + np.uint32(c1 == c0)
    p2 = pos[c2] + np.uint32(c2 == c0) + np.uint32(c2 == c1)
    p3 = pos[c3] + np.uint32(c3 == c0) + np.uint32(c3 == c1) + np.uint32(c3 == c2)
    pos[c0] = p0 + np.uint32(1)
    pos[c1] = p1 + np.uint32(1)
    pos[c2] = p2 + np.uint32(1)
    pos[c3] = p3 + np.uint32(1)
    return p0, p1, p2, p3


@njit(cache=True, nogil=True, inline="always")
def _claim8u(pos, base, i, shift, fmask):
    """:func:`_claim4u` twice: the sorted positions of 2-byte base words i .. i + 7 (the scatter
    of the encode and the gather of the decode walk the same positions)."""
    p0, p1, p2, p3 = _claim4u(pos, _ctx2(base[i], shift, fmask), _ctx2(base[i + 1], shift, fmask),
                              _ctx2(base[i + 2], shift, fmask), _ctx2(base[i + 3], shift, fmask))
    q0, q1, q2, q3 = _claim4u(pos, _ctx2(base[i + 4], shift, fmask), _ctx2(base[i + 5], shift, fmask),
                              _ctx2(base[i + 6], shift, fmask), _ctx2(base[i + 7], shift, fmask))
    return p0, p1, p2, p3, q0, q1, q2, q3


@njit(cache=True, nogil=True, inline="always")
def _claim1u(pos, w, shift, fmask):
    """The position of one 2-byte base word w, and ``pos`` advanced past it."""
    c = _ctx2(w, shift, fmask)
    p = pos[c]
    pos[c] = p + np.uint32(1)
    return p


@njit(cache=True, nogil=True, inline="always")
def _ctx2(w, shift, fmask):
    """The context byte of a 2-byte word (uint16 arithmetic, an unsigned index)."""
    return np.uint8((w >> shift) & fmask)


@njit(cache=True, nogil=True, inline="always")
def _gather2(words, base, shift, fmask, pos, out):
    """out[i] = words[pos[context of base word i]++] for every i, eight elements a step (two
    :func:`_claim4u`: unsigned positions and contexts, no wrap-around checks)."""
    n = base.size
    m = n - n % 8
    for i in range(0, m, 8):
        p0, p1, p2, p3, q0, q1, q2, q3 = _claim8u(pos, base, i, shift, fmask)
        out[i] = words[p0]
        out[i + 1] = words[p1]
        out[i + 2] = words[p2]
        out[i + 3] = words[p3]
        out[i + 4] = words[q0]
        out[i + 5] = words[q1]
        out[i + 6] = words[q2]
        out[i + 7] = words[q3]
    for i in range(m, n):
        out[i] = words[_claim1u(pos, base[i], shift, fmask)]


@njit(cache=True, nogil=True, inline="always")
def _join_starts2(hi, lo, counts, words):
    """The planes joined into grouped words (so the gather follows one stream per context, not
    two), and each context's first position (uint32[256])."""
    for i in range(hi.size):
        words[i] = (np.uint16(hi[i]) << np.uint16(8)) | np.uint16(lo[i])
    return _starts_into(counts, np.empty(256, dtype=np.uint32))


@njit(cache=True, nogil=True, inline="always")
def _undo2(out, base):
    """The difference undone in place, ``out`` (uint16) from its grouped words' natural order (a
    loop the compiler vectorizes)."""
    for i in range(base.size):
        out[i] = _uncode2(np.int64(out[i]), np.int64(base[i]))


@njit(cache=True, nogil=True)
def _ungroup_undiff2(hi, lo, base, shift, fmask, counts, out, words):
    """Inverse of :func:`_diff_group_split2` (out, words: uint16; shift, fmask: uint16). Three
    passes: the planes joined (:func:`_join_starts2`), the gather into ``out`` (:func:`_gather2`),
    the difference undone in place (vectorized). Each position comes from ``counts``, the base's
    own histogram, so a payload cannot steer a read out of ``words``. The gather with signed
    positions and four a step was 1.2x slower (dev VM, one chunk, CPU time)."""
    pos = _join_starts2(hi, lo, counts, words)
    _gather2(words, base, shift, fmask, pos, out)
    _undo2(out, base)


@njit(cache=True, nogil=True, inline="always")
def _ended_and_undone(pos, counts, base, out):
    """After a gather from stored counts: False unless every counter ended where the next context
    starts (the proof that the counts were the base's; ``out`` is then garbage), else the
    difference undone in place (a loop the compiler vectorizes) and True."""
    s = 0
    for c in range(256):
        s += counts[c]
        if np.int64(pos[c]) != s:
            return False
    _undo2(out, base)
    return True


@njit(cache=True, nogil=True)
def _ungroup_undiff2_stored(hi, lo, base, shift, fmask, counts, out, words):
    """:func:`_ungroup_undiff2` with ``counts`` read from the payload (format v3), not counted
    from the base: True if the base's own histogram is ``counts``, else False (``out`` then holds
    garbage). ``counts`` must sum to n (the caller checks); ``words`` has 2n entries, so no read
    leaves it whatever the counts say: context c's counter starts at most at n - counts[c] and
    moves once per base element of context c, at most n times. Each counter ending where the next
    context starts (``pos[c] == start[c] + counts[c]`` for all c) is the proof that the counts
    were the base's."""
    pos = _join_starts2(hi, lo, counts, words)
    _gather2(words, base, shift, fmask, pos, out)
    return _ended_and_undone(pos, counts, base, out)


@njit(cache=True, nogil=True)
def _ungroup_undiff2_x512(hi, lo, base, shift, fmask, counts, out, words, fctx):
    """:func:`_ungroup_undiff2` with the gather by AVX-512 expand-loads (:func:`gather2_x512`)."""
    pos = _join_starts2(hi, lo, counts, words)
    gather2_x512(words, base, shift, fmask, pos, out, fctx)
    _undo2(out, base)


@njit(cache=True, nogil=True)
def _ungroup_undiff2_stored_x512(hi, lo, base, shift, fmask, counts, out, words, fctx):
    """:func:`_ungroup_undiff2_stored` with the gather by AVX-512 expand-loads (:func:`gather2_x512`):
    the same proof that the counts were the base's, the same bound on every read."""
    pos = _join_starts2(hi, lo, counts, words)
    gather2_x512(words, base, shift, fmask, pos, out, fctx)
    return _ended_and_undone(pos, counts, base, out)


@njit(cache=True, nogil=True)
def _exp_histogram2(base, shift, fmask, counts):
    """:func:`_exp_histogram` for 2-byte words (``base`` uint16; shift, fmask uint16): typed word
    loads and unsigned indices, four partial histograms (1.5x faster than the any-width one)."""
    n = base.size
    part = np.zeros((4, 256), dtype=np.uint32)
    m = n - n % 4
    for i in range(0, m, 4):
        part[0, _ctx2(base[i], shift, fmask)] += np.uint32(1)
        part[1, _ctx2(base[i + 1], shift, fmask)] += np.uint32(1)
        part[2, _ctx2(base[i + 2], shift, fmask)] += np.uint32(1)
        part[3, _ctx2(base[i + 3], shift, fmask)] += np.uint32(1)
    for i in range(m, n):
        part[0, _ctx2(base[i], shift, fmask)] += np.uint32(1)
    for c in range(256):
        counts[c] = np.int64(part[0, c]) + np.int64(part[1, c]) + np.int64(part[2, c]) + np.int64(part[3, c])


@njit(cache=True, nogil=True)
def _join_undiff2(hi, lo, base, out):
    """Format v1's decode of 2-byte words: the planes joined and the difference undone, in one
    loop (vectorized; out, base uint16)."""
    for i in range(out.size):
        out[i] = _uncode2((np.int64(hi[i]) << 8) | np.int64(lo[i]), np.int64(base[i]))


def join_undiff(planes: np.ndarray, base: np.ndarray, width: int, out: np.ndarray) -> None:
    """The target's bytes into ``out`` (uint8) from the planes (width x n, most significant first)
    of a v1 difference and the base's bytes (width 2; other widths: :func:`diff_decode`)."""
    if width == 2:
        _join_undiff2(planes[0], planes[1], base.view(np.uint16), out.view(np.uint16))
        return
    words = np.empty(out.size, dtype=np.uint8)
    join_planes(list(planes), width, False, words)
    _diff_decode(words, base, width, out)


@intrinsic
def _call_u64x5(typingctx, fn, a, b, c, d, e):  # noqa: ANN001, ANN202, ARG001
    """``fn(a, b, c, d, e)`` for the address ``fn`` of a C function taking five word-sized arguments
    (pointers or size_t) and returning a size_t: an indirect call, so numba caches the code
    (no ctypes object in it) and the caller passes the address it looked up this process."""
    sig = types.uint64(types.uint64, types.uint64, types.uint64, types.uint64, types.uint64, types.uint64)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202, ARG001
        word = ir.IntType(64)
        target = builder.inttoptr(args[0], ir.FunctionType(word, [word] * 5).as_pointer())
        return builder.call(target, list(args[1:]))

    return sig, codegen


@njit(cache=True, nogil=True)
def _compress_frames(fn, cctx, src, starts, lens, out, offs, sizes):
    s0 = np.uint64(src.ctypes.data)
    o0 = np.uint64(out.ctypes.data)
    for j in range(starts.size):
        sizes[j] = _call_u64x5(fn, cctx, o0 + offs[j], offs[j + 1] - offs[j], s0 + starts[j], lens[j])


def compress_frames(fn: int, cctx: int, src: np.ndarray, starts: np.ndarray, lens: np.ndarray, out: np.ndarray,
                    offs: np.ndarray, sizes: np.ndarray) -> None:
    """zstd's ``ZSTD_compress2`` (at address ``fn``, on the context at ``cctx``) of each segment
    ``src[starts[j] : starts[j] + lens[j]]`` into ``out[offs[j] : offs[j + 1]]``, its result (the
    frame's size, or a zstd error code) into ``sizes[j]``: every frame of a chunk in one call with
    the GIL released throughout (uint64 arrays; src and out uint8). Called per frame from Python,
    each call's release and re-take of the GIL queued 16 workers behind one another (issue 7:
    a 2.1 GB fine-tune add's threads spent 27 s inside the compress stage on 6 s of CPU)."""
    _compress_frames(np.uint64(fn), np.uint64(cctx), src, starts, lens, out, offs, sizes)


@njit(cache=True, nogil=True)
def _merge_groups(counts, min_group, gctx, gn):
    """``planes.merge_groups`` into arrays (first context, elements of each group); returns the
    number of groups. The same groups, tested against it."""
    ng = 0
    open_ = False
    for c in range(256):
        k = counts[c]
        if k == 0:
            continue
        if open_:
            gn[ng - 1] += k
        else:
            gctx[ng] = c
            gn[ng] = k
            ng += 1
        open_ = gn[ng - 1] < min_group
    if ng > 1 and gn[ng - 1] < min_group:
        gn[ng - 2] += gn[ng - 1]
        ng -= 1
    return ng


#: codec._zstd_encode.SPARSE_RATIO (a constant here: numba freezes globals into the cached code, and a
#: test checks the two agree)
SPARSE_RATIO = np.uint64(8)


@njit(cache=True, nogil=True)
def _move_down(out, dst, src, n):
    """out[dst : dst + n] = out[src : src + n] for dst <= src (a memmove: ascending, so overlap is safe)."""
    for i in range(n):
        out[dst + i] = out[src + i]


@njit(cache=True, nogil=True)
def _plane_frame(fn, cctx, out, o, total, plane, pos, k):
    """One plane's payload at ``out[o:]``: its zstd frame, or the plane stored where that is no
    smaller. Returns (size, mode), or (zstd error code, 2)."""
    z = _call_u64x5(fn, cctx, np.uint64(out.ctypes.data) + o, total - o, np.uint64(plane.ctypes.data) + np.uint64(pos), np.uint64(k))
    if z > total - o:  # a zstd error code (near 2**64)
        return z, 2
    if z == 0 or z >= np.uint64(k):  # no gain: the plane stored as it is
        out[o:o + np.uint64(k)] = plane[pos:pos + k]
        return np.uint64(k), 0
    return z, 1


@njit(cache=True, nogil=True)
def _sparse_again(fn, sparse, spare, most, plane, pos, k):
    """The frame of ``plane[pos : pos + k]`` on the context ``sparse``, written into ``spare`` where it
    fits in ``most`` bytes; its size, or 0 where it did not (``most`` < k <= spare's size here)."""
    z2 = _call_u64x5(fn, sparse, np.uint64(spare.ctypes.data), most, np.uint64(plane.ctypes.data) + np.uint64(pos), np.uint64(k))
    return z2 if z2 <= most else _U0


#: planes.ZERO_MODE and planes.ZERO_PROBE (constants here: numba freezes globals into the cached
#: code, which another module's change would not invalidate, and planes must not need numba; a
#: test checks the two agree). Mode 3: the plane is all zero bytes and has no payload; a payload
#: of at most ZERO_PROBE bytes is checked for one (a zero plane's zstd frame is a few RLE blocks:
#: ~13 bytes a 128 KiB block; a plane stored raw is its own length)
ZERO_MODE = 3
ZERO_PROBE = 64


@njit(cache=True, nogil=True)
def _zero_plane(plane, pos, k):
    """Whether ``plane[pos : pos + k]`` is all zero bytes (k > 0), eight at a time."""
    if k <= 0:
        return False
    acc = np.uint8(0)
    i = pos
    end = pos + k
    while i < end and (i & 7) != 0:
        acc |= plane[i]
        i += 1
    if end - i >= 8:
        w = plane[i:i + ((end - i) // 8) * 8].view(np.uint64)
        acc64 = np.uint64(0)
        for j in range(w.size):
            acc64 |= w[j]
        if acc64 != 0:
            return False
        i += w.size * 8
    while i < end:
        acc |= plane[i]
        i += 1
    return acc == 0


@njit(cache=True, nogil=True)
def _diff_groups2(target, base, shift, fmask, min_group, counts, hi, lo, tmp, words, gctx, gn,
                  fn, cctx, sparse, out, modes, sizes, simd=False, zero=False):
    _exp_histogram2(base, shift, fmask, counts)
    _diff_group_split2(target, base, shift, fmask, counts, hi, lo, tmp, words, simd)
    ng = _merge_groups(counts, min_group, gctx, gn)
    spare = tmp.view(np.uint8)  # (the split's scratch, free now: 2 bytes an element, more than a frame of a group needs)
    total = np.uint64(out.size)
    pos = 0
    o = _U0
    j = 0
    for g in range(ng):
        k = gn[g]
        zh, mh = _plane_frame(fn, cctx, out, o, total, hi, pos, k)
        if mh == 2:
            sizes[0] = zh
            return -1
        zl, ml = _plane_frame(fn, cctx, out, o + zh, total, lo, pos, k)
        if ml == 2:
            sizes[0] = zl
            return -1
        # a sparse group (its low plane's frame under 1/SPARSE_RATIO of the plane: a checkpoint
        # series' delta): each zstd frame made again on the other context, kept where smaller
        if sparse != _U0 and ml == 1 and zl * SPARSE_RATIO < np.uint64(k):
            z2 = _sparse_again(fn, sparse, spare, zl - _U1, lo, pos, k)
            if z2 != _U0:
                out[o + zh:o + zh + z2] = spare[:z2]
                zl = z2
            if mh == 1:
                z2 = _sparse_again(fn, sparse, spare, zh - _U1, hi, pos, k)
                if z2 != _U0:  # the low plane's payload moves down, the new frame goes before it
                    _move_down(out, o + z2, o + zh, zl)
                    out[o:o + z2] = spare[:z2]
                    zh = z2
        # zero planes (format v4): no payload; decided on the final payloads, as planes._zero_modes does
        if zero and zl <= ZERO_PROBE and _zero_plane(lo, pos, k):
            ml, zl = ZERO_MODE, _U0
        if zero and zh <= ZERO_PROBE and _zero_plane(hi, pos, k):
            _move_down(out, o, o + zh, zl)  # the low plane's payload moves down to the group's start
            mh, zh = ZERO_MODE, _U0
        modes[j], sizes[j] = mh, zh
        modes[j + 1], sizes[j + 1] = ml, zl
        o += zh + zl
        j += 2
        pos += k
    sizes[j] = o
    return ng


def frames_capacity(n: int) -> int:
    """Bytes :func:`diff_groups2` may write for a chunk of ``n`` 2-byte words: every frame's
    zstd bound, at most 256 groups of two planes."""
    return 2 * n + 2 * (n >> 8) + 2 * 256 * 65


def diff_groups2(target: np.ndarray, base: np.ndarray, shift: int, bits: int, min_group: int, planes: np.ndarray,
                 fn: int, cctx: int, sparse: int, out: np.ndarray, zero: bool = False
                 ) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One chunk of 2-byte words encoded in one call that holds no GIL: what
    :func:`diff_group_split` (the exponent histogram, the difference scattered into the grouped
    planes ``planes``, 2 x n uint8), ``planes.merge_groups`` and ``planes._compress_grouped_planes``
    do in three calls, each group's planes (zstd frames, or stored where a frame would be no
    smaller) written back to back into ``out`` (uint8 scratch of at least :func:`frames_capacity`
    bytes) in the stream's payload order. ``fn``, ``cctx``, ``sparse``: the address of ``ZSTD_compress2``,
    of its context and of the context that makes a sparse group's frames again (0: none; the rule is
    ``_zstd_encode``'s, ``LiteralCompressor.addresses``). Returns (counts, number of
    groups, each group's first context, each group's elements, each payload's mode (1 zstd, 0
    stored, 3 all zero with ``zero``: format v4), each payload's size and, last, their sum); -1
    groups and a zstd error code first in the sizes where zstd failed.

    Why one call: every call into compiled code releases the GIL and takes it back, and on the
    H200 machine's 16 cores the threads queued on the taking back (the GIL held only 38% of a
    fine-tune add, yet most of the chunk workers waiting for it: issue 7)."""
    n = target.size // 2
    counts = np.empty(256, dtype=np.int64)
    gctx = np.empty(256, dtype=np.int64)
    gn = np.empty(256, dtype=np.int64)
    modes = np.empty(2 * 256, dtype=np.uint8)
    sizes = np.empty(2 * 256 + 1, dtype=np.uint64)
    scratch = _scratch16(2 * n)
    ng = _diff_groups2(target.view(np.uint16), base.view(np.uint16), np.uint16(shift), np.uint16((1 << bits) - 1),
                       np.int64(min_group), counts, planes[0], planes[1], scratch[:n], scratch[n:], gctx, gn,
                       np.uint64(fn), np.uint64(cctx), np.uint64(sparse), out, modes, sizes, x512_available(), bool(zero))
    if ng < 0:
        return counts, ng, gctx[:0], gn[:0], modes[:0], sizes[:1]
    return counts, ng, gctx[:ng], gn[:ng], modes[:2 * ng], sizes[:2 * ng + 1]


@njit(cache=True, nogil=True)
def _diff_chunks2(target, base, step, c0, c1, shift, fmask, min_group, hi, lo, tmp, words, counts, ngs, gctx, gn,
                  fn, cctx, sparse, area, cap, modes, sizes, simd=False, zero=False):
    """:func:`_diff_groups2` of chunks ``c0 .. c1 - 1`` (``step`` words each, the last one shorter),
    chunk ``i``'s payloads into ``area[i * cap:]`` and its tables into row ``i`` of the others.
    Returns -1, or the first chunk whose zstd call failed (its error code in ``sizes[i, 0]``)."""
    n_all = target.size
    for i in range(c0, c1):
        a = i * step
        b = min(a + step, n_all)
        n = b - a
        ng = _diff_groups2(target[a:b], base[a:b], shift, fmask, min_group, counts[i], hi[:n], lo[:n], tmp[:n],
                           words[:n], gctx[i], gn[i], fn, cctx, sparse, area[i * cap:(i + 1) * cap], modes[i], sizes[i], simd, zero)
        ngs[i] = ng
        if ng < 0:
            return i
    return -1


@njit(cache=True, nogil=True, inline="always")
def _put_le(out, o, v, nbytes):
    for k in range(nbytes):
        out[o + k] = np.uint8((v >> np.uint64(8 * k)) & np.uint64(0xFF))
    return o + nbytes


@njit(cache=True, nogil=True)
def _assemble2(head, step_bytes, total_bytes, ngs, gctx, gn, modes, sizes, area, cap, out):
    """A grouped stream of 2-byte words from its chunks' tables and payloads (as
    :func:`_diff_chunks2` left them) into ``out``, whose size the caller computed: ``head``, then
    each chunk's ``<QH`` (raw bytes, groups) and each group's ``<BIII`` (first context, elements,
    the two payloads' sizes) and its two modes, then every chunk's payloads in turn. The bytes
    ``planes._pack_grouped`` writes. Returns the bytes written."""
    o = head.size
    out[:o] = head
    for i in range(ngs.size):
        raw = min(step_bytes, total_bytes - i * step_bytes)
        o = _put_le(out, o, np.uint64(raw), 8)
        o = _put_le(out, o, np.uint64(ngs[i]), 2)
        for g in range(ngs[i]):
            o = _put_le(out, o, np.uint64(gctx[i, g]), 1)
            o = _put_le(out, o, np.uint64(gn[i, g]), 4)
            o = _put_le(out, o, sizes[i, 2 * g], 4)
            o = _put_le(out, o, sizes[i, 2 * g + 1], 4)
            out[o] = modes[i, 2 * g]
            out[o + 1] = modes[i, 2 * g + 1]
            o += 2
    for i in range(ngs.size):
        s = np.int64(sizes[i, 2 * ngs[i]])
        out[o:o + s] = area[i * cap:i * cap + s]
        o += s
    return o


_LOCAL = threading.local()


def _scratch16(n: int) -> np.ndarray:
    """A uint16 scratch array of ``n`` elements, kept per thread. A fresh chunk-sized array each
    call is a fresh mmap (glibc maps blocks of 1 MiB and more) and a page fault per 4 KiB on its
    first touch: on the dev VM that doubled the encode kernel's time."""
    buf = getattr(_LOCAL, "buf16", None)
    if buf is None or buf.size < n:
        buf = _LOCAL.buf16 = np.empty(n, dtype=np.uint16)
    return buf[:n]


def exp_counts(base: np.ndarray, width: int, shift: int, bits: int) -> np.ndarray:
    """Elements per exponent context (int64[256]) of the words in ``base`` (uint8)."""
    counts = np.empty(256, dtype=np.int64)
    if width == 2 and base.size < (1 << 33):  # (uint32 partial counts)
        _exp_histogram2(base.view(np.uint16), np.uint16(shift), np.uint16((1 << bits) - 1), counts)
    else:
        _exp_histogram(base, width, np.uint64(shift), np.uint64((1 << bits) - 1), counts)
    return counts


def ungroup_undiff_stored(planes: np.ndarray, base: np.ndarray, shift: int, bits: int, counts: np.ndarray,
                          out: np.ndarray, *, summed: bool = False) -> bool:
    """:func:`ungroup_undiff` of 2-byte words with ``counts`` from the payload (format v3: no
    histogram of the base): False if they are not the base's (nothing else is trusted: see
    :func:`_ungroup_undiff2_stored`). ``counts`` (int64[256]) must sum to the chunk's elements
    (checked here unless ``summed``: the caller has checked it)."""
    n = planes.shape[1]
    if n >= 1 << 31 or (not summed and int(counts.sum()) != n):  # summed: the caller checked the sum
        raise ValueError("stored counts must sum to the chunk's elements (under 2**31)")
    args = (planes[0], planes[1], base.view(np.uint16), np.uint16(shift), np.uint16((1 << bits) - 1), counts,
            out.view(np.uint16), _scratch16(2 * n + X512_SLACK))
    if x512_available():
        return bool(_ungroup_undiff2_stored_x512(*args, x512_frequent(counts)))
    return bool(_ungroup_undiff2_stored(*args))


def diff_group_split(target: np.ndarray, base: np.ndarray, width: int, shift: int, bits: int,
                     out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(planes, counts) of one chunk: what ``group_split(diff_code(target, base), exponent
    contexts of base)`` gives, in one pass. ``out``: a uint8 array (width x n) to write the planes
    into (a caller's per-thread scratch), instead of a new one."""
    counts = exp_counts(base, width, shift, bits)
    n = target.size // width
    if out is None:
        out = np.empty((width, n), dtype=np.uint8)
    elif out.shape != (width, n) or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 of shape {(width, n)}")
    if width == 2 and n < (1 << 32):  # (uint32 positions)
        scratch = _scratch16(2 * n)
        _diff_group_split2(target.view(np.uint16), base.view(np.uint16), np.uint16(shift), np.uint16((1 << bits) - 1),
                           counts, out[0], out[1], scratch[:n], scratch[n:], x512_available())
    else:
        _diff_group_split(target, base, width, np.uint64(shift), np.uint64((1 << bits) - 1), counts, out)
    return out, counts


def ungroup_undiff(planes: np.ndarray, base: np.ndarray, width: int, shift: int, bits: int, counts: np.ndarray,
                   out: np.ndarray) -> None:
    """Inverse of :func:`diff_group_split` into ``out`` (uint8, the target's bytes)."""
    if width == 2 and planes.shape[1] < (1 << 32):  # (uint32 positions)
        args = (planes[0], planes[1], base.view(np.uint16), np.uint16(shift), np.uint16((1 << bits) - 1), counts,
                out.view(np.uint16), _scratch16(2 * planes.shape[1] + X512_SLACK))
        if x512_available():
            _ungroup_undiff2_x512(*args, x512_frequent(counts))
        else:
            _ungroup_undiff2(*args)
    else:
        _ungroup_undiff(planes, base, width, np.uint64(shift), np.uint64((1 << bits) - 1), counts, out)


@njit(cache=True, nogil=True)
def _diff_code(t, b, width, out):
    mask = _mask(width)
    top = np.uint64(8 * width - 1)
    mag = mask >> _U1
    for i in range(t.size // width):
        d = (_ordered(_load(t, i, width), top, mag) - _ordered(_load(b, i, width), top, mag)) & mask
        _store(out, i, width, ((d << _U1) ^ (_U0 - (d >> top))) & mask)


@njit(cache=True, nogil=True)
def _diff_decode(z, b, width, out):
    mask = _mask(width)
    top = np.uint64(8 * width - 1)
    mag = mask >> _U1
    for i in range(z.size // width):
        u = _load(z, i, width)
        d = (u >> _U1) ^ (_U0 - (u & _U1))
        x = (d + _ordered(_load(b, i, width), top, mag)) & mask
        _store(out, i, width, _ordered(x, top, mag))


def diff_code(target: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    """Same bytes as ``lossless.diff_code_numpy`` (uint8 in, uint8 out)."""
    out = np.empty(target.size, dtype=np.uint8)
    _diff_code(target, base, width, out)
    return out


def diff_decode(code: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    """Same bytes as ``lossless.diff_decode_numpy``."""
    out = np.empty(code.size, dtype=np.uint8)
    _diff_decode(code, base, width, out)
    return out


@njit(cache=True, nogil=True)
def _exponents(raw, width, shift, fmask, out):
    for i in range(out.size):
        out[i] = np.uint8((_load(raw, i, width) >> shift) & fmask)


def exponent_contexts(raw: np.ndarray, width: int, shift: int, bits: int) -> np.ndarray:
    """``(word >> shift) & (2**bits - 1)`` per word of ``raw`` (uint8), as uint8 (bits <= 8)."""
    out = np.empty(raw.size // width, dtype=np.uint8)
    _exponents(raw, width, np.uint64(shift), np.uint64((1 << bits) - 1), out)
    return out


# -- plain byte planes (format b"DSP1": every tensor object of a base model) ---------------------
# One call a chunk, with the GIL released for all of it, about 10x faster than numpy's few calls a
# chunk on one core. Used where the process has loaded these kernels anyway (planes._loaded): a
# fine-tune's add or checkout, whose lossless codec needs them, or a mount after its warm-up.


@njit(cache=True, nogil=True)
def _split2(words, rotate, hi, lo):
    """2-byte words (uint16: bf16, fp16, int16) into their high and low byte planes, of the words
    rotated left by one bit with ``rotate``. Typed words, not bytes: the compiler vectorizes this
    loop (0.06 ns an element on the dev VM), where assembling each word from two byte loads does
    not (2.5 ns). A file window at an odd offset gives an unaligned view, which numba handles."""
    for i in range(hi.size):
        w = np.uint16(words[i])
        if rotate:
            w = np.uint16((w << np.uint16(1)) | (w >> np.uint16(15)))
        hi[i] = np.uint8(w >> np.uint16(8))
        lo[i] = np.uint8(w)


@njit(cache=True, nogil=True)
def _join2(hi, lo, rotate, words):
    """Inverse of :func:`_split2`, into the uint16 ``words``."""
    for i in range(hi.size):
        w = np.uint16((np.uint16(hi[i]) << np.uint16(8)) | np.uint16(lo[i]))
        if rotate:
            w = np.uint16((w >> np.uint16(1)) | (w << np.uint16(15)))
        words[i] = w


@njit(cache=True, nogil=True)
def _split4(words, rotate, out):
    """:func:`_split2` for 4-byte words (uint32: fp32, int32) into the four rows of ``out``."""
    for i in range(out.shape[1]):
        w = np.uint32(words[i])
        if rotate:
            w = np.uint32((w << np.uint32(1)) | (w >> np.uint32(31)))
        out[0, i] = np.uint8(w >> np.uint32(24))
        out[1, i] = np.uint8(w >> np.uint32(16))
        out[2, i] = np.uint8(w >> np.uint32(8))
        out[3, i] = np.uint8(w)


@njit(cache=True, nogil=True)
def _join4(p0, p1, p2, p3, rotate, words):
    """Inverse of :func:`_split4`."""
    for i in range(p0.size):
        w = np.uint32((np.uint32(p0[i]) << np.uint32(24)) | (np.uint32(p1[i]) << np.uint32(16))
                      | (np.uint32(p2[i]) << np.uint32(8)) | np.uint32(p3[i]))
        if rotate:
            w = np.uint32((w >> np.uint32(1)) | (w << np.uint32(31)))
        words[i] = w


@njit(cache=True, nogil=True)
def _split(words, width, rotate, out):
    """Any width (``words`` uint64: fp64, int64; rare): ``out[k]`` (width x n) = byte k, most significant
    first, of each (rotated) word."""
    mask = _mask(width)
    top = np.uint64(8 * width - 1)
    for i in range(out.shape[1]):
        w = np.uint64(words[i])
        if rotate:
            w = ((w << _U1) | (w >> top)) & mask
        _put(out, i, w, width)


@njit(cache=True, nogil=True)
def _join(planes, width, rotate, words):
    """Inverse of :func:`_split`: ``planes`` (width x n) into ``words``."""
    mask = _mask(width)
    top = np.uint64(8 * width - 1)
    for i in range(planes.shape[1]):
        w = _get(planes, i, width)
        if rotate:
            w = ((w >> _U1) | (w << top)) & mask
        words[i] = w


_WORDS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def split_planes(raw: np.ndarray, width: int, rotate: bool, out: np.ndarray | None = None) -> np.ndarray:
    """(width x n) uint8 planes of the ``width``-byte words in ``raw`` (uint8, width 2, 4 or 8):
    what ``planes.split_planes`` returns, as the rows of one array (``out`` when given)."""
    words = _readonly(raw.view(_WORDS[width]))
    if out is None:
        out = np.empty((width, words.size), dtype=np.uint8)
    if width == 2:
        _split2(words, bool(rotate), out[0], out[1])
    elif width == 4:
        _split4(words, bool(rotate), out)
    else:
        _split(words, width, bool(rotate), out)
    return out


def join_planes(planes: list[np.ndarray], width: int, rotate: bool, out: np.ndarray) -> None:
    """Inverse of :func:`split_planes` into ``out`` (uint8, width x n bytes, width 2, 4 or 8);
    ``planes``: the ``width`` planes (uint8, n each, read-only or not)."""
    words = out.view(_WORDS[width])
    if width == 2:
        _join2(_readonly(planes[0]), _readonly(planes[1]), bool(rotate), words)
        return
    if width == 4:
        _join4(*(_readonly(p) for p in planes), bool(rotate), words)
        return
    stacked = np.empty((width, planes[0].size), dtype=np.uint8)  # fp64, int64: one copy into a 2-D array
    for k, p in enumerate(planes):
        stacked[k] = p
    _join(stacked, width, bool(rotate), words)


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view: numba compiles a kernel once per argument type, and writability is part
    of the type, so inputs are passed read-only always (one compiled variant, one cache entry)."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a



# -- zstd frames of a chunk decoded in one call ---------------------------------------------------
# libzstd's functions come in as addresses (codec._zstd.frame_functions: whichever library this
# process loaded) and are called through them (the intrinsics below), so the compiled code stays
# cacheable, and a call is typed by its uint64 arguments alone (numba types a ctypes function
# object afresh on every call: tens of microseconds with the GIL held).


def _c_call(nargs: int, ret_bits: int):  # noqa: ANN202
    """The code of a call to the C function at address ``args[0]``, of ``nargs`` 64-bit integer
    arguments (pointers, sizes) returning an unsigned integer of ``ret_bits`` bits, widened."""
    def codegen(context, builder, signature, args):  # noqa: ANN001, ARG001
        i64 = ir.IntType(64)
        f = builder.inttoptr(args[0], ir.FunctionType(ir.IntType(ret_bits), [i64] * nargs).as_pointer())
        r = builder.call(f, list(args[1:]))
        return r if ret_bits == 64 else builder.zext(r, i64)
    return codegen


_U64T = types.uint64


@intrinsic
def _call5(typingctx, fn, a, b, c, d, e):  # noqa: ANN001, ARG001
    """``fn(a, b, c, d, e)`` of a C function returning ``size_t``."""
    return _U64T(*[_U64T] * 6), _c_call(5, 64)


@intrinsic
def _call2(typingctx, fn, a, b):  # noqa: ANN001, ARG001
    """``fn(a, b)`` of a C function returning ``size_t``."""
    return _U64T(_U64T, _U64T, _U64T), _c_call(2, 64)


@intrinsic
def _call1_u32(typingctx, fn, a):  # noqa: ANN001, ARG001
    """``fn(a)`` of a C function returning ``unsigned`` (32 bits)."""
    return _U64T(_U64T, _U64T), _c_call(1, 32)


@njit(cache=True, nogil=True)
def _fill_frames(decompress, frame_size, is_error, dctx, src, dst, table):
    """Each row ``(mode, at, size, dst_at, n)`` of ``table``: a zstd frame (mode 1: the first frame
    of ``src[at : at + size]``, which must decode to exactly ``n`` bytes), a stored plane (mode
    0: ``size == n`` bytes copied) or a zero plane (mode 3, size 0) into ``dst[dst_at : dst_at + n]``. Returns -1 once all are in
    place, else the index of the first row that is not (out of bounds, not a frame, another size,
    another mode): the caller names the error. ``decompress``, ``frame_size``, ``is_error``:
    the addresses of libzstd's ZSTD_decompressDCtx, ZSTD_findFrameCompressedSize, ZSTD_isError."""
    s0, d0 = np.uint64(src.ctypes.data), np.uint64(dst.ctypes.data)
    ns, nd = np.uint64(src.size), np.uint64(dst.size)
    for i in range(table.shape[0]):
        if not _fill_row(decompress, frame_size, is_error, dctx, src, dst, s0, d0, ns, nd,
                         table[i, 0], table[i, 1], table[i, 2], table[i, 3], table[i, 4]):
            return i
    return -1


@njit(cache=True, nogil=True, inline="always")
def _fill_row(decompress, frame_size, is_error, dctx, src, dst, s0, d0, ns, nd, mode, at, size, dat, n):
    """One row of :func:`_fill_frames` (``s0``, ``d0``: the arrays' addresses; ``ns``, ``nd``: their
    sizes): whether it is in place."""
    if at > ns or size > ns - at or dat > nd or n > nd - dat:
        return False
    if mode == 1:
        one = _call2(frame_size, s0 + at, size)
        if _call1_u32(is_error, one) != 0:
            return False
        if _call5(decompress, dctx, d0 + dat, n, s0 + at, one) != n:
            return False
    elif mode == 0:
        if size != n:
            return False
        for j in range(n):
            dst[dat + j] = src[at + j]
    elif mode == ZERO_MODE:
        if size != 0:
            return False
        dst[dat:dat + n] = 0
    else:
        return False
    return True


@njit(cache=True, nogil=True)
def _fill_join2(decompress, frame_size, is_error, dctx, src, table, planes, rotate, words):
    """:func:`_fill_frames` of a plain chunk's two planes into ``planes`` (uint8, 2 x n back to back),
    then :func:`_join2` of them into ``words``: -1, or the first row that was not right (nothing
    joined then)."""
    bad = _fill_frames(decompress, frame_size, is_error, dctx, src, planes, table)
    if bad >= 0:
        return bad
    n = words.size
    _join2(planes[:n], planes[n:2 * n], rotate, words)
    return -1


def fill_join(functions: tuple[int, int, int], dctx: int, src: np.ndarray, table: list, planes: np.ndarray, width: int,
              rotate: bool, out: np.ndarray) -> int:
    """A plain stream chunk decoded: its planes' frames (``table``: :func:`_fill_frames`'s rows, into
    ``planes``, a uint8 scratch of ``width`` x n bytes) and their join into ``out`` (uint8, width x
    n), in one call with the GIL released for 2-byte words (two for wider ones). Returns -1, or
    the first row that was not right (the caller decodes the chunk again to name the error).

    Why: python-zstandard decoded each plane into a new ``bytes`` and the join was a call of its
    own, three releases and re-takes of the GIL a chunk, each a queue on a machine of many cores
    (a fine-tune's add decodes every changed tensor's base so)."""
    rows = np.array(table, dtype=np.uint64).reshape(-1, 5)
    dec, size, err = (np.uint64(f) for f in functions)
    if width == 2:
        return int(_fill_join2(dec, size, err, np.uint64(dctx), _readonly(src), rows, planes, bool(rotate), out.view(np.uint16)))
    bad = int(_fill_frames(dec, size, err, np.uint64(dctx), _readonly(src), planes, rows))
    if bad < 0:
        n = planes.size // width
        join_planes([planes[k * n:(k + 1) * n] for k in range(width)], width, rotate, out)
    return bad


def fill_frames(functions: tuple[int, int, int], dctx: int, src: np.ndarray, dst: np.ndarray, table: list) -> int:
    """:func:`_fill_frames` with ``table`` a flat list of its rows' ints (``src``, ``dst``: uint8,
    1-D, C-contiguous): one call a chunk, with the GIL released for all its frames."""
    return int(_fill_frames(*_frame_args(functions, dctx), _readonly(src), dst, _u64_rows(table, 5)))


@njit(cache=True, nogil=True, inline="always")
def _groups_fit(table, counts, n):
    """Whether a grouped chunk's groups fit ``counts`` (int64[256]), the checks of
    ``lossless._checked_runs``: the counts sum to the chunk's ``n`` elements (else -3), and each
    group (rows 2g, 2g + 1 of ``table``, flat rows of six: its two planes, then its context;
    column 4 its elements) starts where its context starts in the base's order and has base
    elements (else -4). -1 when they fit."""
    s = 0
    for c in range(256):
        s += counts[c]
    if s != n:
        return -3
    below = 0
    at = 0
    c0 = 0
    for r in range(0, len(table) // 6, 2):
        c = np.int64(table[6 * r + 5])
        if c > 255 or c < c0:  # (the stream's table has them ascending: read_info checked)
            return -4
        for j in range(c0, c):
            below += counts[j]
        c0 = c
        if below != at or counts[c] <= 0:
            return -4
        at += np.int64(table[6 * r + 4])
    return -1


@njit(cache=True, nogil=True, inline="always")
def _fill_rows6(decompress, frame_size, is_error, dctx, src, dst, table):
    """:func:`_fill_frames` of ``table``'s flat rows of six (the sixth column not read)."""
    s0, d0 = np.uint64(src.ctypes.data), np.uint64(dst.ctypes.data)
    ns, nd = np.uint64(src.size), np.uint64(dst.size)
    for i in range(len(table) // 6):
        r = 6 * i
        if not _fill_row(decompress, frame_size, is_error, dctx, src, dst, s0, d0, ns, nd,
                         table[r], table[r + 1], table[r + 2], table[r + 3], table[r + 4]):
            return i
    return -1


@njit(cache=True, nogil=True, inline="always")
def _fit_and_fill(decompress, frame_size, is_error, dctx, src, table, planes, counts, n):
    """What both :func:`_fill_undiff2_stored` kernels do before their gather: the groups checked
    against ``counts`` (:func:`_groups_fit`: -3, -4), then the frames into ``planes`` (the first row
    that was not right); -1 when both are done."""
    fit = _groups_fit(table, counts, n)
    if fit != -1:
        return fit
    bad = _fill_rows6(decompress, frame_size, is_error, dctx, src, planes, table)
    return bad if bad >= 0 else -1


@njit(cache=True, nogil=True)
def _fill_undiff2_stored(decompress, frame_size, is_error, dctx, src, table, planes, base, shift, fmask, counts, out,
                         words):
    """A grouped chunk's groups checked against ``counts`` (:func:`_groups_fit`: -3, -4), its two
    planes' frames into ``planes`` (uint8, 2 x n back to back) by :func:`_fill_frames`' rows (the
    first row that was not right), then :func:`_ungroup_undiff2_stored` of them (-2: the counts
    are not the base's): -1 once the chunk is decoded. ``table``: uint64, flat rows of six, two a
    group: :func:`_fill_frames`' five, then the group's context. ``base``, ``out``: uint8, viewed
    as words here, and ``shift``, ``fmask`` typed here (two numpy calls a chunk fewer in the wrapper)."""
    n = base.size // 2
    bad = _fit_and_fill(decompress, frame_size, is_error, dctx, src, table, planes, counts, n)
    if bad != -1:
        return bad
    ok = _ungroup_undiff2_stored(planes[:n], planes[n:2 * n], base.view(np.uint16), np.uint16(shift), np.uint16(fmask),
                                 counts, out.view(np.uint16), words)
    return -1 if ok else -2


@njit(cache=True, nogil=True)
def _fill_undiff2_stored_x512(decompress, frame_size, is_error, dctx, src, table, planes, base, shift, fmask, counts, out,
                              words):
    """:func:`_fill_undiff2_stored` with the gather by AVX-512 expand-loads, its frequent exponents
    chosen in the same call (:func:`x512_frequent`)."""
    n = base.size // 2
    bad = _fit_and_fill(decompress, frame_size, is_error, dctx, src, table, planes, counts, n)
    if bad != -1:
        return bad
    ok = _ungroup_undiff2_stored_x512(planes[:n], planes[n:2 * n], base.view(np.uint16), np.uint16(shift),
                                      np.uint16(fmask), counts, out.view(np.uint16), words, x512_frequent(counts))
    return -1 if ok else -2


def _u64_rows(table: list, columns: int) -> np.ndarray:
    """A flat list of non-negative ints as rows of uint64 (``array.array`` then a view: half of
    ``np.array(table, dtype=np.uint64)``'s ~3 us for a chunk's table)."""
    return np.frombuffer(array.array("Q", table), dtype=np.uint64).reshape(-1, columns)


def _frame_args(functions: tuple[int, int, int], dctx: int) -> tuple:
    """``functions`` and ``dctx`` as the kernels' uint64 arguments, kept per thread (the same each chunk)."""
    key = (functions, dctx)
    got = getattr(_LOCAL, "frame_args", None)
    if got is None or got[0] != key:
        got = _LOCAL.frame_args = (key, tuple(np.uint64(v) for v in (*functions, dctx)))
    return got[1]


def fill_undiff_stored(functions: tuple[int, int, int], dctx: int, src: np.ndarray, table: list, planes: np.ndarray,
                       base: np.ndarray, shift: int, bits: int, counts: np.ndarray, out: np.ndarray) -> int:
    """A grouped chunk of 2-byte words with stored counts (format v3+) decoded in one call, the
    GIL released throughout: its groups checked against ``counts`` (int64[256]), its frames
    (``table``: a flat list of rows of six, two a group: :func:`fill_frames`' five, then the
    group's context) into ``planes`` (uint8, 1-D, 2 x n, C-contiguous), then
    :func:`ungroup_undiff_stored` of them into ``out`` (uint8, the chunk's bytes; ``base``: the
    base's). Returns -1; the first row that was not right (the caller decodes the frames again
    to name the error); -2: the counts are not the base's; -3: they do not sum to the chunk's
    elements; -4: a group does not start where its context does (``lossless._checked_runs``'
    errors).

    Why one call: the group check, the frames' call, the frequent exponents' and the gather's
    were Python and three dispatches a chunk, each with its arguments built in Python, run
    between kernels that evict the interpreter from the caches (dev VM, 150-step fine-tune: ~65 us
    a tensor inside the decode loop, ~20 with this call; ``probe_decode_overhead.py --stages``)."""
    n = base.size // 2
    if n >= 1 << 31 or base.size != 2 * n or planes.size != 2 * n or out.size != 2 * n:
        raise ValueError("fill_undiff_stored: base, planes and out must hold the chunk's n < 2**31 words")
    args = (*_frame_args(functions, dctx), _readonly(src), array.array("Q", table), planes, _readonly(base),
            shift, (1 << bits) - 1, counts, out, _scratch16(2 * n + X512_SLACK))
    if x512_available():
        return int(_fill_undiff2_stored_x512(*args))
    return int(_fill_undiff2_stored(*args))


@njit(cache=True, nogil=True)
def _unpack_counts(flat, raw_lens, width, out):
    """``lossless.unpack_counts``' reading and checks of format v3's packed counts (``flat``: int32;
    ``out``: int64, chunks x 256, zeros), chunk by chunk as the reference does: (0, 0) when every
    chunk's counts are in ``out``, else the first error found as (code, chunk): 1 the counts stop
    before the chunk's bitmap, 2 inside its counts, 3 they are not positive or do not sum to its
    ``raw_lens[i] // width`` elements; 4 (code, how many): counts left after the last chunk."""
    size = flat.size
    pos = 0
    for i in range(len(raw_lens)):
        if pos + 8 > size:
            return 1, i
        k = 0
        for j in range(8):
            k += _popcount32(np.int64(flat[pos + j]) & 0xFFFFFFFF)
        if pos + 8 + k > size:
            return 2, i
        at = pos + 8
        total = 0
        for j in range(8):
            w = np.int64(flat[pos + j]) & 0xFFFFFFFF
            for b in range(32):
                if (w >> b) & 1:
                    v = np.int64(flat[at])
                    if v <= 0:
                        return 3, i
                    out[i, 32 * j + b] = v
                    total += v
                    at += 1
        if total != np.int64(raw_lens[i] // np.uint64(width)):  # (a length of 2**63 or more: never a sum of counts)
            return 3, i
        pos = at
    if pos != size:
        return 4, size - pos
    return 0, 0


@njit(cache=True, nogil=True, inline="always")
def _popcount32(w):
    """The set bits of ``w`` (int64, under 2**32)."""
    k = 0
    while w:
        w &= w - 1
        k += 1
    return k


def unpack_counts(flat: np.ndarray, raw_lens: list[int], width: int) -> tuple[np.ndarray, int, int]:
    """:func:`_unpack_counts` of ``flat`` (int32, 1-D) for the chunks of ``raw_lens``: the counts
    (int64, chunks x 256) and (code, chunk or count) of the first error, (0, 0) if none."""
    out = np.zeros((len(raw_lens), 256), dtype=np.int64)
    code, at = _unpack_counts(_readonly(flat), array.array("Q", raw_lens), width, out)  # (array.array: numba reads its buffer)
    return out, code, at
