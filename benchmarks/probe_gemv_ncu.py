"""Nsight Compute's view of the one-row GEMV delta kernels (shrink, expand) on one Llama-2-7B layer.

    ncu --kernel-name regex:'gemv_(shrink|expand)' --launch-skip 16 --launch-count 8 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        python3 benchmarks/probe_gemv_ncu.py [--rows 1] [--rounds 4]

Runs each group's shrink + expand (``linear.apply_deltas``, the path DeltaLinear takes at one row
a fine-tune, one stream) ``rounds`` times, eagerly: the first rounds compile and warm up, so
skip 2 rounds x 8 launches and profile the third (4 groups x 2 kernels). Prints each group's
kernel time from CUDA events too, for reading beside ncu's durations.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_kernels import GROUPS, Bench  # noqa: E402

from deltastore.kernels import plan_rows  # noqa: E402
from deltastore.kernels.linear import apply_deltas  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    dev = torch.device("cuda")
    bench = Bench(GROUPS, 1, 1, [1], dev)
    M = args.rows
    x, h, _ = bench.inputs(M, torch.Generator().manual_seed(M))
    plan = plan_rows(torch.zeros(M, dtype=torch.int64, device=dev), 1)
    outs = [torch.zeros(M, sum(ms), dtype=torch.float32, device=dev) for _, ms, _ in GROUPS]
    for r in range(args.rounds):
        times = []
        for gi, (name, ms, K) in enumerate(GROUPS):
            ds = bench.copies[0].sets[1][gi]
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            apply_deltas(h if gi == 3 else x, outs[gi], ds, plan)
            b.record()
            torch.cuda.synchronize()
            times.append(f"{name} {a.elapsed_time(b) * 1e3:.1f} us")
        print(f"round {r}: " + ", ".join(times), flush=True)


if __name__ == "__main__":
    main()
