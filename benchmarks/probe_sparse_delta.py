"""Probe (issue 12, checkpoint series): where a sparse lossless delta's bytes go, and what other
frame coders would make of the same grouped planes.

    python benchmarks/probe_sparse_delta.py BASE.safetensors TARGET.safetensors [--levels 3,9,19]

A checkpoint of a small-lr run changes ~1% of its elements since the one before; stored against an
older checkpoint (a skip-delta, so a checkout walks few deltas) it changes more. The lossless codec
groups each 1 MiB chunk's difference by the base's exponent and zstd-codes each group's two byte
planes. This takes the same grouped planes (``codec._numba.diff_group_split``) and the same groups
(``planes.merge_groups``) and reports, over all the file's changed bf16 tensors:

- the v3 payloads (``Lossless(zero_planes=False).encode``; the default writes v4 now), and their frames alone;
- the same frames made by zstd at other levels (its own parameters), and their encode time;
- an order-0 bound of a sparse coding per group and plane: whether each element is zero
  (binary entropy of the group's zero fraction) plus the nonzero values' order-0 entropy.

Measured (run 53 of benchmarks/results/lossless_amd-epyc-2c.md): zstd's own level 1 where the
skip-ahead frame is under 1/4 of its plane takes a delta between consecutive saves of a small-lr
series to 0.74x its bytes, but on a dense fine-tune it made the encode 13-17% slower for 0.09% of
bytes (the high planes there are as compressible), so it was not kept; a rule that looks at both
planes of a group is the lead. The table's last rows measure such rules (run 54): a group's frames
coded again where its low plane's frame is under 1/4 of the plane keeps all of a consecutive-save
delta's gain and codes a sixth as much of a dense fine-tune twice as the per-frame rule.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch
import zstandard
from safetensors.torch import load_file

from deltastore.codec import _zstd_encode, planes
from deltastore.codec.lossless import GROUPED_CHUNK_BYTES, Lossless, context_field, tensor_u8
from deltastore.codec.serialize import to_bytes

MB = 1e6


def h0(counts: np.ndarray) -> float:
    """Order-0 entropy in bits of a histogram."""
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum()) if n else 0.0


#: a frame this many times smaller than its plane is a sparse one (a checkpoint series' planes)
SPARSE = 4


class Params:
    """A zstd context with the given parameters, through python-zstandard's cffi backend."""

    def __init__(self, **params: int):
        ffi, lib = _zstd_encode._backend()
        self.ffi, self.lib = ffi, lib
        self.cctx = ffi.gc(lib.ZSTD_createCCtx(), lib.ZSTD_freeCCtx)
        for k, v in params.items():
            r = lib.ZSTD_CCtx_setParameter(self.cctx, getattr(lib, "ZSTD_c_" + k), v)
            assert not lib.ZSTD_isError(r), k

    def compress(self, seg: np.ndarray) -> bytes:
        out = bytearray(seg.size + (seg.size >> 7) + 1024)
        k = self.lib.ZSTD_compress2(self.cctx, self.ffi.from_buffer(out), len(out), self.ffi.from_buffer(seg), seg.size)
        assert not self.lib.ZSTD_isError(k)
        return bytes(out[:k])


