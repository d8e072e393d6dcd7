"""Issue 12 / 7: the lossless encode of a real fine-tune by the whole-stream path (``planes.diff_stream``)
and by the chunk-by-chunk one it replaced (``planes.diff_groups`` a chunk, then a join), alternating in
one process, with each round's user and system CPU seconds and minor page faults.

    python benchmarks/probe_encode_paths.py [--finetune FILE] [--base FILE] [--rounds 6]

Default files: the zoo's 40-step SmolLM2 math fine-tune (75% of elements changed) and the SmolLM2 base
from the PyPI package's cache. Run with DELTASTORE_THREADS=1 for one core.
"""

from __future__ import annotations

import argparse
import glob
import os
import resource
import time

import torch
from safetensors.torch import load_file

from deltastore.codec import planes
from deltastore.codec.lossless import Lossless


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--finetune", default=os.path.expanduser("~/.cache/deltastore/bench/smollm2-math-40-b4-lr4e-4/model.safetensors"))
    ap.add_argument("--base", default=None)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    base_path = args.base or glob.glob(os.path.expanduser("~/.cache/deltastore/smollm2/**/model.safetensors"), recursive=True)[0]
    ft, base = load_file(args.finetune), load_file(base_path)
    pairs = [(ft[k], base[k]) for k in ft if k in base and ft[k].dtype == torch.bfloat16 and ft[k].shape == base[k].shape]
    print(f"{len(pairs)} tensors, {sum(t.numel() * 2 for t, _ in pairs) / 1e6:.1f} MB; DELTASTORE_THREADS="
          f"{os.environ.get('DELTASTORE_THREADS', '(all cores)')}")
    codec = Lossless()
    codec.warm([torch.bfloat16])
    whole_path = planes.diff_stream
    print("| round | path | user s | system s | wall s | minor faults |\n|---|---|---:|---:|---:|---:|")
    for r in range(args.rounds):
        for whole in (False, True):
            planes.diff_stream = whole_path if whole else (lambda *a, **k: None)
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for t, b in pairs:
                codec.encode(t, b)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            print(f"| {r + 1} | {'whole stream' if whole else 'chunk by chunk'} | {r1.ru_utime - r0.ru_utime:.2f} | "
                  f"{r1.ru_stime - r0.ru_stime:.2f} | {time.perf_counter() - t0:.2f} | {r1.ru_minflt - r0.ru_minflt} |")
    planes.diff_stream = whole_path


if __name__ == "__main__":
    main()
