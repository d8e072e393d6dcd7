"""A plain plane stream's decode (every base tensor object: a fine-tune's add decodes each changed
tensor's base, a checkout every one) with the kernels loaded: each chunk in one compiled call
(``planes._fill_join``: libzstd by address, then the join) against the path before it (each plane
by python-zstandard into a new ``bytes``, then the join: three GIL hand-offs a chunk).

    python benchmarks/probe_plain_decode.py [--mib 256] [--rounds 5] [--threads 1,2]

Prints per round and install-free (same process, the two paths alternating) the thread CPU-s/GB
(``time.thread_time`` for one thread; process CPU for more) and wall GB/s."""

from __future__ import annotations

import argparse
import time

import numpy as np

from deltastore.codec import planes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    fx = planes.fast()
    if fx is None:
        raise SystemExit("numba does not import here: nothing to compare")
    rng = np.random.default_rng(0)
    f32 = (0.02 * rng.standard_normal((args.mib << 20) // 2)).astype(np.float32)
    data = (f32.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)  # bf16 weights
    stream = planes.compress(data, 2, rotate=True, level=3)
    out = np.empty(data.size, dtype=np.uint8)
    fused = planes._fill_join
    paths = {"one call a chunk": fused, "before (zstd a plane, then join)": lambda *a: False}
    gb = data.size / 1e9
    print(f"bf16 {args.mib} MiB, stream {len(stream) / data.size:.3f} of it; {args.rounds} rounds, the paths alternating")
    print("| threads | path | round | CPU-s/GB | wall GB/s |\n|---|---|---|---|---|")
    rows: dict = {}
    for threads in (int(t) for t in args.threads.split(",")):
        for r in range(args.rounds):
            for label, fn in (paths.items() if r % 2 == 0 else reversed(paths.items())):
                planes._fill_join = fn
                planes.decompress(stream, out=out, threads=threads)  # warm (scratch, dctx)
                c0, t0 = time.process_time(), time.perf_counter()
                planes.decompress(stream, out=out, threads=threads)
                c, t = time.process_time() - c0, time.perf_counter() - t0
                assert np.array_equal(out, data)
                rows.setdefault((threads, label), []).append((c / gb, gb / t))
                print(f"| {threads} | {label} | {r + 1} | {c / gb:.3f} | {gb / t:.2f} |", flush=True)
    planes._fill_join = fused
    print("\n| threads | path | median CPU-s/GB | median wall GB/s |\n|---|---|---|---|")
    for (threads, label), v in rows.items():
        print(f"| {threads} | {label} | {np.median([a for a, _ in v]):.3f} | {np.median([b for _, b in v]):.2f} |")


if __name__ == "__main__":
    main()
