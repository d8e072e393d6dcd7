"""Probe (issue 12, twelfth session): v3's ungroup gather (256 contexts) with an SSSE3 expand per
distinct context of each 8-element block, against the codec's scalar ``_gather2``.

Per block of 8: the first lane's context c, the lanes sharing it (a vector compare + movemask),
pshufb of the 8 words at c's counter by a 256 x 16-byte table (the k-th set lane takes the k-th
word), counter += popcount; then the next lane not yet placed, until none is left. Checked bit for
bit against ``_gather2`` on 20 chunks of SmolLM2's base (random words as the stream).

    python benchmarks/probe_gather_simd.py

Result (dev VM, AMD EPYC, AVX2, 2 cores, quiet; two runs): scalar 1.31-1.55 ns an element, this 3.10-3.19: SmolLM2's
weights have 4.0 distinct exponent contexts per 8 elements, so the loop runs a data-dependent
number of times per block (branch misses) and ORs into memory; not a way to v3's decode speed.
"""
import sys, time, os
import numpy as np, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic
from probe_merge_simd import _data, _i64, _at, _splat, _expand8, _expand8_or, _popcnt, expand_lut, I16, I64
from deltastore.codec import _numba as N

V8I16 = ir.VectorType(I16, 8)

@intrinsic
def _eqmask8(typingctx, base, i, keep, val):
    """bit j = (base[i + j] & keep) == val, j < 8 (uint16 words)."""
    def codegen(context, builder, sig, args):
        b, i_, kp, v = args
        data = _data(context, builder, sig.args[0], b)
        x = _at(builder, data, _i64(context, builder, sig.args[1], i_), V8I16)
        x = builder.and_(x, _splat(builder, builder.trunc(_i64(context, builder, sig.args[2], kp), I16), 8))
        c = builder.icmp_unsigned("==", x, _splat(builder, builder.trunc(_i64(context, builder, sig.args[3], v), I16), 8))
        return builder.zext(builder.bitcast(c, ir.IntType(8)), I64)
    return types.uint64(base, i, keep, val), codegen

@intrinsic
def _tz(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))
    return types.uint64(types.uint64), codegen

@njit(nogil=True)
def gather_simd(words, base, shift, pos, lut, out):
    """out[i] = words[pos[ctx(base[i])]++]: 8 a step, one pshufb per distinct context of the 8."""
    n = base.size
    m = n - n % 8
    keep = np.uint64(0xFF) << np.uint64(shift)
    for i in range(0, m, 8):
        c = (np.uint64(base[i]) >> np.uint64(shift)) & np.uint64(0xFF)
        mk = _eqmask8(base, i, keep, c << np.uint64(shift))
        p = pos[c]
        _expand8(out, i, words, lut, (p,), (mk,))  # the block's first context: stored, no OR
        pos[c] = p + np.uint32(_popcnt(mk))
        rem = np.uint64(0xFF) & ~mk
        while rem:
            j = _tz(rem)
            c = (np.uint64(base[i + j]) >> np.uint64(shift)) & np.uint64(0xFF)
            mk = _eqmask8(base, i, keep, c << np.uint64(shift))
            p = pos[c]
            _expand8_or(out, i, words, lut, (p,), (mk,))
            pos[c] = p + np.uint32(_popcnt(mk))
            rem &= ~mk
    for i in range(m, n):
        c = (np.uint64(base[i]) >> np.uint64(shift)) & np.uint64(0xFF)
        p = pos[c]
        out[i] = words[p]
        pos[c] = p + np.uint32(1)

@njit(nogil=True)
def gather_ref(words, base, shift, fmask, pos, out):
    N._gather2(words, base, shift, fmask, pos, out)

if __name__ == "__main__":
    from safetensors.torch import load_file
    from deltastore.zoo.smollm2 import smollm2_dir
    from deltastore.codec import planes
    base = load_file(str(smollm2_dir() / "model.safetensors"))
    lut = expand_lut()
    names = [k for k in base if base[k].dtype == torch.bfloat16 and base[k].numel() >= 1 << 19][:20]
    tot_s = tot_r = 0.0
    ndist = []
    for nm in names:
        B = base[nm].view(torch.int16).numpy().reshape(-1)[: 1 << 19].view(np.uint16)
        n = B.size
        counts = np.empty(256, np.int64)
        N._exp_histogram2(B, np.uint16(7), np.uint16(255), counts)
        words = np.random.default_rng(0).integers(0, 65536, n + 16, dtype=np.uint16)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.uint32)
        o1 = np.empty(n, np.uint16); o2 = np.empty(n + 8, np.uint16)
        gather_ref(words, B, np.uint16(7), np.uint16(255), starts.copy(), o1)
        gather_simd(words, B, 7, starts.copy(), lut, o2)
        assert np.array_equal(o1, o2[:n]), nm
        ctx = (B >> 7) & 0xFF
        ndist.append(np.mean([len(set(ctx[i:i+8].tolist())) for i in range(0, 8000, 8)]))
        for f, acc in ((lambda: gather_ref(words, B, np.uint16(7), np.uint16(255), starts.copy(), o1), "r"), (lambda: gather_simd(words, B, 7, starts.copy(), lut, o2), "s")):
            best = 1e9
            for _ in range(15):
                t0 = time.perf_counter(); f(); best = min(best, time.perf_counter() - t0)
            if acc == "r": tot_r += best / n
            else: tot_s += best / n
    print(f"{len(names)} chunks of 512K elements (SmolLM2 base): scalar _gather2 {tot_r/len(names)*1e9:.3f} ns/el, simd {tot_s/len(names)*1e9:.3f} ns/el; distinct contexts per 8: {np.mean(ndist):.2f}")
