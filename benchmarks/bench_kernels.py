"""Lazy delta-come kernels at Llama-2-7B layer shapes: base alone vs base + packed deltas.

    python benchmarks/bench_kernels.py --out benchmarks/results/kernels_h200.md       # on the GPU
    TRITON_INTERPRET=1 python benchmarks/bench_kernels.py --smoke                      # CPU check
    python benchmarks/bench_kernels.py --fused --sweep --out ...  # the fused GEMV (M <= 4) beside today's path
    python benchmarks/bench_kernels.py --dense-ab --cases 16,64,256 --out ...  # tl.dot vs the dense path (kernels/dense.py)
    TRITON_INTERPRET=1 python benchmarks/bench_kernels.py --dense-ab --smoke --cases 5,70  # its CPU check

One decoder layer's seven linears (hidden 4096, MLP 11008, bf16), laid out as servers lay them out:
q/k/v as one GEMM (12288 x 4096), o (4096 x 4096), gate/up as one GEMM (22016 x 4096), down
(4096 x 11008); attention and the activation are left out (they do not touch the weights). Every
figure is the median replay time of a CUDA graph that runs ``--copies`` copies of the layer one
after another (each with its own weights and deltas, so neither weights nor deltas come from L2),
divided by the number of copies.

Deltas are delta-come at alpha 1/16 with the tier counts the real codec allocates for these
shapes (4096 x 4096: 2 / 32 / 854 components at 8 / 3 / 2 bits; 11008 x 4096: 2 / 32 / 1271),
filled with random packed words, scales and zero points (the kernels compute the same function on
any valid payload; correctness on real payloads is tests/kernels). Each configuration is checked
against the torch reference ops before it is timed.

The bytes floor beside each figure: every weight byte and every packed delta byte the pass must
read, once, at the copy bandwidth measured in the same run (read + write of a 2 GiB copy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from deltastore.codec import get_codec, quant
from deltastore.kernels import DeltaSet, PackedDeltaCoMe, base_gemv, dense, plan_rows, ref_ops, triton_ops
from deltastore.kernels.deltaset import known_slot
from deltastore.kernels.linear import beside, side_for, with_delta
from deltastore.kernels.packed import PackedFactor

# (name, out features per slice, in features)
GROUPS = [("qkv", [4096, 4096, 4096], 4096), ("o", [4096], 4096), ("gate_up", [11008, 11008], 4096), ("down", [4096], 11008)]
SMOKE_GROUPS = [("qkv", [64, 32, 32], 64), ("o", [64], 64), ("gate_up", [96, 96], 64), ("down", [64], 96)]


_LAYOUT: dict = {}


def _layout(m: int, n: int, alpha: float, device: torch.device):
    """Tier counts the real codec allocates for an m x n weight, and per-element tables (scale
    factor, zero-point range) for all of a payload's scales at once; cached per shape.
    ``DELTASTORE_BENCH_TIERS=2``: the same rank in one 2-bit tier (what the 8- and 3-bit tiers cost)."""
    key = (m, n, alpha, str(device))
    got = _LAYOUT.get(key)
    if got is None:
        gs = 128
        tiers = [(b, c) for b, c in get_codec("delta-come", alpha=alpha).allocation(m, n, "bfloat16") if c > 0]
        if os.environ.get("DELTASTORE_BENCH_TIERS") == "2":  # diagnosis: the same rank, every component 2-bit
            tiers = [(2, sum(c for _, c in tiers))]
        parts, fac, zmax, nw = [], [], [], 0
        for b, c in tiers:
            for L in (n, m):
                w, G = quant.packed_words(L, b), quant.n_groups(L, gs)
                parts.append((b, c, L, nw, c * w, sum(len(f) for f in fac), c * G))
                nw += c * w
                fac.append(torch.full((c * G,), 0.02 / 2**b))
                zmax.append(torch.full((c * G,), float(2**b)))
        got = _LAYOUT[key] = (gs, tiers, parts, nw, torch.cat(fac).to(device), torch.cat(zmax).to(device))
    return got


def emit(text: str, out: str | None, json_path: str | None, data) -> None:  # noqa: ANN001
    """Print a report; write it to ``out`` and its rows as JSON to ``json_path`` where asked (the
    device script collects both from $OUT)."""
    print(text)
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(data, f, indent=1, default=str)


def random_packed(m: int, n: int, gen: torch.Generator, device: torch.device, alpha: float = 1 / 16) -> PackedDeltaCoMe:
    """Random payload with the real codec's tier counts for an m x n weight at ``alpha``: random
    packed words, scales and zero points in range (a few kernel launches per payload)."""
    gs, tiers, parts, nw, fac, zmax = _layout(m, n, alpha, device)
    r = sum(c for _, c in tiers)
    S = (torch.rand(r, generator=gen, device=device).sort(descending=True).values * 0.05 + 0.01)
    words = torch.randint(-(2**31), 2**31 - 1, (nw,), generator=gen, dtype=torch.int32, device=device)
    sc = (torch.rand(fac.shape[0], generator=gen, device=device) * fac + 1e-3).to(torch.float16)
    zp = torch.floor(torch.rand(fac.shape[0], generator=gen, device=device) * zmax).clamp_(max=zmax - 1).to(torch.float16)
    halves = []
    for b, c, L, w0, wn, s0, sn in parts:
        halves.append(PackedFactor(b, c, L, words[w0 : w0 + wn].view(c, -1), sc[s0 : s0 + sn].view(c, -1), zp[s0 : s0 + sn].view(c, -1)))
    return PackedDeltaCoMe((m, n), gs, S, [(halves[2 * i], halves[2 * i + 1]) for i in range(len(tiers))])


def shrink_kw(k: dict) -> dict:
    return dict(block_m=k.get("bm"), block_r=k.get("br"), num_warps=k.get("sw"), num_stages=k.get("ss"), gather=k.get("g", False),
                path=k.get("path"), maxnreg=k.get("smr"))


def expand_kw(k: dict) -> dict:
    return dict(block_m=k.get("bm"), block_n=k.get("bn"), block_r=k.get("er"), num_warps=k.get("ew"), num_stages=k.get("es"),
                gather=k.get("g", False), path=k.get("path"), chunk=k.get("chunk"), maxnreg=k.get("emr"))


def dense_kw(k: dict) -> dict:
    """kernels/dense.py's dequant options from a configuration (keys dbr, dbc, g, dw)."""
    kw = dict(block_r=k.get("dbr"), block_c=k.get("dbc"), gather=k.get("g"))
    if k.get("dw"):
        kw["num_warps"] = k["dw"]
    return kw


def is_dense(k: dict) -> bool:
    return k.get("path") == "dense"


def split_for(M: int, ds: DeltaSet, k: dict) -> int:
    return k.get("split_k") or triton_ops.pick_split_k(M, ds, k.get("path"))


ap_default_cases = "1,16,64,256,32x8,64x32"
#: configurations --sweep tries; the first is the default: GEMV kernels up to
#: triton_ops.GEMV_MAX_ROWS rows per fine-tune, the tl.dot kernels above
SWEEP_GEMV = [{}, dict(br=32, er=128, chunk=512), dict(br=32, split_k=4, er=128, chunk=1024), dict(chunk=512), dict(split_k=2)]
#: above GEMV_MAX_ROWS rows a fine-tune: the tl.dot kernels, and the GEMV kernels over row blocks of 4
SWEEP_DOT = [{}, dict(path="gemv")]
#: kernel variants --diagnose times one by one (with registers, spills and shared memory)
DIAGNOSE = [dict(), dict(sw=8, ew=8), dict(sw=2, ew=2), dict(br=32), dict(er=32), dict(er=8), dict(chunk=128), dict(chunk=512),
            dict(ss=2, es=2), dict(ss=4, es=4), dict(path="dot")]


@dataclass
class Copy:
    """One copy of the layer: base weights per group, the tenants' packed deltas per group."""

    W: list[torch.Tensor]  # per group (sum ms, K) bf16
    deltas: list[list[list[PackedDeltaCoMe]]]  # [tenant][group][slice]
    sets: dict[int, list[DeltaSet]]  # n_tenants -> per group DeltaSet holding tenants 0..n-1


