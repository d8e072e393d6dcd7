"""Probe (issue 12, bases): the palette join's 4-bit blocks by AVX-512 vpermw against the scalar gather,
on SmolLM2's base (the first 40 palette chunks of 512 Ki elements), nine alternating rounds, one thread.

    python benchmarks/probe_palette_join.py
"""
import time, numpy as np, torch
from safetensors.torch import load_file
from deltastore.codec import palette, _palette_numba as pn
from deltastore.zoo.smollm2 import smollm2_dir
sd = load_file(str(smollm2_dir() / "model.safetensors"))
FX = palette.kernels()
items = []
for name, t in sd.items():
    if t.dtype != torch.bfloat16 or t.numel() < 1 << 16:
        continue
    w = t.reshape(-1).view(torch.int16).numpy().view(np.uint16)[: 1 << 19].copy()
    if not palette.worth_trying(w):
        continue
    nb = -(-w.size // 32)
    ks, pd, idx = np.empty(nb, np.uint8), np.empty(nb * 96, np.uint8), np.zeros(nb * 20, np.uint8)
    q, p = FX.split(w, palette.WIDTH, ks, pd, idx)
    items.append((w, ks, pd[:q].copy(), idx[:p].copy()))
    if len(items) >= 40:
        break
n = sum(w.size for w, *_ in items)
out = np.empty(max(w.size for w, *_ in items), np.uint16)
res = {"scalar": [], "x512": []}
for r in range(9):
    for name, g in (("scalar", pn._join_scalar), ("x512", pn._join_x512)):
        t0 = time.perf_counter()
        for w, ks, pd, idx in items:
            assert g(palette.WIDTH, ks, pd, idx, out[: w.size]) == 0
        res[name].append(time.perf_counter() - t0)
for w, ks, pd, idx in items[:3]:
    for g in (pn._join_scalar, pn._join_x512):
        g(palette.WIDTH, ks, pd, idx, out[: w.size]); assert np.array_equal(out[: w.size], w)
blocks4 = sum(int(((ks + 1 >= 9) & (ks + 1 <= 16)).sum()) for _, ks, _, _ in items)
print(f"{len(items)} chunks of SmolLM2's base, {n:,} elements, {blocks4 / (n / 32):.1%} of blocks 4-bit")
for k, v in res.items():
    print(f"join {k}: best {min(v) / n * 1e9:.3f} ns/element, median {sorted(v)[len(v)//2] / n * 1e9:.3f}")
