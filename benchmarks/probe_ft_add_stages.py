"""Where a lossless fine-tune add's (and a base checkout's) CPU time goes, stage by stage.

Each stage's functions are wrapped (monkeypatched in this process only) with a timer of the
calling thread's CPU time (``time.thread_time``: user + system, page faults included), nested:
a stage's figure is its own time, less the stages it calls on the same thread; beside it, the
system part of that time and the minor page faults it took (``getrusage(RUSAGE_THREAD)``). Work a stage
hands to another thread (the plane pool) is counted where it runs. The process's whole CPU time
(``getrusage``) is given beside the sum, so what no stage covers (the GIL's hand-offs, the
pool's futures, the backend's fsync thread, the interpreter) shows as "not in a stage". Beside each
stage's CPU, its own wall time summed over threads: wall - CPU is time a thread spent inside the stage
waiting (for the GIL, a lock, numba's compiler lock, a core), which is how the 16-core fine-tune add's
waits were found (benchmarks/results/scaling_h200.md, tenth session).

Over time, per quarter second: the threads running (sampled in-process every 20 ms: the sampler needs
the GIL, so its bins go empty under contention), the threads inside each stage, and each thread's
state and wchan read from /proc by a watcher process (no GIL of ours needed).

    python benchmarks/probe_ft_add_stages.py --layers 2 --threads 1,2 --work /tmp/h7prof

The model is bench_scaling.py's (``--layers`` Llama-2-7B layers + embeddings, a fine-tune moving
40% of the elements by a few ulps); ``--work`` is reused between runs (the model is made once).
Every op runs in a fresh store (``add base`` first, timed too); ``checkout`` is of the base,
``checkout_ft`` of the fine-tune (list it after ``add_ft``).
``--site DIR``: profile another install (``pip install --target DIR`` of another commit), warmed
first as bench_scaling.py warms one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

WATCH = r"""
import os, sys, time
pid, path = sys.argv[1], sys.argv[2]
with open(path, "w") as f:
    while True:
        t = time.perf_counter()
        parts = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat", "rb") as g:
                    st = g.read().rsplit(b")", 1)[1].split()[0].decode()
                with open(f"/proc/{pid}/task/{tid}/wchan") as g:
                    wc = g.read().strip() or "-"
            except OSError:
                continue
            parts.append(f"{st}:{wc}")
        f.write(f"{t} {' '.join(parts)}\n")
        time.sleep(max(0.0, 0.01 - (time.perf_counter() - t)))
"""

CHILD = r"""
import json, os, resource, sys, threading, time, functools, shutil
from pathlib import Path
import deltastore
from deltastore import ingest, objects, materialize
from deltastore import codec as codecs
from deltastore.codec import planes, lossless, _zstd
from deltastore.codec import _numba as nb

home, base, ft, op, out = sys.argv[1:6]
if os.environ.get("BENCH_SWITCH_INTERVAL"):  # an experiment's knob (the GIL's hand-off interval), not the store's
    sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
SAMPLE_S = float(os.environ.get("PROBE_SAMPLE_S", "0.02"))  # 0: no in-process sampler (it needs the GIL it measures)
stats, lock, local, spans = {}, threading.Lock(), threading.local(), []

def wrap(owner, attr, name):
    fn = getattr(owner, attr)
    @functools.wraps(fn)
    def timed(*a, **k):
        stack = getattr(local, "stack", None)
        if stack is None:
            stack = local.stack = []
        stack.append([0.0, 0.0, 0, 0.0])
        r0 = resource.getrusage(resource.RUSAGE_THREAD)
        t0, w0 = time.thread_time(), time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            w1 = time.perf_counter()
            spans.append((name, w0, w1))
            dt, dw = time.thread_time() - t0, w1 - w0
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            ds, df = r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt
            child = stack.pop()
            if stack:
                stack[-1][0] += dt
                stack[-1][1] += ds
                stack[-1][2] += df
                stack[-1][3] += dw
            with lock:
                s = stats.setdefault(name, [0.0, 0, 0.0, 0, 0.0])
                s[0] += dt - child[0]
                s[1] += 1
                s[2] += ds - child[1]
                s[3] += df - child[2]
                s[4] += dw - child[3]
    setattr(owner, attr, timed)

