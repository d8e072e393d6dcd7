"""How torch's OpenMP waiting policy moves a lossy delta's CPU decode, on an idle and a busy machine.

    python benchmarks/probe_openmp_wait.py [--rounds 3] [--out FILE]

A store in a temp folder holds SmolLM2-135M-Instruct (deltastore.zoo.smollm2) and a real fine-tune
of it (the cached `smollm2-math-series-*` step, else a perturbed copy) added with the default
lossy codec (delta-come). Each measurement is a fresh process that decodes every tensor of the
fine-tune with ``materialize.tensor_bytes`` (what checkout, state_dict and the mount's reads run)
and reports the wall and CPU seconds of that loop, with:

  spin     OMP_WAIT_POLICY unset: libgomp's idle threads spin between parallel regions (default)
  passive  OMP_WAIT_POLICY=PASSIVE: they sleep (what the deltastore command sets for itself)
  1 thread torch.set_num_threads(1)

each on the machine as found and beside one busy-looping process per core but one (a shared
machine, or a loader beside a mount). Variants run in turns within each round.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_store import machine  # noqa: E402

CHILD = r"""
import json, os, resource, sys, time
import torch
if sys.argv[2] == "1":
    torch.set_num_threads(1)
import deltastore
from deltastore.materialize import tensor_bytes
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
with deltastore.open(sys.argv[1]) as st:
    v = st.resolve("ft")
    ents = [e for f in st.manifest("ft").files for e in (f.tensors or [])]
    for e in ents[:8]:
        tensor_bytes(st, v.manifest, e)  # first calls: lazy imports, numba's cache
    c0, t0 = cpu(), time.perf_counter()
    for e in ents:
        tensor_bytes(st, v.manifest, e)
    print(json.dumps({"wall": time.perf_counter() - t0, "cpu": cpu() - c0, "threads": torch.get_num_threads()}))
"""

VARIANTS = {"spin": ({}, "0"), "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, "0"), "1 thread": ({}, "1")}


def build(home: Path, work: Path) -> str:
    import deltastore
    from deltastore.zoo.smollm2 import smollm2_dir

    base = smollm2_dir()
    series = sorted((Path.home() / ".cache" / "deltastore" / "bench").glob("smollm2-math-series-*/step0010"))
    if series:
        ft = series[0]
        src = f"{ft.parent.name}/{ft.name}"
    else:
        from deltastore.zoo.tiny import tiny_finetune

        ft = tiny_finetune(base, work / "perturbed", seed=1, scale=5e-3)
        src = "a perturbed copy (zoo.tiny.tiny_finetune, scale 5e-3)"
    with deltastore.open(home) as st:
        st.add_base("base", base)
        st.add_finetune("ft", ft, "base")
    return src


def measure(home: Path, variant: str) -> dict:
    extra, threads = VARIANTS[variant]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(extra)
    r = subprocess.run([sys.executable, "-c", CHILD, str(home), threads], env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    desc, slug = machine()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="probe-omp-"))
    load0 = os.getloadavg()[0]
    try:
        src = build(work / "home", work)
        got: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.rounds):
            for load in ("as found", "busy"):
                burners = []
                if load == "busy":
                    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(cores - 1, 1))]
                try:
                    for variant in VARIANTS:
                        got.setdefault((load, variant), []).append(measure(work / "home", variant))
                finally:
                    for b in burners:
                        b.kill()
                        b.wait()
        load1 = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    lines = [f"# OpenMP waiting policy and a delta-come CPU decode ({dt.date.today().isoformat()})", "",
             f"Command: `python benchmarks/probe_openmp_wait.py --rounds {args.rounds}`  ",
             f"Machine: dev VM: {desc}, shared (load average "
             f"{load0:.1f} at start, {load1:.1f} at end); torch {__import__('torch').__version__}  ",
             f"Fine-tune: SmolLM2-135M-Instruct + {src}, delta-come (default options); every tensor decoded "
             "with `materialize.tensor_bytes` in a fresh process. Median of the rounds (all rounds in brackets).", "",
             "\"As found\": the machine as other work left it (a shared VM: see the load); \"plus\": with busy-loop "
             "processes started beside the decode.", "",
             "| machine | OpenMP | torch threads | wall s | CPU s |", "|---|---|---:|---:|---:|"]
    for (load, variant), rs in got.items():
        lines.append(f"| {'plus ' + str(max(cores - 1, 1)) + ' busy-loop process' + ('es' if cores > 2 else '') if load == 'busy' else 'as found'} "
                     f"| {variant} | {rs[0]['threads']} | {med([r['wall'] for r in rs]):.2f} "
                     f"({', '.join('%.2f' % r['wall'] for r in rs)}) | {med([r['cpu'] for r in rs]):.2f} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"openmp_wait_{slug}.md"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
