"""Would a table lookup cut the one-row shrink's SM time? A probe, not a product kernel.

Today's GEMV shrink spends ~5 instructions a 2-bit value at one row (sm_90, static count: 323 a
thread's 64 values; raw_devvm/s31), where the unpack's floor is ~2 (one LOP3 to a float, one FFMA),
and the rest is the activations' route into every thread's registers. The lever tried here is the one
of LUT-GEMM and T-MAC: the activations enter only through a table. For each pair of inputs p (x0, x1)
the 16 sums T[p, e] = (e & 3) x0 + (e >> 2) x1 cover every value the pair's two 2-bit fields can take,
and a 2-bit word's nibble is exactly the index e of its pair: the dot product of a component row with
x is one table read and one add per two values, the scales and zero points applied once per group
(s (sum_p T[p, e_p] - zero * sum x)). A thread takes whole components; a warp's 32 lanes read the same
16-entry table at one time (the words are stored word-major, components contiguous), so the 32 reads
touch one 64-byte line. The table here is in global memory (built by its own launch; L1 serves the
reads): plain Triton cannot place it in shared memory.

kernels/lut.py's shrink (the product's build of the same lookup, on the product's set with its word-major copy)
is checked and timed beside the base too. It times, per group of one Llama-2-7B layer (2-bit components at the real codec's ranks for alpha 1/16,
`DELTASTORE_BENCH_TIERS=2`), each as a CUDA graph over --copies copies: the product's shrink
(triton_ops.shrink at its defaults, one row), the table launch, the LUT shrink, and both; after
checking the LUT shrink against a float64 torch reference.

    python benchmarks/probe_lut_shrink.py                 # GPU: the table
    TRITON_INTERPRET=1 python benchmarks/probe_lut_shrink.py --smoke   # CPU: correctness only
"""
from __future__ import annotations

import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DELTASTORE_BENCH_TIERS", "2")

from bench_kernels import GROUPS, SMOKE_GROUPS, base_cublas, base_triton, probe_parser, probe_setup, random_packed, side_by_side, time_graph  # noqa: E402

from deltastore.kernels import DeltaSet, lut, plan_rows, triton_ops  # noqa: E402