wrap(ingest, "_encode_tensor", "tensor task: rest (Python)")
wrap(planes._Claims, "finish", "chunk map: caller's rest + wait for its helpers")
wrap(planes._Claims, "help", "chunk map: a pool helper's rest")
from deltastore import pipeline as _pl
wrap(_pl.BufferPool, "take", "buffer pool: take")
wrap(ingest, "_pread", "read (preadv into a pooled buffer)")
wrap(ingest, "sha256_hex", "sha256 of the tensor read")
wrap(ingest, "tensor_bytes", "base tensor: rest of tensor_bytes")
wrap(materialize, "tensor_bytes", "checkout: rest of tensor_bytes")
wrap(objects.ObjectDB, "_frame", "object read (backend.get + frame)")
wrap(objects, "oid_of", "sha256 (object ids, verify)")
wrap(planes, "decompress", "plane decode: rest (Python)")
wrap(planes, "join_planes", "plane decode: join planes")
wrap(lossless.Lossless, "encode", "lossless encode: rest (Python)")
wrap(nb, "diff_group_split", "diff + histogram + group split (numba)")
wrap(planes, "_compress_grouped_planes", "zstd compress of grouped planes")
wrap(planes, "_pack_grouped", "stream join (b''.join)")
wrap(codecs, "to_bytes", "payload serialize (to_bytes)")
wrap(objects.ObjectDB, "put_raw", "object put: rest")
wrap(objects.ObjectDB, "put_tensor", "object put: rest")
wrap(planes, "_compress_chunk", "base: split + zstd compress a chunk")
wrap(materialize._Window, "__init__", "checkout: mmap window (MAP_POPULATE)")
wrap(materialize._Window, "__exit__", "checkout: munmap window")
if hasattr(objects.ObjectDB, "write_tensor"):
    wrap(objects.ObjectDB, "write_tensor", "checkout: write_tensor rest (sha256 of each chunk)")
wrap(os, "pwrite", "checkout: pwrite")
from deltastore import backend as _b
wrap(_b.Backend, "_write_temp", "backend write (temp file)")
wrap(_b.Backend, "get_range", "object read (ranged)")
if hasattr(_b.Backend, "get_into"):
    wrap(_b.Backend, "get_into", "object read (into a pooled buffer)")
wrap(planes, "_decode_planes", "plane decode: zstd frames (python-zstandard)")

running, stop = [], threading.Event()

def sample():
    # threads on a CPU ("R" in /proc/self/task/*/stat) every 20 ms: how many cores the op keeps busy over time
    me = threading.get_native_id()
    while SAMPLE_S and not stop.wait(SAMPLE_S):
        n = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                    n += f.read().rsplit(b")", 1)[1].split()[0] == b"R" and int(tid) != me
            except OSError:
                pass
        running.append((time.perf_counter(), n))

st = deltastore.open(home)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
# the same count from another process, which needs no GIL of ours (the thread above does, so under
# contention its quarter seconds go empty), with each thread's state and where it sleeps (wchan)
import subprocess
states_out = out + ".states"
watcher = subprocess.Popen([sys.executable, "-c", os.environ["PROBE_WATCH"], str(os.getpid()), states_out])
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
if op == "add_base":
    st.add_base("m", base)
elif op == "add_ft":
    st.add_finetune("ft", ft, base="m", codec="lossless")
elif op == "checkout_ft":  # after add_ft
    st.checkout("ft@v1", out)
else:
    st.checkout("m@v1", out)
wall = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
stop.set()
sampler.join()
watcher.terminate()
watcher.wait()
states = {}  # per quarter second: mean threads in each state, and the sleeping threads' commonest wchans
import collections
for line in open(states_out):
    t, _, rest = line.partition(" ")
    t = float(t)
    if not t0 <= t <= t0 + wall:
        continue
    b = states.setdefault(int((t - t0) * 4), [0, collections.Counter(), collections.Counter()])
    b[0] += 1
    for item in rest.split():
        st_, _, wc = item.partition(":")
        b[1][st_] += 1
        if st_ != "R":
            b[2][wc] += 1
os.unlink(states_out)
state_rows = []
for i in range(int(wall * 4) + 1):
    n, c, w = states.get(i, [0, collections.Counter(), collections.Counter()])
    state_rows.append({k: round(v / n, 1) for k, v in c.items()} | {"wchan": {k: round(v / n, 1) for k, v in w.most_common(3)}} if n else None)
tenths = [[] for _ in range(int(wall * 4) + 1)]  # mean running threads a quarter second
for t, n in running:
    if t0 <= t <= t0 + wall:
        tenths[int((t - t0) * 4)].append(n)
