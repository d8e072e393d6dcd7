"""Adding and checking out stream tensor by tensor: peak memory tracks workers x the largest tensor,
not the model.

    DELTASTORE_THREADS=2 pytest -s tests/store/test_memory.py   # the figures in benchmarks/results/memory_*.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deltastore.safetensors_io import build_header

TENSOR_SHAPE = (8192, 8192)  # 128 MiB in bf16
N_TENSORS = 24  # 3 GiB model

MEASURE = r"""
import json, sys, os
import deltastore, torch  # imports first, so the baseline includes them
base_rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
st = deltastore.open(sys.argv[1])
op = sys.argv[2]
if op == "add":
    st.add_base("big", sys.argv[3])
else:
    st.checkout("big", sys.argv[3])
# VmHWM is this process's own peak; ru_maxrss would carry the parent's peak across fork+exec
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
print(json.dumps({"base_rss": base_rss, "peak": peak}))
"""


def write_big_model(d: Path) -> int:
    """A several-GB safetensors file written one tensor at a time (never the whole model in memory)."""
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    names = [(f"layers.{i}.weight", "BF16", TENSOR_SHAPE) for i in range(N_TENSORS)]
    head, _ = build_header(names, {"format": "pt"})
    g = torch.Generator().manual_seed(0)
    with open(d / "model.safetensors", "wb") as f:
        f.write(head)
        for _ in names:
            t = (torch.randn(TENSOR_SHAPE, generator=g) * 0.02).to(torch.bfloat16)
            f.write(t.view(torch.uint8).numpy().tobytes())
            del t
    return (d / "model.safetensors").stat().st_size


WORKERS = 2  # tensors in flight at once (the store's pipeline window); the bound below scales with it


def measure(home: Path, op: str, path: Path) -> dict:
    env = dict(os.environ, DELTASTORE_THREADS=str(WORKERS))
    p = subprocess.run([sys.executable, "-c", MEASURE, str(home), op, str(path)], capture_output=True, text=True, timeout=1800,
                       env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_tracks_largest_tensor_not_model(tmp_path: Path) -> None:
    model_bytes = write_big_model(tmp_path / "big")
    largest = TENSOR_SHAPE[0] * TENSOR_SHAPE[1] * 2
    assert model_bytes > 3 * 2**30 - 2**20
    home = tmp_path / "home"
    results = {op: measure(home, op, tmp_path / ("big" if op == "add" else "out")) for op in ("add", "checkout")}
    for op, r in results.items():
        extra = r["peak"] - r["base_rss"]
        print(f"{op} ({WORKERS} workers): peak {r['peak'] / 2**20:.0f} MiB, {extra / 2**20:.0f} MiB above the post-import baseline; "
              f"model {model_bytes / 2**30:.2f} GiB, largest tensor {largest / 2**20:.0f} MiB")
        # each tensor in flight holds its bytes, its byte planes and its compressed frame (add) or
        # its decoded bytes and planes (checkout), plus the one being hashed/written in order:
        # a small multiple of workers x one tensor, whatever the model's size
        assert extra < (2 * WORKERS + 2) * largest, (op, extra / 2**20, "MiB above baseline")
        assert extra < model_bytes / 4, (op, extra / 2**20)
    out = tmp_path / "out" / "model.safetensors"
    assert out.stat().st_size == model_bytes
    (tmp_path / "memory.json").write_text(json.dumps(results))
