"""What a new page costs on this machine: pwrite of 1 GiB to a new file from a reused 4 MiB buffer,
then the same file rewritten (truncated first), three rounds, thread CPU and wall each.

Why: on a virtual machine whose memory the host backs lazily, the first touch of a guest page
that the host does not hold costs far more than a copy, so any op that writes new page cache (a
checkout writes the whole model) is charged by the machine's state, not only by its code. The
figures here say how much; ``bench_scaling.py --prime-pages`` takes that cost out of a comparison.

    python benchmarks/probe_new_pages.py [--dir /tmp] [--gib 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def write(path: Path, nbytes: int, buf: bytes) -> tuple[float, float]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    t, w = time.thread_time(), time.perf_counter()
    try:
        for off in range(0, nbytes, len(buf)):
            os.pwrite(fd, buf, off)
    finally:
        os.close(fd)
    return time.thread_time() - t, time.perf_counter() - w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    buf = os.urandom(4 << 20)
    nbytes = int(args.gib * (1 << 30))
    path = Path(args.dir) / "probe-new-pages.bin"
    print(f"load average {os.getloadavg()[0]:.1f}\n\n| round | new file: thread CPU s | wall s | rewrite: thread CPU s | wall s |\n|---|---:|---:|---:|---:|")
    for r in range(args.rounds):
        c1, w1 = write(path, nbytes, buf)
        c2, w2 = write(path, nbytes, buf)
        path.unlink()
        print(f"| {r + 1} | {c1:.2f} | {w1:.2f} | {c2:.2f} | {w2:.2f} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
