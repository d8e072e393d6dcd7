"""A lazy model on the CPU: tokens per second against the same version materialized.

    python benchmarks/bench_lazy_cpu.py --home DIR --ref NAME@vN [--rounds 3] [--new 16] [--out FILE]

What a user without a GPU gets from ``deltastore.lazy.load(store, REF, device="cpu")`` (the
shared base plus the packed delta, applied by the torch reference ops) beside
``lazy=False`` (the fine-tune's weights materialized), for one prompt, greedy: the time of one
forward of a single token after the prompt (median of 5) and of ``generate`` of ``--new`` tokens.
Variants, each in its own process, rounds alternating: ``materialized``; ``lazy`` with the CPU
factor cache (kernels/factor_cache.py, the default); ``lazy, no factor cache``
(``DELTASTORE_CPU_FACTOR_MB=0``: every call unpacks the factors, as before the cache). Each
variant's greedy tokens are printed; the lazy ones should equal each other (the cache keeps the
reference's numbers bit for bit). A store with a delta-come fine-tune: ``deltastore demo`` leaves
one in ``.deltastore-demo/home`` (``smollm2-math@v1``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = [1, 504, 3094, 28, 2025, 17, 359, 253, 1524, 30]
VARIANTS = {"materialized": ("0", {}), "lazy": ("1", {}), "lazy, no factor cache": ("1", {"DELTASTORE_CPU_FACTOR_MB": "0"})}


def child(home: str, ref: str, lazy_flag: str, new: int) -> None:
    import torch

    import deltastore
    from deltastore import lazy
    from deltastore.kernels import factor_cache

    store = deltastore.open(home)
    ids = torch.tensor([PROMPT])
    t = time.perf_counter()
    model = lazy.load(store, ref, device="cpu", lazy=lazy_flag == "1").eval()
    load_s = time.perf_counter() - t
    with torch.no_grad():
        model(ids)  # the first call (the cache fills here)
        steps = []
        for _ in range(5):
            t = time.perf_counter()
            model(ids[:, :1])
            steps.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, do_sample=False)
        gen_s = time.perf_counter() - t
    print(json.dumps({"load_s": load_s, "step_s": statistics.median(steps), "gen_s": gen_s,
                      "tokens": out[0, len(PROMPT):].tolist(), "factor_mb": factor_cache.held_bytes() / 2**20,
                      "threads": torch.get_num_threads()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.home, a.ref, a.child[0], a.new)
        return
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    load0 = os.getloadavg()[0]
    for r in range(a.rounds):
        for name, (flag, env) in VARIANTS.items():
            p = subprocess.run([sys.executable, __file__, "--home", a.home, "--ref", a.ref, "--new", str(a.new), "--child", flag, name],
                               env={**os.environ, **env}, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {name}: {runs[name][-1]['step_s'] * 1e3:.0f} ms a token, generate {runs[name][-1]['gen_s']:.2f} s", file=sys.stderr)
    lines = [f"Command: `python benchmarks/bench_lazy_cpu.py --home HOME --ref {a.ref} --rounds {a.rounds} --new {a.new}`  ",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
             f"{runs['lazy'][0]['threads']}; load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after  ", "",
             "| variant | one token's forward, ms (median of rounds) | x materialized | generate tokens/s (median) | x materialized | "
             "factors kept, MB | load s | greedy tokens |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    mat_step = statistics.median(r["step_s"] for r in runs["materialized"])
    mat_tps = a.new / statistics.median(r["gen_s"] for r in runs["materialized"])
    for name, rs in runs.items():
        step = statistics.median(r["step_s"] for r in rs)
        tps = a.new / statistics.median(r["gen_s"] for r in rs)
        toks = rs[0]["tokens"]
        same = all(r["tokens"] == toks for r in rs)
        lines.append(f"| {name} | {step * 1e3:.1f} | {step / mat_step:.2f} | {tps:.2f} | {tps / mat_tps:.2f} | "
                     f"{rs[0]['factor_mb']:.0f} | {statistics.median(r['load_s'] for r in rs):.1f} | "
                     f"{toks}{'' if same else ' (rounds differ)'} |")
    lines += ["", "Every round, one token's forward in ms: " + "; ".join(
        f"{n}: " + ", ".join(f"{r['step_s'] * 1e3:.0f}" for r in rs) for n, rs in runs.items())]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
