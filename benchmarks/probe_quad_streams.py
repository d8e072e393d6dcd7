"""Issue 12 / 7 probe (sixteenth session): the grouped difference's scatter (encode) and gather (decode)
as four independent streams, one per quarter of a chunk, each with its own position table (from
per-quarter histograms), against the codec's one table resolved eight elements a step
(``_numba._claim8u``). Same planes and counts (checked); the idea: no chain through one table's
counters when consecutive elements share a context. Thread CPU per element, 1 MiB chunks.

    python benchmarks/probe_quad_streams.py [fast|real]

``fast``: an 11008 x 4096 bf16 pair as bench_scaling's BENCH_FAST_DATA makes (40% of elements moved by
1-3 ulps); ``real``: the zoo's 40-step SmolLM2 math fine-tune against its base (its 12 largest
tensors). Not used by the store: the four streams measured slower (results/raw_devvm/s16_quad_streams.txt).
"""
import os, time, sys
import numpy as np, torch
from numba import njit
from deltastore.codec import _numba as nb
from deltastore.codec.lossless import context_field, tensor_u8

@njit(nogil=True, inline="always")
def ctx2(w, shift, fmask):
    return np.uint8((w >> shift) & fmask)

@njit(nogil=True)
def hist_q(base, shift, fmask, part):
    """per-quarter histograms part[4,256] (uint32) and total counts"""
    n = base.size
    q = n // 4
    part[:] = 0
    for i in range(q):
        part[0, ctx2(base[i], shift, fmask)] += np.uint32(1)
        part[1, ctx2(base[q + i], shift, fmask)] += np.uint32(1)
        part[2, ctx2(base[2 * q + i], shift, fmask)] += np.uint32(1)
        part[3, ctx2(base[3 * q + i], shift, fmask)] += np.uint32(1)
    for i in range(4 * q, n):
        part[3, ctx2(base[i], shift, fmask)] += np.uint32(1)

@njit(nogil=True)
def quarter_starts(part):
    """Each quarter's first position per context: context c's elements of quarter q follow those of
    quarters before q (the stable order the format keeps)."""
    p0 = np.empty(256, np.uint32); p1 = np.empty(256, np.uint32); p2 = np.empty(256, np.uint32); p3 = np.empty(256, np.uint32)
    s = 0
    for c in range(256):
        p0[c] = s; s += part[0, c]
        p1[c] = s; s += part[1, c]
        p2[c] = s; s += part[2, c]
        p3[c] = s; s += part[3, c]
    return p0, p1, p2, p3

@njit(nogil=True)
def split_q(target, base, shift, fmask, part, counts, hi, lo, tmp, words):
    n = target.size
    q = n // 4
    for i in range(n):
        tmp[i] = nb._code2(np.int64(target[i]), np.int64(base[i]))
    p0, p1, p2, p3 = quarter_starts(part)
    for c in range(256):
        counts[c] = np.int64(part[0, c]) + part[1, c] + part[2, c] + part[3, c]
    for i in range(q):
        a = ctx2(base[i], shift, fmask); b = ctx2(base[q + i], shift, fmask)
        c = ctx2(base[2 * q + i], shift, fmask); d = ctx2(base[3 * q + i], shift, fmask)
        x0 = p0[a]; x1 = p1[b]; x2 = p2[c]; x3 = p3[d]
        words[x0] = tmp[i]; words[x1] = tmp[q + i]; words[x2] = tmp[2 * q + i]; words[x3] = tmp[3 * q + i]
        p0[a] = x0 + np.uint32(1); p1[b] = x1 + np.uint32(1); p2[c] = x2 + np.uint32(1); p3[d] = x3 + np.uint32(1)
    for i in range(4 * q, n):
        d = ctx2(base[i], shift, fmask)
        x3 = p3[d]; words[x3] = tmp[i]; p3[d] = x3 + np.uint32(1)
    for i in range(n):
        w = words[i]
        hi[i] = np.uint8(w >> np.uint16(8))
        lo[i] = np.uint8(w)