def make_copy(groups, n_tenants: int, gen: torch.Generator, device: torch.device, tenant_counts: list[int], alpha: float) -> Copy:
    W = [(torch.randn(sum(ms), K, generator=gen, device=device) * 0.02).to(torch.bfloat16) for _, ms, K in groups]
    deltas = [[[random_packed(m, K, gen, device, alpha) for m in ms] for _, ms, K in groups] for _ in range(n_tenants)]
    sets = {}
    for nt in tenant_counts:
        per = []
        for gi, (_, ms, K) in enumerate(groups):
            ds = DeltaSet(K, ms, device)
            for t in range(nt):
                ds.add(deltas[t][gi])
            per.append(ds.build())
        sets[nt] = per
    return Copy(W, deltas, sets)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a device-to-device copy (read + write counted), median of 20."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    ts = []
    for i in range(25):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        if i >= 5:
            ts.append(s.elapsed_time(e) / 1e3)
    return 2 * a.numel() / statistics.median(ts)


def capture_graph(fn, warm: int = 2) -> "torch.cuda.CUDAGraph":
    """A CUDA graph of ``fn``, captured after ``warm`` eager runs on a side stream and replayed
    three times (compiles, allocations and first-touch costs out of the way)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warm):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    return g


def probe_parser(doc: str | None) -> argparse.ArgumentParser:
    """The probes' parser: their docstring as help, --smoke (small shapes, correctness only, the
    interpreter) and --copies (layer copies a CUDA graph rotates over, so the L2 does not serve them)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="small shapes, correctness only (the interpreter)")
    ap.add_argument("--copies", type=int, default=4)
    return ap


def probe_setup(args: argparse.Namespace) -> tuple[torch.device, int, torch.Generator, str]:
    """``(device, copies, generator, device name)`` for a probe's parsed args: the GPU where there is
    one (else the CPU under the interpreter), one copy for --smoke, a generator seeded 0 on the device."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (interpreter)"
    return dev, 1 if args.smoke else args.copies, torch.Generator(device=dev).manual_seed(0), name


def base_cublas(x: torch.Tensor, W: torch.Tensor, y: torch.Tensor) -> None:
    """y = x W^T by torch (cuBLAS): the probes' base alone."""
    torch.matmul(x, W.t(), out=y)


def base_triton(x: torch.Tensor, W: torch.Tensor, y: torch.Tensor) -> None:
    """y = x W^T by the product's Triton base GEMV (what DeltaLinear runs beside deltas at one row)."""
    base_gemv.gemv(x, W, None, out=y)


_SIDE: dict = {}


def side_by_side(base, side):  # noqa: ANN001, ANN201
    """side() on a side stream forked from the current one while base() runs on the current one, joined
    after (capturable in a CUDA graph, as kernels.linear.beside runs a group's deltas beside its base);
    without a GPU side() then base() on the one stream. Returns side()'s value."""
    if not torch.cuda.is_available():
        got = side()
        base()
        return got
    main_s = torch.cuda.current_stream()
    s = _SIDE.setdefault("s", torch.cuda.Stream())
    s.wait_stream(main_s)
    with torch.cuda.stream(s):
        got = side()
    base()
    main_s.wait_stream(s)
    return got


def time_graph(fn, reps: int = 30) -> float:
    """Median seconds of one replay of a CUDA graph of ``fn`` (captured after a warm-up)."""
    g = capture_graph(fn)
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return statistics.median(ts)


class Bench:
    def __init__(self, groups, copies: int, max_tenants: int, tenant_counts: list[int], device: torch.device, seed: int = 0,
                 alpha: float = 1 / 16):
        gen = torch.Generator(device=device).manual_seed(seed)
        self.groups, self.device = groups, device
        self.copies = [make_copy(groups, max_tenants, gen, device, tenant_counts, alpha) for _ in range(copies)]
        self.base_bytes = sum(sum(ms) * K * 2 for _, ms, K in groups)
        self.delta_bytes = sum(sum(d.nbytes for d in sl) for sl in self.copies[0].deltas[0]) / 1.0

    def inputs(self, M: int, gen: torch.Generator):
        x = torch.randn(M, self.groups[0][2], generator=gen).to(torch.bfloat16).to(self.device)
        h = torch.randn(M, self.groups[3][2], generator=gen).to(torch.bfloat16).to(self.device)
        ys = [torch.empty(M, sum(ms), dtype=torch.bfloat16, device=self.device) for _, ms, _ in self.groups]
        return x, h, ys

    def layer_fn(self, M: int, n_tenants: int | None, ids: torch.Tensor | None, kcfg: dict, impl=triton_ops, stages: str = "all",
                 overlap: bool = False):
        """A closure running every copy's layer: base GEMMs, then (if n_tenants) shrink + expand.
        ``overlap``: as DeltaLinear serves it on a GPU, each group's deltas on the side stream
        beside its base GEMM (kernels.linear.beside, default kernel configurations), then y += d."""
        x, h, ys = self.inputs(M, torch.Generator().manual_seed(M))
        plan = plan_rows(ids, n_tenants) if n_tenants else None
        sk = split_for(M, self.copies[0].sets[n_tenants][0], kcfg) if n_tenants and not is_dense(kcfg) else 1
        zs = {}
        if n_tenants and is_dense(kcfg) and impl is triton_ops:
            return self._dense_fn(M, n_tenants, plan, x, h, ys, kcfg, stages), ys
        if overlap:
            ds_of = lambda c, gi: c.sets[n_tenants][gi]  # noqa: E731
            dbuf = [torch.empty(M, sum(ms), dtype=torch.float32, device=self.device) for _, ms, _ in self.groups]

            def run_overlap() -> None:
                for c in self.copies:
                    for gi, W in enumerate(c.W):
                        inp = h if gi == 3 else x
                        ds = ds_of(c, gi)
                        side = side_for(inp, ds, "triton")
                        if side is None:  # as a lone DeltaLinear: in place, one stream
                            triton_ops.expand(triton_ops.shrink(inp, ds, plan, sk), torch.mm(inp, W.T, out=ys[gi]), ds, plan)
                            continue
                        y, d = beside(inp, ds, plan, lambda: torch.mm(inp, W.T, out=ys[gi]), "triton", side=side, out=dbuf[gi])
                        with_delta(y, d, y.dtype)

            return run_overlap, ys

        def run() -> None:
            for c in self.copies:
                for gi, W in enumerate(c.W):
                    inp = h if gi == 3 else x
                    if stages in ("all", "base"):
                        torch.mm(inp, W.T, out=ys[gi])
                    if n_tenants and stages != "base":
                        ds = c.sets[n_tenants][gi]
                        if impl is triton_ops:
                            if stages in ("all", "shrink"):
                                zs[gi] = triton_ops.shrink(inp, ds, plan, sk, **shrink_kw(kcfg))
                            if stages in ("all", "expand"):
                                z = zs.get(gi)
                                if z is None:
                                    z = zs[gi] = torch.zeros(sk, M, ds.zcols, device=self.device)
                                # a dependent launch of the shrink just before it (PDL) only in the whole layer
                                triton_ops.expand(z, ys[gi], ds, plan, **expand_kw(kcfg), pdl=stages == "all" and kcfg.get("pdl", True))
                        else:
                            ref_ops.expand(ref_ops.shrink(inp, ds, plan), ys[gi], ds, plan)

        return run, ys

    def _dense_fn(self, M: int, n_tenants: int, plan, x: torch.Tensor, h: torch.Tensor, ys: list[torch.Tensor], kcfg: dict, stages: str):
        """layer_fn for kernels/dense.py (path "dense"): stages all (base GEMM + dense.apply),
        dequant, shrink (x @ V^T, and the mask where one is needed), expand (the addmm's). The
        stages alone use factors and z made once here: views of the one scratch buffer, whose
        values the other groups' dequants overwrite (the timing does not depend on them)."""
        dkw = dense_kw(kcfg)
        pre = {}
        if stages in ("shrink", "expand"):
            for ci, c in enumerate(self.copies):
                for gi in range(len(c.W)):
                    ds, inp = c.sets[n_tenants][gi], h if gi == 3 else x
                    f = dense.dequantize(ds, known_slot(ds, plan), inp.dtype, **dkw)
                    pre[ci, gi] = (f, dense.shrink(inp, f, plan))

        def run() -> None:
            for ci, c in enumerate(self.copies):
                for gi, W in enumerate(c.W):
                    inp, ds = h if gi == 3 else x, c.sets[n_tenants][gi]
                    if stages == "all":
                        torch.mm(inp, W.T, out=ys[gi])
                        dense.apply(inp, ys[gi], ds, plan, **dkw)
                    elif stages == "dequant":
                        dense.dequantize(ds, known_slot(ds, plan), inp.dtype, **dkw)
                    elif stages == "shrink":
                        dense.shrink(inp, pre[ci, gi][0], plan)
                    elif stages == "expand":
                        dense.expand(pre[ci, gi][1], ys[gi], ds, pre[ci, gi][0])

        return run

    def check(self, M: int, n_tenants: int, ids: torch.Tensor, kcfg: dict) -> float:
        """Worst relative error of the delta part (Triton vs torch reference) over the groups of
        the first copy; y starts at zero so that rounding a large base output does not hide it."""
        x, h, _ = self.inputs(M, torch.Generator().manual_seed(M))
        plan = plan_rows(ids, n_tenants)
        c = self.copies[0]
        sk = split_for(M, c.sets[n_tenants][0], kcfg) if not is_dense(kcfg) else 1
        worst = 0.0
        for gi, ds in enumerate(c.sets[n_tenants]):
            inp = h if gi == 3 else x
            yt = torch.zeros(M, sum(ds.out_features), dtype=torch.bfloat16, device=self.device)
            yr = torch.zeros_like(yt)
            if is_dense(kcfg):
                dense.apply(inp, yt, ds, plan, **dense_kw(kcfg))
            else:
                z = triton_ops.shrink(inp, ds, plan, sk, **shrink_kw(kcfg))
                triton_ops.expand(z, yt, ds, plan, **expand_kw(kcfg), pdl=kcfg.get("pdl", True))  # (as the layer runs it)
            ref_ops.expand(ref_ops.shrink(inp, ds, plan), yr, ds, plan)
            if not bool(torch.isfinite(yt).all()) or float(yr.float().norm()) == 0.0:
                return float("inf")  # garbage, or a check that checks nothing
            worst = max(worst, float((yt.float() - yr.float()).norm() / yr.float().norm()))
        return worst