@triton.jit
def _lut_table_kernel(x_ptr, t_ptr, xs_ptr, K, GS: tl.constexpr):
    """Group g's table: T[p, e] = (e & 3) x[2p] + (e >> 2) x[2p + 1] for its GS / 2 pairs (inputs past
    K read as 0), and xs[g] = the group's sum of x."""
    g = tl.program_id(0)
    p = g * (GS // 2) + tl.arange(0, GS // 2)
    e = tl.arange(0, 16)
    x0 = tl.load(x_ptr + 2 * p, mask=2 * p < K, other=0.0).to(tl.float32)
    x1 = tl.load(x_ptr + 2 * p + 1, mask=2 * p + 1 < K, other=0.0).to(tl.float32)
    t = (e & 3).to(tl.float32)[None, :] * x0[:, None] + (e >> 2).to(tl.float32)[None, :] * x1[:, None]
    tl.store(t_ptr + p[:, None] * 16 + e[None, :], t)
    tl.store(xs_ptr + g, tl.sum(x0 + x1, axis=0))


@triton.jit
def _lut_shrink_kernel(t_ptr, x_ptr, xs_ptr, wt_ptr, s_ptr, z_ptr, sv_ptr, out_ptr, K, R, RS, G, SPLIT: tl.constexpr,
                       BLOCK_R: tl.constexpr, GS: tl.constexpr, GATHER: tl.constexpr = False):
    """out[r] += S_r * sum over this split's groups g of s[g, r] (sum_p T[p, nibble_p(r)] - z[g, r] xs[g]).
    wt (words, RS) int32: word j of every component, components contiguous (row stride RS >= R); s, z
    (G, RS) fp16. Every tensor is 1-D over (word of the group, component), so the words' load and the
    table reads share one layout (no conversion): a thread holds all of a group's words of its
    components and sums them at the end. The table T: the table launch's (t_ptr), or with GATHER each
    group's made in the program from x (x_ptr, K; no table launch) and read by tl.gather (which Triton
    lowers through shared memory: 32-bit addresses, no 64-bit pointer a read)."""
    WPG: tl.constexpr = GS // 16  # 2-bit words a group
    F: tl.constexpr = WPG * BLOCK_R
    f = tl.arange(0, F)
    jf = f // BLOCK_R
    rf = tl.program_id(0) * BLOCK_R + f % BLOCK_R
    okf = rf < R
    wrow = jf * RS + rf
    per = tl.cdiv(G, SPLIT)
    g0 = tl.program_id(1) * per
    g1 = tl.minimum(g0 + per, G)
    te = tl.arange(0, GS * 8)  # (GATHER) a group's table: GS / 2 pairs x 16 entries
    tp = te // 16
    ca = (te % 16 & 3).to(tl.float32)
    cb = (te % 16 >> 2).to(tl.float32)
    acc = tl.zeros((F,), dtype=tl.float32)
    w1 = tl.load(wt_ptr + g0 * WPG * RS + wrow, mask=okf & (jf * 0 + g0 < g1), other=0)
    for g in range(g0, g1):
        w = w1
        w1 = tl.load(wt_ptr + (g + 1) * WPG * RS + wrow, mask=okf & (jf * 0 + g + 1 < g1), other=0)  # (a step ahead)
        sc = tl.load(s_ptr + g * RS + rf, mask=okf, other=0.0).to(tl.float32)
        zp = tl.load(z_ptr + g * RS + rf, mask=okf, other=0.0).to(tl.float32)
        xsg = tl.load(xs_ptr + g)
        a = tl.zeros((F,), dtype=tl.float32)
        if GATHER:
            i0 = g * GS + 2 * tp
            x0 = tl.load(x_ptr + i0, mask=i0 < K, other=0.0).to(tl.float32)
            x1 = tl.load(x_ptr + i0 + 1, mask=i0 + 1 < K, other=0.0).to(tl.float32)
            table = ca * x0 + cb * x1
            for k in tl.static_range(8):  # nibble k: pair j * 8 + k
                a += tl.gather(table, jf * 128 + k * 16 + ((w >> (4 * k)) & 15), 0)
        else:
            tg = t_ptr + g * (GS * 8) + jf * 128  # word j's 8 pairs' tables (16 entries each)
            for k in tl.static_range(8):  # nibble k: pair j * 8 + k
                a += tl.load(tg + (k * 16 + ((w >> (4 * k)) & 15)))
        acc += sc * (a - tl.where(jf == 0, zp * xsg, 0.0))
    out = tl.sum(tl.reshape(acc, (WPG, BLOCK_R)), axis=0)
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    tl.atomic_add(out_ptr + offs_r, out * tl.load(sv_ptr + offs_r, mask=r_ok, other=0.0), mask=r_ok, sem="relaxed")


class Lut:
    """One group's 2-bit V^ halves, every slice's components stacked, in the probe's layout."""

    def __init__(self, ds_slots, K: int, gs: int, device) -> None:  # noqa: ANN001
        assert all(len(pk.tiers) == 1 and pk.tiers[0][0].bits == 2 for pk in ds_slots), "2-bit tiers only (DELTASTORE_BENCH_TIERS=2)"
        vs = [(pk.tiers[0][0], pk.S) for pk in ds_slots]
        words = torch.cat([v.q for v, _ in vs])  # (R, words a row)
        self.R, self.K, self.gs = words.shape[0], K, gs
        self.G = triton.cdiv(K, gs)
        self.q = words
        self.s_rows = torch.cat([v.s for v, _ in vs])
        self.z_rows = torch.cat([v.z for v, _ in vs])
        self.wt = words.t().contiguous()
        pad = self.G * gs // 16 - self.wt.shape[0]  # whole groups of words (zeros: read as value 0 * T = 0)
        if pad:
            self.wt = torch.cat([self.wt, torch.zeros(pad, self.R, dtype=torch.int32, device=device)])
        self.st = self.s_rows.t().contiguous()
        self.zt = self.z_rows.t().contiguous()
        self.sv = torch.cat([S.float() for _, S in vs]).contiguous()
        self.table = torch.empty(self.G * gs // 2, 16, dtype=torch.float32, device=device)
        self.xs = torch.empty(self.G, dtype=torch.float32, device=device)

    def run_table(self, x: torch.Tensor) -> None:
        _lut_table_kernel[(self.G,)](x, self.table, self.xs, self.K, GS=self.gs, num_warps=4)

    def run_shrink(self, out: torch.Tensor, split: int, block_r: int, warps: int) -> None:
        grid = (triton.cdiv(self.R, block_r), split)
        _lut_shrink_kernel[grid](self.table, self.table, self.xs, self.wt, self.st, self.zt, self.sv, out, self.K, self.R, self.R,
                                 self.G, SPLIT=split, BLOCK_R=block_r, GS=self.gs, num_warps=warps)

    def run_gather(self, x: torch.Tensor, out: torch.Tensor, split: int, block_r: int, warps: int) -> None:
        """The in-program table (xs from the table launch's group sums, made once per x here too)."""
        grid = (triton.cdiv(self.R, block_r), split)
        _lut_shrink_kernel[grid](self.table, x, self.xs, self.wt, self.st, self.zt, self.sv, out, self.K, self.R, self.R, self.G,
                                 SPLIT=split, BLOCK_R=block_r, GS=self.gs, GATHER=True, num_warps=warps)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """float64: S_r * sum_k (q - z) s x over the components' dequantized rows."""
        sh = torch.arange(16, device=x.device, dtype=torch.int32) * 2
        q = ((self.q[:, :, None] >> sh) & 3).reshape(self.R, -1)[:, : self.K].double()
        gi = torch.arange(self.K, device=x.device) // self.gs
        v = (q - self.z_rows.double()[:, gi]) * self.s_rows.double()[:, gi]
        return (v @ x.double()) * self.sv.double()


def main() -> None:
    ap = probe_parser(__doc__)
    ap.add_argument("--cfgs", default="128:16:4,64:32:2,64:64:2,32:32:1,32:64:1,128:32:4", help="BLOCK_R:SPLIT:WARPS,...")
    ap.add_argument("--base", choices=("cublas", "triton"), default="triton",
                    help="the base beside the shrink: the product's Triton GEMV (what DeltaLinear runs beside deltas) or cuBLAS")
    ap.add_argument("--fork-only", action="store_true", help="beside the base: only the fork/join cost (a one-float side launch), "
                    "the product's shrink beside, and the shrink after the base on one stream")
    ap.add_argument("--gather-cfgs", default="64:16:2,64:32:2,32:32:1", help="the same for the in-program table (tl.gather)")
    args = ap.parse_args()
    dev, copies, gen, dev_name = probe_setup(args)
    groups = SMOKE_GROUPS if args.smoke else GROUPS
    cfgs = [tuple(int(v) for v in c.split(":")) for c in args.cfgs.split(",")]
    gcfgs = [tuple(int(v) for v in c.split(":")) for c in args.gather_cfgs.split(",")]
    if args.smoke:
        cfgs = gcfgs = [(32, 2, 4), (64, 1, 2)]
    print(f"device: {dev_name}; triton {triton.__version__}")
    print("| group | components x inputs | product shrink (us) | LUT table (us) | LUT shrink BLOCK_R:SPLIT:WARPS (us) | "
          "best LUT shrink, table + shrink (us) | x product | rel err LUT |")
    print("|---|---|---|---|---|---|---|---|")
    beside_rows: list[str] = []
    base_fn = base_triton if args.base == "triton" else base_cublas
    for name, ms, K in groups:
        sets, luts = [], []
        for _ in range(copies):
            ds = DeltaSet(K, ms, dev)
            pks = [random_packed(m, K, gen, dev, 0.5 if args.smoke else 1 / 16) for m in ms]
            ds.add(pks)
            sets.append(ds.build())
            luts.append(Lut(pks, K, pks[0].group_size, dev))
        x = torch.randn(1, K, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).to(dev)
        plan = plan_rows(torch.tensor([0], device=dev), 1)
        split = triton_ops.pick_split_k(1, sets[0], plan=plan)
        zsum = [torch.zeros(1, ds.zcols, device=dev) for ds in sets]
        want = luts[0].reference(x[0])
        errs = []
        for br, sp, nw in cfgs:
            out = torch.zeros(luts[0].R, device=dev)
            luts[0].run_table(x[0])
            luts[0].run_shrink(out, sp, br, nw)
            errs.append(float((out.double() - want).norm() / want.norm()))
        for br, sp, nw in gcfgs:
            out = torch.zeros(luts[0].R, device=dev)
            luts[0].run_gather(x[0], out, sp, br, nw)
            errs.append(float((out.double() - want).norm() / want.norm()))
        zl = torch.zeros(1, sets[0].zcols, device=dev)  # kernels/lut.py's shrink on the product's set (its word-major copy)
        lut.shrink(x, sets[0], plan, zl)
        errs.append(float((zl[0, : luts[0].R].double() - want).norm() / want.norm()))
        if args.smoke:
            print(f"| {name} | {luts[0].R} x {K} | - | - | - | - | - | {max(errs):.1e} |")
            continue
        t_prod = time_graph(lambda: [triton_ops.shrink(x, ds, plan, split, zsum=z) for ds, z in zip(sets, zsum)]) / copies
        t_tab = time_graph(lambda: [lu.run_table(x[0]) for lu in luts]) / copies
        outs = [torch.zeros(lu.R, device=dev) for lu in luts]
        times = {}
        for br, sp, nw in cfgs:
            times[(br, sp, nw)] = time_graph(lambda: [lu.run_shrink(o, sp, br, nw) for lu, o in zip(luts, outs)]) / copies  # noqa: B023
        gtimes = {c: time_graph(lambda: [lu.run_gather(x[0], o, c[1], c[0], c[2]) for lu, o in zip(luts, outs)]) / copies  # noqa: B023
                  for c in gcfgs}
        best = min(times, key=times.get)
        both = time_graph(lambda: [(lu.run_table(x[0]), lu.run_shrink(o, best[1], best[0], best[2])) for lu, o in zip(luts, outs)]) / copies
        per = ", ".join(f"{c[0]}:{c[1]}:{c[2]} {t * 1e6:.1f}" for c, t in times.items())
        per += "; in-program table " + ", ".join(f"{c[0]}:{c[1]}:{c[2]} {t * 1e6:.1f}" for c, t in gtimes.items())
        print(f"| {name} | {luts[0].R} x {K} | {t_prod * 1e6:.1f} (split {split}) | {t_tab * 1e6:.1f} | {per} | "
              f"{times[best] * 1e6:.1f}, {both * 1e6:.1f} | x{both / t_prod:.2f} | {max(errs):.1e} |", flush=True)
        Ws = [(torch.randn(sum(ms), K, device=dev) * 0.02).to(torch.bfloat16) for _ in range(copies)]
        ys = [torch.empty(1, sum(ms), dtype=torch.bfloat16, device=dev) for _ in range(copies)]

        def base_only():  # noqa: ANN202
            for W, y in zip(Ws, ys):
                base_fn(x, W, y)

        def with_prod():  # noqa: ANN202
            for W, y, ds, z in zip(Ws, ys, sets, zsum):
                side_by_side(lambda: base_fn(x, W, y), lambda: triton_ops.shrink(x, ds, plan, split, zsum=z))  # noqa: B023

        def with_lut():  # noqa: ANN202
            for W, y, lu, o in zip(Ws, ys, luts, outs):
                side_by_side(lambda: base_fn(x, W, y),  # noqa: B023
                             lambda: (lu.run_table(x[0]), lu.run_shrink(o, best[1], best[0], best[2])))  # noqa: B023

        gbest = min(gtimes, key=gtimes.get)

        def with_gather():  # noqa: ANN202
            for W, y, lu, o in zip(Ws, ys, luts, outs):
                side_by_side(lambda: base_fn(x, W, y), lambda: lu.run_gather(x[0], o, gbest[1], gbest[0], gbest[2]))  # noqa: B023

        def with_product_lut():  # noqa: ANN202
            for W, y, ds, z in zip(Ws, ys, sets, zsum):
                side_by_side(lambda: base_fn(x, W, y), lambda: lut.shrink(x, ds, plan, z))  # noqa: B023

        def with_prod_kw(**kw):  # noqa: ANN202
            def fn():  # noqa: ANN202
                for W, y, ds, z in zip(Ws, ys, sets, zsum):
                    side_by_side(lambda: base_fn(x, W, y), lambda: triton_ops.shrink(x, ds, plan, split, zsum=z, **kw))  # noqa: B023
            return fn

        tiny = torch.zeros(1, device=dev)

        def with_tiny():  # noqa: ANN202  (the fork and join alone: one one-float launch on the side stream)
            for W, y in zip(Ws, ys):
                side_by_side(lambda: base_fn(x, W, y), lambda: tiny.add_(1.0))  # noqa: B023

        def serial_prod():  # noqa: ANN202  (no side stream: the shrink after the base)
            for W, y, ds, z in zip(Ws, ys, sets, zsum):
                base_fn(x, W, y)
                triton_ops.shrink(x, ds, plan, split, zsum=z)

        if args.fork_only:
            tb, tt, ts, tp = (time_graph(f) / copies * 1e6 for f in (base_only, with_tiny, serial_prod, with_prod))
            beside_rows.append(f"| {name} | {tb:.1f} | {tt:.1f} (+{tt - tb:.1f}) | {tp:.1f} (+{tp - tb:.1f}) | {ts:.1f} (+{ts - tb:.1f}) |")
            continue
        tb, tp, tl_, tg, tp2, tpl = (time_graph(f) / copies * 1e6 for f in (base_only, with_prod, with_lut, with_gather,
                                                                            with_prod_kw(num_warps=2), with_product_lut))
        beside_rows.append(f"| {name} | {tb:.1f} | {tp:.1f} (+{tp - tb:.1f}) | {tp2:.1f} (+{tp2 - tb:.1f}) | "
                           f"{tl_:.1f} (+{tl_ - tb:.1f}) | {tg:.1f} (+{tg - tb:.1f}) | {tpl:.1f} (+{tpl - tb:.1f}) |")
    if beside_rows and args.fork_only:
        print(f"\nThe fork and join alone, us a copy ({args.base} base, one row):\n")
        print("| group | base alone | + a one-float launch beside (fork, join) | + product shrink beside | base then shrink, one stream |"
              "\n|---|---|---|---|---|")
        print("\n".join(beside_rows))
    elif beside_rows:
        print(f"\nBeside the base ({args.base}, one row) on a side stream, us a copy:\n")
        print("| group | base alone | + product shrink | + product, 2 warps | + LUT table + shrink (best) | "
              "+ LUT in-program table (best) | + kernels/lut.py (table + shrink) |\n|---|---|---|---|---|---|---|")
        print("\n".join(beside_rows))


if __name__ == "__main__":
    main()
