"""Issue 12: how many exponent classes does a grouped layout need to keep format v3's bytes?

    python benchmarks/probe_class_partition.py BASE.safetensors FT.safetensors [--ks 2,3,4,6,8] [--out FILE]

Format v3 groups each 1 MiB chunk of a fine-tune's difference by the base weight's exponent (every
exponent its own group) and decodes at about half zipnn's speed per core: the ungroup is a gather
through one position counter per exponent (~1 ns an element on the dev VM). A layout with K classes
(K - 1 thresholds on the exponent, chosen per chunk) is merged by SIMD shuffles at 0.2 ns an element
for K = 2 and 0.5 for K = 4 (merge_simd_devvm.md), but with quantile thresholds it lost 3.5-9% of
v3's bytes (run 41). This probe asks what the best thresholds could do: per chunk, the partition of
the chunk's exponents into at most K contiguous ranges that minimises the order-0 entropy of the two
byte planes of the zigzagged difference (dynamic programming over the exponents present), summed
over the chunks of every changed bf16 tensor. Also: the low plane coded apart where the high plane
is zero (a context the decoder has for free). Entropies, not coded bytes: a coder adds its framing
(v3's real bytes were 2.7% over its entropy here, the 4-quantile layout's 1.5%).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from deltastore.codec import lossless

CHUNK = 1 << 19  # elements a chunk: the codec's 1 MiB of bf16


def ordered(u: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) as int32 in the order of their values: the codec's own map."""
    return lossless.ordered(u.view(np.int16)).astype(np.int32)


def changed_bf16(base: dict, ft: dict):  # noqa: ANN201
    """(name, base bits, fine-tune bits) as flat uint16 arrays, for every bf16 tensor the fine-tune changed."""
    for name, b in base.items():
        f = ft.get(name)
        if f is None or b.dtype != torch.bfloat16 or torch.equal(b, f):
            continue
        yield name, b.view(torch.int16).numpy().view(np.uint16).ravel(), f.view(torch.int16).numpy().view(np.uint16).ravel()


def entropy_bits(counts: np.ndarray) -> float:
    c = counts[counts > 0]
    s = c.sum()
    return float(-(c * np.log2(c / s)).sum()) if s else 0.0


def best_partition(cost: np.ndarray, k: int) -> float:
    """Least total cost of splitting 0..m into at most k contiguous ranges (cost[i, j]: range i..j)."""
    m = cost.shape[0] - 1
    dp = np.full((k + 1, m + 1), np.inf)
    dp[0, 0] = 0.0
    for kk in range(1, k + 1):
        for j in range(1, m + 1):
            dp[kk, j] = min(dp[kk - 1, i] + cost[i, j] for i in range(j))
    return float(dp[:, m].min())


def chunk_costs(b: np.ndarray, f: np.ndarray, ks: list[int]) -> dict[str, float]:
    k = ordered(f) - ordered(b)
    zz = np.where(k >= 0, 2 * k, -2 * k - 1)
    hi, lo = (zz >> 8).astype(np.int64), (zz & 255).astype(np.int64)
    e = ((b >> 7) & 0xFF).astype(np.int64)
    ex = np.unique(e)
    idx = np.searchsorted(ex, e)
    m = ex.size
    hist = {}
    for name, plane, sel in (("hi", hi, None), ("lo", lo, None), ("lo0", lo, hi == 0), ("lo1", lo, hi != 0)):
        h = np.zeros((m, 256))
        if sel is None:
            np.add.at(h, (idx, plane), 1)
        else:
            np.add.at(h, (idx[sel], plane[sel]), 1)
        hist[name] = np.vstack([np.zeros(256), np.cumsum(h, 0)])
    cost = np.zeros((m + 1, m + 1))
    cost_split = np.zeros((m + 1, m + 1))
    for i in range(m):
        for j in range(i + 1, m + 1):
            d = {n: c[j] - c[i] for n, c in hist.items()}
            cost[i, j] = entropy_bits(d["hi"]) + entropy_bits(d["lo"])
            cost_split[i, j] = entropy_bits(d["hi"]) + entropy_bits(d["lo0"]) + entropy_bits(d["lo1"])
    out = {"every exponent its own group (v3)": sum(cost[i, i + 1] for i in range(m)),
           "no grouping (v1's planes)": cost[0, m]}
    qs = np.quantile(e, [0.25, 0.5, 0.75])
    cls = np.searchsorted(qs, e, side="right")
    out["4 classes, quantile thresholds (run 41's layout)"] = sum(
        entropy_bits(np.bincount(hi[cls == c], minlength=256)) + entropy_bits(np.bincount(lo[cls == c], minlength=256))
        for c in range(4))
    for kk in ks:
        out[f"{kk} classes, best thresholds"] = best_partition(cost, kk)
    out["every exponent, low plane apart where the high plane is 0"] = sum(cost_split[i, i + 1] for i in range(m))
    out["4 classes, best thresholds, low plane apart where the high plane is 0"] = best_partition(cost_split, 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("ft", type=Path)
    ap.add_argument("--ks", default="2,3,4,6,8")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    ks = [int(x) for x in a.ks.split(",")]
    t0 = time.time()
    base, ft = load_file(str(a.base)), load_file(str(a.ft))
    tot: dict[str, float] = {}
    n = 0
    for _, bu, fu in changed_bf16(base, ft):
        n += bu.size
        for s in range(0, bu.size, CHUNK):
            for key, v in chunk_costs(bu[s:s + CHUNK], fu[s:s + CHUNK], ks).items():
                tot[key] = tot.get(key, 0.0) + v
    ref = tot["every exponent its own group (v3)"]
    lines = [f"Command: `python benchmarks/probe_class_partition.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {platform.node() or '?'} ({platform.machine()}), {time.time() - t0:.0f} s; {n:,} elements of changed bf16 tensors, "
             f"chunks of {CHUNK:,}", "",
             "| grouping of each chunk | order-0 entropy of the two planes, MB | x v3's |", "|---|---:|---:|"]
    for key, v in tot.items():
        lines.append(f"| {key} | {v / 8e6:.2f} | {v / ref:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
