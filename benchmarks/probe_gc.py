"""How much of an add or a checkout the cyclic garbage collector's passes take, with the heap frozen
for the op (deltastore.pipeline.frozen_heap, the default) and without (DELTASTORE_GC_FREEZE=0).

Each op of benchmarks/bench_scaling.py (same synthetic Llama-shaped model) runs in a process of its
own, as the CLI would, with a ``gc.callbacks`` hook counting the passes of each generation and the
seconds they took (with the GIL held: every worker waits), and the op's wall and CPU seconds. The
two settings alternate op by op, so a drifting load hits both alike.

    python benchmarks/probe_gc.py --layers 1 --threads 2 --rounds 2 --out benchmarks/results/raw_devvm/scaling_gc_probe.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_scaling import machine, reuse_pair  # noqa: E402

ONE = r"""
import gc, json, resource, sys, time
import deltastore
op, home, src, out = sys.argv[1:5]
st = deltastore.open(home)
passes, t0 = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}, {}
def hook(phase, info):
    if phase == "start":
        t0["t"] = time.perf_counter()
    else:
        passes[info["generation"]][0] += 1
        passes[info["generation"]][1] += time.perf_counter() - t0["t"]
gc.callbacks.append(hook)
r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
if op == "add_base":
    st.add_base("m", src)
elif op == "add_ft":
    st.add_finetune("ft", src, base="m", codec="lossless")
else:
    st.checkout(src, out)
dt, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
print(json.dumps({"s": dt, "cpu": cpu, "passes": passes, "tracked": len(gc.get_objects())}))
"""


def run(op: str, home: Path, src: str, out: Path, threads: int, freeze: bool) -> dict:
    env = dict(os.environ, DELTASTORE_THREADS=str(threads), DELTASTORE_GC_FREEZE="1" if freeze else "0")
    shutil.rmtree(out, ignore_errors=True)
    p = subprocess.run([sys.executable, "-c", ONE, op, str(home), src, str(out)], env=env, capture_output=True, text=True,
                       cwd=str(home.parent))
    if p.returncode != 0:
        raise SystemExit(f"{op} failed:\n{p.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None, help="write the markdown table here")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="ds-gc-"))
    model = work / "model"
    nbytes = reuse_pair(model, args.layers)
    load0 = os.getloadavg()[0]
    lines = ["| round | op | heap frozen | load | wall s | CPU s | full (gen 2) passes: n, s | gen 0+1 passes: n, s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in range(args.rounds):
        for freeze in (True, False) if r % 2 == 0 else (False, True):
            home = work / f"home-{int(freeze)}"
            shutil.rmtree(home, ignore_errors=True)
            for op, src in (("add_base", str(model / "base")), ("add_ft", str(model / "ft")), ("checkout", "m@v1"),
                            ("checkout", "ft@v1")):
                load = os.getloadavg()[0]
                res = run(op, home, src, work / "out", args.threads, freeze)
                g = res["passes"]
                name = op if op != "checkout" else f"checkout {src}"
                lines.append(f"| {r + 1} | {name} | {'yes' if freeze else 'no'} | {load:.1f} | {res['s']:.2f} | {res['cpu']:.2f} | "
                             f"{g['2'][0]}, {g['2'][1]:.3f} | {g['0'][0] + g['1'][0]}, {g['0'][1] + g['1'][1]:.3f} |")
                print(lines[-1], flush=True)
            shutil.rmtree(home, ignore_errors=True)
    md = (f"Command: `python benchmarks/probe_gc.py --layers {args.layers} --threads {args.threads} --rounds {args.rounds}`\n\n"
          f"Machine: {machine()}; model {nbytes / 1e9:.2f} GB bf16; load average {load0:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end\n\n" + "\n".join(lines) + "\n")
    print(md)
    if args.out:
        Path(args.out).write_text(md)


if __name__ == "__main__":
    main()
