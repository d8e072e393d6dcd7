"""Probe (issue 7): the planes' zstd settings at levels 1..3, before and after codec/_zstd_encode.py.

Every plane the lossless codec hands to zstd is captured while it encodes (a real SmolLM2
fine-tune against its base, the 7B-shaped bench fine-tune of ``bench_scaling.py``, SmolLM2's base
alone), then compressed again, one thread, by: python-zstandard's C extension with
``planes.LITERAL_PARAMS`` (the frames every object had before), and the cffi compressor skipping
ahead by ``accel`` with Huffman literals. Bytes of all frames, encode and decode MB/s (of plane
bytes; best of 5 passes, ``--rounds`` rounds, the variants interleaved in each).

    python benchmarks/probe_zstd_accel.py --finetune ~/.cache/deltastore/bench/smollm2-math-40-b4-lr4e-4 \
        --out benchmarks/results/zstd_accel_devvm.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import zstandard

from deltastore.codec import _zstd_encode, planes
from deltastore.codec.lossless import Lossless


class _Capture:
    """A compressor that keeps a copy of every plane it is given (then compresses as before)."""

    def __init__(self, into: list):
        self.into = into
        self.c = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(**planes.LITERAL_PARAMS))

    def compress(self, data) -> bytes:  # noqa: ANN001
        self.into.append(np.array(data, dtype=np.uint8, copy=True).reshape(-1))
        return self.c.compress(data)


def capture(pairs) -> list[np.ndarray]:  # noqa: ANN001
    got: list[np.ndarray] = []
    planes.compressor = lambda level: _Capture(got)  # noqa: ARG005
    planes._LOCAL = type(planes._LOCAL)()
    codec = Lossless()
    for target, base in pairs:
        codec.encode(target, base)
    return got


def synthetic_pairs():
    """bench_scaling.py's fine-tune: a few ulps on 40% of bf16 weights (two 7B-shaped matrices)."""
    g = torch.Generator().manual_seed(0)
    for shape in [(4096, 4096), (11008, 4096)]:
        w = (0.02 * torch.randn(shape, generator=g)).to(torch.bfloat16)
        step = torch.randint(-3, 4, shape, generator=g, dtype=torch.int16)
        step[torch.rand(shape, generator=g) > 0.4] = 0
        yield (w.view(torch.int16) + step).view(torch.bfloat16), w


def _best(f, repeat: int = 5):  # noqa: ANN001, ANN202
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t)
    return out, best


def measure(caps: list[np.ndarray], accels: list[int], rounds: int) -> dict:
    total = sum(c.size for c in caps)
    d = zstandard.ZstdDecompressor()
    res: dict = {}
    for _ in range(rounds):
        for accel in [None, *accels]:
            c = (zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(**planes.LITERAL_PARAMS))
                 if accel is None else _zstd_encode.LiteralCompressor(accel))
            frames, te = _best(lambda c=c: [c.compress(p) for p in caps])
            _, td = _best(lambda frames=frames: [d.decompress(f) for f in frames])
            res.setdefault(accel, []).append((sum(map(len, frames)), total / te / 1e6, total / td / 1e6))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--finetune", type=Path, help="a real SmolLM2 fine-tune (HF dir) of the zoo's base")
    ap.add_argument("--accels", default="4,8,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from safetensors.torch import load_file

    from deltastore.zoo.smollm2 import smollm2_dir

    base = load_file(str(smollm2_dir() / "model.safetensors"))
    sets = []
    if args.finetune:
        ft = load_file(str(args.finetune / "model.safetensors"))
        sets.append((f"real fine-tune ({args.finetune.name}) vs SmolLM2 base", [(t, base.get(n)) for n, t in ft.items()]))
    sets.append(("7B-shaped bench fine-tune (bench_scaling.make_pair)", list(synthetic_pairs())))
    sets.append(("SmolLM2 base alone", [(t, None) for t in base.values()]))
    accels = [int(a) for a in args.accels.split(",")]
    lines = [f"# zstd settings of the planes (levels 1..3): C extension vs skip-ahead with Huffman literals",
             "", f"`python benchmarks/probe_zstd_accel.py {' '.join(os.sys.argv[1:])}`; {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start; python-zstandard {zstandard.__version__} "
             f"(libzstd {zstandard.ZSTD_VERSION}); one thread; MB/s of plane bytes, best of 5 passes, per round", ""]
    for label, pairs in sets:
        caps = capture(pairs)
        total = sum(c.size for c in caps)
        res = measure(caps, accels, args.rounds)
        lines += [f"## {label}: {len(caps)} planes, {total / 1e6:.1f} MB", "",
                  "| compressor | MB out | vs C extension | encode MB/s (rounds) | decode MB/s (rounds) |", "|---|---:|---:|---|---|"]
        ref = res[None][0][0]
        for accel, rows in res.items():
            name = "C extension, LITERAL_PARAMS (before)" if accel is None else f"cffi, accel {accel}"
            lines.append(f"| {name} | {rows[0][0] / 1e6:.3f} | {rows[0][0] / ref - 1:+.2%} | "
                         f"{' / '.join(f'{r[1]:.0f}' for r in rows)} | {' / '.join(f'{r[2]:.0f}' for r in rows)} |")
        lines.append("")
    lines.append(f"load {os.getloadavg()[0]:.1f} at the end")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
