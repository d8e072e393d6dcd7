"""Adding and checking out stream tensor by tensor: peak memory tracks workers x the largest tensor,
not the model. A base, and a lossless fine-tune of it (its add decodes each changed tensor's base and
encodes the difference; its checkout undoes that).

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
elif op == "add_ft":
    st.add_finetune("ft", sys.argv[3], base="big", codec="lossless")
else:
    st.checkout("big" if op == "checkout" else "ft", sys.argv[3])
# VmHWM is this process's own peak; ru_maxrss would carry the parent's peak across fork+exec
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
print(json.dumps({"base_rss": base_rss, "peak": peak}))
"""


def write_big_model(d: Path, finetune: bool = False) -> int:
    """A several-GB safetensors file written one tensor at a time (never the whole model in memory);
    ``finetune``: the same tensors, most of their elements moved by a small step (a lossless
    fine-tune of the other)."""
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    names = [(f"layers.{i}.weight", "BF16", TENSOR_SHAPE) for i in range(N_TENSORS)]
    head, _ = build_header(names, {"format": "pt"})
    g = torch.Generator().manual_seed(0)
    with open(d / "model.safetensors", "wb") as f:
        f.write(head)
        for _ in names:
            t = (torch.randn(TENSOR_SHAPE, generator=g) * 0.02).to(torch.bfloat16)
            if finetune:
                t = (t.float() + torch.randn(TENSOR_SHAPE, generator=torch.Generator().manual_seed(1)) * 2e-4).to(torch.bfloat16)
            f.write(t.view(torch.uint8).numpy().tobytes())
            del t
    return (d / "model.safetensors").stat().st_size


WORKERS = 2  # tensors in flight at once (the store's pipeline window); the bound below scales with it
#: tensor-sized buffers an op holds per tensor in flight (the test's bound; why: in the test)
BUFFERS_PER_TENSOR = {"add": 2, "checkout": 2, "add_ft": 4, "checkout_ft": 3}


def measure(home: Path, op: str, path: Path) -> dict:
    env = dict(os.environ, DELTASTORE_THREADS=str(WORKERS))
    p = subprocess.run([sys.executable, "-c", MEASURE, str(home), op, str(path)], capture_output=True, text=True, timeout=1800,
                       env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_tracks_largest_tensor_not_model(tmp_path: Path) -> None:
    model_bytes = write_big_model(tmp_path / "big")
    assert write_big_model(tmp_path / "ft", finetune=True) == model_bytes
    largest = TENSOR_SHAPE[0] * TENSOR_SHAPE[1] * 2
    assert model_bytes > 3 * 2**30 - 2**20
    home = tmp_path / "home"
    paths = {"add": "big", "checkout": "out", "add_ft": "ft", "checkout_ft": "out_ft"}
    results = {op: measure(home, op, tmp_path / path) for op, path in paths.items()}
    for op, r in results.items():
        extra = r["peak"] - r["base_rss"]
        print(f"{op} ({WORKERS} workers): peak {r['peak'] / 2**20:.0f} MiB, {extra / 2**20:.0f} MiB above the post-import baseline; "
              f"model {model_bytes / 2**30:.2f} GiB, largest tensor {largest / 2**20:.0f} MiB")
        # each tensor in flight holds a few tensor-sized buffers, plus the one being hashed/written
        # in order: a small multiple of workers x one tensor, whatever the model's size. A base's
        # add: its bytes and its byte planes / frame; a checkout: its decoded bytes and planes. A
        # fine-tune's add holds four: its bytes, its base's decoded bytes, its base's stored object
        # (both read into the add's pool) and its encoded difference (975 MiB above the baseline
        # here at 2 workers; 1,113-1,176 while the encode's area sat in huge pages); its
        # checkout three: its base's decoded bytes, its own, and its stored difference (808-872
        # MiB, the same at 82b42c1, the fourteenth session's start)
        bound = (BUFFERS_PER_TENSOR[op] * WORKERS + 2) * largest
        assert bound <= model_bytes / 2  # the model is at least twice any op's bound: holding it fails
        assert extra < bound, (op, extra / 2**20, "MiB above baseline")
    for out in ("out", "out_ft"):
        assert (tmp_path / out / "model.safetensors").stat().st_size == model_bytes
    (tmp_path / "memory.json").write_text(json.dumps(results))