def modules_fn(bench: Bench, M: int, n_tenants: int, ids: torch.Tensor, only: int | None = None):
    """A closure running every copy's layer through the modules users get (kernels.DeltaLinear,
    q/k/v and gate/up as DeltaGroups over the bench's DeltaSets, weights as row views of the
    group's weight, as a lazy model loads them): one base GEMM a group (four a layer), the group's
    delta added in place on the tl.dot path, on the GEMV path computed in float32 on the side stream
    and added once. ``only``: that group alone (an index of bench.groups), to see where a layer's
    time goes."""
    from deltastore.kernels import DeltaContext, DeltaGroup, DeltaLinear

    x, h, _ = bench.inputs(M, torch.Generator().manual_seed(M))
    ctx = DeltaContext(n_tenants)
    ctx.set(ids)
    mods = []
    for c in bench.copies:
        per = []
        for gi, ((_, ms, K), W) in enumerate(zip(bench.groups, c.W)):
            if only is not None and gi != only:
                continue
            ds = c.sets[n_tenants][gi]
            offs = [sum(ms[:j]) for j in range(len(ms))]
            if len(ms) > 1:
                g = DeltaGroup(K, ms, bench.device)
                g.deltas = ds
                per.append([DeltaLinear(W[o : o + m], None, ctx, "triton", g, j) for j, (o, m) in enumerate(zip(offs, ms))])
            else:
                lin = DeltaLinear(W, None, ctx, "triton")
                lin.deltas = ds
                per.append([lin])
        mods.append(per)

    def run() -> None:
        for per in mods:
            for gi, lins in zip([only] if only is not None else range(len(per)), per):
                inp = h if gi == 3 else x
                for lin in lins:
                    lin(inp)

    return run


def overlap_err(bench: Bench, M: int, n_tenants: int, ids: torch.Tensor) -> tuple[float, float]:
    """Worst error of the last copy's layer output against float32 base output + the torch
    reference delta (float32), in units of eps(bf16) x the rms of y: (one-stream layer, side-stream
    layer). The side-stream layer adds a float32 delta to the base output and rounds once (as
    DeltaGroup always did); the one-stream figure is the kernels' own adding into y."""
    plan = plan_rows(ids, n_tenants)
    x, h, _ = bench.inputs(M, torch.Generator().manual_seed(M))
    c = bench.copies[-1]
    outs = []
    for kw in (dict(), dict(overlap=True)):
        fn, ys = bench.layer_fn(M, n_tenants, ids, {}, **kw)
        fn()
        outs.append([y.float().clone() for y in ys])
    fnb, base = bench.layer_fn(M, None, None, {})
    fnb()
    eps = torch.finfo(torch.bfloat16).eps
    worst = [0.0, 0.0]
    for gi, ds in enumerate(c.sets[n_tenants]):
        inp = h if gi == 3 else x
        ref = base[gi].float() + ref_ops.expand(ref_ops.shrink(inp, ds, plan), torch.zeros_like(base[gi], dtype=torch.float32), ds, plan)
        unit = eps * float(ref.pow(2).mean().sqrt())
        for k in range(2):
            worst[k] = max(worst[k], float((outs[k][gi] - ref).abs().amax()) / unit)
    return worst[0], worst[1]


def naive_fns(bench: Bench, M: int):
    """The ways to add a delta without these kernels: rank-r bf16 factors (two GEMMs per linear)
    and a dense bf16 delta (a second GEMM per linear), both per linear (7 linears)."""
    dev = bench.device
    x, h, _ = bench.inputs(M, torch.Generator().manual_seed(1))
    mats = []
    for c in bench.copies:
        per = []
        for gi, (_, ms, K) in enumerate(bench.groups):
            for si, m in enumerate(ms):
                d = c.deltas[0][gi][si]
                A = (torch.cat([v.dequantize(d.group_size) for v, _ in d.tiers]).T * d.S).to(torch.bfloat16)  # (K, r)
                B = torch.cat([u.dequantize(d.group_size) for _, u in d.tiers]).to(torch.bfloat16)  # (r, m)
                off = sum(ms[:si])
                per.append((gi, c.W[gi][off : off + m].contiguous(), A.contiguous(), B.contiguous()))
        mats.append(per)
    outs = [torch.empty(M, m, dtype=torch.bfloat16, device=dev) for _, ms, _ in bench.groups for m in ms]
    dense = [[(gi, W, (A.float() @ B.float()).T.contiguous().to(torch.bfloat16)) for gi, W, A, B in per] for per in mats]

    def base7() -> None:
        for per in mats:
            for i, (gi, W, A, B) in enumerate(per):
                torch.mm(h if gi == 3 else x, W.T, out=outs[i])

    def factors() -> None:
        for per in mats:
            for i, (gi, W, A, B) in enumerate(per):
                inp = h if gi == 3 else x
                torch.mm(inp, W.T, out=outs[i])
                outs[i].addmm_(inp @ A, B)

    def dense_delta() -> None:
        for per in dense:
            for i, (gi, W, D) in enumerate(per):
                inp = h if gi == 3 else x
                torch.mm(inp, W.T, out=outs[i])
                outs[i].addmm_(inp, D.T)

    return base7, factors, dense_delta


