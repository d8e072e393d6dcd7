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

from bench_kernels import GROUPS, SMOKE_GROUPS, Bench, expand_kw, shrink_kw, split_for, time_graph  # noqa: E402

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
    ap.add_argument("--json", default=None, help="write the rows here (after each case, so a cut run keeps what it timed)")
    ap.add_argument("--compare", nargs="+", default=None, metavar="NAME=JSON",
                    help="no timing: print one table of earlier --json files side by side (the first is the baseline)")
    ap.add_argument("--smoke", action="store_true", help="tiny groups, each launch run once untimed (times 0): on a CPU under TRITON_INTERPRET=1 too")
    args = ap.parse_args()
    if args.compare:
        print(compare(args.compare))
        return
    cfgs = json.loads(args.cfgs)
    FAST0, FAST_EM0 = getattr(triton_ops, "GEMV_FAST", None), getattr(triton_ops, "GEMV_FAST_EXPAND_MAX_M", None)
    dev = torch.device("cuda" if torch.cuda.is_available() or not args.smoke else "cpu")
    groups = SMOKE_GROUPS if args.smoke else GROUPS
    cases = [(int(a), int(b)) for a, b in (c.split("/") for c in args.cases.split(","))]
    nts = sorted({nt for _, nt in cases})
    bench = Bench(groups, 1 if args.ncu else args.copies, max(nts), nts, dev, **(dict(alpha=0.5) if args.smoke else {}))
    out = []
    if not args.ncu and not args.smoke:
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
        for gi, (name, ms, K) in enumerate(groups):
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
            if args.smoke:
                sh(), ex()
                ts = te = 0.0
            else:
                ts = time_graph(sh) * 1e6 / len(dsets)
                te = time_graph(ex) * 1e6 / len(dsets)
            vb, ub = packed_bytes(dsets[:1], "v"), packed_bytes(dsets[:1], "u")
            regs = [getattr(triton_ops.LAST.get(k), "n_regs", "?") for k in ("shrink", "expand")]
            row = dict(case=label, group=name, M=M, tenants=nt, split_k=sk, shrink_us=ts, expand_us=te, v_mb=vb / 1e6, u_mb=ub / 1e6,
                       shrink_gbs=vb / max(ts, 1e-9) / 1e3, expand_gbs=ub / max(te, 1e-9) / 1e3, regs=regs)
            out.append(row)
            tot[0] += ts
            tot[1] += te
            print(f"| {label} | {name} | split {sk} | shrink {ts:.1f} us {vb / 1e6:.2f} MB {vb / max(ts, 1e-9) / 1e3:.0f} GB/s | "
                  f"expand {te:.1f} us {ub / 1e6:.2f} MB {ub / max(te, 1e-9) / 1e3:.0f} GB/s | regs {regs} |", flush=True)
        if not args.ncu:
            print(f"TOTAL {label}: shrink {tot[0]:.1f} + expand {tot[1]:.1f} = {sum(tot):.1f} us per layer; rel err {err:.1e}", flush=True)
            for r in out[len(out) - len(groups):]:
                r["err"] = err
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)


def compare(specs: list[str]) -> str:
    """A markdown table of profile runs (``name=path`` each; rows matched by M, tenants and group):
    shrink / expand us of each, the shrink's split, and each run's shrink + expand against the first."""
    runs = []
    for spec in specs:
        name, _, path = spec.rpartition("=")
        try:
            with open(path) as f:
                rows = json.load(f)
        except (OSError, ValueError) as e:
            rows = []
            print(f"{path}: not read ({type(e).__name__})", file=sys.stderr)
        runs.append((name or path, {(r["M"], r["tenants"], r["group"]): r for r in rows}))
    keys = []
    for _, got in runs:
        keys += [k for k in got if k not in keys]
    keys.sort(key=lambda k: (k[1] > 1, k[0], [g for g, _, _ in GROUPS].index(k[2]) if k[2] in [g for g, _, _ in GROUPS] else 99))
    head = "| M / tenants | group | " + " | ".join(f"{n}: shrink / expand us (split)" for n, _ in runs) + " | " + \
        " | ".join(f"{n}: speed-up over {runs[0][0]}" for n, _ in runs[1:]) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(runs) - 1)]
    tot: dict = {}
    for k in keys:
        cells, sums = [], []
        for name, got in runs:
            r = got.get(k)
            cells.append(f"{r['shrink_us']:.1f} / {r['expand_us']:.1f} ({r['split_k']})" if r else "-")
            sums.append(r["shrink_us"] + r["expand_us"] if r else None)
            if r:
                t = tot.setdefault((k[0], k[1], name), [0.0, 0.0, 0])
                t[0] += r["shrink_us"]
                t[1] += r["expand_us"]
                t[2] += 1
        ratios = [f"x{sums[0] / x:.2f}" if x and sums[0] else "-" for x in sums[1:]]
        lines.append(f"| {k[0]} / {k[1]} | {k[2]} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    for mt in dict.fromkeys((k[0], k[1]) for k in keys):
        cells, sums = [], []
        for name, _ in runs:
            t = tot.get((*mt, name))
            whole = t is not None and t[2] == len(GROUPS)
            cells.append(f"**{t[0]:.1f} / {t[1]:.1f} = {t[0] + t[1]:.1f}**" + ("" if whole else f" ({t[2]} groups)") if t else "-")
            sums.append(t[0] + t[1] if whole else None)
        ratios = [f"**x{sums[0] / s:.2f}**" if s and sums[0] else "-" for s in sums[1:]]
        lines.append(f"| {mt[0]} / {mt[1]} | layer | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