def data(kind):
    if kind == "fast":
        shape=(11008,4096); gen=torch.Generator().manual_seed(1)
        w=(0.02*torch.randn(shape,generator=gen)).to(torch.bfloat16)
        bits=w.view(torch.int16)
        step=torch.randint(-3,4,shape,generator=gen,dtype=torch.int16)
        step[torch.rand(shape,generator=gen)>0.4]=0
        return (bits+step).view(torch.bfloat16), w
    from safetensors.torch import load_file
    import glob
    ft=load_file(os.path.expanduser("~/.cache/deltastore/bench/smollm2-math-40-b4-lr4e-4/model.safetensors"))
    bp=glob.glob(os.path.expanduser("~/.cache/deltastore/smollm2/**/model.safetensors"), recursive=True)[0]
    b=load_file(bp)
    ks=[k for k in ft if k in b and ft[k].dtype==torch.bfloat16 and ft[k].numel()>=1<<20][:12]
    return torch.cat([ft[k].reshape(-1) for k in ks]), torch.cat([b[k].reshape(-1) for k in ks])

f, w = data(sys.argv[1] if len(sys.argv) > 1 else "fast")
T = tensor_u8(f).view(np.uint16); B = tensor_u8(w).view(np.uint16)
shift, bits = context_field(torch.bfloat16)
sh, fm = np.uint16(shift), np.uint16((1 << bits) - 1)
step = 512 * 1024
nch = T.size // step
hiA = np.empty(step, np.uint8); loA = np.empty(step, np.uint8); hiB = np.empty(step, np.uint8); loB = np.empty(step, np.uint8)
tmp = np.empty(step, np.uint16); words = np.empty(step, np.uint16)
cA = np.empty(256, np.int64); cB = np.empty(256, np.int64); part = np.empty((4, 256), np.uint32)
def runA(i):
    t, b = T[i*step:(i+1)*step], B[i*step:(i+1)*step]
    nb._exp_histogram2(b, sh, fm, cA)
    nb._diff_group_split2(t, b, sh, fm, cA, hiA, loA, tmp, words)
def runB(i):
    t, b = T[i*step:(i+1)*step], B[i*step:(i+1)*step]
    hist_q(b, sh, fm, part)
    split_q(t, b, sh, fm, part, cB, hiB, loB, tmp, words)
for i in range(min(nch, 8)):
    runA(i); runB(i)
    assert (cA == cB).all() and (hiA == hiB).all() and (loA == loB).all(), i
print("same planes and counts on", min(nch, 8), "chunks")
for r in range(5):
    for name, fn in (("current", runA), ("4 streams", runB)):
        t = time.thread_time()
        for i in range(nch): fn(i)
        dt = time.thread_time() - t
        print(f"{name}: {dt / (nch * step) * 1e9:.2f} ns/element", end="   ")
    print()

# decode side: gather with 4 streams (positions from per-quarter counts) against the current _gather2
@njit(nogil=True)
def gather_q(words, base, shift, fmask, part, out):
    n = base.size
    q = n // 4
    p0, p1, p2, p3 = quarter_starts(part)
    for i in range(q):
        a = ctx2(base[i], shift, fmask); b = ctx2(base[q + i], shift, fmask)
        c = ctx2(base[2 * q + i], shift, fmask); d = ctx2(base[3 * q + i], shift, fmask)
        x0 = p0[a]; x1 = p1[b]; x2 = p2[c]; x3 = p3[d]
        out[i] = words[x0]; out[q + i] = words[x1]; out[2 * q + i] = words[x2]; out[3 * q + i] = words[x3]
        p0[a] = x0 + np.uint32(1); p1[b] = x1 + np.uint32(1); p2[c] = x2 + np.uint32(1); p3[d] = x3 + np.uint32(1)
    for i in range(4 * q, n):
        d = ctx2(base[i], shift, fmask)
        x3 = p3[d]; out[i] = words[x3]; p3[d] = x3 + np.uint32(1)

@njit(nogil=True)
def gather_cur(words, base, shift, fmask, counts, out):
    pos = nb._starts_into(counts, np.empty(256, dtype=np.uint32))
    nb._gather2(words, base, shift, fmask, pos, out)

outA = np.empty(step, np.uint16); outB = np.empty(step, np.uint16)
for r in range(5):
    tA = tB = 0.0
    for i in range(nch):
        b = B[i*step:(i+1)*step]
        runB(i)
        t = time.thread_time(); gather_cur(words, b, sh, fm, cB, outA); tA += time.thread_time() - t
        t = time.thread_time(); gather_q(words, b, sh, fm, part, outB); tB += time.thread_time() - t
        if r == 0 and i < 4:
            assert (outA == outB).all() and (outA == tmp).all()
    print(f"gather current {tA / (nch*step) * 1e9:.2f} ns/element   4 streams {tB / (nch*step) * 1e9:.2f}")
