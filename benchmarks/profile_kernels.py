"""Where the delta kernels' time goes, on the GPU: per-kernel time and launch cost (no profiler
needed), and a target for Nsight Compute (``--ncu``: a few launches of one layer to profile).

    python benchmarks/profile_kernels.py                      # per-kernel table (CUDA graph / events)
    ncu --clock-control none -k regex:gemv python benchmarks/profile_kernels.py --ncu   # counters

One Llama-2-7B-shaped layer (benchmarks/bench_kernels.py's groups), one copy: for M = 1 one
tenant, and for 32 rows over 8 tenants, each group's shrink and expand are timed alone (a CUDA
graph of ``--reps`` launches over ``--copies`` copies, so L2 does not serve the packed bytes), with
the bytes they must read and the bandwidth that gives; beside it the cost of an empty Triton launch
inside a graph (the floor under any one launch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_kernels import GROUPS, Bench, expand_kw, shrink_kw, split_for, time_graph  # noqa: E402

from deltastore.kernels import plan_rows, triton_ops  # noqa: E402


def packed_bytes(dsets, side: str) -> int:
    """Bytes of the V^ (side 'v') or U^ (side 'u') halves of every slot of a DeltaSet list."""
    n = 0
    for ds in dsets:
        for s in range(ds.n_slots):
            for d in ds.slot(s) or []:
                if d is None:
                    continue
                for v, u in d.tiers:
                    f = v if side == "v" else u
                    n += f.q.numel() * 4 + f.s.numel() * 2 + f.z.numel() * 2
    return n


def empty_launch_us(dev: torch.device, n: int = 64) -> float:
    """Microseconds per launch of an empty-ish Triton kernel (one program) replayed in a CUDA graph."""
    import triton
    import triton.language as tl

    @triton.jit
    def _touch(p):
        tl.store(p, tl.load(p) + 1)

    t = torch.zeros(1, device=dev)

    def fn() -> None:
        for _ in range(n):
            _touch[(1,)](t)

    return time_graph(fn) * 1e6 / n


FAST0 = FAST_EM0 = None


def main() -> None:
    global FAST0, FAST_EM0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--ncu", action="store_true", help="run each case's launches a few times, untimed, for ncu to profile")
    ap.add_argument("--cfgs", default="[{}]", help="kernel configurations (bench_kernels keys) as a JSON list; each is timed")
    ap.add_argument("--cases", default="1/1,16/1,32/8", help="M/tenants pairs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfgs = json.loads(args.cfgs)
    FAST0, FAST_EM0 = getattr(triton_ops, "GEMV_FAST", None), getattr(triton_ops, "GEMV_FAST_EXPAND_MAX_M", None)
    dev = torch.device("cuda")
    cases = [(int(a), int(b)) for a, b in (c.split("/") for c in args.cases.split(","))]
    nts = sorted({nt for _, nt in cases})
    bench = Bench(GROUPS, 1 if args.ncu else args.copies, max(nts), nts, dev)
    out = []
    if not args.ncu:
        print(f"empty Triton launch in a graph: {empty_launch_us(dev):.2f} us")
    for cfg, (M, nt) in ((c, mn) for c in cfgs for mn in cases):
        label = f"M={M}/{nt} {json.dumps(cfg)}"
        # "fast": the GEMV unpack (triton_ops.GEMV_FAST), "fast_em": the expand's largest row block for it
        if FAST0 is not None:  # (kernels before the fast unpack have neither knob)
            triton_ops.GEMV_FAST = bool(cfg.get("fast", FAST0))
            triton_ops.GEMV_FAST_EXPAND_MAX_M = int(cfg.get("fast_em", FAST_EM0))
        tot = [0.0, 0.0]
        ids = (torch.arange(M, device=dev) % nt).to(torch.int64)
        plan = plan_rows(ids, nt)
        try:
            err = bench.check(M, nt, ids, cfg) if not args.ncu else 0.0
        except Exception as e:  # noqa: BLE001 - a configuration that fails to compile is said, and skipped
            print(f"{label}: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        for gi, (name, ms, K) in enumerate(GROUPS):
            dsets = [c.sets[nt][gi] for c in bench.copies]
            x = torch.randn(M, K, device=dev).to(torch.bfloat16)
            y = torch.zeros(M, sum(ms), device=dev, dtype=torch.bfloat16)
            sk = split_for(M, dsets[0], cfg)
            zs = [triton_ops.shrink(x, ds, plan, sk, **shrink_kw(cfg)) for ds in dsets]

            def sh() -> None:
                for ds in dsets:
                    triton_ops.shrink(x, ds, plan, sk, **shrink_kw(cfg))

            def ex() -> None:
                for ds, z in zip(dsets, zs):
                    triton_ops.expand(z, y, ds, plan, **expand_kw(cfg))

            if args.ncu:
                for _ in range(1):
                    sh()
                    ex()
                torch.cuda.synchronize()
                continue
            ts = time_graph(sh) * 1e6 / len(dsets)
            te = time_graph(ex) * 1e6 / len(dsets)
            vb, ub = packed_bytes(dsets[:1], "v"), packed_bytes(dsets[:1], "u")
            regs = [getattr(triton_ops.LAST.get(k), "n_regs", "?") for k in ("shrink", "expand")]
            row = dict(case=label, group=name, M=M, tenants=nt, split_k=sk, shrink_us=ts, expand_us=te, v_mb=vb / 1e6, u_mb=ub / 1e6,
                       shrink_gbs=vb / ts / 1e3, expand_gbs=ub / te / 1e3, regs=regs)
            out.append(row)
            tot[0] += ts
            tot[1] += te
            print(f"| {label} | {name} | split {sk} | shrink {ts:.1f} us {vb / 1e6:.2f} MB {vb / ts / 1e3:.0f} GB/s | "
                  f"expand {te:.1f} us {ub / 1e6:.2f} MB {ub / te / 1e3:.0f} GB/s | regs {regs} |", flush=True)
        if not args.ncu:
            print(f"TOTAL {label}: shrink {tot[0]:.1f} + expand {tot[1]:.1f} = {sum(tot):.1f} us per layer; rel err {err:.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
