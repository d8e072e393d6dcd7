"""Probe (issue 12 / checkout): a lossless fine-tune's deltas decoded into mapped windows of the output
file (MAP_POPULATE, what a checkout did) against decoded into one reused buffer and written by pwrite;
the dense 40-step SmolLM2 fine-tune's 272 changed tensors (269 MB), one thread, 7 alternating rounds,
wall MB/s and the rounds' user and system seconds. Then, with ``--store``, the same through a real
store's checkout (2 workers) with DELTASTORE_PWRITE_TENSORS=0 (windows) and unset (pwrite).

    python benchmarks/probe_delta_write.py [--store]
"""
import os, time, numpy as np, torch, gc
os.environ.setdefault("DELTASTORE_THREADS", "1")
from safetensors.torch import load_file
from deltastore.codec import from_bytes, to_bytes
from deltastore.codec.lossless import Lossless
from deltastore.zoo.smollm2 import smollm2_dir
from deltastore.materialize import _Window
torch.set_num_threads(1)
path = os.path.expanduser("~/.cache/deltastore/bench/smollm2-math-40-b4-lr4e-4/model.safetensors")
base = load_file(str(smollm2_dir() / "model.safetensors")); ft = load_file(path)
c = Lossless()
pairs = [(ft[n], base[n]) for n in ft if n in base and ft[n].dtype == torch.bfloat16 and not torch.equal(ft[n], base[n])]
encs = [from_bytes(to_bytes(c.encode(t, b))) for t, b in pairs]
sizes = [t.numel() * 2 for t, _ in pairs]; raw = sum(sizes); starts = np.cumsum([0] + sizes).tolist()
buf = np.empty(max(sizes), np.uint8)
d = os.path.join(os.getcwd(), ".ckprobe"); os.makedirs(d, exist_ok=True)
res = {"window (mmap, populate)": [], "reused buffer + pwrite": []}
for r in range(7):
    for k in res:
        f = f"{d}/out.bin"
        if os.path.exists(f): os.unlink(f)
        gc.collect()
        fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
        os.posix_fallocate(fd, 0, raw)
        t0 = os.times(); w0 = time.perf_counter()
        for i, (e, (_, b)) in enumerate(zip(encs, pairs)):
            if k.startswith("window"):
                with _Window(fd, starts[i], sizes[i]) as win:
                    c._raw(e, b, win.array)
            else:
                o = buf[:sizes[i]]
                c._raw(e, b, o)
                os.pwrite(fd, memoryview(o), starts[i])
        t1 = os.times(); w1 = time.perf_counter()
        os.close(fd)
        res[k].append((raw / (w1 - w0) / 1e6, t1.user - t0.user, t1.system - t0.system))
for k, v in res.items():
    print(k, "MB/s wall:", " ".join(f"{a:,.0f}" for a, _, _ in v), "| median", sorted(a for a, _, _ in v)[len(v)//2], "| user s", " ".join(f"{u:.2f}" for _, u, _ in v), "| sys s", " ".join(f"{s:.2f}" for _, _, s in v))
os.unlink(f"{d}/out.bin"); os.rmdir(d)

if "--store" in __import__("sys").argv:
    import shutil, tempfile
    import deltastore
    tmp = tempfile.mkdtemp(dir=os.getcwd(), prefix=".ckstore")
    os.environ["DELTASTORE_THREADS"] = "2"
    st = deltastore.init(os.path.join(tmp, "home"))
    st.add_base("base", str(smollm2_dir()))
    st.add_finetune("ft", os.path.dirname(path), base="base", codec="lossless")
    times = {"windows (=0)": [], "pwrite (default)": []}
    for r in range(5):
        for k in times:
            if k.startswith("windows"):
                os.environ["DELTASTORE_PWRITE_TENSORS"] = "0"
            else:
                os.environ.pop("DELTASTORE_PWRITE_TENSORS", None)
            out = os.path.join(tmp, "out")
            shutil.rmtree(out, ignore_errors=True)
            gc.collect()
            w0 = time.perf_counter()
            st.checkout("ft@v1", out)
            times[k].append(time.perf_counter() - w0)
    size = sum(os.path.getsize(os.path.join(tmp, "out", f)) for f in os.listdir(os.path.join(tmp, "out")))
    for k, v in times.items():
        print(f"store checkout of the fine-tune, {k}: " + " ".join(f"{size / t / 1e6:,.0f}" for t in v)
              + f" MB/s; median {size / sorted(v)[len(v) // 2] / 1e6:,.0f}")
    shutil.rmtree(tmp)
