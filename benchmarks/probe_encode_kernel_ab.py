"""The 2-byte lossless encode kernel of one commit against another's on one real-shaped tensor: thread CPU
s/GB, alternating, medians of 5. The old kernel module is loaded from an install of the older commit.

    python benchmarks/probe_encode_kernel_ab.py [TENSOR]   # needs probe_ft_add_stages.py's model in /tmp/h7prof
    (old install: /tmp/h7sites/before, a pip install --target of 65aaae4)
"""
import time, numpy as np, json, struct, importlib.util, sys
from deltastore.codec import _numba as new, planes
spec = importlib.util.spec_from_file_location("old_numba", "/tmp/h7sites/before/deltastore/codec/_numba.py")
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
p = "/tmp/h7prof/model/"
def load(which, name):
    with open(p+which+"/model.safetensors","rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); e = h[name]; a,b = e["data_offsets"]
        f.seek(8+n+a); return np.frombuffer(f.read(b-a), np.uint8).copy()
name = sys.argv[1] if len(sys.argv) > 1 else "model.layers.0.mlp.down_proj.weight"
t = load("ft", name); b = load("base", name)
CH = 1<<20
scr = np.empty(CH, np.uint8)
def run_old():
    for lo in range(0, t.size, CH): old.diff_group_split(t[lo:lo+CH], b[lo:lo+CH], 2, 7, 8)
def run_new():
    for lo in range(0, t.size, CH):
        h = min(lo+CH, t.size)
        new.diff_group_split(t[lo:h], b[lo:h], 2, 7, 8, out=scr[:h-lo].reshape(2, -1))
def run_new_fresh():
    for lo in range(0, t.size, CH): new.diff_group_split(t[lo:lo+CH], b[lo:lo+CH], 2, 7, 8)
run_old(); run_new(); run_new_fresh()
res = {"old": [], "new (scratch out)": [], "new (fresh out)": []}
for r in range(5):
    for k, f in (("old", run_old), ("new (scratch out)", run_new), ("new (fresh out)", run_new_fresh)):
        c = time.thread_time(); f(); res[k].append((time.thread_time() - c) / (t.size / 1e9))
for k, v in res.items(): print(f"{k}: median {np.median(v):.3f} min {min(v):.3f} thread CPU s/GB")