# per quarter second: how many threads were inside each stage (inclusive of what it calls), mean
busy = {}
for name, a, b in spans:
    a, b = max(a, t0), min(b, t0 + wall)
    while a < b:
        i = int((a - t0) * 4)
        end = min(b, t0 + (i + 1) / 4)
        row = busy.setdefault(name, [0.0] * len(tenths))
        row[min(i, len(tenths) - 1)] += (end - a) * 4
        a = end
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(json.dumps({"op": op, "wall": wall, "cpu": cpu, "user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
                  "minflt": r1.ru_minflt - r0.ru_minflt,
                  "stages": stats, "busy": busy, "states": state_rows, "running": [round(sum(v) / len(v), 1) if v else None for v in tenths]}))
"""


def run(op: str, home: Path, base: Path, ft: Path, out: Path, threads: int, site: str | None) -> dict:
    env = dict(os.environ, DELTASTORE_THREADS=str(threads), PROBE_WATCH=WATCH)
    if site:
        env["PYTHONPATH"] = site
    p = subprocess.run([sys.executable, "-c", CHILD, str(home), str(base), str(ft), op, str(out)], env=env,
                       capture_output=True, text=True, cwd=str(home.parent))
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--work", default="/tmp/ds-stages")
    ap.add_argument("--site", default=None, help="PYTHONPATH of the deltastore to profile (default: the one importable here)")
    ap.add_argument("--ops", default="add_ft,checkout")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from bench_scaling import make_tiny, reuse_pair, warm_install

    work = Path(args.work)
    nbytes = reuse_pair(work / "model", args.layers)
    warm_install(args.site, work, make_tiny(work))  # numba's cache filled (a fresh install compiles), untimed
    base, ft = work / "model" / "base", work / "model" / "ft"
    for f in (base / "model.safetensors", ft / "model.safetensors"):  # into the page cache
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    ops = args.ops.split(",")
    for threads in [int(x) for x in args.threads.split(",")]:
        home, out = work / f"home-{threads}", work / f"out-{threads}"
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        home.parent.mkdir(parents=True, exist_ok=True)
        res = {"add_base": run("add_base", home, base, ft, out, threads, args.site)}
        for op in ops:
            shutil.rmtree(out, ignore_errors=True)
            res[op] = run(op, home, base, ft, out, threads, args.site)
        for op, r in res.items():
            if op == "add_base" and "add_base" not in ops:
                continue
            gb = nbytes / 1e9
            print(f"\n### {op}, {threads} thread(s): wall {r['wall']:.2f} s ({gb / r['wall']:.3f} GB/s), process CPU "
                  f"{r['cpu']:.2f} s (user {r['user']:.2f}, sys {r['sys']:.2f}) = {r['cpu'] / gb:.2f} CPU-s/GB; "
                  f"{r.get('minflt', 0) / gb / 1e3:.0f}k minor faults/GB; "
                  f"load {os.getloadavg()[0]:.1f}\n")
            print("| stage | CPU s | CPU s/GB | of which system s/GB | minor faults / GB (thousands) | calls | wall s (own, over threads) | wall - CPU s |\n"
                  "|---|---:|---:|---:|---:|---:|---:|---:|")
            total = tsys = 0.0
            for name, (s, n, ss, nf, sw) in sorted(r["stages"].items(), key=lambda kv: -kv[1][0]):
                total += s
                tsys += ss
                print(f"| {name} | {s:.2f} | {s / gb:.2f} | {ss / gb:.2f} | {nf / gb / 1e3:.0f} | {n} | {sw:.2f} | {sw - s:.2f} |")
            print(f"| not in a stage | {r['cpu'] - total:.2f} | {(r['cpu'] - total) / gb:.2f} | {(r['sys'] - tsys) / gb:.2f} | | |")
            if r.get("running"):
                print(f"\nthreads running (mean over each quarter second): {' '.join(str(x) for x in r['running'])}")
            if r.get("states"):  # from a watcher process: no GIL of the op's needed to sample
                print("\nthread states per quarter second (another process reads /proc; R running, S sleeping, D uninterruptible; "
                      "the sleeping threads' commonest wchans):\n")
                for i, row in enumerate(r["states"]):
                    if row:
                        wc = row.pop("wchan", {})
                        print(f"    {i / 4:5.2f} s  " + " ".join(f"{k} {v:4.1f}" for k, v in sorted(row.items()))
                              + "   " + ", ".join(f"{k} {v}" for k, v in wc.items()))
            if r.get("busy"):  # threads inside each stage, including the stages it calls, per quarter second
                print("\nthreads inside each stage (inclusive), mean over each quarter second:\n")
                for name, row in sorted(r["busy"].items(), key=lambda kv: -sum(kv[1])):
                    if sum(row) >= 0.5:
                        print(f"    {' '.join(f'{x:4.1f}' for x in row)}  {name}")
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
