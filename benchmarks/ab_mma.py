"""A/B on the GPU: one Llama-2-7B-shaped layer through the modules users get (DeltaLinear /
DeltaGroup, bench_kernels.modules_fn), with the tensor-core kernels (kernels/mma.py) and without
them (DELTASTORE_MMA=0: the GEMV, tl.dot or dense path as before), rounds alternating in one
process; beside them the base GEMMs alone. Each variant checked against the torch reference first.

    python benchmarks/ab_mma.py [--cases 1,4,16,32x8,64x32] [--rounds 3] [--copies 4] [--out FILE]

A case is M (rows of one fine-tune), MxN (M rows over N fine-tunes) or either with +B: B base rows
(id -1) after them, the ids then on the host as ``generate`` gives them, so the path choice counts
the M rows that name a fine-tune (kernels.deltaset.COUNT_SERVED; ``--mma-cfgs '[{}, {"deltaset.
COUNT_SERVED": false}]'`` is its A/B).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys

# the layers are timed inside CUDA graphs, whose captures take the side stream; eager warm-ups and
# checks take it as well (kernels.linear.side_stream: eagerly one stream by default), as before
os.environ.setdefault("DELTASTORE_DELTA_STREAM", "1")

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_kernels import GROUPS, Bench, capture_graph, copy_bandwidth, modules_fn, time_graph  # noqa: E402

from deltastore.kernels import DeltaContext, base_gemv, mma, plan_rows, ref_ops  # noqa: E402
from deltastore.kernels.linear import apply_deltas, beside  # noqa: E402


def profile_lines(title: str, fn, copies: int, reps: int = 3) -> list[str]:
    """Kernel time by kernel name for ``reps`` eager runs of ``fn`` (us a layer: summed over the
    streams, so beside the graph's wall time it shows the overlap), the largest first."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    tot: dict[str, list[float]] = {}
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        t = e.self_cuda_time_total if t is None else t
        if t > 0:
            tot[e.key[:60]] = [t / (reps * copies), e.count / (reps * copies)]
    out = ["", f"kernels of {title} (us a layer, launches a layer):", ""]
    for k, (t, n) in sorted(tot.items(), key=lambda kv: -kv[1][0])[:10]:
        out.append(f"    {t:8.1f} us  {n:5.1f}  {k}")
    out.append(f"    {sum(t for t, _ in tot.values()):8.1f} us  in all")
    print("\n".join(out), flush=True)
    return out


def by_group(bench, case: str, M: int, nt: int, ids, plan, x, h, ys, rounds: int, copies: int, use_first) -> list[str]:
    """Each group of the layer timed alone (us a layer, medians of ``rounds`` CUDA graphs over the
    copies): its base by the kernel the modules use (the Triton GEMV up to base_gemv.MAX_ROWS rows,
    else torch.mm), its modules (base + deltas beside it, joined), its deltas alone (float32 out, one
    stream). "exposed" = modules - base: what the group's deltas add to its time."""
    use_first()
    out = ["", f"{case}, group by group (us a layer; the first variant):", "",
           "| group | base alone | modules | deltas alone | exposed |", "|---|---|---|---|---|"]
    tot = [0.0, 0.0, 0.0]
    for gi, (name, ms, _) in enumerate(bench.groups):
        inp = h if gi == 3 else x
        triton_base = M <= base_gemv.MAX_ROWS

        def base_g(gi=gi, inp=inp) -> None:
            for c in bench.copies:
                if triton_base:
                    base_gemv.gemv(inp, c.W[gi], out=ys[gi])
                else:
                    torch.mm(inp, c.W[gi].T, out=ys[gi])

        def alone_g(gi=gi, inp=inp) -> None:  # as the modules' side stream does its work, on one stream
            for c in bench.copies:
                beside(inp, c.sets[nt][gi], plan, lambda: None, "triton", side=False)

        mod = modules_fn(bench, M, nt, ids, only=gi)
        t = [[], [], []]
        for _ in range(rounds):
            for k, fn in enumerate((base_g, mod, alone_g)):
                t[k].append(time_graph(fn))
        us = [statistics.median(v) * 1e6 / copies for v in t]
        tot = [a + b for a, b in zip(tot, us)]
        out.append(f"| {name} | {us[0]:.1f} | {us[1]:.1f} | {us[2]:.1f} | {us[1] - us[0]:+.1f} |")
    out.append(f"| sum | {tot[0]:.1f} | {tot[1]:.1f} | {tot[2]:.1f} | {tot[1] - tot[0]:+.1f} |")
    print("\n".join(out), flush=True)
    return out


def timeline(fn, copies: int, title: str, path: str | None = None) -> list[str]:
    """One replay of a CUDA graph of ``fn`` (every copy's layer) under torch.profiler: each kernel of
    the second copy's layer with its stream, start and end (us from that copy's first kernel), so the
    critical path of a layer (which stream waits on which) can be read off. ``path``: the chrome trace."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    g = capture_graph(fn, warm=1)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        g.replay()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        trace = path or os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            evs = [e for e in json.load(f)["traceEvents"] if e.get("cat") == "kernel"]
    evs.sort(key=lambda e: e["ts"])
    out = ["", f"timeline of {title}: one graph replay, the second of {copies} layer copies (us from its first kernel):", ""]
    if not evs or len(evs) % copies:
        out.append(f"    ({len(evs)} kernels traced: not {copies} equal copies)")
        print("\n".join(out), flush=True)
        return out
    n = len(evs) // copies
    part = evs[n : 2 * n] if copies > 1 else evs
    t0 = part[0]["ts"]
    for e in part:
        out.append(f"    stream {e.get('args', {}).get('stream', '?'):>4}  {e['ts'] - t0:8.1f} -> {e['ts'] + e['dur'] - t0:8.1f}  "
                   f"({e['dur']:6.1f})  {e['name'][:60]}")
    out.append(f"    layer: {part[-1]['ts'] + part[-1]['dur'] - t0:.1f} us from first kernel start to last kernel end; "
               f"whole replay {evs[-1]['ts'] + evs[-1]['dur'] - evs[0]['ts']:.1f} us over {copies} copies")
    print("\n".join(out), flush=True)
    return out


def parse_case(text: str) -> tuple[int, int, int]:
    """(fine-tune rows, fine-tunes, base rows) of a case: "M", "MxN", "M+B", "MxN+B"."""
    rows, _, base = text.partition("+")
    m, _, n = rows.partition("x")
    return int(m), int(n or 1), int(base or 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="1,4,16,32x8,64x32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--out", default=None)
    ap.add_argument("--delta-alone", action="store_true", help="also time each variant's delta kernels alone (float32 out, one stream)")
    ap.add_argument("--by-group", action="store_true", help="after each case, the first variant's layer group by group: its base "
                    "alone (the base kernel the modules use), its modules, its deltas alone (where a layer's time goes)")
    ap.add_argument("--timeline", action="store_true", help="after each case, the first variant's layer as one traced graph replay: "
                    "each kernel's stream, start and end")
    ap.add_argument("--profile", action="store_true", help="after each case, each variant's kernels by name (torch.profiler, eager, us a layer)")
    ap.add_argument("--mma-cfgs", default="[{}]", help="JSON list of kernels.mma attribute overrides, each a variant (e.g. EXPAND_STEP; "
                    "MODULE.NAME for another deltastore.kernels module's, e.g. triton_ops.JOIN_ADD)")
    args = ap.parse_args()
    import json

    if not mma.HAVE_GLUON:
        sys.exit("the mma kernels need Triton with Gluon")
    variants = json.loads(args.mma_cfgs)

    def owner(k: str) -> tuple[object, str]:  # "NAME": kernels.mma's; "MODULE.NAME": that kernels module's
        mod, _, name = k.rpartition(".")
        return (importlib.import_module(f"deltastore.kernels.{mod}") if mod else mma), name

    defaults = {k: getattr(*owner(k)) for v in variants for k in v}

    def label(v: str) -> str:  # a variant's key: "0" the paths before, "1:i" variant i
        return "before" if v == "0" else json.dumps(variants[int(v[2:])])
    dev = torch.device("cuda")
    cases = [parse_case(c) for c in args.cases.split(",")]
    bench = Bench(GROUPS, args.copies, max(nt for _, nt, _ in cases), sorted({nt for _, nt, _ in cases}), dev)
    bw = copy_bandwidth(dev)
    lines = [f"# {__doc__.splitlines()[0]}", "", f"`python benchmarks/ab_mma.py --cases {args.cases} --rounds {args.rounds} "
             f"--copies {args.copies} --mma-cfgs '{args.mma_cfgs}'{' --delta-alone' * args.delta_alone}` "
             f"(DELTASTORE_MMA_PLANES={os.environ.get('DELTASTORE_MMA_PLANES', '1')}) on {torch.cuda.get_device_name()} (torch {torch.__version__}); copy {bw / 1e12:.2f} TB/s; "
             f"one delta-come delta at 1/16: {bench.delta_bytes / 1e6:.1f} MB a layer, base {bench.base_bytes / 1e6:.1f} MB.", "",
             "| case | base alone (us) | modules, mma kernels (us) | x base | modules, before (us) | x base | mma / before | rel err mma / before |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for Mf, nt, B in cases:
        M = Mf + B
        ids = torch.cat([torch.arange(Mf) % nt, torch.full((B,), -1)]).to(torch.int64)
        if B:  # on the host: the modules' plans (made before a graph's capture) know the served rows
            ctx = DeltaContext(nt)
            ctx.set(ids)
            plan = ctx.plan(M, dev)
        else:  # on the device, as before
            ids = ids.to(dev)
            plan = plan_rows(ids, nt)
        x, h, ys = bench.inputs(M, torch.Generator().manual_seed(M))

        def base() -> None:
            for c in bench.copies:
                for gi, W in enumerate(c.W):
                    torch.mm(h if gi == 3 else x, W.T, out=ys[gi])

        errs, fns = {}, {}
        keys = [f"1:{i}" for i in range(len(variants))] + ["0"]

        def use(v: str) -> None:
            os.environ["DELTASTORE_MMA"] = v[0]
            for k, val in {**defaults, **(variants[int(v[2:])] if v != "0" else {})}.items():
                setattr(*owner(k), val)

        for v in keys:
            use(v)
            # the delta part of the first copy's layer against the torch reference, per group
            e = 0.0
            for gi, (_, ms, K) in enumerate(bench.groups):
                ds = bench.copies[0].sets[nt][gi]
                inp = (h if gi == 3 else x)
                got = apply_deltas(inp, torch.zeros(M, sum(ms), device=dev), ds, plan)
                want = ref_ops.expand(ref_ops.shrink(inp, ds, plan), torch.zeros(M, sum(ms), device=dev), ds, plan)
                e = max(e, float((got - want).norm() / want.norm()))
            errs[v] = e
            fns[v] = modules_fn(bench, M, nt, ids)
        t = {k: [] for k in ["base", *keys]}
        if M <= base_gemv.MAX_ROWS:  # the base by the Triton GEMV (kernels/base_gemv.py) beside cuBLAS's
            t["base_gemv"] = []

            def base_t() -> None:
                for c in bench.copies:
                    for gi, W in enumerate(c.W):
                        base_gemv.gemv(h if gi == 3 else x, W, out=ys[gi])

            for gi, W in enumerate(bench.copies[0].W):
                inp = h if gi == 3 else x
                a, b = base_gemv.gemv(inp, W).float(), (inp @ W.T).float()
                print(f"    base GEMV, group {gi}: rel err {float((a - b).norm() / b.norm()):.1e} against torch.mm", flush=True)
        for _ in range(args.rounds):
            t["base"].append(time_graph(base))
            if "base_gemv" in t:
                t["base_gemv"].append(time_graph(base_t))
            for v in keys:
                use(v)
                t[v].append(time_graph(fns[v]))
        us = {k: statistics.median(v) * 1e6 / args.copies for k, v in t.items()}
        case = (f"{Mf} rows, one fine-tune" if nt == 1 else f"{Mf} rows over {nt} fine-tunes") + (f" + {B} base rows" if B else "")
        if "base_gemv" in us:
            line = (f"    base alone: cuBLAS (torch.mm) {us['base']:.1f} us, the Triton GEMV {us['base_gemv']:.1f} us "
                    f"(x{us['base_gemv'] / us['base']:.2f})")
            print(line, flush=True)
            lines.append(line)
        for i, var in enumerate(variants):
            k = f"1:{i}"
            row = (f"| {case} {json.dumps(var) if var else ''} | {us['base']:.1f} | {us[k]:.1f} | x{us[k] / us['base']:.2f} | {us['0']:.1f} | "
                   f"x{us['0'] / us['base']:.2f} | {us[k] / us['0']:.2f} | {errs[k]:.1e} / {errs['0']:.1e} |")
            print(row, flush=True)
            lines.append(row)
        if args.delta_alone:
            ds_ = [[(c.sets[nt][gi], h if gi == 3 else x) for gi in range(len(bench.groups))] for c in bench.copies]

            def alone() -> None:  # as the modules' side stream does its work (beside: zero a float32 d, the deltas), on one stream
                for per in ds_:
                    for ds, inp in per:
                        beside(inp, ds, plan, lambda: None, "triton", side=False)

            for v in keys:
                use(v)
                ta = statistics.median(time_graph(alone) for _ in range(args.rounds)) * 1e6 / args.copies
                row = f"    delta alone ({case}, {label(v)}): {ta:.1f} us a layer"
                print(row, flush=True)
                lines.append(row)
        if args.by_group:
            lines += by_group(bench, case, M, nt, ids, plan, x, h, ys, args.rounds, args.copies, lambda: use(keys[0]))
        if args.timeline:
            use(keys[0])
            lines += timeline(fns[keys[0]], args.copies, case)
        if args.profile:
            for v in keys:
                use(v)
                lines += profile_lines(f"{case}, {label(v)}", fns[v], args.copies)
    os.environ.pop("DELTASTORE_MMA", None)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
