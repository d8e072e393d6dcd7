"""What bounds `add base` and `checkout` on many cores: one probe run, no change to the store.

Issue 7 asks for add base >= 1.5 GB/s and checkout >= 2 GB/s on 16 cores; both flatten from 8 to
16 workers. This probe measures, on the same machine and model as ``bench_scaling.py``:

1. the bare file system: filling a fresh file with a model's tensor bytes from N threads, by shared
   mmap windows faulted in page by page (what checkout does), by windows mapped with MAP_POPULATE
   (the kernel pre-faults them inside mmap(), where CPython releases the GIL), and by ``os.pwrite``
   from memory; one thread's sequential ``write`` beside them;
2. the store's own ops in fresh processes (``DELTASTORE_THREADS`` = workers): add base as shipped
   and with the file's serial SHA-256 replaced by a no-op (a ceiling only: that store's manifest
   carries a dummy digest), and checkout as shipped, with MAP_POPULATE windows, and with writes in
   order through one thread (``DELTASTORE_MAP_WRITES=0``).

    python benchmarks/probe_store_ceilings.py --layers 4 --workers 16,8 --work /tmp/ceil --out OUT.md
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scaling import machine, make_pair  # noqa: E402

PATCH_NOHASH = r"""
import deltastore.ingest as _I
class _NoHash:
    def __init__(self, head=b""): pass
    def put(self, index, data): pass
    def wait_through(self, index): pass
    def hexdigest(self, count): return "0" * 64
    def close(self): pass
_I.InOrderHash = _NoHash
"""

PATCH_POPULATE = r"""
import mmap as _mm, numpy as _np
import deltastore.materialize as _M
def _init(self, fd, start, n):
    lo = start - start % _mm.ALLOCATIONGRANULARITY
    self._map = _mm.mmap(fd, start + n - lo, flags=_mm.MAP_SHARED | _mm.MAP_POPULATE, offset=lo)
    self.array = _np.frombuffer(self._map, dtype=_np.uint8, count=n, offset=start - lo)
_M._Window.__init__ = _init
"""

ONE = r"""
import json, sys, time
{patch}
import deltastore
op, home, src, out = sys.argv[1:5]
st = deltastore.open(home)
t = time.perf_counter()
if op == "add_base":
    st.add_base("m", src)
else:
    st.checkout(src, out)
print(json.dumps({{"s": time.perf_counter() - t}}))
"""


def run_op(op: str, home: Path, src: str, out: str, workers: int, patch: str = "", env_extra: dict | None = None) -> float:
    env = dict(os.environ, DELTASTORE_THREADS=str(workers), **(env_extra or {}))
    p = subprocess.run([sys.executable, "-c", ONE.format(patch=patch), op, str(home), src, out], env=env,
                       capture_output=True, text=True, cwd=str(home.parent))
    if p.returncode != 0:
        raise SystemExit(f"{op} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])["s"]


def tensor_spans(path: Path) -> tuple[int, list[tuple[int, int]]]:
    head = path.read_bytes()[:8]
    n = int.from_bytes(head, "little")
    meta = json.loads(path.read_bytes()[8:8 + n])
    spans = sorted(tuple(v["data_offsets"]) for k, v in meta.items() if k != "__metadata__")
    return 8 + n, spans


def fill(path: Path, src: np.ndarray, hlen: int, spans: list, threads: int, how: str) -> float:
    total = hlen + spans[-1][1]
    if path.exists():
        path.unlink()
    t = time.perf_counter()
    with open(path, "w+b") as fh:
        fd = fh.fileno()
        if how == "one thread, write":
            fh.write(memoryview(src))
        else:
            os.posix_fallocate(fd, 0, total)

            def one(span: tuple[int, int]) -> None:
                a, b = hlen + span[0], hlen + span[1]
                if b == a:
                    return
                if how == "pwrite":
                    os.pwrite(fd, memoryview(src[a:b]), a)
                    return
                lo = a - a % mmap.ALLOCATIONGRANULARITY
                flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if how == "mmap + MAP_POPULATE" else 0)
                m = mmap.mmap(fd, b - lo, flags=flags, offset=lo)
                dst = np.frombuffer(m, dtype=np.uint8, count=b - a, offset=a - lo)
                np.copyto(dst, src[a:b])
                del dst
                m.close()

            with ThreadPoolExecutor(threads) as ex:
                list(ex.map(one, spans))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--workers", default="16,8")
    ap.add_argument("--work", default="/tmp/ceil")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base, _ = make_pair(work, args.layers)
    model = base / "model.safetensors"
    nbytes = model.stat().st_size
    lines = [f"Command: `python benchmarks/probe_store_ceilings.py --layers {args.layers} --workers {args.workers}`", "",
             f"Machine: {machine()}; model {nbytes / 1e9:.2f} GB bf16; load average {os.getloadavg()[0]:.1f} at the start", ""]
    src = np.fromfile(model, dtype=np.uint8)
    hlen, spans = tensor_spans(model)
    lines += ["| fill a fresh file with the model's tensor bytes | threads | GB/s |", "|---|---|---|"]
    for how in ("one thread, write", "mmap windows (page faults)", "mmap + MAP_POPULATE", "pwrite"):
        for w in ([1] if how.startswith("one") else workers):
            s = min(fill(work / "fill.bin", src, hlen, spans, w, how) for _ in range(2))
            lines.append(f"| {how} | {w} | {nbytes / s / 1e9:.3f} |")
            print(lines[-1], flush=True)
    (work / "fill.bin").unlink()
    del src
    lines += ["", "| store op (fresh process each) | workers | GB/s |", "|---|---|---|"]
    for w in workers:
        for label, patch in (("add base, as shipped", ""), ("add base, no file SHA-256 (ceiling)", PATCH_NOHASH)):
            home = work / f"home-{w}-{len(patch)}"
            shutil.rmtree(home, ignore_errors=True)
            s = run_op("add_base", home, str(base), "", w, patch)
            lines.append(f"| {label} | {w} | {nbytes / s / 1e9:.3f} |")
            print(lines[-1], flush=True)
        home = work / f"home-{w}-0"
        for label, patch, env in (("checkout, as shipped", "", None), ("checkout, MAP_POPULATE windows", PATCH_POPULATE, None),
                                  ("checkout, one writer (DELTASTORE_MAP_WRITES=0)", "", {"DELTASTORE_MAP_WRITES": "0"})):
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            s = run_op("checkout", home, "m", str(out), w, patch, env)
            lines.append(f"| {label} | {w} | {nbytes / s / 1e9:.3f} |")
            print(lines[-1], flush=True)
    lines.append(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
