"""The grouped decode's gather alone: AVX-512 expand-loads (codec/_numba.py, its AVX-512 section) against the
scalar kernel, on real exponents (SmolLM2-135M's base, chunks of 1 MiB of its largest tensors).

    python benchmarks/probe_x512.py [--chunks 26] [--repeat 7] [--covers 0.9,0.97,0.99,0.999]

Each chunk: the base words' exponents, random words grouped by them (a stable sort), then the
scalar ``_numba._gather2`` and ``gather2_x512`` with the frequent exponents covering each share of
the chunk, every result checked against the words in natural order; ns per element, best of
--repeat, median and range over the chunks. Load average printed before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from safetensors.torch import load_file

from deltastore.codec import _numba
from deltastore.zoo.smollm2 import smollm2_dir

SHIFT, FMASK = np.uint16(7), np.uint16(0xFF)
CHUNK = 1 << 19


def best_ns(fn, repeat: int, n: int) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best / n * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunks", type=int, default=26)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--covers", default="0.9,0.97,0.99,0.999")
    a = ap.parse_args()
    covers = [float(c) for c in a.covers.split(",")]
    if not _numba.x512_available():
        raise SystemExit("probe_x512: this CPU (or DELTASTORE_SIMD=0) has no AVX-512 VBMI2 path to measure")
    load0 = os.getloadavg()[0]
    sd = load_file(str(smollm2_dir() / "model.safetensors"))
    names = sorted((k for k, t in sd.items() if t.dtype == torch.bfloat16), key=lambda k: -sd[k].numel())
    rng = np.random.default_rng(0)
    rows: dict[str, list[float]] = {}
    done = 0
    for name in names:
        words_all = sd[name].view(torch.int16).numpy().view(np.uint16).ravel()
        for s in range(0, words_all.size - CHUNK + 1, CHUNK):
            if done == a.chunks:
                break
            base = np.ascontiguousarray(words_all[s:s + CHUNK])
            ctx = (base >> SHIFT) & FMASK
            natural = rng.integers(0, 1 << 16, CHUNK, dtype=np.uint16)
            grouped = np.zeros(2 * CHUNK + _numba.X512_SLACK, np.uint16)  # the codec's scratch: 2n + SLACK
            grouped[:CHUNK] = natural[np.argsort(ctx, kind="stable")]
            counts = np.bincount(ctx, minlength=256).astype(np.int64)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.uint32)
            out, pos = np.zeros(CHUNK, np.uint16), starts.copy()

            def scalar():  # noqa: ANN202
                pos[:] = starts
                _numba._gather2(grouped, base, SHIFT, FMASK, pos, out)

            scalar()
            assert np.array_equal(out, natural)
            rows.setdefault("scalar gather (the codec's before)", []).append(best_ns(scalar, a.repeat, CHUNK))
            for cover in covers:
                order = np.argsort(-counts, kind="stable")
                k = int(np.searchsorted(np.cumsum(counts[order]), cover * CHUNK)) + 1
                fctx = order[:k].astype(np.uint16)

                def x512():  # noqa: ANN202
                    pos[:] = starts
                    _numba.gather2_x512(grouped, base, SHIFT, FMASK, pos, out, fctx)

                out[:] = 0
                x512()
                assert np.array_equal(out, natural)
                rows.setdefault(f"AVX-512 expand, frequent exponents covering {cover:g}", []).append(best_ns(x512, a.repeat, CHUNK))
                rows.setdefault(f"(exponents needed to cover {cover:g})", []).append(float(k))
            done += 1
    print(f"Command: `python benchmarks/probe_x512.py --chunks {a.chunks} --repeat {a.repeat} --covers {a.covers}`  ")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, AVX-512 VBMI2 "
          f"{'yes' if _numba.x512_available() else 'no'}; load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"{done} chunks of {CHUNK:,} elements (SmolLM2-135M base, largest tensors first)  ")
    print("")
    print("| gather | ns per element, median of chunks | range |")
    print("|---|---:|---|")
    for k, v in rows.items():
        print(f"| {k} | {np.median(v):.3f} | {min(v):.3f}-{max(v):.3f} |")


if __name__ == "__main__":
    main()
