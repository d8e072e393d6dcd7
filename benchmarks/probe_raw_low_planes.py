"""Probe (issue 12, decode speed): how much of a fine-tune's difference would a "store the low plane raw
where zstd gains less than 1 - T" rule take out of the Huffman decode, and at what bytes.

The low byte of the grouped difference is v4's largest decode stage (its zstd frames ~0.45 ns an element on
the dev VM, run 60: Huffman literals); a stored plane decodes as a copy. zstd already stores a 128 KiB
block's literals raw where Huffman gains under ~1.6%, and the codec a group's plane where the frame is no
smaller. This counts, from the stream the default codec writes, the elements whose group's low-plane frame
is over T of the plane's bytes (those a threshold T would store raw) and the bytes that would add. Sizes
only: where those elements are few, no decode time is to be had.

    python benchmarks/probe_raw_low_planes.py [--finetune FILE]
"""
from __future__ import annotations

import os
import platform
import sys

os.environ.setdefault("DELTASTORE_THREADS", "1")
sys.path.append(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from deltastore.codec import planes  # noqa: E402
from deltastore.codec.lossless import Lossless  # noqa: E402
from probe_decode_user_sys import changed_bf16, probe_args  # noqa: E402


def main() -> None:
    args = probe_args(__doc__)
    rows = []  # per group: elements, high plane's payload bytes, low plane's payload bytes, low plane's mode
    for t, b in changed_bf16(args.finetune):
        info = planes.read_info(memoryview(Lossless().encode(t, b).arrays["stream"].numpy()))
        rows += [(g.n, g.payloads[0], g.payloads[1], g.modes[1]) for chunk in info.groups for g in chunk]
    r = np.array(rows, dtype=np.int64)
    n, stream = int(r[:, 0].sum()), int(r[:, 1].sum() + r[:, 2].sum())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; fine-tune {args.finetune}")
    print(f"changed bf16 elements {n:,} in {len(r)} groups; plane payloads {stream:,} bytes "
          f"(low {int(r[:, 2].sum()):,}, high {int(r[:, 1].sum()):,})")
    print(f"low planes stored raw already: {int((r[:, 3] == 0).sum())} groups, {int(r[r[:, 3] == 0, 0].sum()) / n:.3f} of the elements")
    z = r[r[:, 3] == 1]
    ratio = z[:, 2] / z[:, 0]
    print("\n| T | elements whose low plane would be stored raw | bytes added | of the stream |\n|---|---|---|---|")
    for T in (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5):
        sel = ratio > T
        extra = int((z[sel, 0] - z[sel, 2]).sum())
        print(f"| {T} | {z[sel, 0].sum() / n:.3f} | {extra / 1e6:.2f} MB | {100 * extra / stream:.2f}% |")
    edges = [0, .1, .2, .3, .4, .5, .6, .7, .8, .9, .95, 1.01]
    h = np.histogram(ratio, bins=edges, weights=z[:, 0])[0] / n
    print("\nelements by their group's low-plane frame / plane bytes:")
    print("  " + ", ".join(f"{a:.2f}-{min(b, 1):.2f}: {v:.3f}" for a, b, v in zip(edges, edges[1:], h)))


if __name__ == "__main__":
    main()
