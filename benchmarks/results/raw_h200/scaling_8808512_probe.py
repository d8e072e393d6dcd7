"""Probe: is checkout at 16 workers bound by the page cache of /tmp (ext4) or by the process?
Same op, same store, output on /tmp vs /dev/shm, and in-order writes; meminfo dirty counters."""
import json, os, subprocess, sys, time
from pathlib import Path
R = Path(sys.argv[1])
sys.path.insert(0, str(R / "benchmarks"))
from bench_scaling import make_pair, run_one, sha  # noqa: E402

def mem():
    keys = ("MemTotal", "MemFree", "Dirty", "Writeback", "Cached")
    return {l.split(":")[0]: l.split(":")[1].strip() for l in open("/proc/meminfo") if l.split(":")[0] in keys}

print({k: open(f"/proc/sys/vm/{k}").read().strip() for k in ("dirty_ratio", "dirty_background_ratio", "dirty_bytes", "dirty_background_bytes")}, flush=True)
t = time.perf_counter()
work = Path("/tmp/p"); base, ft = make_pair(work, int(sys.argv[2]))
n = (base / "model.safetensors").stat().st_size
want = sha(base / "model.safetensors")
print(f"model {n/1e9:.2f} GB in {time.perf_counter()-t:.1f} s", mem(), flush=True)
home = work / "home"
r = run_one("add_base", home, str(base), "", 16, None); print("add_base 16:", n / r["s"] / 1e9, mem(), flush=True)
for label, out, env in (("tmp", "/tmp/p/out1", None), ("shm", "/dev/shm/out1", None), ("tmp again", "/tmp/p/out2", None),
                        ("shm in order", "/dev/shm/out2", {"DELTASTORE_MAP_WRITES": "0"}), ("shm 1 worker", "/dev/shm/out3", None)):
    subprocess.run(["sync"]); subprocess.run(["rm", "-rf", "/dev/shm/out1", "/dev/shm/out2"])
    w = 1 if "1 worker" in label else 16
    r = run_one("checkout", home, "m@v1", out, w, None, env)
    ok = sha(Path(out) / "model.safetensors") == want
    print(f"checkout {label} ({w}):", round(n / r["s"] / 1e9, 3), "GB/s, identical", ok, mem(), flush=True)
