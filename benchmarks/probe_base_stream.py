"""Can a one-row base GEMV keep more of W in flight with fewer registers? A probe, not a product kernel.

At one row the layer's base is a memory-bound GEMV: the product's Triton GEMV (kernels/base_gemv.py)
streams W through registers, one step of 8 x 256 values a program in flight (no software pipeline:
Triton pipelines a loop's loads only when asked), so it needs many resident programs to keep bytes
in flight, and the delta kernels beside it take the same registers: in the traced layer the gate/up
GEMV took 58.8 us beside its deltas against 49.3 alone (kernels_h200.md, thirty-first session). The
layer's base alone runs at ~122 us against a bytes floor of ~95.

Tried here, each for output blocks of BLOCK_N rows of W streamed along K:

- ``pipe``: the same register GEMV with its loop software-pipelined by Triton (``tl.range(...,
  num_stages=S)``: the loads of S - 1 steps ahead go to shared memory by cp.async, no registers
  held for them);
- ``tma``: W's tiles by the copy engine (a host tensor descriptor; ``desc.load`` in a pipelined loop:
  one thread issues a tile's copy, S tiles in flight a program in shared memory).

It times, per group of one Llama-2-7B layer at one row, each as a CUDA graph over --copies copies
of W (so the L2 does not serve it): cuBLAS, the product's GEMV, and every config of each variant
alone; then the best of each beside the product's delta (one 1/16 delta-come fine-tune, on the side
stream as kernels.linear.beside runs it). Each variant is checked against a float64 reference first.

    python benchmarks/probe_base_stream.py                       # GPU: the tables
    TRITON_INTERPRET=1 python benchmarks/probe_base_stream.py --smoke   # CPU: correctness (pipe only)
"""
from __future__ import annotations

import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_kernels import GROUPS, SMOKE_GROUPS, base_cublas, base_triton, probe_parser, probe_setup, random_packed, time_graph  # noqa: E402

from deltastore.kernels import DeltaSet, plan_rows  # noqa: E402
from deltastore.kernels.linear import beside, with_delta  # noqa: E402

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older triton
    TensorDescriptor = None