def candidates() -> dict[str, Params]:
    lib = _zstd_encode._backend()[1]
    return {
        "zstd level 1": Params(compressionLevel=1),
        "zstd level 3": Params(compressionLevel=3),
        "zstd level 5": Params(compressionLevel=5),
        "fast, hashLog 17, minMatch 5": Params(strategy=lib.ZSTD_fast, windowLog=17, hashLog=17, minMatch=5),
        "dfast, hashLog 17, chainLog 16, minMatch 5": Params(strategy=lib.ZSTD_dfast, windowLog=17, hashLog=17, chainLog=16, minMatch=5),
        "greedy, windowLog 17, minMatch 4": Params(strategy=lib.ZSTD_greedy, windowLog=17, hashLog=17, chainLog=16, searchLog=2, minMatch=4),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("base", help="the delta base's safetensors file")
    ap.add_argument("target", help="the checkpoint's safetensors file")
    ap.add_argument("--levels", default="3,5,7,9,19", help="zstd levels (their own parameters) to code the same frames with")
    args = ap.parse_args(argv)
    fx = planes.fast()
    if fx is None:
        print("needs numba (the compiled grouping)", file=sys.stderr)
        return 2
    levels = [int(v) for v in args.levels.split(",") if v]
    base, cur = load_file(args.base), load_file(args.target)
    v3 = Lossless(zero_planes=False)  # the format this probe's runs measured (the default writes v4 now)
    shift, bits = context_field(torch.bfloat16)
    step = GROUPED_CHUNK_BYTES // 2
    tot = dict(v3=0, stream=0, counts=0, frames=0, elems=0, changed=0, bound=0.0, nz=[0, 0], planes_raw=[0, 0], frames_plane=[0, 0])
    zl = {lv: [0, 0.0] for lv in levels}
    cctx = {lv: zstandard.ZstdCompressor(level=lv) for lv in levels}
    cands = candidates()
    zc = {name: [0, 0.0] for name in cands}
    ship = planes._thread_compressor(3)
    lv1 = cands["zstd level 1"]
    # rules for the second frame at level 1, by what they look at: each frame alone (run 53's), a group's
    # two frames together, or its low plane (row 1: dense in a dense fine-tune, sparse in a series)
    rules = {"each frame": [0, 0.0, 0], "both frames of the group": [0, 0.0, 0], "the group's low plane": [0, 0.0, 0],
             "the group's low plane (1/16)": [0, 0.0, 0], "the group's low plane (1/64)": [0, 0.0, 0]}
    for name, t in cur.items():
        b = base.get(name)
        if b is None or t.dtype != torch.bfloat16 or b.shape != t.shape or torch.equal(b, t):
            continue
        enc = v3.encode(t, b)
        tot["v3"] += len(to_bytes(enc))
        tot["stream"] += enc.arrays["stream"].numel()
        tot["counts"] += enc.arrays["counts"].numel() * enc.arrays["counts"].element_size()
        raw, braw = tensor_u8(t), tensor_u8(b)
        tot["elems"] += t.numel()
        tot["changed"] += int((t.view(torch.int16) != b.view(torch.int16)).sum())
        for lo in range(0, raw.size, 2 * step):
            hi = min(raw.size, lo + 2 * step)
            grouped, counts = fx.diff_group_split(raw[lo:hi], braw[lo:hi], 2, shift, bits)
            pos = 0
            for _c, k in planes.merge_groups(counts, planes.MIN_GROUP):
                segs = [np.ascontiguousarray(grouped[row, pos:pos + k]) for row in range(2)]
                shipped = [ship.compress(sg) for sg in segs]
                fs = [min(len(f), k) for f in shipped]
                sparse = [f * SPARSE < k for f in fs]
                for rule, redo in (("each frame", sparse), ("both frames of the group", [all(sparse)] * 2),
                                   ("the group's low plane", [sparse[1]] * 2),
                                   ("the group's low plane (1/16)", [fs[1] * 16 < k] * 2),
                                   ("the group's low plane (1/64)", [fs[1] * 64 < k] * 2)):
                    for row in range(2):
                        got = fs[row]
                        if redo[row]:
                            t0 = time.perf_counter()
                            got = min(got, len(lv1.compress(segs[row])))
                            rules[rule][1] += time.perf_counter() - t0
                            rules[rule][2] += k
                        rules[rule][0] += got
                for row in range(2):
                    seg, f = segs[row], shipped[row]
                    tot["frames"] += min(len(f), k)
                    tot["frames_plane"][row] += min(len(f), k)
                    tot["planes_raw"][row] += k
                    for lv in levels:
                        t0 = time.perf_counter()
                        f2 = cctx[lv].compress(seg)
                        zl[lv][1] += time.perf_counter() - t0
                        zl[lv][0] += min(len(f2), k)
                    for name, c in cands.items():  # the shipped frame, or this one where it is smaller
                        t0 = time.perf_counter()
                        f2 = c.compress(seg) if len(f) * SPARSE < k else f
                        zc[name][1] += time.perf_counter() - t0
                        zc[name][0] += min(len(f), len(f2), k)
                    hist = np.bincount(seg, minlength=256)
                    nz = k - int(hist[0])
                    tot["nz"][row] += nz
                    p = nz / k
                    hb = 0.0 if p in (0.0, 1.0) else k * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
                    tot["bound"] += (hb + h0(hist[1:])) / 8
                pos += k
    n = tot["elems"]
    print(f"{args.target} against {args.base}")
    print(f"changed bf16 tensors: {n:,} elements, {tot['changed'] / n:.3%} of them changed; "
          f"nonzero bytes: plane 0 {tot['nz'][0] / n:.3%}, plane 1 {tot['nz'][1] / n:.3%}")
    print()
    print("| coding | MB | x shipped v3 | encode s (frames) |")
    print("|---|---:|---:|---:|")
    print(f"| shipped v3 payloads | {tot['v3'] / MB:.3f} | 1.000 | - |")
    print(f"| its stream (frames and their table; the rest: counts {tot['counts'] / MB:.3f}, headers "
          f"{(tot['v3'] - tot['stream'] - tot['counts']) / MB:.3f}) | {tot['stream'] / MB:.3f} | {tot['stream'] / tot['v3']:.3f} | - |")
    print(f"| its frames alone (plane 0 / 1: {tot['frames_plane'][0] / MB:.3f} / {tot['frames_plane'][1] / MB:.3f}) "
          f"| {tot['frames'] / MB:.3f} | {tot['frames'] / tot['v3']:.3f} | - |")
    for lv in levels:
        print(f"| zstd level {lv}, its own parameters | {zl[lv][0] / MB:.3f} | {zl[lv][0] / tot['v3']:.3f} | {zl[lv][1]:.2f} |")
    for name in cands:
        print(f"| shipped, or where a frame is under 1/{SPARSE} of its plane {name} if smaller | {zc[name][0] / MB:.3f} | "
              f"{zc[name][0] / tot['v3']:.3f} | {zc[name][1]:.2f} (the second frames) |")
    for rule, (b_, t_, redone) in rules.items():
        print(f"| frames: shipped, or zstd level 1 if smaller where {rule} is under 1/{SPARSE} of its plane (unless said) | {b_ / MB:.3f} | "
              f"{b_ / tot['v3']:.3f} | {t_:.2f} (second frames, over {redone / max(sum(tot['planes_raw']), 1):.1%} of the planes' bytes) |")
    print(f"| order-0 bound of zero flags + nonzero values, per group and plane | {tot['bound'] / MB:.3f} | "
          f"{tot['bound'] / tot['v3']:.3f} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
