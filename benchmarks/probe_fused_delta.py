"""Would the expand hide inside the base GEMV? A probe of one fused launch per group at one row.

Today a group's delta at one row runs beside its base on a side stream (zero, shrink, expand into a
float32 buffer, then an add into y): ~+33 us over cuBLAS's 116 us a Llama-2-7B layer, most of it the
base slowed by the delta kernels' SM time and the launches around it (kernels_h200.md, thirty-first
session). The old fused kernel (kernels/fused_gemv.py, off) put the expand after the base in each
program with the unpack of its day and was x1.36 slower. This probe asks the question again with
today's parts: a program owns 16 output columns, streams their rows of W as the one-row Triton base
GEMV does (kernels/base_gemv.py), then waits for the shrink (programmatic dependent launch: the shrink
lets this grid start at once, ``gdc_wait`` holds only the delta's part), then adds t U^ for its 16
columns: one packed word a component (U^'s words stored word-major, so a warp reads 32 components'
words as one line), unpacked by the GEMV's one-LOP3 unpack (triton_ops._unpack_c), and writes y once.
Per group: zero z, shrink (the product's, PDL), fused: three launches on one stream, no add.

It times, per group of one Llama-2-7B layer (2-bit components at the real codec's ranks for alpha 1/16,
`DELTASTORE_BENCH_TIERS=2`), each a CUDA graph over --copies copies: cuBLAS's base alone, the product's
path (kernels.linear.beside on a side stream with the Triton base GEMV, then the add), and the fused
path; after checking the fused output against a float64 reference.

    python benchmarks/probe_fused_delta.py                        # GPU: the table
    TRITON_INTERPRET=1 python benchmarks/probe_fused_delta.py --smoke   # CPU: correctness only
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

from deltastore.kernels import DeltaSet, plan_rows, triton_ops  # noqa: E402
from deltastore.kernels.linear import base_linear, beside, with_delta  # noqa: E402
from deltastore.kernels.triton_ops import _field_c, _unpack_c  # noqa: E402

HAVE_GDC = triton_ops.HAVE_GDC

#: per slice: first column in the group, columns, components, offset of its words / scales, its z column
NSF = 6


@triton.jit
def _slice_row(sl_ptr, n0, NSL: tl.constexpr):
    """The 6 fields of the slice holding column n0 (slices are whole blocks: the row of the last slice that
    starts at or before n0): first column, columns, rows (components or pairs), words offset, scales
    offset, z column."""
    s = 0
    for i in tl.static_range(1, NSL):
        s += (tl.load(sl_ptr + i * 6) <= n0).to(tl.int32)
    return (tl.load(sl_ptr + s * 6), tl.load(sl_ptr + s * 6 + 1), tl.load(sl_ptr + s * 6 + 2), tl.load(sl_ptr + s * 6 + 3),
            tl.load(sl_ptr + s * 6 + 4), tl.load(sl_ptr + s * 6 + 5))


@triton.jit
def _fused_kernel(x_ptr, w_ptr, y_ptr, z_ptr, ut_ptr, st_ptr, zt_ptr, sl_ptr, K, one, NBLK,
                  NSL: tl.constexpr, GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  BLOCK_J: tl.constexpr, USE_GDC: tl.constexpr, DELTA: tl.constexpr = True,
                  PRELOAD: tl.constexpr = False, RJ: tl.constexpr = 1024):
    """y[0, n0 .. n0 + 16] = x W^T + t U^ (t = the shrink's z, which holds S) for one block of 16 columns."""
    for blk in range(tl.program_id(0), NBLK, tl.num_programs(0)):  # persistent: a grid under NBLK walks the blocks
        n0 = blk * BLOCK_N
        col0, _m, R, u_off, sz_off, zcol = _slice_row(sl_ptr, n0, NSL)
        c = (n0 - col0) // 16
        g = (n0 - col0) // GS
        fi = tl.arange(0, 16)
        cf = _field_c(fi, 2)  # (16,): the offsets the unpack adds to each field
        if PRELOAD:  # the delta's words, scales and zeros (all but z) asked for before the base's stream
            j = tl.arange(0, RJ)
            ok = j < R
            wd = tl.load(ut_ptr + u_off + c * R + j, mask=ok, other=0)
            sc = tl.load(st_ptr + sz_off + g * R + j, mask=ok, other=0.0)
            zp = tl.load(zt_ptr + sz_off + g * R + j, mask=ok, other=0.0)
        # the base: 16 rows of W in steps of BLOCK_K, a (16, BLOCK_K) float32 partial reduced once
        n = n0 + tl.arange(0, BLOCK_N)
        k = tl.arange(0, BLOCK_K)
        wp = w_ptr + n.to(tl.int64)[:, None] * K + k[None, :]
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            w = tl.load(wp + k0, mask=((k0 + k) < K)[None, :], other=0.0).to(tl.float32)
            xk = tl.load(x_ptr + k0 + k, mask=(k0 + k) < K, other=0.0).to(tl.float32)
            acc += w * xk[None, :]
        base = tl.sum(acc, axis=1)  # (16,)
        d = tl.zeros([BLOCK_N], tl.float32)  # (the probe's base-only row, DELTA off: this GEMV and its launches)
        if DELTA:
            if USE_GDC:  # the shrink's z: everything above ran while the shrink did
                tl.extra.cuda.gdc_wait()
            # the delta: the block's word c (columns 16c .. 16c + 15 of its slice) of every component j
            if PRELOAD:
                a = tl.load(z_ptr + zcol + j, mask=ok, other=0.0) * sc.to(tl.float32)
                q = _unpack_c(tl.reshape(wd, (RJ, 1, 1)), fi, one, 2, 0)  # (16, RJ, 1, 1): c_f + q_f
                d = tl.sum(tl.reshape(q * tl.reshape(a, (1, RJ, 1, 1)), (16, RJ)), axis=1)
                d = d - cf * tl.sum(a, axis=0) - tl.sum(a * zp.to(tl.float32), axis=0)
            else:
                jj = tl.arange(0, BLOCK_J)
                acc16 = tl.zeros([16, BLOCK_J, 1, 1], tl.float32)
                asum = tl.zeros([BLOCK_J], tl.float32)
                azp = tl.zeros([BLOCK_J], tl.float32)
                for j0 in range(0, R, BLOCK_J):
                    j = j0 + jj
                    ok = j < R
                    wd = tl.load(ut_ptr + u_off + c * R + j, mask=ok, other=0)
                    sc = tl.load(st_ptr + sz_off + g * R + j, mask=ok, other=0.0).to(tl.float32)
                    zp = tl.load(zt_ptr + sz_off + g * R + j, mask=ok, other=0.0).to(tl.float32)
                    t = tl.load(z_ptr + zcol + j, mask=ok, other=0.0)
                    a = t * sc
                    q = _unpack_c(tl.reshape(wd, (BLOCK_J, 1, 1)), fi, one, 2, 0)  # (16, BLOCK_J, 1, 1): c_f + q_f
                    acc16 += q * tl.reshape(a, (1, BLOCK_J, 1, 1))
                    asum += a
                    azp += a * zp
                d = tl.sum(tl.reshape(acc16, (16, BLOCK_J)), axis=1) - cf * tl.sum(asum, axis=0) - tl.sum(azp, axis=0)
        tl.store(y_ptr + n, (base + d).to(y_ptr.dtype.element_ty))


@triton.jit
def _slice_of(sl_ptr, n0, NSL: tl.constexpr, GS: tl.constexpr):
    """(R, word column c, group g, words offset, scales offset, z column) of the block at column n0."""
    col0, _m, R, u_off, sz_off, zcol = _slice_row(sl_ptr, n0, NSL)
    return R, (n0 - col0) // 16, (n0 - col0) // GS, u_off, sz_off, zcol


@triton.jit
def _fused_il_kernel(x_ptr, w_ptr, y_ptr, z_ptr, ut_ptr, st_ptr, zt_ptr, sl_ptr, K, one, NBLK,
                     NSL: tl.constexpr, GS: tl.constexpr, BLOCK_K: tl.constexpr, CH: tl.constexpr, USE_GDC: tl.constexpr):
    """_fused_kernel, persistent, with the delta interleaved into the base's stream: while a program streams
    block i's rows of W, each step of BLOCK_K inputs also takes one chunk of CH components of block i - 1's
    delta (its words, scales, zeros and z loaded a step ahead), so no phase of a program leaves the memory
    idle; block i - 1's y is written after block i's stream (the last block's delta after the loop)."""
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    n_my = tl.cdiv(NBLK - pid, P)
    nk = tl.cdiv(K, BLOCK_K)
    k = tl.arange(0, BLOCK_K)
    nn = tl.arange(0, 16)
    fi = tl.arange(0, 16)
    cf = _field_c(fi, 2)
    jj = tl.arange(0, CH)
    base_prev = tl.zeros([16], tl.float32)
    for it in range(0, n_my + 1):
        blk = pid + it * P
        has_base = it < n_my
        n0 = blk * 16
        n = n0 + nn
        wp = w_ptr + tl.where(has_base, n, 0).to(tl.int64)[:, None] * K + k[None, :]
        # the previous block's delta, in chunks of CH components, one a step
        pn0 = (blk - P) * 16
        has_prev = it > 0
        R, c, g, u_off, sz_off, zcol = _slice_of(sl_ptr, tl.where(has_prev, pn0, 0), NSL, GS)
        R = tl.where(has_prev, R, 0)
        nch = tl.cdiv(R, CH)
        if USE_GDC:
            if it == 1:
                tl.extra.cuda.gdc_wait()
        j = jj
        ok = j < R
        wd1 = tl.load(ut_ptr + u_off + c * R + j, mask=ok, other=0)
        sc1 = tl.load(st_ptr + sz_off + g * R + j, mask=ok, other=0.0)
        zp1 = tl.load(zt_ptr + sz_off + g * R + j, mask=ok, other=0.0)
        t1 = tl.load(z_ptr + zcol + j, mask=ok, other=0.0)
        acc = tl.zeros([16, BLOCK_K], tl.float32)
        dacc = tl.zeros([16, CH, 1, 1], tl.float32)
        asum = tl.zeros([CH], tl.float32)
        azp = tl.zeros([CH], tl.float32)
        steps = tl.maximum(tl.where(has_base, nk, 0), nch)  # (more chunks than steps: steps past K read no W)
        for ks in range(0, steps):
            k0 = ks * BLOCK_K
            kin = ((k0 + k) < K) & ((k * 0 + has_base.to(tl.int32)) > 0)
            w = tl.load(wp + k0, mask=kin[None, :], other=0.0)
            xk = tl.load(x_ptr + k0 + k, mask=kin, other=0.0).to(tl.float32)
            # this step's delta chunk (loaded last step), the next chunk asked for now
            wd, sc, zp, t = wd1, sc1.to(tl.float32), zp1.to(tl.float32), t1
            j = (ks + 1) * CH + jj
            ok = j < R
            wd1 = tl.load(ut_ptr + u_off + c * R + j, mask=ok, other=0)
            sc1 = tl.load(st_ptr + sz_off + g * R + j, mask=ok, other=0.0)
            zp1 = tl.load(zt_ptr + sz_off + g * R + j, mask=ok, other=0.0)
            t1 = tl.load(z_ptr + zcol + j, mask=ok, other=0.0)
            a = t * sc  # zero past R (masked loads)
            q = _unpack_c(tl.reshape(wd, (CH, 1, 1)), fi, one, 2, 0)
            dacc += q * tl.reshape(a, (1, CH, 1, 1))
            asum += a
            azp += a * zp
            acc += w.to(tl.float32) * xk[None, :]
        d = tl.sum(tl.reshape(dacc, (16, CH)), axis=1) - cf * tl.sum(asum, axis=0) - tl.sum(azp, axis=0)
        if has_prev:
            tl.store(y_ptr + pn0 + nn, (base_prev + d).to(y_ptr.dtype.element_ty))
        base_prev = tl.sum(acc, axis=1)


class Fused:
    """One group's base weight and 2-bit U^ halves in the probe's layout, beside the product's DeltaSet."""

    def __init__(self, ms: list[int], K: int, pks, ds: DeltaSet, W: torch.Tensor, device) -> None:  # noqa: ANN001
        assert all(len(pk.tiers) == 1 and pk.tiers[0][1].bits == 2 for pk in pks), "2-bit tiers only (DELTASTORE_BENCH_TIERS=2)"
        self.K, self.W, self.gs, self.ds, self.pks = K, W, pks[0].group_size, ds, pks
        rows, uts, sts, zts = [], [], [], []
        col, u_off, sz_off, zcol = 0, 0, 0, 0
        for m, pk in zip(ms, pks):
            u = pk.tiers[0][1]
            r = u.count
            assert m % 16 == 0, "slices are whole blocks of 16 columns"
            uts.append(u.q.t().contiguous().reshape(-1))
            sts.append(u.s.t().contiguous().reshape(-1))
            zts.append(u.z.t().contiguous().reshape(-1))
            rows.append([col, m, r, u_off, sz_off, zcol])
            col, u_off, sz_off, zcol = col + m, u_off + u.q.numel(), sz_off + u.s.numel(), zcol + r
        self.N = col
        self.rj = triton.next_power_of_2(max(r[2] for r in rows))
        self.nsl = len(ms)
        self.ut, self.st, self.zt = torch.cat(uts), torch.cat(sts), torch.cat(zts)
        self.sl = torch.tensor(rows, dtype=torch.int32, device=device).reshape(-1)

    def run(self, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor, block_j: int, warps: int, pdl: bool, delta: bool = True,
            per_sm: int = 0) -> None:
        """block_j < 0: the interleaved kernel (-block_j components a step, needs per_sm); 0: the whole delta's words, scales and zeros loaded before the base (PRELOAD); per_sm > 0: a
        persistent grid of per_sm programs an SM walking the blocks (3 programs under the interpreter)."""
        use = pdl and delta and HAVE_GDC and x.is_cuda
        nblk = self.N // 16
        grid = min(nblk, per_sm * triton_ops.sm_count(x.device.index or 0)) if per_sm and x.is_cuda else (min(nblk, 3) if per_sm else nblk)
        if block_j < 0:  # the interleaved kernel: CH = -block_j components a step
            _fused_il_kernel[(grid,)](x, self.W, y, z, self.ut, self.st, self.zt, self.sl, self.K, 1, nblk,
                                      NSL=self.nsl, GS=self.gs, BLOCK_K=256, CH=-block_j, USE_GDC=use, num_warps=warps,
                                      **({"launch_pdl": True} if use else {}))
            return
        _fused_kernel[(grid,)](x, self.W, y, z, self.ut, self.st, self.zt, self.sl, self.K, 1, nblk,
                                       NSL=self.nsl, GS=self.gs, BLOCK_N=16, BLOCK_K=256, BLOCK_J=block_j or 128, USE_GDC=use, DELTA=delta,
                                       PRELOAD=block_j == 0, RJ=self.rj,
                                       num_warps=warps, **({"launch_pdl": True} if use else {}))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """float64 (N,): x W^T + x V^^T S U^^T, every slice."""
        xd = x[0].double()
        out = [self.W.double() @ xd]
        d = []
        for pk in self.pks:
            v, u = pk.tiers[0]
            V = v.dequantize(pk.group_size).double()  # (r, K)
            U = u.dequantize(pk.group_size).double()  # (r, m)
            d.append(((V @ xd) * pk.S.double()) @ U)
        return out[0] + torch.cat(d)


def main() -> None:
    ap = probe_parser(__doc__)
    ap.add_argument("--cfgs", default="256:4:0,0:4:4,0:4:3,0:8:2,256:4:4", help="BLOCK_J:WARPS:PER_SM,... of the fused kernel (BLOCK_J 0: everything but z loaded "
                    "before the base; PER_SM > 0: a persistent grid of that many programs an SM)")
    args = ap.parse_args()
    dev, copies, gen, dev_name = probe_setup(args)
    groups = [(n, [max(m, 128) for m in ms], K) for n, ms, K in SMOKE_GROUPS] if args.smoke else GROUPS
    cfgs = [tuple(int(v) for v in c.split(":")) for c in args.cfgs.split(",")]
    if args.smoke:
        cfgs = [(32, 4, 0), (64, 2, 1), (0, 4, 1), (-32, 4, 1), (-64, 2, 1)]
    side = torch.cuda.Stream() if dev.type == "cuda" else None
    print(f"device: {dev_name}; triton {triton.__version__}; "
          f"PDL {HAVE_GDC and dev.type == 'cuda'}")
    print("| group | base alone (cuBLAS, us) | product path (us, exposed) | fused path BLOCK_J:WARPS:PER_SM (us, exposed) | "
          "fused, no delta part (base GEMV + launches) | rel err fused / product |")
    print("|---|---|---|---|---|---|")
    zrows: list[str] = []
    for name, ms, K in groups:
        fs = []
        for _ in range(copies):
            pks = [random_packed(m, K, gen, dev, 0.5 if args.smoke else 1 / 16) for m in ms]
            ds = DeltaSet(K, ms, dev)
            ds.add(pks)
            ds.build()
            W = (torch.randn(sum(ms), K, generator=gen, device=dev) * 0.02).to(torch.bfloat16)
            fs.append(Fused(ms, K, pks, ds, W, dev))
        x = torch.randn(1, K, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).to(dev)
        plan = plan_rows(torch.tensor([0], device=dev), 1)
        split = triton_ops.pick_split_k(1, fs[0].ds, plan=plan)
        zs = [torch.zeros(1, f.ds.zcols, device=dev) for f in fs]
        ys = [torch.empty(1, f.N, dtype=torch.bfloat16, device=dev) for f in fs]
        want = fs[0].reference(x)
        scale = float(want.abs().max())

        def fused_fn(bj: int, nw: int, per_sm: int = 0, delta: bool = True, shrink: bool = True):  # noqa: ANN202
            def fn() -> None:
                for f, z, y in zip(fs, zs, ys):
                    if delta and shrink:
                        z.zero_()
                        triton_ops.shrink(x, f.ds, plan, split, zsum=z, pdl=True)
                    f.run(x, z.view(-1), y, bj, nw, pdl=True, delta=delta, per_sm=per_sm)
            return fn

        def prod_fn() -> None:
            for f, y in zip(fs, ys):
                yb, d = beside(x, f.ds, plan, lambda: base_linear(x, f.W, None), side=side if side is not None else False)  # noqa: B023
                y.copy_(with_delta(yb, d, torch.bfloat16))

        errs = []
        for c in cfgs:
            fused_fn(*c)()
            errs.append(float((ys[0][0].double() - want).abs().max()) / scale)
        prod_fn()
        err_p = float((ys[0][0].double() - want).abs().max()) / scale
        if args.smoke:
            print(f"| {name} | - | - | - | - | {max(errs):.1e} / {err_p:.1e} of max |")
            continue
        tb = time_graph(lambda: [torch.matmul(x, f.W.t(), out=y) for f, y in zip(fs, ys)]) / copies * 1e6
        tp = time_graph(prod_fn) / copies * 1e6
        tf = {c: time_graph(fused_fn(*c)) / copies * 1e6 for c in cfgs}
        t0 = time_graph(fused_fn(256, 4, delta=False)) / copies * 1e6
        tz = {c: time_graph(fused_fn(*c, shrink=False)) / copies * 1e6 for c in cfgs[:2]}
        per = ", ".join(f"{':'.join(map(str, c))} {t:.1f} (+{t - tb:.1f})" for c, t in tf.items())
        print(f"| {name} | {tb:.1f} | {tp:.1f} (+{tp - tb:.1f}) | {per} | {t0:.1f} (+{t0 - tb:.1f}) | "
              f"{max(errs):.1e} / {err_p:.1e} of max |", flush=True)
        zrows.append(f"| {name} | " + ", ".join(f"{':'.join(map(str, c))} {t:.1f} (+{t - tb:.1f})" for c, t in tz.items()) + " |")
    if zrows:
        print("\nThe fused launch alone (z already there: no zero, no shrink, no wait), us (exposed over cuBLAS):\n")
        print("| group | fused BLOCK_J:WARPS:PER_SM |\n|---|---|")
        print("\n".join(zrows))


if __name__ == "__main__":
    main()
