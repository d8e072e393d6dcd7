"""Probe (issue 12, decode speed): where a fine-tune decode's time outside the kernels goes: the dense 40-step
SmolLM2 fine-tune's v3 payloads decoded into fresh arrays per tensor (what probe_layouts times), into one fresh
arena (numpy asks huge pages for it), and into one reused arena (no page faults); 7 rounds, one thread.

    python benchmarks/probe_decode_arena.py
"""
import gc, time, numpy as np, torch, os
os.environ.setdefault("DELTASTORE_THREADS", "1")
from safetensors.torch import load_file
from deltastore.codec import from_bytes, to_bytes
from deltastore.codec.lossless import Lossless
from deltastore.zoo.smollm2 import smollm2_dir
torch.set_num_threads(1)
base = load_file(str(smollm2_dir() / "model.safetensors"))
ft = load_file(os.path.expanduser("~/.cache/deltastore/bench/smollm2-math-40-b4-lr4e-4/model.safetensors"))
c = Lossless(zero_planes=False)  # v3, what this probe's runs measured (the default writes v4 now)
pairs = [(ft[n], base[n]) for n in ft if n in base and ft[n].dtype == torch.bfloat16 and not torch.equal(ft[n], base[n])]
encs = [from_bytes(to_bytes(c.encode(t, b))) for t, b in pairs]
raw = sum(t.numel() * 2 for t, _ in pairs)
small = sum(1 for t, _ in pairs if t.numel() * 2 < (4 << 20))
print(f"{len(pairs)} tensors, {raw/1e6:.1f} MB, {small} under 4 MiB")
res = {"fresh arrays": [], "one arena (np.empty, huge pages from numpy)": [], "reused arena (no faults)": []}
reuse = np.empty(raw, np.uint8)
for r in range(7):
    for k in res:
        gc.collect()
        t0 = time.process_time()
        if k == "fresh arrays":
            outs = [c._raw(e, b) for e, (_, b) in zip(encs, pairs)]
        else:
            arena = np.empty(raw, np.uint8) if k.startswith("one") else reuse
            o = 0
            for e, (t, b) in zip(encs, pairs):
                n = t.numel() * 2
                c._raw(e, b, arena[o:o + n]); o += n
        res[k].append(time.process_time() - t0)
        if k == "fresh arrays":
            del outs
        elif k.startswith("one"):
            del arena
for k, v in res.items():
    print(f"{k}: best {raw / min(v) / 1e6:,.0f} MB/s, median {raw / sorted(v)[3] / 1e6:,.0f} MB/s")