def diagnose(dev: torch.device, budget: float) -> None:
    """Each stage of one group alone (do_bench median, no graph), per variant: where the time goes."""
    if dev.type == "cuda":
        from triton.testing import do_bench
    else:  # smoke: the interpreter, one run each

        def do_bench(fn, **kw):  # noqa: ANN001, ANN003
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3

    t_end = time.time() + budget
    groups = GROUPS if dev.type == "cuda" else SMOKE_GROUPS
    b = Bench(groups, 1, 1, [1], dev, alpha=1 / 16 if dev.type == "cuda" else 0.5)
    print("| group | M | variant | shrink us | V GB/s | expand us | U GB/s | shrink regs/spills/smem | expand regs/spills/smem |")
    print("|---|---|---|---|---|---|---|---|---|")
    for gi in (0, 3):
        ds = b.copies[0].sets[1][gi]
        name, ms, K = groups[gi]
        vbytes = sum(sum(v.q.numel() * 4 + v.s.numel() * 4 for v, _ in d.tiers) for d in b.copies[0].deltas[0][gi])
        ubytes = sum(sum(u.q.numel() * 4 + u.s.numel() * 4 for _, u in d.tiers) for d in b.copies[0].deltas[0][gi])
        for M in (1, 16) if dev.type == "cuda" else (1,):
            x = torch.randn(M, K, device=dev).to(torch.bfloat16)
            y = torch.zeros(M, sum(ms), device=dev, dtype=torch.bfloat16)
            plan = plan_rows(torch.zeros(M, dtype=torch.int64, device=dev), 1)
            for cfg in DIAGNOSE if dev.type == "cuda" else DIAGNOSE[:2]:
                if time.time() > t_end:
                    print("(budget spent)")
                    return
                sk = split_for(M, ds, cfg)
                z = triton_ops.shrink(x, ds, plan, sk, **shrink_kw(cfg))
                triton_ops.expand(z, y, ds, plan, **expand_kw(cfg))
                res = []
                for k in ("shrink", "expand"):
                    h = triton_ops.LAST.get(k)
                    res.append(f"{getattr(h, 'n_regs', '?')}/{getattr(h, 'n_spills', '?')}/{getattr(getattr(h, 'metadata', None), 'shared', '?')}")
                ts = do_bench(lambda: triton_ops.shrink(x, ds, plan, sk, **shrink_kw(cfg)), warmup=5, rep=40, return_mode="median") * 1e3
                te = do_bench(lambda: triton_ops.expand(z, y, ds, plan, **expand_kw(cfg)), warmup=5, rep=40, return_mode="median") * 1e3
                print(f"| {name} | {M} | {cfg or 'defaults'} | {ts:.1f} | {vbytes / ts / 1e3:.0f} | {te:.1f} | {ubytes / te / 1e3:.0f} | {res[0]} | {res[1]} |", flush=True)


#: configurations --fused tries for the one-launch base GEMV + expand (kernels/fused_gemv.py); the first is the default
SWEEP_FUSED = [{}, dict(per_linear=True), dict(split_k=2), dict(split_k=4), dict(split_k=8), dict(block_n=64), dict(block_n=64, split_k=4),
               dict(block_k=256, split_k=4), dict(block_k=64, split_k=4), dict(num_warps=8, split_k=4), dict(block_r=32, split_k=4),
               # gemlite's GEMV way: small programs, many of them (1-2 warps, short K steps, split-K)
               dict(num_warps=1, block_k=32, split_k=8), dict(num_warps=2, block_k=64, split_k=8), dict(num_warps=2, block_k=128, split_k=4)]


def fused_layer_fn(bench: "Bench", M: int, n_tenants: int, ids: torch.Tensor, cfg: dict):
    """A closure running every copy's layer the fused way: per group one shrink, then one
    fused_gemv launch over the group's weight (cfg per_linear: one a linear) writing y (base + delta)."""
    from deltastore.kernels import fused_gemv

    x, h, ys = bench.inputs(M, torch.Generator().manual_seed(M))
    plan = plan_rows(ids, n_tenants)
    sk = triton_ops.pick_split_k(M, bench.copies[0].sets[n_tenants][0])

    cfg = dict(cfg)
    per_linear = cfg.pop("per_linear", False)

    def run() -> None:
        for c in bench.copies:
            for gi, W in enumerate(c.W):
                inp = h if gi == 3 else x
                ds = c.sets[n_tenants][gi]
                z = triton_ops.shrink(inp, ds, plan, sk)
                if not per_linear:  # the group's linears in one launch (its weight is one tensor here)
                    fused_gemv.fused_linear(inp, W, None, z, ds, plan, None, out=ys[gi], **cfg)
                    continue
                for si, (off, m) in enumerate(zip(ds.col_offsets, ds.out_features)):
                    fused_gemv.fused_linear(inp, W[off : off + m], None, z, ds, plan, si, out=ys[gi][:, off : off + m], **cfg)

    return run, ys


def fused_check(bench: "Bench", M: int, n_tenants: int, ids: torch.Tensor, cfg: dict) -> float:
    """Worst relative error of fused y against its float32 torch twin (base + delta), first copy."""
    from deltastore.kernels import fused_gemv

    x, h, _ = bench.inputs(M, torch.Generator().manual_seed(M))
    plan = plan_rows(ids, n_tenants)
    c = bench.copies[0]
    cfg = dict(cfg)
    per_linear = cfg.pop("per_linear", False)
    worst = 0.0
    for gi, W in enumerate(c.W):
        inp = h if gi == 3 else x
        ds = c.sets[n_tenants][gi]
        z = triton_ops.shrink(inp, ds, plan, 1)
        d = ref_ops.expand(z, torch.zeros(M, sum(ds.out_features), device=bench.device), ds, plan)
        parts = [(si, off, m) for si, (off, m) in enumerate(zip(ds.col_offsets, ds.out_features))] if per_linear else [(None, 0, W.shape[0])]
        for si, off, m in parts:
            Ws = W[off : off + m]
            yt = fused_gemv.fused_linear(inp, Ws, None, z, ds, plan, si, out=torch.empty(M, m, device=bench.device), **cfg)
            yr = inp.float() @ Ws.float().T + d[:, off : off + m]
            if not bool(torch.isfinite(yt).all()):
                return float("inf")
            worst = max(worst, float((yt - yr).norm() / yr.norm()))
    return worst


