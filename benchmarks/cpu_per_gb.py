"""CPU seconds per GB of each step an add or checkout does to a bf16 tensor, on one thread.

Thread CPU time (``time.thread_time``: user + system of the calling thread, page faults included)
of 256 MiB of Gaussian bf16 weights through each step, best of 3, so that the figures stand on a
machine shared with other work (wall time would not). Every plane step runs inline (threads=1).

    python benchmarks/cpu_per_gb.py > benchmarks/results/cpu_per_gb_devvm.txt
"""

from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
import time

import numpy as np

from deltastore.codec import planes

N = 256 << 20


def best(fn, reps: int = 3) -> float:  # noqa: ANN001
    """The fewest thread CPU seconds per GB over ``reps`` calls of ``fn``."""
    out = float("inf")
    for _ in range(reps):
        c = time.thread_time()
        fn()
        out = min(out, time.thread_time() - c)
    return out / (N / 1e9)


def main() -> None:
    rng = np.random.default_rng(0)
    raw = ((0.02 * rng.standard_normal(N // 2)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    reused = np.empty(N, np.uint8)
    reused[:] = 0
    stream = planes.compress(raw, 2, rotate=True, threads=1)
    chunk = planes.CHUNK_BYTES
    rows = [("sha256 (hashlib)", lambda: hashlib.sha256(raw).digest()),
            ("copy into a fresh np.empty (page faults)", lambda: np.copyto(np.empty(N, np.uint8), raw)),
            ("copy into a reused buffer", lambda: np.copyto(reused, raw)),
            ("plane split, numpy path", lambda: [planes.split_planes(raw[i:i + chunk], 2, True, compiled=False) for i in range(0, N, chunk)]),
            ("compress_framed (split + zstd + join), 1 thread", lambda: planes.compress_framed(raw, 2, b"F" * 8, rotate=True, threads=1)),
            ("decompress into a reused buffer, 1 thread", lambda: planes.decompress(stream, out=reused, threads=1)),
            ("decompress into a new array, 1 thread", lambda: planes.decompress(stream, threads=1))]
    fx = planes.fast()
    if fx is not None:
        out = np.empty((2, chunk // 2), np.uint8)
        rows.insert(4, ("plane split, numba kernel", lambda: [fx.split_planes(raw[i:i + chunk], 2, True, out) for i in range(0, N, chunk)]))
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "src.bin"), os.path.join(d, "dst.bin")
        with open(src, "wb") as f:
            f.write(raw.tobytes())
        fd = os.open(src, os.O_RDONLY)

        def into_mapping() -> None:
            out_fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
            os.posix_fallocate(out_fd, 0, N)
            m = mmap.mmap(out_fd, N)
            a = np.frombuffer(m, np.uint8)
            planes.decompress(stream, out=a, threads=1)
            del a
            m.close()
            os.close(out_fd)

        rows += [("decompress into a fresh mapping of the output file", into_mapping),
                 ("preadv into a fresh np.empty", lambda: os.preadv(fd, [memoryview(np.empty(N, np.uint8))], 0)),
                 ("preadv into a reused buffer", lambda: os.preadv(fd, [memoryview(reused)], 0))]
        print(f"# thread CPU s per GB (256 MiB bf16, best of 3); load average {os.getloadavg()[0]:.1f}; "
              f"compressed ratio {N / len(stream):.3f}")
        for name, fn in rows:
            print(f"{name}: {best(fn):.3f}", flush=True)
        os.close(fd)


if __name__ == "__main__":
    main()
