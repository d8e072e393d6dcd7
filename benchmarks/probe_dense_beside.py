"""Would the dense path's dequant hide beside the base GEMM? A probe, not a product change.

Many rows of one fine-tune (33+) take the dense path (kernels/dense.py): one launch dequantizes the
group's packed factors into a bf16 scratch, then cuBLAS runs x V^T and an addmm a slice into the base's
output. It runs on the current stream after the base GEMM: at 256 rows of a Llama-2-7B layer (H200,
thirty-third session) base 163.7 us, the whole layer 394.5 (x2.41), the dequant alone ~100-115 us of
it. At 256 rows the base GEMM is compute-bound (103 GFLOP a layer) while the dequant is bound by memory
latency: the two may overlap where the base GEMM and the deltas' GEMMs cannot. Timed here per group,
each a CUDA graph over --copies copies (so the L2 does not serve the weights):

- base: cuBLAS's x W^T alone;
- dequant: the dense dequant alone;
- serial: the base, then the dense path as the product runs it (dense.apply: dequant, GEMMs);
- beside: the dequant on a side stream forked before the base, joined after it, then the GEMMs on the
  current stream (the scratch is one buffer a device: the next copy's dequant forks after this copy's
  GEMMs, so nothing overwrites factors still being read).

Each case first checks that beside gives serial's output bit for bit (the same kernels in the same order
on the data).

    python benchmarks/probe_dense_beside.py [--rows 64,256]          # GPU: the table
    TRITON_INTERPRET=1 python benchmarks/probe_dense_beside.py --smoke   # CPU: the check only (one stream)
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_kernels import GROUPS, SMOKE_GROUPS, base_cublas, probe_parser, probe_setup, random_packed, side_by_side, time_graph  # noqa: E402

from deltastore.kernels import DeltaSet, dense, plan_rows  # noqa: E402


def main() -> None:
    ap = probe_parser(__doc__)
    ap.add_argument("--rows", default="64,256", help="rows of the one fine-tune, comma-separated")
    args = ap.parse_args()
    dev, copies, gen, dev_name = probe_setup(args)
    groups = [(n, [max(m, 128) for m in ms], max(K, 128)) for n, ms, K in SMOKE_GROUPS] if args.smoke else GROUPS
    rows = [24] if args.smoke else [int(r) for r in args.rows.split(",")]
    print(f"device: {dev_name}; dense span "
          f"{dense.DENSE_SPAN}, stages {dense.DENSE_STAGES}, block {dense.DENSE_BLOCK_R} x {dense.DENSE_BLOCK_C}")
    print("\n| rows | group | base (us) | dequant alone | serial (base, then the dense path) | beside (dequant beside the base) "
          "| beside / serial |\n|---|---|---|---|---|---|---|")
    for M in rows:
        sums = [0.0, 0.0, 0.0, 0.0]
        for name, ms, K in groups:
            N = sum(ms)
            sets, Ws = [], []
            for _ in range(copies):
                ds = DeltaSet(K, ms, dev)
                ds.add([random_packed(m, K, gen, dev, 0.5 if args.smoke else 1 / 16) for m in ms])
                sets.append(ds.build())
                Ws.append((torch.randn(N, K, generator=gen, device=dev) * 0.02).to(torch.bfloat16))
            x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)).to(torch.bfloat16).to(dev)
            ys = [torch.empty(M, N, dtype=torch.bfloat16, device=dev) for _ in range(copies)]
            plan = plan_rows(torch.zeros(M, dtype=torch.int64, device=dev), 1)

            def base() -> None:
                for W, y in zip(Ws, ys):  # noqa: B023
                    base_cublas(x, W, y)  # noqa: B023

            def dequant() -> None:
                for ds in sets:  # noqa: B023
                    dense.dequantize(ds, 0, x.dtype)  # noqa: B023

            def serial() -> None:
                for W, y, ds in zip(Ws, ys, sets):  # noqa: B023
                    base_cublas(x, W, y)  # noqa: B023
                    dense.apply(x, y, ds, plan)  # noqa: B023

            def beside() -> None:
                for W, y, ds in zip(Ws, ys, sets):  # noqa: B023
                    f = side_by_side(lambda W=W, y=y: base_cublas(x, W, y), lambda ds=ds: dense.dequantize(ds, 0, x.dtype))  # noqa: B023
                    dense.expand(dense.shrink(x, f, plan), y, ds, f)  # noqa: B023

            serial()
            want = ys[-1].clone()
            beside()
            same = torch.equal(ys[-1], want)
            if args.smoke or not same:
                print(f"| {M} | {name} | - | - | - | - | beside == serial: {same} |", flush=True)
                if not same:
                    raise SystemExit(f"beside differs from serial at {M} rows, {name}")
                continue
            t = [time_graph(f) / copies * 1e6 for f in (base, dequant, serial, beside)]
            sums = [a + b for a, b in zip(sums, t)]
            print(f"| {M} | {name} | {t[0]:.1f} | {t[1]:.1f} | {t[2]:.1f} (+{t[2] - t[0]:.1f}) | {t[3]:.1f} (+{t[3] - t[0]:.1f}) "
                  f"| {t[3] / t[2]:.2f} |", flush=True)
        if not args.smoke:
            print(f"| {M} | **layer** | {sums[0]:.1f} | {sums[1]:.1f} | {sums[2]:.1f} (x{sums[2] / sums[0]:.2f}) | "
                  f"{sums[3]:.1f} (x{sums[3] / sums[0]:.2f}) | {sums[3] / sums[2]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
