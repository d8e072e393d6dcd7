"""Probe (issue 12, run 60): where the v3 decode's ungrouping goes, and gathers tried against the codec's.

The ungrouping of a 2-byte fine-tune chunk is three passes (codec._numba._ungroup_undiff2_stored_x512):
the planes joined into words, the gather (each element's word from its base exponent's group, by
AVX-512 expand-loads: since run 60, 64 elements a block, two expands a frequent exponent), the
difference undone. This times the three on the dense 40-step SmolLM2 fine-tune's 415 chunks (their
planes decoded first, out of the timing; before that, each plane's frames alone), one thread, 5
alternating rounds, each result checked against the fine-tune's bytes, and A/Bs the codec's gather
against variants defined here: a branch skipping the expands of an exponent absent from the block;
each block's difference undone right after its gather; the words gathered straight from the two byte
planes (no join). The run that compared 32 against 64 elements a block is this probe at commit
1aa4db9 (raw_devvm/s23/gather64.txt), when the codec's block was 32.

    python benchmarks/probe_gather64.py
"""
import os
import time

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

os.environ.setdefault("DELTASTORE_THREADS", "1")
from safetensors.torch import load_file  # noqa: E402

from deltastore.codec import _numba as nb, planes  # noqa: E402
from deltastore.codec._numba import _I1, _I32, _I64, _V32I1, _V32I16, _data, _fn, _splat  # noqa: E402
from deltastore.codec.lossless import Lossless, context_field, grouped_chunk_planes, unpack_counts  # noqa: E402
from deltastore.zoo.smollm2 import smollm2_dir  # noqa: E402

_I8 = ir.IntType(8)
_V64I8, _V64I1 = ir.VectorType(_I8, 64), ir.VectorType(_I1, 64)
_V64I16 = ir.VectorType(ir.IntType(16), 64)


@intrinsic
def _block64_skip(typingctx, out, i, words, base, shift, fmask, pos, fctx, k):  # noqa: ANN001, ANN202, ARG001
    """The codec's ``_block64`` with a branch around each frequent exponent's work where it is absent
    from the block (and around each half's expand where absent from that half)."""
    sig = types.uint64(out, i, words, base, shift, fmask, pos, fctx, k)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202, ARG001
        od, wd, pd, fd, at, at1, kk, c8 = nb._block64_args(context, builder, signature, args)
        expand = _fn(builder, "llvm.x86.avx512.mask.expand.v32i16", _V32I16, [_V32I16, _V32I16, _V32I1])
        popc = _fn(builder, "llvm.ctpop.i32", _I32, [_I32])
        served = cgutils.alloca_once_value(builder, ir.Constant(_I64, 0))
        acc = [cgutils.alloca_once_value(builder, ir.Constant(_V32I16, None)) for _ in range(2)]
        with cgutils.for_range(builder, kk) as loop:
            c = builder.load(builder.gep(fd, [loop.index]))
            bits = builder.bitcast(builder.icmp_unsigned("==", c8, _splat(builder, builder.trunc(c, _I8), 64)), _I64)
            halves = (builder.trunc(bits, _I32), builder.trunc(builder.lshr(bits, ir.Constant(_I64, 32)), _I32))
            slot = builder.gep(pd, [builder.zext(c, _I64)])
            with builder.if_then(builder.icmp_unsigned("!=", bits, ir.Constant(_I64, 0))):
                p = builder.load(slot)
                for h, a in zip(halves, acc):
                    with builder.if_then(builder.icmp_unsigned("!=", h, ir.Constant(_I32, 0))):
                        src = builder.bitcast(builder.gep(wd, [builder.zext(p, _I64)]), _V32I16.as_pointer())
                        builder.store(builder.call(expand, [builder.load(src, align=2), builder.load(a), builder.bitcast(h, _V32I1)]), a)
                    p = builder.add(p, builder.call(popc, [h]))
                builder.store(p, slot)
                builder.store(builder.or_(builder.load(served), bits), served)
        for a, where in zip(acc, (at, at1)):
            builder.store(builder.load(a), builder.bitcast(builder.gep(od, [where]), _V32I16.as_pointer()), align=2)
        return builder.xor(builder.load(served), ir.Constant(_I64, 0xFFFFFFFFFFFFFFFF))

    return sig, codegen