def fused_report(args: argparse.Namespace) -> None:
    """--fused: base alone, today's path (cuBLAS + shrink + expand) and the fused path (shrink +
    one fused launch per group of linears sharing an input), M = 1, 2, 4 single tenant and 4 rows over 4 tenants; every
    configuration is checked against the float32 twin before it is timed."""
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name()
    bw = copy_bandwidth(dev)
    bench = Bench(GROUPS, args.copies, 4, [1, 4], dev)
    us = lambda s: s * 1e6 / args.copies  # noqa: E731
    fb, fd = bench.base_bytes / bw * 1e6, (bench.base_bytes + bench.delta_bytes) / bw * 1e6
    lines = [f"# Fused base GEMV + delta expand (kernels/fused_gemv.py), one Llama-2-7B-shaped layer ({name})", "",
             f"Measured by `python benchmarks/bench_kernels.py {' '.join(sys.argv[1:])}` (torch {torch.__version__}, "
             f"triton {__import__('triton').__version__}); copy {bw / 1e12:.2f} TB/s; floor base {fb:.1f} us, with one delta {fd:.1f} us. "
             "Times per layer, us (CUDA graph over the copies); rel err: fused y vs its float32 twin.", "",
             "| case | base alone | today: cuBLAS + shrink + expand | x base | fused: shrink + fused | x base | best fused config | rel err "
             "| fused kernel, no delta rows (its base GEMV) | x base |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    cases = [(int(M), int(nt or 1)) for M, _, nt in (c.partition("x") for c in args.fused_cases.split(","))]
    cfgs = json.loads(args.fused_cfgs) if args.fused_cfgs else (SWEEP_FUSED if args.sweep else SWEEP_FUSED[:1])
    for M, nt in cases:
        ids = (torch.arange(M, device=dev) % nt).to(torch.int64)
        tb = time_graph(bench.layer_fn(M, None, None, {})[0])
        tt = time_graph(bench.layer_fn(M, nt, ids, {})[0])
        best = (float("inf"), {}, 0.0)
        for cfg in cfgs:
            try:
                err = fused_check(bench, M, nt, ids, cfg)
                t = time_graph(fused_layer_fn(bench, M, nt, ids, cfg)[0])
            except Exception as e:  # noqa: BLE001 - a configuration that fails is skipped, and said
                print(f"  cfg {cfg}: {type(e).__name__}: {e}", flush=True)
                continue
            print(f"  M={M} tenants={nt} fused {cfg or 'defaults'}: {us(t):.1f} us/layer, rel err {err:.1e}", flush=True)
            if err > 1e-3:
                print("  WRONG", flush=True)
                continue
            if t < best[0]:
                best = (t, cfg, err)
        # the fused kernel's base GEMV alone: the same launches with every row's id -1 (no delta to add)
        try:
            tfb = time_graph(fused_layer_fn(bench, M, nt, torch.full_like(ids, -1), best[1])[0])
        except Exception as e:  # noqa: BLE001
            print(f"  base-only fused: {type(e).__name__}: {e}", flush=True)
            tfb = float("nan")
        row = dict(M=M, tenants=nt, base_us=us(tb), today_us=us(tt), fused_us=us(best[0]), cfg=best[1], err=best[2],
                   fused_base_only_us=us(tfb))
        rows.append(row)
        print(json.dumps(row), flush=True)
        lines.append(f"| M={M}, {nt} tenant(s) | {row['base_us']:.1f} | {row['today_us']:.1f} | x{tt / tb:.2f} | {row['fused_us']:.1f} | "
                     f"x{best[0] / tb:.2f} | {best[1] or 'defaults'} | {best[2]:.1e} | {us(tfb):.1f} | x{tfb / tb:.2f} |")
    k = triton_ops.LAST.get("fused_gemv")
    lines += ["", f"Last fused launch: {getattr(k, 'n_regs', '?')} registers, {getattr(k, 'n_spills', '?')} spills."]
    emit("\n".join(lines) + "\n", args.out, args.json, rows)


def dense_ab(args: argparse.Namespace) -> None:
    """--dense-ab: per M (one fine-tune), the layer (base GEMM + deltas, CUDA graph over the
    copies) with the tl.dot kernels and with the dense path, in ``--rounds`` alternating rounds
    (base, dot, dense each round; medians kept), each stage alone, the rank-r bf16 factors as two
    GEMMs a linear (bench's naive figure) and the DeltaLinear modules at DENSE_MIN_ROWS; every path
    checked against the torch reference first. --smoke: tiny groups on the CPU (interpreter), each
    closure run once untimed."""
    smoke = args.smoke
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    groups = SMOKE_GROUPS if smoke else GROUPS
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (interpreter)"
    copies = 1 if (smoke or args.warm) else args.copies
    t0 = time.time()
    bench = Bench(groups, copies, 1, [1], dev, **(dict(alpha=0.5) if smoke else {}))
    cases = [int(c) for c in args.cases.split(",")] if args.cases != ap_default_cases else [16, 64, 256]
    dcfgs = [dict(c, path="dense") for c in json.loads(args.dense_cfgs)]
    dot = {"path": "dot"}
    print(f"{name}: setup {time.time() - t0:.0f} s; one delta {bench.delta_bytes / 1e6:.1f} MB per layer; "
          f"DENSE_MIN_ROWS {dense.DENSE_MIN_ROWS}", flush=True)

    def timed(fn) -> float:  # noqa: ANN001
        if dev.type != "cuda":
            fn()
            return 0.0
        return time_graph(fn)

    us = lambda s: s * 1e6 / copies  # noqa: E731
    rows: list[dict] = []
    for M in cases:
        ids = torch.zeros(M, dtype=torch.int64, device=dev)
        try:
            errs = {"dot": bench.check(M, 1, ids, dot), **{json.dumps(c): bench.check(M, 1, ids, c) for c in dcfgs}}
            print(f"M={M}: rel err of the delta part vs torch: {errs}", flush=True)
            if args.warm:
                continue
            bad = [k for k, e in errs.items() if not e < 2e-2]
            if bad:
                print(f"M={M}: WRONG {bad}: not timed", flush=True)
                continue
            fns = {"base": bench.layer_fn(M, None, None, {})[0], "dot": bench.layer_fn(M, 1, ids, dot)[0]}
            fns.update({json.dumps(c): bench.layer_fn(M, 1, ids, c)[0] for c in dcfgs})
            ts: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(max(1, args.rounds)):
                for k, fn in fns.items():
                    ts[k].append(timed(fn))
            med = {k: statistics.median(v) for k, v in ts.items()}
            tb = med["base"]
            row = dict(M=M, base_us=us(tb), dot_us=us(med["dot"]), dot_x=med["dot"] / tb if tb else 0.0, err_dot=errs["dot"],
                       dot_stages_us={s: us(timed(bench.layer_fn(M, 1, ids, dot, stages=s)[0])) for s in ("shrink", "expand")},
                       dense=[])
            for c in dcfgs:
                k = json.dumps(c)
                row["dense"].append(dict(cfg=c, us=us(med[k]), x=med[k] / tb if tb else 0.0, err=errs[k], rounds_us=[us(t) for t in ts[k]],
                                         stages_us={s: us(timed(bench.layer_fn(M, 1, ids, c, stages=s)[0])) for s in ("dequant", "shrink", "expand")}))
            factors = naive_fns(bench, M)[1]
            tf = timed(factors)
            row["factors_x"] = tf / tb if tb else 0.0
            tm = timed(modules_fn(bench, M, 1, ids))
            row["modules_us"], row["modules_x"] = us(tm), (tm / tb if tb else 0.0)
            row["modules_path"] = "dense" if dense.use_dense(bench.copies[0].sets[1][0], plan_rows(ids, 1)) else "dot"
            k = dense.LAST.get("dequant")
            row["dequant_regs"] = f"{getattr(k, 'n_regs', '?')} regs, {getattr(k, 'n_spills', '?')} spills"
            rows.append(row)
            print(json.dumps(row), flush=True)
        except Exception:  # noqa: BLE001 - report and go on: a device call is precious
            import traceback

            traceback.print_exc()
        if args.json:  # after each case: a cut run keeps what it timed
            os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1, default=str)
    if args.warm:
        return
    lines = [f"# tl.dot vs dense path, one Llama-2-7B-shaped layer, one fine-tune ({name})", "",
             f"Measured by `python benchmarks/bench_kernels.py {' '.join(sys.argv[1:])}` (torch {torch.__version__}, "
             f"triton {__import__('triton').__version__}); {copies} copies of the layer in a CUDA graph, us per layer, medians of "
             f"{args.rounds} alternating rounds (base, dot, dense). Dense scratch held: {dense.scratch_bytes() / 1e6:.0f} MB. "
             "x: of base alone. Stages alone: dot shrink / expand; dense dequant (one launch a group) / shrink (x @ V^T) / expand "
             "(addmm a slice). rank-r factors: the same factors as dense bf16, two GEMMs a linear (unpadded ranks).", "",
             "| M | base (us) | tl.dot (us) | x base | dense cfg | dense (us) | x base | dot / dense | dot shrink / expand | dense dequant / shrink / expand "
             "| rank-r factors x | modules (path) x | rel err dot / dense |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for d in r["dense"]:
            st, ds_ = r["dot_stages_us"], d["stages_us"]
            cfg = {k: v for k, v in d["cfg"].items() if k != "path"}
            lines.append(f"| {r['M']} | {r['base_us']:.1f} | {r['dot_us']:.1f} | x{r['dot_x']:.2f} | {json.dumps(cfg) if cfg else 'defaults'} | "
                         f"{d['us']:.1f} | x{d['x']:.2f} | x{(r['dot_us'] / d['us']) if d['us'] else 0:.2f} | {st['shrink']:.1f} / {st['expand']:.1f} | "
                         f"{ds_['dequant']:.1f} / {ds_['shrink']:.1f} / {ds_['expand']:.1f} | x{r['factors_x']:.2f} | "
                         f"x{r['modules_x']:.2f} ({r['modules_path']}) | {r['err_dot']:.1e} / {d['err']:.1e} |")
    if rows:
        lines += ["", f"Dequant kernel (last launch): {rows[-1]['dequant_regs']}."]
    emit("\n".join(lines) + "\n", args.out, args.json, rows)


def register_report() -> None:
    """Registers, stack and local memory per thread of the kernels as compiled for sm_90 by the
    installed Triton (no GPU needed: Triton's own ptxas and cuobjdump), by block shape."""
    import subprocess

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    sig_s = {"x_ptr": "*bf16", "z_ptr": "*fp32", "words_ptr": "*i32", "scales_ptr": "*fp16", "zeros_ptr": "*fp16", "svals_ptr": "*fp32",
             "tiles_ptr": "*i64", "ntiles_ptr": "*i32", "rows_ptr": "*i32", "counts_ptr": "*i32", "starts_ptr": "*i32",
             "M": "i32", "K": "i32", "ZC": "i32", "n_slices": "i32", "T_max": "i32", "stride_xm": "i32"}
    sig_e = {"z_ptr": "*fp32", "y_ptr": "*bf16", "words_ptr": "*i32", "scales_ptr": "*fp16", "zeros_ptr": "*fp16", "tiers_ptr": "*i64",
             "ntiers_ptr": "*i32", "nblk_ptr": "*i32", "rows_ptr": "*i32", "counts_ptr": "*i32", "starts_ptr": "*i32", "mout_ptr": "*i32",
             "coloff_ptr": "*i32", "M": "i32", "ZC": "i32", "n_slices": "i32", "R_max": "i32", "stride_ym": "i32"}

    def usage(fn, sig: dict, ce: dict, nw: int, ns: int, div: tuple[str, ...] = ()) -> str:
        """``div``: arguments compiled as multiples of 16 (what a launch with such values gets by
        Triton's specialization; it decides whether loads are vectorized)."""
        sig = {n: sig.get(n, "constexpr") for n in fn.arg_names}  # in the kernel's parameter order
        names = list(sig)
        ce = {**{q.name: q.default for q in fn.params if q.is_constexpr and q.has_default}, **ce}  # unnamed: their defaults
        src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(n),): v for n, v in ce.items()},
                        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in div})
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=nw, num_stages=ns))
        path = f"/tmp/bench_kernels_{os.getpid()}.cubin"
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        out = subprocess.run([cuobjdump, "-res-usage", path], capture_output=True, text=True).stdout
        os.unlink(path)
        line = next(ln for ln in out.splitlines() if "REG:" in ln)
        return " ".join(p for p in line.split() if p.split(":")[0] in ("REG", "STACK", "LOCAL"))

    def has(bits):
        return {f"HAS{b}": b in bits for b in (1, 2, 3, 4, 8)}

    sig_gs = dict(sig_s, one="i32", blocks_ptr="*i32", o_ptr="*fp32", o_n="i32", s_known="i32")
    sig_ge = {"z_ptr": "*fp32", "y_ptr": "*bf16", "part_ptr": "*fp32", "sem_ptr": "*i32", "words_ptr": "*i32", "scales_ptr": "*fp16",
              "zeros_ptr": "*fp16", "items_ptr": "*i64", "nitems_ptr": "*i32", "rows_ptr": "*i32", "blocks_ptr": "*i32",
              "mout_ptr": "*i32", "coloff_ptr": "*i32", "M": "i32", "ZC": "i32", "Ntot": "i32", "NB_max": "i32", "n_slices": "i32",
              "I_max": "i32", "stride_ym": "i32", "one": "i32", "s_known": "i32"}
    print(f"triton {triton.__version__}, sm_90")
    print("| kernel | bit widths | split | block (M x R x K or N) | warps / stages | registers, stack, local |")
    print("|---|---|---|---|---|---|")
    # the dense path's dequant (kernels/dense.py): rows x values a program; "one group": a scale a row
    sig_d = {"words_ptr": "*i32", "scales_ptr": "*fp16", "zeros_ptr": "*fp16", "svals_ptr": "*fp32", "items_ptr": "*i64", "out_ptr": "*bf16"}
    for br, bc, g, one in ((dense.DENSE_BLOCK_R, dense.DENSE_BLOCK_C, False, True), (dense.DENSE_BLOCK_R, 256, False, False),
                           (dense.DENSE_BLOCK_R, dense.DENSE_BLOCK_C, True, True)):
        ce = dict(NFIELD=dense.NFD, BLOCK_R=br, BLOCK_C=bc, GATHER=g, ONE_GROUP=one, **has([8, 3, 2]), ALIGNED=True,
                  SPAN=dense.DENSE_SPAN, STAGES=dense.DENSE_STAGES)
        print(f"| dense dequant{' (gather)' if g else ''}{' (one group)' if one else ''} | [8, 3, 2] | - | {br} x {bc}, span "
              f"{dense.DENSE_SPAN} | {dense.DENSE_WARPS} / {dense.DENSE_STAGES} | "
              f"{usage(dense._dense_dequant_kernel, sig_d, ce, dense.DENSE_WARPS, dense.DENSE_STAGES, tuple(sig_d))} |", flush=True)
    tr, er = triton_ops.GEMV_TILE_R, triton_ops.GEMV_STEP_R
    for bits, bm, nw, ns in (([8, 3, 2], 1, 4, 3), ([2], 1, 4, 3), ([8, 3, 2], 4, 4, 3), ([8, 3, 2], 1, 8, 3)):
        ce = dict(NFIELD=9, SPLIT_K=4, BLOCK_M=bm, BLOCK_R=tr, BLOCK_K=128, **has(bits))
        print(f"| gemv shrink | {bits} | 4 | {bm} x {tr} x 128 | {nw} / {ns} | {usage(triton_ops._gemv_shrink_kernel, sig_gs, ce, nw, ns)} |", flush=True)
        ce = dict(NFI=11, SPLIT_K=4, BLOCK_M=bm, BLOCK_R=er, BLOCK_N=128, **has(bits))
        print(f"| gemv expand | {bits} | 4 | {bm} x {er} x 128 | {nw} / {ns} | {usage(triton_ops._gemv_expand_kernel, sig_ge, ce, nw, ns)} |", flush=True)
    from deltastore.kernels import fused_gemv

    sig_f = {"x_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "y_ptr": "*bf16", "z_ptr": "*fp32", "part_ptr": "*fp32", "sem_ptr": "*i32",
             "words_ptr": "*i32", "scales_ptr": "*fp16", "zeros_ptr": "*fp16", "tiers_ptr": "*i64", "ntiers_ptr": "*i32", "rows_ptr": "*i32",
             "blocks_ptr": "*i32", "nblk_ptr": "*i32", "mout_ptr": "*i32", "coloff_ptr": "*i32", "M": "i32", "K": "i32", "N_arg": "i32",
             "NTOT": "i32", "ZC": "i32", "NB": "i32", "sl_arg": "i32", "n_slices": "i32", "R_max": "i32",
             "stride_xm": "i32", "stride_wn": "i32", "stride_ym": "i32"}
    # as the layer's launches compile: pointers, K, N and the strides are multiples of 16 (4096, 11008, 12288)
    div_f = tuple(n for n, t in sig_f.items() if t.startswith("*")) + ("K", "N_arg", "NTOT", "stride_xm", "stride_wn", "stride_ym")
    bk0 = fused_gemv.BLOCK_K
    for bits, bm, bn, bk, br, split, nw, ns in (([8, 3, 2], 1, 32, bk0, 16, 1, 4, 1), ([8, 3, 2], 4, 32, bk0, 16, 1, 4, 1),
                                               ([8, 3, 2], 4, 32, bk0, 16, 4, 4, 1), ([8, 3, 2], 1, 64, bk0, 16, 4, 4, 1),
                                               ([8, 3, 2], 1, 32, 256, 16, 4, 4, 1), ([8, 3, 2], 4, 32, bk0, 16, 4, 8, 1),
                                               ([8, 4, 3, 2, 1], 4, 32, bk0, 32, 4, 4, 1)):
        ce = dict(NFIELD=9, GROUP=True, HAS_BIAS=False, SPLIT_K=split, SPLIT_Z=1, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=br, **has(bits))
        print(f"| fused gemv | {bits} | {split} | {bm} x {br} x {bn} (base K step {bk}) | {nw} / {ns} | "
              f"{usage(fused_gemv._fused_gemv_kernel, sig_f, ce, nw, ns, div_f)} |", flush=True)
    if os.environ.get("REGS_DOT"):
        for kern, sig, blk in ((triton_ops._shrink_kernel, sig_s, "BLOCK_K"), (triton_ops._expand_kernel, sig_e, "BLOCK_N")):
            name = "dot shrink" if kern is triton_ops._shrink_kernel else "dot expand"
            for bits, split, b, nw, ns in (([8, 3, 2], 4, 128, 4, 2), ([2], 4, 128, 4, 2)):
                ce = dict(NFIELD=9, SPLIT_K=split, BLOCK_M=16, BLOCK_R=32, UPCAST=False, GATHER=False, **has(bits))
                ce[blk] = b
                print(f"| {name} | {bits} | {split} | 16 x 32 x {b} | {nw} / {ns} | {usage(kern, sig, ce, nw, ns)} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, no graphs: a CPU check under TRITON_INTERPRET=1")
    ap.add_argument("--sweep", action="store_true", help="try several kernel configurations per case and keep the fastest")
    ap.add_argument("--diagnose", action="store_true", help="time shrink and expand alone per kernel variant, with their resources")
    ap.add_argument("--regs", action="store_true", help="register report of the kernels compiled for sm_90 (no GPU needed)")
    ap.add_argument("--fused", action="store_true", help="the one-launch base GEMV + expand (kernels/fused_gemv.py) beside today's path, M <= 4")
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds after which --sweep tries no more configurations")
    ap.add_argument("--fused-cases", default="1,2,4,4x4", help="--fused: comma-separated M or MxT (M <= 4 rows over T fine-tunes)")
    ap.add_argument("--fused-cfgs", default="", help="--fused: a JSON list of configurations to try (default: the first, or SWEEP_FUSED with --sweep)")
    ap.add_argument("--no-dense", action="store_true", help="single-tenant cases: leave out the dense path (kernels/dense.py)")
    ap.add_argument("--dense-ab", action="store_true", help="the A/B of the tl.dot and dense paths only, single tenant (--cases M list)")
    ap.add_argument("--dense-cfgs", default="[{}]", help="--dense-ab: dense dequant configurations (keys dbr, dbc, g, dw) as a JSON list")
    ap.add_argument("--rounds", type=int, default=3, help="--dense-ab: alternating rounds of base / dot / dense (median kept)")
    ap.add_argument("--warm", action="store_true", help="--dense-ab: only check each path once (compiles the kernels), no timing")
    ap.add_argument("--cases", default=ap_default_cases,
                    help="comma-separated: M (one fine-tune, M rows) or MxT (M rows over T fine-tunes)")
    args = ap.parse_args()
    # the layers are timed inside CUDA graphs, whose captures take the side stream; eager warm-ups and
    # checks take it as well (kernels.linear.side_stream: eagerly one stream by default), as before
    os.environ.setdefault("DELTASTORE_DELTA_STREAM", "1")

    if args.regs:
        return register_report()
    if args.dense_ab:
        return dense_ab(args)
    if args.smoke:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if args.diagnose:
            return diagnose(dev, 1e9)
        b = Bench(SMOKE_GROUPS, 1, 4, [1, 4], dev, alpha=0.5)
        if args.fused:  # the --fused code paths on tiny shapes: checked, run once, not timed
            for M, nt in ((1, 1), (4, 4)):
                ids = (torch.arange(M, device=dev) % nt).to(torch.int64)
                err = max(fused_check(b, M, nt, ids, cfg) for cfg in ({}, dict(split_k=2), dict(per_linear=True)))
                fused_layer_fn(b, M, nt, ids, {})[0]()
                print(f"smoke fused M={M} tenants={nt}: rel err vs its float32 twin {err:.2e}")
                assert err < 1e-4, err
            return
        for M, nt, ids in ((1, 1, torch.zeros(1, dtype=torch.int64)), (5, 4, torch.tensor([3, 0, -1, 2, 0]))):
            err = b.check(M, nt, ids.to(dev), {})
            print(f"smoke M={M} tenants={nt}: rel err of the delta part vs torch {err:.2e}")
            assert err < 2e-2, err
            one, two = overlap_err(b, M, nt, ids.to(dev))
            print(f"smoke M={M} tenants={nt}: worst error of y against float32 base + reference delta, eps(bf16) x rms(y): "
                  f"one stream {one:.2f}, side stream {two:.2f}")
            assert two <= 4.0, two
            modules_fn(b, M, nt, ids.to(dev))()  # the modules' layer runs (its numbers: tests/kernels)
        ids = torch.tensor([0, 0, -1, 0, 0, 0, 0]).to(dev)  # the dense path (forced), a base-only row among them
        err = b.check(7, 1, ids, {"path": "dense"})
        print(f"smoke dense M=7: rel err of the delta part vs torch {err:.2e}")
        assert err < 2e-2, err
        for st in ("all", "dequant", "shrink", "expand"):
            b.layer_fn(7, 1, ids, {"path": "dense"}, stages=st)[0]()
        return

    if args.fused:
        return fused_report(args)
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.diagnose:
        return diagnose(dev, args.deadline)
    name = torch.cuda.get_device_name()
    t0 = time.time()
    bw = copy_bandwidth(dev)
    bench = Bench(GROUPS, args.copies, 32, [1, 8, 32], dev)
    print(f"{name}: copy {bw / 1e12:.2f} TB/s; setup {time.time() - t0:.0f} s; base {bench.base_bytes / 1e6:.1f} MB, "
          f"one delta {bench.delta_bytes / 1e6:.1f} MB per layer", flush=True)
    us = lambda s: s * 1e6 / args.copies  # noqa: E731 - per layer, in microseconds
    floor = lambda nbytes: nbytes / bw * 1e6  # noqa: E731
    rows: list[dict] = []
    deadline = time.time() + args.deadline

    def best_cfg(M: int, nt: int, ids: torch.Tensor) -> tuple[float, dict, float]:
        best = (float("inf"), {}, 0.0)
        sweep = (SWEEP_GEMV if -(-M // nt) <= triton_ops.GEMV_MAX_ROWS else SWEEP_DOT) if args.sweep else [{}]
        for i, cfg in enumerate(sweep):
            if i and time.time() > deadline:
                print(f"  (deadline: sweep stopped before {cfg})", flush=True)
                break
            try:
                err = bench.check(M, nt, ids, cfg)
                fn, _ = bench.layer_fn(M, nt, ids, cfg)
                t = time_graph(fn)
            except Exception as e:  # noqa: BLE001 - a configuration that fails to compile is skipped, and said
                print(f"  cfg {cfg}: {type(e).__name__}: {e}", flush=True)
                continue
            if err > 2e-2:
                print(f"  cfg {cfg}: WRONG (rel err {err:.2e})", flush=True)
                continue
            print(f"  M={M} tenants={nt} cfg {cfg or 'defaults'}: {us(t):.1f} us/layer, rel err {err:.1e}", flush=True)
            if t < best[0]:
                best = (t, cfg, err)
        return best

    def single(M: int) -> None:
        ids = torch.zeros(M, dtype=torch.int64, device=dev)
        tb = time_graph(bench.layer_fn(M, None, None, {})[0])
        base7, factors, dense_delta = naive_fns(bench, M)
        t7 = time_graph(base7)
        tf = time_graph(factors)
        td = time_graph(dense_delta)
        t, cfg, err = best_cfg(M, 1, ids)
        stages = {s: time_graph(bench.layer_fn(M, 1, ids, cfg, stages=s)[0]) for s in ("shrink", "expand")}
        tov = time_graph(bench.layer_fn(M, 1, ids, {}, overlap=True)[0])
        tmod = time_graph(modules_fn(bench, M, 1, ids))
        oerr = overlap_err(bench, M, 1, ids)
        fb, fd = floor(bench.base_bytes), floor(bench.base_bytes + bench.delta_bytes)
        rows.append(dict(case=f"single tenant, M={M}", M=M, base_us=us(tb), base7_us=us(t7), delta_us=us(t), x=t / tb,
                         factors_x=tf / tb, dense_x=td / tb, floor_base_us=fb, floor_us=fd, err=err, cfg=cfg,
                         shrink_us=us(stages["shrink"]), expand_us=us(stages["expand"]), overlap_us=us(tov), overlap_x=tov / tb, overlap_err=oerr,
                         modules_us=us(tmod), modules_x=tmod / tb))
        if not args.no_dense:  # the dense path (kernels/dense.py) beside it: layer, and each stage alone
            dcfg = {"path": "dense"}
            derr = bench.check(M, 1, ids, dcfg)
            tdn = time_graph(bench.layer_fn(M, 1, ids, dcfg)[0])
            dst = {s: us(time_graph(bench.layer_fn(M, 1, ids, dcfg, stages=s)[0])) for s in ("dequant", "shrink", "expand")}
            rows[-1].update(densepath_us=us(tdn), densepath_x=tdn / tb, densepath_err=derr, densepath_stages_us=dst)
        print(json.dumps(rows[-1]), flush=True)

    def multi(M: int, nt: int) -> None:
        ids = (torch.arange(M, device=dev) % nt).to(torch.int64)
        tb = time_graph(bench.layer_fn(M, None, None, {})[0])
        t, cfg, err = best_cfg(M, nt, ids)
        stages = {s: time_graph(bench.layer_fn(M, nt, ids, cfg, stages=s)[0]) for s in ("shrink", "expand")}
        tov = time_graph(bench.layer_fn(M, nt, ids, {}, overlap=True)[0])
        tmod = time_graph(modules_fn(bench, M, nt, ids))
        oerr = overlap_err(bench, M, nt, ids)
        # beside it: one single-tenant pass per tenant over its rows
        per = M // nt
        sep_fns = [bench.layer_fn(per, nt, torch.full((per,), t_, dtype=torch.int64, device=dev), cfg)[0] for t_ in range(nt)]
        tsep = time_graph(lambda: [f() for f in sep_fns])
        fd = floor(bench.base_bytes + nt * bench.delta_bytes)
        row = dict(case=f"{M} rows over {nt} deltas", M=M, base_us=us(tb), delta_us=us(t), x=t / tb, floor_base_us=floor(bench.base_bytes),
                   floor_us=fd, x_floor=us(t) / fd, err=err, cfg=cfg, separate_us=us(tsep),
                   shrink_us=us(stages["shrink"]), expand_us=us(stages["expand"]), overlap_us=us(tov), overlap_x=tov / tb, overlap_err=oerr, modules_us=us(tmod), modules_x=tmod / tb,
                   delta_mem_mb=nt * bench.delta_bytes / 1e6, dense_mem_mb=nt * bench.base_bytes / 1e6)
        if nt == 8:  # 8 dense fine-tunes resident: one GEMM set per tenant over its rows
            Ws = [[(W + 0).contiguous() for W in bench.copies[c % len(bench.copies)].W] for c in range(nt)]
            x, h, ys = bench.inputs(per, torch.Generator().manual_seed(3))

            def dense_all() -> None:
                for rep in range(args.copies):
                    for t_ in range(nt):
                        for gi, W in enumerate(Ws[(t_ + rep) % nt]):
                            torch.mm(h if gi == 3 else x, W.T, out=ys[gi])

            row["dense_resident_us"] = us(time_graph(dense_all))
            del Ws
        rows.append(row)
        print(json.dumps(row), flush=True)

    import traceback

    for case in args.cases.split(","):
        M, _, nt = case.partition("x")
        try:
            multi(int(M), int(nt)) if nt else single(int(M))
        except Exception:  # noqa: BLE001 - report and go on: a device call is precious
            traceback.print_exc()

    lines = [f"# Lazy delta-come kernels, one Llama-2-7B-shaped layer ({name})", "",
             f"Measured by `python benchmarks/bench_kernels.py {' '.join(sys.argv[1:])}` on {name} "
             f"(torch {torch.__version__}, triton {__import__('triton').__version__}). Copy bandwidth {bw / 1e12:.2f} TB/s (read + write). "
             f"Base: {bench.base_bytes / 1e6:.1f} MB of bf16 weights per layer; one delta-come delta at 1/16: {bench.delta_bytes / 1e6:.1f} MB per layer. "
             "Times per layer (graph of all copies / copies), microseconds; floor = bytes that must be read / copy bandwidth.", "",
             "| case | base alone (us) | floor base | base + deltas (us) | x base | floor with deltas | shrink / expand alone (us) | rank-r factors x | dense delta x | rel err |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['base_us']:.1f} | {r['floor_base_us']:.1f} | {r['delta_us']:.1f} | x{r['x']:.2f} | {r['floor_us']:.1f} | "
                     f"{r['shrink_us']:.1f} / {r['expand_us']:.1f} | {('x%.2f' % r['factors_x']) if 'factors_x' in r else '-'} | "
                     f"{('x%.2f' % r['dense_x']) if 'dense_x' in r else '-'} | {r['err']:.1e} |")
    if any("densepath_us" in r for r in rows):
        lines += ["", f"The dense path (kernels/dense.py: the set's factors dequantized by one launch into a bf16 scratch, then x @ V^T and an "
                  f"in-place addmm a slice by cuBLAS; DELTASTORE_DENSE_MIN_ROWS={dense.DENSE_MIN_ROWS}), beside the tl.dot figure above "
                  f"(scratch {dense.scratch_bytes() / 1e6:.0f} MB):", "",
                  "| case | base alone (us) | base + deltas (us) | x base | dense path (us) | x base | dequant / shrink / expand alone (us) | rel err |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "densepath_us" in r:
                d = r["densepath_stages_us"]
                lines.append(f"| {r['case']} | {r['base_us']:.1f} | {r['delta_us']:.1f} | x{r['x']:.2f} | {r['densepath_us']:.1f} | x{r['densepath_x']:.2f} | "
                             f"{d['dequant']:.1f} / {d['shrink']:.1f} / {d['expand']:.1f} | {r['densepath_err']:.1e} |")
    lines += ["", "Deltas on a side stream beside the base GEMM (kernels.linear.beside, as a lone DeltaLinear serves a GPU: the side stream on the GEMV path, "
              "the one-stream layer on the tl.dot path; default "
              "kernel configurations; y += d after the join), against the one-stream figure above; the error of y against float32 base + the torch reference delta; and the layer "
              "through the modules users get (DeltaLinear, DeltaGroup for q/k/v and gate/up: one base GEMM a group, deltas in place on the tl.dot path, float32 + one add on the GEMV path):", "",
              "| case | base alone (us) | one stream (us) | x base | side stream (us) | x base | worst error, one / side stream (eps(bf16) x rms y) | DeltaLinear modules (us) | x base |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "overlap_us" in r:
            lines.append(f"| {r['case']} | {r['base_us']:.1f} | {r['delta_us']:.1f} | x{r['x']:.2f} | {r['overlap_us']:.1f} | x{r['overlap_x']:.2f} | {r['overlap_err'][0]:.2f} / {r['overlap_err'][1]:.2f} | {r['modules_us']:.1f} | x{r['modules_x']:.2f} |")
    lines += ["", "Multi-tenant, beside it:", "", "| case | one pass (us) | x of its floor | one single-tenant pass per tenant (us) | dense fine-tunes resident (us) | packed deltas (MB/layer) | dense fine-tunes (MB/layer) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "separate_us" in r:
            lines.append(f"| {r['case']} | {r['delta_us']:.1f} | x{r['x_floor']:.2f} | {r['separate_us']:.1f} | {r.get('dense_resident_us', float('nan')):.1f} | "
                         f"{r['delta_mem_mb']:.0f} | {r['dense_mem_mb']:.0f} |")
    lines += ["", "Base alone with seven separate GEMMs (as plain torch serves an HF model): " +
              ", ".join(f"M={r['M']}: {r['base7_us']:.1f} us" for r in rows if "base7_us" in r), "",
              "Kernel configurations kept: " + "; ".join(f"{r['case']}: {r['cfg'] or 'defaults'}" for r in rows)]
    emit("\n".join(lines) + "\n", args.out, args.json, rows)


if __name__ == "__main__":
    sys.exit(main())
