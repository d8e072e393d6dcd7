"""GIL-held seconds of ObjectDB.get_array alone, on one thread: a bf16 tensor object (48 and 64 MiB,
4 MiB chunks) decoded again and again into an mmap window of a file, as a checkout does, under
``py-spy record --gil`` (blocking, as profile_gil.py samples, and ``--nonblocking``), for each
install given. Only the op's own thread runs Python, so nothing waits for the GIL and the samples
say which lines hold it, without the 2-core VM's contention.

    python benchmarks/probe_get_array_gil.py --site /tmp/before --site /tmp/after --out FILE.md
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r'''
import mmap, os, sys, tempfile, threading, time
import numpy as np, torch
from deltastore.backend import Backend
from deltastore.objects import ObjectDB
work = sys.argv[1]
db = ObjectDB(Backend(os.path.join(work, "objs")))
xs = [torch.randn(n, generator=torch.Generator().manual_seed(n)).to(torch.bfloat16).view(torch.uint8).numpy()
      for n in (24 << 20, 32 << 20)]
oids = [db.put_tensor(x.tobytes(), 2, True).oid for x in xs]
fd = os.open(os.path.join(work, "out.bin"), os.O_RDWR | os.O_CREAT | os.O_TRUNC)
os.posix_fallocate(fd, 0, 64 << 20)
done = [0, 0.0]
def loop():
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 10:
        for x, oid in zip(xs, oids):
            m = mmap.mmap(fd, x.size)
            w = np.frombuffer(m, np.uint8)
            db.get_array(oid, nbytes=x.size, out=w)
            done[0] += x.size
            del w
            m.close()
    done[1] = time.perf_counter() - t0
th = threading.Thread(target=loop, name="probe")
th.start(); th.join()
print(f"RESULT {done[0]} {done[1]}")
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", action="append", required=True, help="PYTHONPATH of a deltastore install (repeatable)")
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    lines = [f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; py-spy --gil at {args.rate} Hz", "",
             "| install | sampling | GB decoded | GB/s | GIL held s | GIL held s/GB | top GIL lines below get_array (s) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for site in args.site:
        for mode in ("blocking", "nonblocking"):
            work = tempfile.mkdtemp(prefix="ds-probe-")
            raw = Path(work) / "raw.txt"
            try:
                p = subprocess.run([pyspy, "record", "--gil", *(["--nonblocking"] if mode == "nonblocking" else []),
                                    "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--", sys.executable, "-c", CHILD, work],
                                   env=dict(os.environ, PYTHONPATH=site, DELTASTORE_THREADS="1"), capture_output=True, text=True)
                res = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT")]
                if p.returncode != 0 or not res:
                    raise SystemExit(p.stderr[-3000:])
                nb, secs = int(res[0].split()[1]), float(res[0].split()[2])
                top: collections.Counter[str] = collections.Counter()
                held = 0
                for line in raw.read_text().splitlines():
                    stack, _, n = line.rpartition(" ")
                    if "loop (" not in stack or not n.isdigit():
                        continue
                    held += int(n)
                    frames = [f.split(" (")[0] + ":" + f.rsplit(":", 1)[-1].rstrip(")") for f in stack.split(";")]
                    top[" <- ".join(frames[-1:-3:-1])] += int(n)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            cells = "; ".join(f"`{k}`: {v / args.rate:.3f}" for k, v in top.most_common(5))
            lines.append(f"| {site} | {mode} | {nb / 1e9:.2f} | {nb / 1e9 / secs:.3f} | {held / args.rate:.3f} | "
                         f"{held / args.rate / (nb / 1e9):.3f} | {cells} |")
            print(lines[-1], flush=True)
    md = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "a") as f:
            f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