@triton.jit
def _gemv_pipe_kernel(x_ptr, w_ptr, y_ptr, N, K, stride_wn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    """y[n] = sum_k W[n, k] x[k] for BLOCK_N rows a program, its loop pipelined STAGES deep (K a multiple of BLOCK_K)."""
    pid = tl.program_id(0)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    nc = tl.where(n_ok, n, 0)
    k = tl.arange(0, BLOCK_K)
    wp = w_ptr + nc.to(tl.int64)[:, None] * stride_wn + k[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        w = tl.load(wp + k0).to(tl.float32)
        xv = tl.load(x_ptr + k0 + k).to(tl.float32)
        acc += w * xv[None, :]
    tl.store(y_ptr + n, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _gemv_tma_kernel(x_ptr, w_desc, y_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    """The same with W's [BLOCK_N, BLOCK_K] tiles by the copy engine (rows past N read as zeros by it)."""
    pid = tl.program_id(0)
    n0 = pid * BLOCK_N
    k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        w = w_desc.load([n0, k0]).to(tl.float32)
        xv = tl.load(x_ptr + k0 + k).to(tl.float32)
        acc += w * xv[None, :]
    n = n0 + tl.arange(0, BLOCK_N)
    tl.store(y_ptr + n, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=n < N)


class Variant:
    """One kernel config: ``kind`` pipe|tma, BLOCK_N, BLOCK_K, STAGES, warps."""

    def __init__(self, spec: str) -> None:
        kind, bn, bk, st, nw = spec.split(":")
        self.kind, self.bn, self.bk, self.st, self.nw = kind, int(bn), int(bk), int(st), int(nw)
        self.name = spec
        self._desc: dict = {}

    def __call__(self, x: torch.Tensor, W: torch.Tensor, y: torch.Tensor) -> None:
        N, K = W.shape
        if K % self.bk:
            raise ValueError(f"{self.name}: K = {K} is not a multiple of BLOCK_K (the probe's kernels do not mask K)")
        grid = (triton.cdiv(N, self.bn),)
        if self.kind == "pipe":
            _gemv_pipe_kernel[grid](x, W, y, N, K, W.stride(0), BLOCK_N=self.bn, BLOCK_K=self.bk, STAGES=self.st, num_warps=self.nw)
            return
        d = self._desc.get(W.data_ptr())
        if d is None:
            d = self._desc[W.data_ptr()] = TensorDescriptor.from_tensor(W, [self.bn, self.bk])
        _gemv_tma_kernel[grid](x, d, y, N, K, BLOCK_N=self.bn, BLOCK_K=self.bk, STAGES=self.st, num_warps=self.nw)


def main() -> None:
    ap = probe_parser(__doc__)
    ap.add_argument("--cfgs", default="pipe:8:256:3:4,pipe:16:256:3:4,pipe:16:128:4:4,pipe:32:128:3:4,pipe:32:64:4:2,"
                    "tma:16:128:4:4,tma:32:128:4:4,tma:32:64:6:4,tma:64:64:4:4,tma:64:128:3:8",
                    help="KIND:BLOCK_N:BLOCK_K:STAGES:WARPS,...")
    ap.add_argument("--no-beside", action="store_true", help="alone only")
    args = ap.parse_args()
    dev, copies, gen, dev_name = probe_setup(args)
    groups = SMOKE_GROUPS if args.smoke else GROUPS
    variants = [Variant(c) for c in args.cfgs.split(",")]
    if args.smoke or TensorDescriptor is None:
        variants = [v for v in variants if v.kind == "pipe"] or [Variant("pipe:16:32:2:4")]
        if args.smoke:
            variants = [Variant("pipe:16:32:2:4"), Variant("pipe:8:32:3:2")]
    side = torch.cuda.Stream() if dev.type == "cuda" else None
    print(f"device: {dev_name}; triton {triton.__version__}")
    print("\nAlone, us a copy (one row; floor: W's bytes at 4.26 TB/s):\n")
    print("| group | N x K | floor | cuBLAS | product GEMV | " + " | ".join(v.name for v in variants) + " | rel err (worst) |")
    print("|---|---|---|---|---|" + "---|" * len(variants) + "---|")
    sums: dict[str, float] = {}
    bsums: dict[str, float] = {}
    bbest: dict[str, str] = {}
    beside_rows = []
    for name, ms, K in groups:
        N = sum(ms)
        Ws = [(torch.randn(N, K, generator=gen, device=dev) * 0.02).to(torch.bfloat16) for _ in range(copies)]
        ys = [torch.empty(1, N, dtype=torch.bfloat16, device=dev) for _ in range(copies)]
        x = torch.randn(1, K, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).to(dev)
        want = (x.double() @ Ws[0].double().T)[0]
        errs = []
        for v in variants:
            y = torch.full((1, N), float("nan"), dtype=torch.bfloat16, device=dev)
            v(x, Ws[0], y)
            errs.append(float((y[0].double() - want).abs().max() / want.abs().max()))
        if args.smoke:
            print(f"| {name} | {N} x {K} | - | - | - | " + " | ".join(f"{e:.1e}" for e in errs) + f" | {max(errs):.1e} |")
            continue
        fns = {"cuBLAS": base_cublas, "product": base_triton, **{v.name: v for v in variants}}
        t = {k: time_graph(lambda f=f: [f(x, W, y) for W, y in zip(Ws, ys)]) / copies * 1e6 for k, f in fns.items()}  # noqa: B023
        for k, v in t.items():
            sums[k] = sums.get(k, 0.0) + v
        floor = N * K * 2 / 4.26e12 * 1e6
        sums["floor"] = sums.get("floor", 0.0) + floor
        print(f"| {name} | {N} x {K} | {floor:.1f} | {t['cuBLAS']:.1f} | {t['product']:.1f} | "
              + " | ".join(f"{t[v.name]:.1f}" for v in variants) + f" | {max(errs):.1e} |", flush=True)
        if args.no_beside:
            continue
        sets = []
        for _ in range(copies):
            ds = DeltaSet(K, ms, dev)
            ds.add([random_packed(m, K, gen, dev, 1 / 16) for m in ms])
            sets.append(ds.build())
        plan = plan_rows(torch.tensor([0], device=dev), 1)

        def with_deltas(f):  # noqa: ANN001, ANN202
            def fn() -> None:
                for W, y, ds in zip(Ws, ys, sets):  # noqa: B023
                    def base(W=W, y=y) -> torch.Tensor:  # noqa: ANN001
                        f(x, W, y)  # noqa: B023
                        return y
                    yb, d = beside(x, ds, plan, base, side=side if side is not None else False)  # noqa: B023
                    with_delta(yb, d, torch.bfloat16)
            return fn

        tb = {k: time_graph(with_deltas(f)) / copies * 1e6 for k, f in fns.items()}
        for k, v in tb.items():
            bsums[k] = bsums.get(k, 0.0) + v
        bbest[name] = min(tb, key=tb.get)
        beside_rows.append(f"| {name} | " + " | ".join(f"{v:.1f} (+{v - t[k]:.1f})" for k, v in tb.items())
                           + f" | {bbest[name]} {tb[bbest[name]]:.1f} |")
    if sums:
        print("\nSummed over the layer's four groups, us: " + ", ".join(f"{k} {v:.1f}" for k, v in sums.items() if not k.startswith("beside")))
    if beside_rows:
        names = list(bsums)
        print("\nWith the product's delta beside (side stream, one 1/16 fine-tune), us a copy (exposed over the same base alone):\n")
        print("| group | " + " | ".join(names) + " | best |\n|---|" + "---|" * (len(names) + 1))
        print("\n".join(beside_rows))
        print("| summed | " + " | ".join(f"{bsums[k]:.1f} (x{bsums[k] / sums['cuBLAS']:.3f})" for k in names) + " | - |")
        print("\nx: of cuBLAS alone summed. Best a group: " + ", ".join(f"{g} {b}" for g, b in bbest.items()))


if __name__ == "__main__":
    main()
