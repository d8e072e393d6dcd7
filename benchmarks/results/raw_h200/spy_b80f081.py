"""py-spy over one add base and one checkout at 16 workers (2 layers): where the wall time goes.
Writes, per op: wall seconds, the raw collapsed stacks (all threads, CPU only) and with --gil
(samples of the thread holding the GIL), and a summary of the top frames of each."""
import collections, os, subprocess, sys, time
from pathlib import Path
R, OUT = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(R / "benchmarks"))
from bench_scaling import ONE, make_pair  # noqa: E402
work = Path("/tmp/spy"); subprocess.run(["rm", "-rf", str(work)])
base, ft = make_pair(work, int(sys.argv[3]) if len(sys.argv) > 3 else 2)
n = (base / "model.safetensors").stat().st_size
env = dict(os.environ, DELTASTORE_THREADS="16")

def summary(path, label):
    own, incl, total = collections.Counter(), collections.Counter(), 0
    for line in open(path):
        stack, _, cnt = line.rstrip().rpartition(" ")
        cnt = int(cnt); total += cnt
        frames = stack.split(";")
        own[frames[-1]] += cnt
        for f in set(frames):
            incl[f] += cnt
    print(f"--- {label}: {total} samples; top own frames", flush=True)
    for f, c in own.most_common(25):
        print(f"{100*c/total:6.1f}%  {f[:160]}")
    print(f"--- {label}: top inclusive frames")
    for f, c in incl.most_common(40):
        print(f"{100*c/total:6.1f}%  {f[:160]}")

for op, src, out in (("add_base", str(base), ""), ("checkout", "m@v1", "/tmp/spy/out"), ("checkout", "m@v1", "/tmp/spy/out2")):
    for mode in ("cpu", "gil"):
        if op == "add_base" and mode == "gil":
            home = work / "home_gil"
        else:
            home = work / "home"
        if op == "checkout" and mode == "gil":
            out = out + "g"
        raw = OUT / f"spy_{op}_{mode}_{Path(out).name or 'add'}.txt"
        args = ["py-spy", "record", "--format", "raw", "--rate", "250", "--threads", "-o", str(raw)]
        if mode == "gil":
            args.append("--gil")
        t = time.perf_counter()
        p = subprocess.run(args + ["--", sys.executable, "-c", ONE, op, str(home), src, out], env=env, capture_output=True, text=True, cwd="/tmp")
        dt = time.perf_counter() - t
        print(f"=== {op} {mode} -> {out}: rc {p.returncode}, wall {dt:.2f} s (incl. py-spy), {p.stdout.strip()[-200:]}, {n/1e9:.2f} GB", flush=True)
        if p.returncode:
            print(p.stderr[-2000:]); continue
        summary(raw, f"{op} {mode}")
