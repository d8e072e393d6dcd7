"""Device memory of a Llama-2-7B layer's 1/16 delta-come deltas in a DeltaSet, with and without the
2-bit planes of the 3- and 8-bit tiers that the tensor-core kernels read (kernels/deltaset.planes_of).
Built on the CPU (the bytes are the same on a GPU): words, scales, zero points and singular values.

    python benchmarks/probe_plane_memory.py
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_kernels import GROUPS, random_packed  # noqa: E402

from deltastore.kernels import DeltaSet  # noqa: E402


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    tot = {True: 0, False: 0}
    print("| group | without planes (MB) | with planes (MB) |")
    print("|---|---:|---:|")
    for name, ms, K in GROUPS:
        deltas = [random_packed(m, K, gen, torch.device("cpu")) for m in ms]
        got = {}
        for planes in (False, True):
            ds = DeltaSet(K, ms)
            ds.planes = planes
            ds.add(deltas)
            ds.build()
            got[planes] = ds.words.numel() * 4 + ds.scales.numel() * 2 + ds.zeros.numel() * 2 + ds.svals.numel() * 4
            tot[planes] += got[planes]
        print(f"| {name} | {got[False] / 1e6:.2f} | {got[True] / 1e6:.2f} |")
    print(f"| layer | {tot[False] / 1e6:.2f} | {tot[True] / 1e6:.2f} (x{tot[True] / tot[False]:.3f}) |")


if __name__ == "__main__":
    main()
