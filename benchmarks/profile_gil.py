"""Where an add or a checkout holds the GIL: py-spy samples only the thread holding it, per op.

Threads scale only over the work done with the GIL released (zstd, hashlib, numpy, reads and
writes); whatever holds it runs one thread at a time, so the GIL-held seconds of an op bound its
speed on any number of cores. This runs each op of benchmarks/bench_scaling.py (same synthetic
Llama-shaped model, same one-op subprocess) under ``py-spy record --gil`` and prints the seconds of
GIL-held samples inside the op and the frames that hold it, so a change can be judged on a small
machine that cannot show 16-core scaling itself.

    pip install py-spy
    python benchmarks/profile_gil.py --layers 1 --threads 2 --out benchmarks/results/gil_profile_devvm.md
    python benchmarks/profile_gil.py --site /tmp/site_old --label "before"   # a pip --target install

Wall-clock figures taken on a loaded machine mean little; the GIL-held seconds are CPU work done
under the lock, which load stretches less (but does stretch: compare runs taken together).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_scaling import ONE, make_tiny, reuse_pair, warm_install  # noqa: E402

OPS = {"add_base": ("add_base", "base"), "add_ft": ("add_ft", "ft"), "checkout_base": ("checkout", "m@v1"),
       "checkout_ft": ("checkout", "ft@v1")}
#: frames that mark a sample as the op's own work (its main thread, or a pool worker), not imports
IN_OP = ("Store.add_base", "Store.add_finetune", "Store.checkout", "_worker (")


def aggregate(raw: Path, rate: int, top: int) -> tuple[float, list[tuple[str, float]]]:
    """GIL-held seconds inside the op, and the top (leaf <- caller <- caller) frames by seconds."""
    frames: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or "_find_and_load" in stack or not any(m in stack for m in IN_OP):
            continue
        total += int(n)
        names = [f.split(" (")[0] for f in stack.split(";")]
        frames[" <- ".join(names[-1:-4:-1])] += int(n)
    return total / rate, [(k, v / rate) for k, v in frames.most_common(top)]


def role(stack: str) -> str:
    """Which of an op's threads a sample (a whole stack) came from, by the frames it holds. A
    plane-pool thread runs codec/planes.py's chunk work without the ``_map_chunks`` that hands it
    out (a tensor worker's frame); an idle pool thread (``_worker`` alone) counts as tensor pool."""
    if "InOrderHash._run" in stack:
        return "file hash thread"
    if "_worker (" in stack:
        return "plane pool" if "planes.py" in stack and "_map_chunks" not in stack else "tensor pool"
    if "Store." in stack:
        return "main thread"
    if "_Syncer._run" in stack:
        return "sync thread"
    return "other"


def aggregate_wall(raw: Path, rate: int, top: int) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """Per thread role (main, tensor pool, plane pool, file hash), the seconds sampled (idle
    included, summed over the role's threads) and its top leaf frames by seconds: where each
    thread spends its time, waits included, so a serial stage shows as others' waits."""
    by_role: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or "_find_and_load" in stack:
            continue
        r = role(stack)
        if r == "other":
            continue
        names = [f.split(" (")[0] for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        by_role[r][" <- ".join(names[-1:-3:-1])] += int(n)
    out = []
    for r, c in sorted(by_role.items()):
        out.append((r, sum(c.values()) / rate, [(k, v / rate) for k, v in c.most_common(top)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="DELTASTORE_THREADS for every op")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--site", default=None, help="PYTHONPATH of another deltastore install to profile instead")
    ap.add_argument("--label", default=None)
    ap.add_argument("--rate", type=int, default=50, help="py-spy samples a second")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--work", default=None, help="where the model and the store go (default: a temp folder)")
    ap.add_argument("--out", default=None, help="append the markdown report here")
    ap.add_argument("--wall", action="store_true", help="sample every thread, idle or not (py-spy --idle --nonblocking), "
                    "and report each thread role's time by leaf frame, instead of the GIL holder only")
    ap.add_argument("--nonblocking", action="store_true", help="sample without pausing the process (py-spy --nonblocking): "
                    "a paused sample lands only when a thread leaves the kernel, so a long read or munmap (GIL released "
                    "or not) shows as GIL held on the Python line after it (read_info, np.cumsum)")
    args = ap.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    work = Path(args.work or tempfile.mkdtemp(prefix="ds-gil-"))
    model = work / "model"
    nbytes = reuse_pair(model, args.layers)
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    env = dict(os.environ, DELTASTORE_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    if args.site:
        env["PYTHONPATH"] = args.site
    label = args.label or (f"PYTHONPATH={args.site}" if args.site else "this checkout")
    warm_install(args.site, work, make_tiny(work))  # a fresh install compiles its kernels here, not in the first op
    load = os.getloadavg()[0]
    lines = [f"### {label}: {args.threads} threads, model {nbytes / 1e9:.2f} GB ({args.layers} layers), "
             f"load average {load:.1f} on {os.cpu_count()} cores at start", "",
             ("| op | wall s | thread role: sampled s (idle included) | top leaf frames (leaf <- caller: s) |" if args.wall else
              "| op | wall s | GIL held s (in the op) | GIL held s/GB | top GIL holders (leaf <- caller <- caller: s) |"),
             "|---|---|---|---|" if args.wall else "|---|---|---|---|---|"]
    for name in args.ops.split(","):
        op, src = OPS[name]
        if op != "checkout":
            src = str(model / src)
        raw = work / f"gil-{name}.txt"
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        mode = ["--idle", "--nonblocking", "--threads"] if args.wall else ["--gil", *(["--nonblocking"] if args.nonblocking else [])]
        p = subprocess.run([pyspy, "record", *mode, "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--", sys.executable,
                            "-c", ONE, op, str(home), src, str(out)], env=env, cwd=str(work), capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"{name} failed:\n{p.stderr[-3000:]}")
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1]
        wall = float(json.JSONDecoder().raw_decode(line)[0]["s"])  # py-spy may print after it on the line
        if args.wall:
            for r, secs, top in aggregate_wall(raw, args.rate, args.top):
                cells = "; ".join(f"`{k}`: {v:.2f}" for k, v in top)
                lines.append(f"| {name} | {wall:.2f} | {r}: {secs:.2f} | {cells} |")
            print("\n".join(lines[-3:]), flush=True)
            shutil.rmtree(out, ignore_errors=True)
            continue
        held, top = aggregate(raw, args.rate, args.top)
        cells = "; ".join(f"`{k}`: {v:.2f}" for k, v in top)
        lines.append(f"| {name} | {wall:.2f} | {held:.2f} | {held / (nbytes / 1e9):.2f} | {cells} |")
        print(lines[-1], flush=True)
        shutil.rmtree(out, ignore_errors=True)
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        with open(args.out, "a") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()
