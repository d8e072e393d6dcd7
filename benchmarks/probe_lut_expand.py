"""Would a table lookup cut the one-row expand's SM time? A probe, not a product kernel. On the H200 (thirty-third
session, raw_h200/s33/a/lut) no: its best config a group took x1.13-x1.34 of the product's GEMV expand.

The thirty-second session's traces put ~18 us of a one-row layer's ~+33 in the expands and their zero and add
launches (kernels_h200.md). The GEMV expand spends ~4.75 sm_90 instructions a 2-bit value. The lookup of
kernels/lut.py works for the expand too once two components' fields share a nibble: with U^'s rows paired
(rows 2p, 2p + 1) and their 2-bit fields interleaved at load time (output i's nibble e = q[2p, i] | q[2p + 1, i] << 2,
8 outputs a 32-bit word: a bit shuffle of the words as stored, no re-quantization), output i of group g gets

    y[i] += sum over pairs p of T_g[p, e_p(i)],  T_g[p, e] = ((e & 3) - zp[2p, g]) s[2p, g] t[2p] + ((e >> 2) - zp[2p+1, g]) s[2p+1, g] t[2p+1]

with t = the shrink's z (S included): the zero points and scales fold into the table, which a program builds for
its output group and its pairs (16 entries a pair against the 256 values a pair has in a 128-output group) in a
scratch of its own, then reads one entry per two values. A thread takes one word (8 outputs) of a pair; the 16
threads of a 128-output group read one line of words and one pair's 16 entries.

It times, per group of one Llama-2-7B layer (2-bit components at the real codec's ranks for alpha 1/16,
`DELTASTORE_BENCH_TIERS=2`), each a CUDA graph over --copies copies: the product's GEMV expand alone and the
lookup expand alone (z from the product's shrink), after checking the lookup against a float64 reference.

    python benchmarks/probe_lut_expand.py                         # GPU: the table
    TRITON_INTERPRET=1 python benchmarks/probe_lut_expand.py --smoke   # CPU: correctness only
"""
from __future__ import annotations

import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DELTASTORE_BENCH_TIERS", "2")

from bench_kernels import GROUPS, SMOKE_GROUPS, probe_parser, probe_setup, random_packed, time_graph  # noqa: E402
from probe_fused_delta import _slice_row  # noqa: E402  (the slice table's row of a column: the same layout)

from deltastore.codec import quant  # noqa: E402
from deltastore.kernels import DeltaSet, plan_rows, triton_ops  # noqa: E402


