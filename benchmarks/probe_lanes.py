"""Issue 12: does the v3 ungroup get faster when a chunk is grouped in independent lanes?

The v3 decode's gather, ``out[i] = words[pos[ctx(base[i])]++]``, runs at ~1.1-1.3 ns an element on
the dev VM however it is unrolled (merge_simd_devvm.md: "codec _gather2"): consecutive elements of
the same context form a chain through ``pos[c]`` in memory (a load, an add, a store, the next load
waiting on it). A layout that groups each of L contiguous parts of a chunk ("lanes") by itself, and
stores group c as lane 0's c-elements, then lane 1's, ... (the same contexts, so about the same
bytes: only the order inside a group changes; L x 256 counts a chunk instead of 256), lets the
decoder keep L position tables and advance L independent chains per step, as histogram code keeps
several count tables. This times that gather alone, for L = 1, 2, 4, on the real SmolLM2 base's
bf16 exponents (1 MiB chunks: the codec's GROUPED_CHUNK_BYTES), and checks every lane layout
against a reference gather (bit for bit). Bytes are not measured here (no format is built).

    python benchmarks/probe_lanes.py [--repeat 30] [--chunks 8]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def gather1(words, base, p0, out):  # noqa: ANN001, ANN201
    """The codec's gather in its plain form: one position table."""
    for i in range(base.size):
        c = (base[i] >> np.uint16(7)) & np.uint16(0xFF)
        q = p0[c]
        out[i] = words[q]
        p0[c] = q + np.uint32(1)


@njit(cache=True, nogil=True)
def gather2(words, base, p0, p1, out):  # noqa: ANN001, ANN201
    n = base.size
    seg = n // 2
    for i in range(seg):
        j = seg + i
        c0 = (base[i] >> np.uint16(7)) & np.uint16(0xFF)
        c1 = (base[j] >> np.uint16(7)) & np.uint16(0xFF)
        q0 = p0[c0]
        q1 = p1[c1]
        out[i] = words[q0]
        out[j] = words[q1]
        p0[c0] = q0 + np.uint32(1)
        p1[c1] = q1 + np.uint32(1)
    gather1(words, base[2 * seg :], p1, out[2 * seg :])  # the rest, lane 1's


@njit(cache=True, nogil=True)
def gather4(words, base, p0, p1, p2, p3, out):  # noqa: ANN001, ANN201
    n = base.size
    seg = n // 4
    for i in range(seg):
        j1, j2, j3 = seg + i, 2 * seg + i, 3 * seg + i
        c0 = (base[i] >> np.uint16(7)) & np.uint16(0xFF)
        c1 = (base[j1] >> np.uint16(7)) & np.uint16(0xFF)
        c2 = (base[j2] >> np.uint16(7)) & np.uint16(0xFF)
        c3 = (base[j3] >> np.uint16(7)) & np.uint16(0xFF)
        q0 = p0[c0]
        q1 = p1[c1]
        q2 = p2[c2]
        q3 = p3[c3]
        out[i] = words[q0]
        out[j1] = words[q1]
        out[j2] = words[q2]
        out[j3] = words[q3]
        p0[c0] = q0 + np.uint32(1)
        p1[c1] = q1 + np.uint32(1)
        p2[c2] = q2 + np.uint32(1)
        p3[c3] = q3 + np.uint32(1)
    gather1(words, base[4 * seg :], p3, out[4 * seg :])  # the rest, lane 3's


def gather_lanes(words: np.ndarray, base: np.ndarray, pos: np.ndarray, lanes: int, out: np.ndarray) -> np.ndarray:
    tables = [np.ascontiguousarray(pos[ln]).astype(np.uint32) for ln in range(lanes)]
    t = time.thread_time()
    if lanes == 1:
        gather1(words, base, *tables, out)
    elif lanes == 2:
        gather2(words, base, *tables, out)
    else:
        gather4(words, base, *tables, out)
    return time.thread_time() - t


def layout(values: np.ndarray, ctx: np.ndarray, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """(words grouped as the lane layout stores them, each lane's first position per context)."""
    n = ctx.size
    seg = n // lanes
    lane = np.minimum(np.arange(n) // seg, lanes - 1)
    order = np.lexsort((np.arange(n), lane, ctx))  # by context, then lane, then index
    words = values[order]
    counts = np.zeros((lanes, 256), dtype=np.int64)
    np.add.at(counts, (lane, ctx), 1)
    starts = np.zeros((lanes, 256), dtype=np.int64)
    run = 0
    for c in range(256):
        for ln in range(lanes):
            starts[ln, c] = run
            run += counts[ln, c]
    return words, starts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--chunks", type=int, default=8, help="1 MiB chunks of the base taken (spread over the file)")
    args = ap.parse_args()
    import torch
    from safetensors.torch import load_file

    from deltastore.zoo.smollm2 import smollm2_dir

    base = load_file(str(smollm2_dir() / "model.safetensors"))
    flat = np.concatenate([t.reshape(-1).view(torch.int16).numpy().view(np.uint16) for t in base.values()
                           if t.dtype == torch.bfloat16])
    n = 1 << 19  # elements in a 1 MiB chunk of bf16
    starts = np.linspace(0, flat.size - n, args.chunks).astype(np.int64)
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.chunks} chunks of {n} bf16 elements of the SmolLM2 base; best of {args.repeat}")
    print("\n| lanes | gather ns/element (median over chunks of the best of repeats) | x 1 lane |\n|---:|---:|---:|")
    one = None
    for lanes in (1, 2, 4):
        per = []
        for s in starts:
            b = flat[s : s + n]
            ctx = ((b >> 7) & 0xFF).astype(np.uint8)  # the bf16 exponent: the codec's context
            values = rng.integers(0, 1 << 16, n, dtype=np.uint16)
            words, st = layout(values, ctx, lanes)
            out = np.empty(n, dtype=np.uint16)
            gather_lanes(words, b, st, lanes, out)
            assert np.array_equal(out, values), "lane layout round trip"
            best = min(gather_lanes(words, b, st, lanes, out) for _ in range(args.repeat))
            per.append(best / n * 1e9)
        med = float(np.median(per))
        one = one or med
        print(f"| {lanes} | {med:.3f} | {one / med:.2f}x |")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