@intrinsic
def _block64b(typingctx, out, i, lo, hi, base, shift, fmask, pos, fctx, k, hz):  # noqa: ANN001, ANN202, ARG001
    """64 elements at ``i`` gathered from the two byte planes (no joined words): each frequent
    exponent's low bytes by one 64-lane byte expand-load from ``lo[pos[c]:]``, its high bytes by a
    second one only where ``hz[c]`` says its high plane has a nonzero byte in this chunk (else 0)."""
    sig = types.uint64(out, i, lo, hi, base, shift, fmask, pos, fctx, k, hz)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202, ARG001
        od, lod, hid, bd, pd, fd, hzd = (_data(context, builder, signature.args[j], args[j]) for j in (0, 2, 3, 4, 7, 8, 10))
        at = context.cast(builder, args[1], signature.args[1], types.int64)
        kk = context.cast(builder, args[9], signature.args[9], types.int64)
        sh = _splat(builder, context.cast(builder, args[5], signature.args[5], types.uint16), 32)
        fm = _splat(builder, context.cast(builder, args[6], signature.args[6], types.uint16), 32)
        at1 = builder.add(at, ir.Constant(_I64, 32))
        v0 = builder.load(builder.bitcast(builder.gep(bd, [at]), _V32I16.as_pointer()), align=2)
        v1 = builder.load(builder.bitcast(builder.gep(bd, [at1]), _V32I16.as_pointer()), align=2)
        v8 = ir.VectorType(_I8, 32)
        c8 = builder.shuffle_vector(builder.trunc(builder.and_(builder.lshr(v0, sh), fm), v8),
                                    builder.trunc(builder.and_(builder.lshr(v1, sh), fm), v8),
                                    ir.Constant(ir.VectorType(_I32, 64), list(range(64))))
        expand = _fn(builder, "llvm.x86.avx512.mask.expand.v64i8", _V64I8, [_V64I8, _V64I8, _V64I1])
        popc = _fn(builder, "llvm.ctpop.i64", _I64, [_I64])
        served = cgutils.alloca_once_value(builder, ir.Constant(_I64, 0))
        alo = cgutils.alloca_once_value(builder, ir.Constant(_V64I8, None))
        ahi = cgutils.alloca_once_value(builder, ir.Constant(_V64I8, None))
        with cgutils.for_range(builder, kk) as loop:
            c = builder.load(builder.gep(fd, [loop.index]))
            lanes = builder.icmp_unsigned("==", c8, _splat(builder, builder.trunc(c, _I8), 64))
            bits = builder.bitcast(lanes, _I64)
            c64 = builder.zext(c, _I64)
            slot = builder.gep(pd, [c64])
            p = builder.zext(builder.load(slot), _I64)
            src = builder.bitcast(builder.gep(lod, [p]), _V64I8.as_pointer())
            builder.store(builder.call(expand, [builder.load(src, align=1), builder.load(alo), lanes]), alo)
            with builder.if_then(builder.icmp_unsigned("!=", builder.load(builder.gep(hzd, [c64])), ir.Constant(_I8, 0))):
                hsrc = builder.bitcast(builder.gep(hid, [p]), _V64I8.as_pointer())
                builder.store(builder.call(expand, [builder.load(hsrc, align=1), builder.load(ahi), lanes]), ahi)
            builder.store(builder.trunc(builder.add(p, builder.call(popc, [bits])), _I32), slot)
            builder.store(builder.or_(builder.load(served), bits), served)
        w = builder.or_(builder.zext(builder.load(alo), _V64I16),
                        builder.shl(builder.zext(builder.load(ahi), _V64I16), _splat(builder, ir.Constant(ir.IntType(16), 8), 64)))
        builder.store(w, builder.bitcast(builder.gep(od, [at]), _V64I16.as_pointer()), align=2)
        return builder.xor(builder.load(served), ir.Constant(_I64, 0xFFFFFFFFFFFFFFFF))

    return sig, codegen


@njit(nogil=True)
def _hi_flags(hi, counts, hz):
    """hz[c] = 1 where context c's run of the grouped high plane has a nonzero byte."""
    s = 0
    for c in range(256):
        e = s + counts[c]
        f = np.uint8(0)
        for j in range(s, e):
            f |= hi[j]
        hz[c] = np.uint8(1) if f != 0 else np.uint8(0)
        s = e


