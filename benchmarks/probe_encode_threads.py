"""Probe: do delta-come payloads depend on torch's CPU thread count? Each run encodes three of a real
SmolLM2 fine-tune's linears (the slow tests' 4-step math fine-tune, ``tests/kernels/test_lazy_smollm2.py``
makes it) with the codec's defaults in a child process per thread count, and checks the randomized SVD's
parts (a GEMM, a QR of the sketch) for equal bits across the counts.

    python benchmarks/probe_encode_threads.py [--threads 1,2,1,2]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

NAMES = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight", "model.layers.5.mlp.up_proj.weight"]


def child(threads: int) -> dict:
    import torch
    from safetensors.torch import load_file

    from deltastore.codec import codec_class, to_bytes
    from deltastore.zoo.cache import cache_dir
    from deltastore.zoo.smollm2 import smollm2_dir

    torch.set_num_threads(threads)
    b = load_file(str(smollm2_dir() / "model.safetensors"))
    f = load_file(str(cache_dir("tests") / "smollm2-math-4steps" / "model.safetensors"))
    out = {}
    for n in NAMES:
        c = codec_class("delta-come")(alpha="1/16")
        enc = c.encode(f[n], b[n])
        d, dh = f[n].float() - b[n].float(), c.reconstruct(enc, b[n]).float() - b[n].float()
        out[n] = hashlib.sha256(to_bytes(enc)).hexdigest()[:16] + f" (err {float((dh - d).norm() / d.norm()):.4f})"
    D = f[NAMES[0]].float() - b[NAMES[0]].float()
    sketch = D @ torch.randn(D.shape[1], 300, generator=torch.Generator().manual_seed(0))
    out["gemm"] = hashlib.sha256(sketch.numpy().tobytes()).hexdigest()[:16]
    out["qr"] = hashlib.sha256(torch.linalg.qr(sketch)[0].numpy().tobytes()).hexdigest()[:16]
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    runs = []  # (threads, hashes): a count given twice shows the encode repeats at a fixed count
    for t in [int(x) for x in args.threads.split(",")]:
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(t)], capture_output=True, text=True, check=True)
        runs.append((t, json.loads(r.stdout.strip().splitlines()[-1])))
    print(f"machine: {os.uname().machine}, {os.cpu_count()} cores; sha256[:16] of each payload (delta-come, alpha 1/16; err: its delta's relative error) and part")
    print("\n| what | " + " | ".join(f"{t} thread(s)" for t, _ in runs) + " | all equal |\n|---|" + "---|" * (len(runs) + 1))
    for k in NAMES + ["gemm", "qr"]:
        vals = [h[k] for _, h in runs]
        print(f"| {k} | " + " | ".join(vals) + f" | {len({v.split()[0] for v in vals}) == 1} |")


if __name__ == "__main__":
    main()
