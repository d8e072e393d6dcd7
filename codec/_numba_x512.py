"""The grouped decode's ungroup with AVX-512 expand-loads, where the CPU has them (numba + llvmlite).

Format v2/v3 decode ends in a gather: ``out[i] = words[pos[c_i]++]`` with ``c_i`` the base
weight's exponent, ``words`` the chunk's difference grouped by exponent. Scalar, that is a
load-increment-store through ``pos`` per element (~0.85 ns an element on the dev VM, the largest
stage of the decode). AVX-512 VBMI2 has the instruction for it: an expand (``vpexpandw``) puts the
first popcount(mask) words of a vector in the mask's lanes, in order. Per 32 elements: the lanes'
exponents compared with each of the chunk's K most frequent exponents (those covering 99% of its
elements: K is 9-10 on SmolLM2), the group's next 32 words loaded (a plain load: the expand's own
memory form measured 1.25x slower on Zen 5) and expanded into the block's register under that
mask, ``pos`` advanced by the mask's popcount; one store a block; the few lanes of other exponents
go one by one as before. A fixed loop of K per
block, no branch on the data but the rare lanes': on the dev VM's Zen 5 about a third of the
scalar gather's time (``python benchmarks/probe_x512.py``: chunks of SmolLM2's base).

Reads stay inside ``words`` whatever the counts say, by the scalar kernel's argument: group c's
counter starts at most at n - counts[c] and each expand moves it by the number of base elements of
exponent c it served, so it never passes 2n; a block's load reads 32 words from it, so ``words``
holds 2n + :data:`SLACK` entries (checked).

``available()`` says whether to use it: numba compiles for the host, whose CPU has AVX-512 BW and
VBMI2 (as LLVM sees it), and ``DELTASTORE_SIMD`` is not ``0``. Elsewhere LLVM would lower the
same code to scalar loads (correct, slow), so the codec takes the scalar kernel there.
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_I1, _I16, _I32, _I64 = ir.IntType(1), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_V32I16, _V32I1 = ir.VectorType(_I16, 32), ir.VectorType(_I1, 32)
#: a chunk's frequent exponents cover this share of its elements (the rest: one by one)
COVER = 0.99
#: and are at most this many (each costs a compare, an expand-load and a masked store a block)
MAX_K = 16


def _data(context, builder, aty, aval):  # noqa: ANN001, ANN202
    return context.make_array(aty)(context, builder, aval).data


def _fn(builder, name, ret, args):  # noqa: ANN001, ANN202
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _splat(builder, v, n):  # noqa: ANN001, ANN202
    vty = ir.VectorType(v.type, n)
    u = builder.insert_element(ir.Constant(vty, ir.Undefined), v, ir.Constant(_I32, 0))
    return builder.shuffle_vector(u, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(_I32, n), [0] * n))


@intrinsic
def _block32(typingctx, out, i, words, base, shift, fmask, pos, fctx, k):  # noqa: ANN001, ANN202, ARG001
    """For the 32 elements at ``i``: every lane whose exponent is one of ``fctx[:k]`` gets its word
    by an expand-load from ``words[pos[c]:]`` (``pos[c]`` advanced by the lanes served); returns the
    mask of the other lanes (uint32, bit j = lane j)."""
    sig = types.uint32(out, i, words, base, shift, fmask, pos, fctx, k)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202, ARG001
        od = _data(context, builder, signature.args[0], args[0])
        wd = _data(context, builder, signature.args[2], args[2])
        bd = _data(context, builder, signature.args[3], args[3])
        pd = _data(context, builder, signature.args[6], args[6])
        fd = _data(context, builder, signature.args[7], args[7])
        at = context.cast(builder, args[1], signature.args[1], types.int64)
        kk = context.cast(builder, args[8], signature.args[8], types.int64)
        v = builder.load(builder.bitcast(builder.gep(bd, [at]), _V32I16.as_pointer()), align=2)
        sh = _splat(builder, context.cast(builder, args[4], signature.args[4], types.uint16), 32)
        fm = _splat(builder, context.cast(builder, args[5], signature.args[5], types.uint16), 32)
        ctx = builder.and_(builder.lshr(v, sh), fm)
        dst = builder.bitcast(builder.gep(od, [at]), _V32I16.as_pointer())
        expand = _fn(builder, "llvm.x86.avx512.mask.expand.v32i16", _V32I16, [_V32I16, _V32I16, _V32I1])
        served = cgutils.alloca_once_value(builder, ir.Constant(_I32, 0))
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V32I16, None))  # the block's words, in a register
        with cgutils.for_range(builder, kk) as loop:
            c = builder.load(builder.gep(fd, [loop.index]))
            lanes = builder.icmp_unsigned("==", ctx, _splat(builder, c, 32))
            slot = builder.gep(pd, [builder.zext(c, _I64)])
            p = builder.load(slot)
            src = builder.bitcast(builder.gep(wd, [builder.zext(p, _I64)]), _V32I16.as_pointer())
            w = builder.call(expand, [builder.load(src, align=2), builder.load(acc), lanes])
            builder.store(w, acc)
            bits = builder.bitcast(lanes, _I32)
            builder.store(builder.add(p, builder.ctpop(bits)), slot)
            builder.store(builder.or_(builder.load(served), bits), served)
        builder.store(builder.load(acc), dst, align=2)  # the rare lanes are written after, one by one
        return builder.xor(builder.load(served), ir.Constant(_I32, 0xFFFFFFFF))

    return sig, codegen


@intrinsic
def _lowest(typingctx, x):  # noqa: ANN001, ANN202, ARG001
    """The index of the lowest set bit of a nonzero 32-bit mask."""
    sig = types.int64(x)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202, ARG001
        v = context.cast(builder, args[0], signature.args[0], types.uint32)
        tz = builder.call(_fn(builder, "llvm.cttz.i32", _I32, [_I32, _I1]), [v, ir.Constant(_I1, 1)])
        return builder.zext(tz, _I64)

    return sig, codegen


#: entries ``words`` must have beyond twice the chunk: each frequent exponent's 32 words are read
#: by one plain 64-byte load from its position (the expand then uses the first popcount of them)
SLACK = 32


@njit(cache=True, nogil=True)
def gather2_x512(words, base, shift, fmask, pos, out, fctx):
    """``out[i] = words[pos[context of base[i]]++]`` for every i (as ``_numba._gather2``), the
    frequent exponents ``fctx`` (uint16) by expands 32 lanes at a time, the rest one by one.
    ``words`` must hold ``2 * n + SLACK`` entries: positions stay under 2n (the module's note), and
    a block reads 32 words from each."""
    n = base.size
    if words.size < 2 * n + SLACK:
        raise ValueError("gather2_x512: words must hold 2 * n + SLACK entries")
    k = fctx.size
    m = n - n % 32
    for i in range(0, m, 32):
        rare = np.uint32(_block32(out, i, words, base, shift, fmask, pos, fctx, k))
        while rare != np.uint32(0):
            j = i + _lowest(rare)
            c = (base[j] >> shift) & fmask
            out[j] = words[pos[c]]
            pos[c] += np.uint32(1)
            rare &= rare - np.uint32(1)
    for i in range(m, n):
        c = (base[i] >> shift) & fmask
        out[i] = words[pos[c]]
        pos[c] += np.uint32(1)


def frequent_contexts(counts: np.ndarray) -> np.ndarray:
    """The chunk's most frequent exponents (uint16, most frequent first) that together cover
    :data:`COVER` of its elements, at most :data:`MAX_K`."""
    order = np.argsort(-np.asarray(counts), kind="stable")[:MAX_K]
    total = int(np.asarray(counts).sum())
    got = np.cumsum(np.asarray(counts)[order])
    k = int(np.searchsorted(got, COVER * total)) + 1 if total else 0
    return order[: min(k, MAX_K)][np.asarray(counts)[order[: min(k, MAX_K)]] > 0].astype(np.uint16)


_AVAILABLE: bool | None = None


def available() -> bool:
    """Whether the decode takes :func:`gather2_x512`: the host CPU has AVX-512 BW and VBMI2 and
    ``DELTASTORE_SIMD`` is not ``0`` (read once a process, as the compiled code is)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        ok = os.environ.get("DELTASTORE_SIMD", "1").strip() != "0"
        if ok:
            try:
                from llvmlite import binding
                from numba.core import config

                feats = binding.get_host_cpu_features()
                # numba compiles for the host unless told otherwise (NUMBA_CPU_NAME, e.g. "generic" for a
                # portable cache): then LLVM would not emit the instructions, and the scalar kernel is faster
                ok = config.CPU_NAME in (None, "host") and bool(feats.get("avx512bw")) and bool(feats.get("avx512vbmi2"))
            except Exception:  # noqa: BLE001 - no features known: the scalar kernel
                ok = False
        _AVAILABLE = ok
    return _AVAILABLE


__all__ = ["COVER", "MAX_K", "available", "frequent_contexts", "gather2_x512"]