@triton.jit
def _lut_expand_kernel(pi_ptr, s_ptr, zp_ptr, z_ptr, y_ptr, sl_ptr, scr_ptr, NSL: tl.constexpr, SPLIT: tl.constexpr,
                       PER: tl.constexpr, BLOCK_P: tl.constexpr, GS: tl.constexpr):
    """y[n0 .. n0 + GS] += sum over this split's pairs of T_g[p, e_p(i)] for one output group (see the module).
    pi (pairs, words) int32: a slice's paired rows, 8 outputs' nibbles a word; s, zp (2 * pairs, G) fp16;
    sl: per slice (first column, columns, pairs, words offset, scales offset, z column); scr: PER * 16
    floats a program."""
    WG: tl.constexpr = GS // 8  # words of an output group
    ob = tl.program_id(0)
    ks = tl.program_id(1)
    n0 = ob * GS
    col0, m, P, pi_off, sz_off, zcol = _slice_row(sl_ptr, n0, NSL)
    g = (n0 - col0) // GS
    G = (m + GS - 1) // GS
    words = 4 * ((m + 31) // 32)
    p_lo = ks * PER
    p_hi = tl.minimum(p_lo + PER, P)
    # the tables of this program's pairs for group g, into its scratch
    scr = scr_ptr + (ob * SPLIT + ks).to(tl.int64) * (PER * 16)
    tp = tl.arange(0, PER * 16)
    pp = tp // 16
    e = tp % 16
    p = p_lo + pp
    ok = p < p_hi
    ja, jb = 2 * p, 2 * p + 1
    sa = tl.load(s_ptr + sz_off + ja * G + g, mask=ok, other=0.0).to(tl.float32)
    sb = tl.load(s_ptr + sz_off + jb * G + g, mask=ok, other=0.0).to(tl.float32)
    za = tl.load(zp_ptr + sz_off + ja * G + g, mask=ok, other=0.0).to(tl.float32)
    zb = tl.load(zp_ptr + sz_off + jb * G + g, mask=ok, other=0.0).to(tl.float32)
    ta = tl.load(z_ptr + zcol + ja, mask=ok, other=0.0)
    tb = tl.load(z_ptr + zcol + jb, mask=ok & (jb < 2 * P), other=0.0)
    tab = ((e & 3).to(tl.float32) - za) * (sa * ta) + ((e >> 2).to(tl.float32) - zb) * (sb * tb)
    tl.store(scr + tp, tab)
    tl.debug_barrier()
    # the lookups: BLOCK_P pairs at once, a thread a word (8 outputs) of one of them
    f = tl.arange(0, BLOCK_P * WG)
    fp = f // WG
    c = (n0 - col0) // 8 + f % WG
    a0 = tl.zeros((BLOCK_P * WG,), tl.float32)
    a1 = tl.zeros((BLOCK_P * WG,), tl.float32)
    a2 = tl.zeros((BLOCK_P * WG,), tl.float32)
    a3 = tl.zeros((BLOCK_P * WG,), tl.float32)
    a4 = tl.zeros((BLOCK_P * WG,), tl.float32)
    a5 = tl.zeros((BLOCK_P * WG,), tl.float32)
    a6 = tl.zeros((BLOCK_P * WG,), tl.float32)
    a7 = tl.zeros((BLOCK_P * WG,), tl.float32)
    for q0 in range(p_lo, p_hi, BLOCK_P):
        q = q0 + fp
        w = tl.load(pi_ptr + pi_off + q * words + c, mask=(q < p_hi) & (c < words), other=0)
        tq = scr + (q - p_lo) * 16  # (pairs past p_hi read their scratch's zero tables: PER is a multiple of BLOCK_P)
        a0 += tl.load(tq + (w & 15))
        a1 += tl.load(tq + ((w >> 4) & 15))
        a2 += tl.load(tq + ((w >> 8) & 15))
        a3 += tl.load(tq + ((w >> 12) & 15))
        a4 += tl.load(tq + ((w >> 16) & 15))
        a5 += tl.load(tq + ((w >> 20) & 15))
        a6 += tl.load(tq + ((w >> 24) & 15))
        a7 += tl.load(tq + ((w >> 28) & 15))
    out0 = n0 + tl.arange(0, WG) * 8
    end = col0 + m
    _add1(y_ptr, out0 + 0, end, a0, BLOCK_P, WG)
    _add1(y_ptr, out0 + 1, end, a1, BLOCK_P, WG)
    _add1(y_ptr, out0 + 2, end, a2, BLOCK_P, WG)
    _add1(y_ptr, out0 + 3, end, a3, BLOCK_P, WG)
    _add1(y_ptr, out0 + 4, end, a4, BLOCK_P, WG)
    _add1(y_ptr, out0 + 5, end, a5, BLOCK_P, WG)
    _add1(y_ptr, out0 + 6, end, a6, BLOCK_P, WG)
    _add1(y_ptr, out0 + 7, end, a7, BLOCK_P, WG)


@triton.jit
def _add1(y_ptr, outs, end, a, BLOCK_P: tl.constexpr, WG: tl.constexpr):
    """y[outs] += the sum over the BLOCK_P pairs of a (one output of each word)."""
    v = tl.sum(tl.reshape(a, (BLOCK_P, WG)), axis=0)
    tl.atomic_add(y_ptr + outs, v, mask=outs < end, sem="relaxed")


class LutU:
    """One group's 2-bit U^ halves, rows paired and their fields interleaved (8 outputs' nibbles a word)."""

    def __init__(self, ms: list[int], pks, device) -> None:  # noqa: ANN001
        assert all(len(pk.tiers) == 1 and pk.tiers[0][1].bits == 2 for pk in pks), "2-bit tiers only (DELTASTORE_BENCH_TIERS=2)"
        self.gs = pks[0].group_size
        rows, pis, ss, zs = [], [], [], []
        col, pi_off, sz_off, zcol = 0, 0, 0, 0
        for m, pk in zip(ms, pks):
            u = pk.tiers[0][1]
            assert m % self.gs == 0, "the probe takes slices of whole output groups"
            q = quant.unpack(u.q, 2, m)  # (r, m)
            r = q.shape[0]
            P = (r + 1) // 2
            sc, zp = u.s.float(), u.z.float()
            if r % 2:  # a zero row (scale 0: its table terms vanish)
                q = torch.cat([q, torch.zeros(1, m, dtype=q.dtype, device=q.device)])
                sc = torch.cat([sc, torch.zeros(1, sc.shape[1], device=sc.device)])
                zp = torch.cat([zp, torch.zeros(1, zp.shape[1], device=zp.device)])
            pi = quant.pack((q[0::2] | (q[1::2] << 2)).to(torch.int64), 4)  # (P, 4 * ceil(m / 32))
            pis.append(pi.reshape(-1))
            ss.append(sc.to(torch.float16).reshape(-1))
            zs.append(zp.to(torch.float16).reshape(-1))
            rows.append([col, m, P, pi_off, sz_off, zcol])
            col, pi_off, sz_off, zcol = col + m, pi_off + pi.numel(), sz_off + sc.numel(), zcol + r
        self.N, self.nsl, self.pks, self.ms = col, len(ms), pks, ms
        self.maxP = max(r[2] for r in rows)
        self.pi, self.s, self.zp = torch.cat(pis).contiguous(), torch.cat(ss).contiguous(), torch.cat(zs).contiguous()
        self.sl = torch.tensor(rows, dtype=torch.int32, device=device).reshape(-1)
        self.scr = {}

    def run(self, z: torch.Tensor, y: torch.Tensor, split: int, block_p: int, warps: int) -> None:
        per = max(block_p, triton.next_power_of_2(triton.cdiv(self.maxP, split)))  # (a multiple of block_p: see the kernel)
        split = triton.cdiv(self.maxP, per)
        grid = (self.N // self.gs, split)
        key = (grid, per)
        if key not in self.scr:
            self.scr[key] = torch.empty(grid[0] * grid[1] * per * 16, dtype=torch.float32, device=z.device)
        _lut_expand_kernel[grid](self.pi, self.s, self.zp, z, y, self.sl, self.scr[key], NSL=self.nsl, SPLIT=split, PER=per,
                                 BLOCK_P=block_p, GS=self.gs, num_warps=warps)

    def reference(self, z: torch.Tensor) -> torch.Tensor:
        """float64 (N,): t U^ for every slice (t = z's columns of the slice)."""
        out, zc = [], 0
        for pk in self.pks:
            u = pk.tiers[0][1]
            U = u.dequantize(pk.group_size).double()  # (r, m)
            out.append(z[zc: zc + u.count].double() @ U)
            zc += u.count
        return torch.cat(out)


def main() -> None:
    ap = probe_parser(__doc__)
    ap.add_argument("--cfgs", default="4:4:4,8:4:4,16:8:4,8:8:2,4:16:2", help="SPLIT:BLOCK_P:WARPS,... of the lookup expand")
    args = ap.parse_args()
    dev, copies, gen, dev_name = probe_setup(args)
    groups = [(n, [128] * len(ms), K) for n, ms, K in SMOKE_GROUPS] if args.smoke else GROUPS
    cfgs = [tuple(int(v) for v in c.split(":")) for c in args.cfgs.split(",")]
    if args.smoke:
        cfgs = [(2, 4, 4), (1, 8, 2), (3, 2, 1)]
    print(f"device: {dev_name}; triton {triton.__version__}")
    print("| group | components x outputs | product expand (us) | lookup expand SPLIT:BLOCK_P:WARPS (us) | best, x product | rel err lookup |")
    print("|---|---|---|---|---|---|")
    for name, ms, K in groups:
        sets, luts = [], []
        for _ in range(copies):
            pks = [random_packed(m, K, gen, dev, 0.5 if args.smoke else 1 / 16) for m in ms]
            ds = DeltaSet(K, ms, dev)
            ds.add(pks)
            sets.append(ds.build())
            luts.append(LutU(ms, pks, dev))
        x = torch.randn(1, K, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).to(dev)
        plan = plan_rows(torch.tensor([0], device=dev), 1)
        split = triton_ops.pick_split_k(1, sets[0], plan=plan)
        zs = []
        for ds in sets:
            z = torch.zeros(1, ds.zcols, device=dev)
            triton_ops.shrink(x, ds, plan, split, zsum=z)
            zs.append(z)
        want = luts[0].reference(zs[0][0])
        errs = []
        for sp, bp, nw in cfgs:
            y = torch.zeros(luts[0].N, device=dev)
            luts[0].run(zs[0].view(-1), y, sp, bp, nw)
            errs.append(float((y.double() - want).norm() / want.norm()))
        if args.smoke:
            print(f"| {name} | {sum(luts[0].ms)} outputs | - | - | - | {max(errs):.1e} |")
            continue
        ys = [torch.zeros(1, lu.N, device=dev) for lu in luts]
        t_prod = time_graph(lambda: [triton_ops.expand(z, y, ds, plan) for z, y, ds in zip(zs, ys, sets)]) / copies * 1e6
        times = {c: time_graph(lambda: [lu.run(z.view(-1), y.view(-1), c[0], c[1], c[2]) for lu, z, y in zip(luts, zs, ys)]) / copies * 1e6  # noqa: B023
                 for c in cfgs}
        best = min(times, key=times.get)
        per = ", ".join(f"{c[0]}:{c[1]}:{c[2]} {t:.1f}" for c, t in times.items())
        print(f"| {name} | {luts[0].maxP * 2} x {sum(ms)} | {t_prod:.1f} | {per} | {times[best]:.1f}, x{times[best] / t_prod:.2f} | "
              f"{max(errs):.1e} |", flush=True)


if __name__ == "__main__":
    main()
