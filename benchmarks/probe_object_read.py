"""Thread CPU of reading a 60 MB file (in the page cache) whole into a new bytes, in 4 / 8 MiB reads, and by
preadv into a reused buffer: what ObjectDB.write_tensor's ranged reads save.

    python benchmarks/probe_object_read.py
"""
import time, os, numpy as np, sys
# make a 60MB file in page cache
p="/tmp/h7_readtest.bin"
if not os.path.exists(p):
    open(p,"wb").write(os.urandom(60<<20))
open(p,"rb").read()
def whole():
    with open(p,"rb") as f: d=f.read()
def slabs(S):
    def run():
        with open(p,"rb") as f:
            while True:
                d=f.read(S)
                if not d: break
    return run
def readinto(S):
    buf = bytearray(S)
    def run():
        fd=os.open(p,os.O_RDONLY); off=0
        while True:
            n=os.preadv(fd,[buf],off)
            if n<=0: break
            off+=n
        os.close(fd)
    return run
fs={"whole":whole,"slab 4M":slabs(4<<20),"slab 8M":slabs(8<<20),"preadv 4M reused":readinto(4<<20)}
res={k:[] for k in fs}
for r in range(15):
    for k,f in fs.items():
        c=time.thread_time(); f(); res[k].append(time.thread_time()-c)
for k,v in res.items(): print(k, "median s/GB-of-file %.3f"%(np.median(v)/(60*1.048576e6/1e9)))