@njit(nogil=True)
def gather_planes64(lo, hi, base, shift, fmask, pos, out, fctx, hz):  # noqa: ANN001, ANN201
    """The gather straight from the byte planes (:func:`_block64b`; no join pass)."""
    n = base.size
    k = fctx.size
    m = n - n % 64
    for i in range(0, m, 64):
        rare = _block64b(out, i, lo, hi, base, shift, fmask, pos, fctx, k, hz)
        while rare != np.uint64(0):
            j = i + nb._lowest(rare)
            c = (base[j] >> shift) & fmask
            q = pos[c]
            out[j] = (np.uint16(hi[q]) << np.uint16(8)) | np.uint16(lo[q])
            pos[c] += np.uint32(1)
            rare &= rare - np.uint64(1)
    for i in range(m, n):
        c = (base[i] >> shift) & fmask
        q = pos[c]
        out[i] = (np.uint16(hi[q]) << np.uint16(8)) | np.uint16(lo[q])
        pos[c] += np.uint32(1)


def _gather64(block, undo: bool = False):  # noqa: ANN001, ANN202
    """:func:`gather2_x512` 64 elements a block, each block by ``block`` (_block64 or _block64_skip);
    ``undo``: each block's difference undone right after its gather (in L1), not in a pass after."""

    @njit(nogil=True)
    def gather(words, base, shift, fmask, pos, out, fctx):  # noqa: ANN001, ANN202
        n = base.size
        k = fctx.size
        m = n - n % 64
        for i in range(0, m, 64):
            rare = block(out, i, words, base, shift, fmask, pos, fctx, k)
            while rare != np.uint64(0):
                j = i + nb._lowest(rare)
                c = (base[j] >> shift) & fmask
                out[j] = words[pos[c]]
                pos[c] += np.uint32(1)
                rare &= rare - np.uint64(1)
            if undo:
                for j in range(i, i + 64):
                    out[j] = nb._uncode2(np.int64(out[j]), np.int64(base[j]))
        for i in range(m, n):
            c = (base[i] >> shift) & fmask
            out[i] = words[pos[c]]
            pos[c] += np.uint32(1)
            if undo:
                out[i] = nb._uncode2(np.int64(out[i]), np.int64(base[i]))

    return gather


gather2_x512_64_skip = _gather64(_block64_skip)
gather2_x512_64_undo = _gather64(nb._block64, undo=True)


