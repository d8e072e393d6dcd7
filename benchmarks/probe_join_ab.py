"""planes.decompress of a 90 MB bf16 tensor (numpy join path: numba not loaded) with the strided-copy join of
65aaae4 against the whole-word join, alternating; thread CPU s/GB. Needs probe_ft_add_stages.py's model in /tmp/h7prof.

    DELTASTORE_LIBZSTD=1 python benchmarks/probe_join_ab.py
"""
import time, numpy as np, json, struct, os
from deltastore.codec import planes
p = "/tmp/h7prof/model/"
def load(which, name):
    with open(p+which+"/model.safetensors","rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); e = h[name]; a,b = e["data_offsets"]
        f.seek(8+n+a); return np.frombuffer(f.read(b-a), np.uint8).copy()
b = load("base", "model.layers.0.mlp.down_proj.weight")
stream = planes.compress(b, 2, rotate=True, threads=1)
out = np.empty(b.size, np.uint8)
def tt(f, r=7):
    best=1e9
    for _ in range(r):
        c=time.thread_time(); f(); best=min(best, time.thread_time()-c)
    return best/(b.size/1e9)
if os.environ.get("FX"): planes.fast()
print(os.environ.get("DELTASTORE_LIBZSTD","1"), os.environ.get("FX"), "decompress s/GB", tt(lambda: planes.decompress(stream, out=out, threads=1)))
assert np.array_equal(out, b)
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
def old_join(pl, width, rotate, out=None, *, compiled=True):
    n = pl[0].size
    for k, p in enumerate(pl):
        out[width - 1 - k :: width] = p
    if rotate:
        words, bits = out.view(_UINT[width]), width * 8
        t = planes._scratch_words(f"rot_a{width}", n, words.dtype)
        np.left_shift(words, bits - 1, out=t)
        np.right_shift(words, 1, out=words)
        np.bitwise_or(words, t, out=words)
    return out
new_join = planes.join_planes
for r in range(3):
    for name, j in (("old join", old_join), ("new join", new_join)):
        planes.join_planes = j
        print(name, tt(lambda: planes.decompress(stream, out=out, threads=1)))
        assert np.array_equal(out, b)