def main() -> None:
    path = os.path.expanduser("~/.cache/deltastore/bench/smollm2-math-40-b4-lr4e-4/model.safetensors")
    base = load_file(str(smollm2_dir() / "model.safetensors")); ft = load_file(path)
    c = Lossless(zero_planes=False)  # v3, what this probe's runs measured (the default writes v4 now)
    pairs = [(ft[n], base[n]) for n in ft if n in base and ft[n].dtype == torch.bfloat16 and not torch.equal(ft[n], base[n])]
    shift, bits = context_field(torch.bfloat16)
    chunks, frames, padded = [], [], {}
    sh0 = context_field(torch.bfloat16)[0]
    for t, b in pairs:
        e = c.encode(t, b)
        buf = e.arrays["stream"].numpy()
        info = planes.read_info(memoryview(buf))
        stored = unpack_counts(e.arrays["counts"].numpy(), info)
        braw = b.contiguous().view(torch.uint8).numpy().reshape(-1)
        traw = t.contiguous().view(torch.uint8).numpy().reshape(-1)
        offs = info.chunk_offsets(); dst = np.cumsum([0] + info.raw_lens).tolist()
        for i in range(len(info.raw_lens)):
            n, at, pos, table = info.raw_lens[i] // 2, 0, offs[i], ([], [])
            for grp in info.groups[i]:
                for k, (m, ln) in enumerate(zip(grp.modes, grp.payloads)):
                    table[k].extend((m, pos, ln, k * n + at, grp.n))
                    pos += ln
                at += grp.n
            frames.append((buf, n, table))
            g = grouped_chunk_planes(buf, info, i, offs[i], stored[i]).copy()
            padded[len(chunks)] = pad = np.zeros((2, g.shape[1] + 64), np.uint8)  # (a 64-byte load past a plane's end)
            pad[:, : g.shape[1]] = g
            chunks.append((g, braw[dst[i]:dst[i+1]].view(np.uint16), stored[i], traw[dst[i]:dst[i+1]].view(np.uint16)))
    print(len(chunks), "chunks", sum(g.shape[1] for g,*_ in chunks), "elements", flush=True)
    ks = [len(nb.x512_frequent(cnt)) for _, _, cnt, _ in chunks]
    per_block = []
    for g, bs, cnt, want in chunks[::10]:
        b = ((bs >> sh0) & 0xFF)[: bs.size - bs.size % 32].reshape(-1, 32)
        s_ = np.sort(b, axis=1)
        per_block.append(((s_[:, 1:] != s_[:, :-1]).sum(1) + 1).mean())
    print(f"frequent exponents a chunk (expands a 32-block): mean {np.mean(ks):.1f}; distinct exponents in a 32-block: mean {np.mean(per_block):.1f}")
    # the frames of each plane alone (the stage before the ungrouping), as the codec decodes them
    from deltastore.codec import _zstd
    fx, fns, dctx = planes.fast(), _zstd.frame_functions(), _zstd.thread_dctx()
    scratch = np.empty(2 * (1 << 20), dtype=np.uint8)
    for plane in (0, 1):
        t0 = time.process_time()
        for buf, n, table in frames:
            assert fx.fill_frames(fns, dctx, buf, scratch[: 2 * n], table[plane]) == -1
        print(f"frames of plane {plane} ({'high' if plane == 0 else 'low'} byte): {1e3 * (time.process_time() - t0):.1f} ms CPU", flush=True)
    # the high plane's frames of groups whose high bytes are all 0 (what a plane mode "zero" would not decode)
    zero, rest = [], []
    for buf, n, table in frames:
        rows = np.array(table[0], dtype=np.int64).reshape(-1, 5)
        for r in rows:
            assert fx.fill_frames(fns, dctx, buf, scratch[: r[4]], [int(v) for v in r[:3]] + [0, int(r[4])]) == -1
            (zero if r[0] == 1 and not scratch[: r[4]].any() else rest).append((buf, [int(v) for v in r[:3]] + [0, int(r[4])]))
    for name, rows in (("all 0", zero), ("the others", rest)):
        best = 1e9
        for _ in range(3):
            t0 = time.perf_counter()
            for buf, row in rows:
                fx.fill_frames(fns, dctx, buf, scratch[: row[4]], row)
            best = min(best, time.perf_counter() - t0)
        print(f"high plane, groups with {name}: {len(rows)} frames, {sum(r[4] for _, r in rows):,} elements, "
              f"{sum(r[2] for _, r in rows):,} bytes of frames, decoded a frame a call in {1e3 * best:.1f} ms (best of 3)", flush=True)
    sh, fm = np.uint16(shift), np.uint16((1 << bits) - 1)
    words = np.empty(2 * (1 << 20) + nb.X512_SLACK, np.uint16)
    out = np.empty(1 << 20, np.uint16)
    hz = np.zeros(256, np.uint8)

    def run(which):
        tj = tg = tu = 0.0
        for ci, (g, bs, cnt, want) in enumerate(chunks):
            n = g.shape[1]; o = out[:n]
            t0 = time.perf_counter()
            if which is gather_planes64:  # no join: the positions, and which contexts' high bytes are not all 0
                pad = padded[ci]
                pos = nb._starts_into(cnt, np.empty(256, dtype=np.uint32))
                _hi_flags(pad[0], cnt, hz)
            else:
                pos = nb._join_starts2(g[0], g[1], cnt, words)
            t1 = time.perf_counter()
            if which is gather_planes64:
                gather_planes64(pad[1], pad[0], bs, sh, fm, pos, o, nb.x512_frequent(cnt), hz)
            elif which == "x512":
                nb.gather2_x512(words, bs, sh, fm, pos, o, nb.x512_frequent(cnt))
            else:
                which(words, bs, sh, fm, pos, o, nb.x512_frequent(cnt))
            t2 = time.perf_counter()
            if which is gather2_x512_64_undo:  # (undone already: the counters' end check alone)
                ok = bool(np.array_equal(pos.astype(np.int64), np.cumsum(cnt)))
            else:
                ok = nb._ended_and_undone(pos, cnt, bs, o)
            t3 = time.perf_counter()
            assert ok and np.array_equal(o, want)
            tj += t1 - t0; tg += t2 - t1; tu += t3 - t2
        return tj, tg, tu
    variants = {"x512 (the codec's)": "x512", "64 a block, absent skipped": gather2_x512_64_skip,
                "64 a block, undone in it": gather2_x512_64_undo, "from the byte planes (no join)": gather_planes64}
    for v in variants.values():
        run(v)
    for r in range(5):
        for k, v in variants.items():
            tj, tg, tu = run(v)
            print(f"{k:28s} join {tj*1e3:6.1f} ms  gather {tg*1e3:6.1f} ms  undo {tu*1e3:6.1f} ms  total {1e3*(tj+tg+tu):6.1f}", flush=True)


if __name__ == "__main__":
    main()
