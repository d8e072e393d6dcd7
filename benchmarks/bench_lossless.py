"""Lossless fine-tune bytes and speed: the lossless codec's format v1, v2 and v3 against zipnn 0.5.4.

    python benchmarks/bench_lossless.py [--series DIR] [--chain DIR] [--base DIR] [--repeat N] [--out FILE]

Data: SmolLM2-135M-Instruct bf16 (deltastore.zoo.smollm2) and a short real full fine-tune of it
saved every few steps (a series directory ``stepNNNN/`` as written by ``--make-series``; the
pair is the base and the series' last checkpoint).

Rows:
  lossless v1 / v2     the codec alone (``Lossless(by_exponent=False)`` / ``Lossless()``, the default: format v4 now), tensor
                       by tensor, on the tensors the fine-tune changed (the store keeps an
                       unchanged tensor as a reference to the base: 0 bytes); bytes = every
                       payload's bytes, header included.
  zipnn 0.5.4          ``ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=1)`` on
                       the fine-tune's safetensors file alone, in memory.
Speeds are MB/s of the fine-tune's tensor bytes (10^6 B) over the process's CPU seconds with one
thread (DELTASTORE_THREADS=1, zipnn threads=1): per core, and robust to other load on a shared
machine. Best of --repeat. The codec runs its numba kernels (codec/_numba.py) when numba imports
(the header says so); DELTASTORE_NUMBA=0 times the numpy path instead. Also printed: order-0 entropy of the difference, alone and given the
base's exponent; for the series, each checkpoint against the one before (v1, v2) and zipnn on
each checkpoint alone; for the base file, the order-0 and order-1 (previous element's exponent)
entropy of the exponents, the bound on what context coding of a base's exponents could save,
and the base file stored on its own (no base: the ``add base`` path) against zipnn, both ways.

``--chain DIR``: a second series (e.g. a small-lr run, most bits unchanged between saves) measured
as the store keeps it: per checkpoint, the fraction of elements and of bits that changed since the
previous save, v1 and v2 against the previous checkpoint, v2 against its skip-delta base (what
``add finetune RUN PATH --base RUN@latest --codec lossless`` now does, deltastore.chains) and
zipnn on the checkpoint file alone.

``--rans-probe``: benchmarks/probe_rans.py (a per-context rANS coder for bf16 differences whose
decode takes the base's exponent as its context directly, no grouping pass) on the fine-tune's
tensors: bytes against v2, speed per core, and its decode kernel alone on one chunk beside
zipnn's whole decode of the same bytes. ``--base-contexts``: the base's exponents given richer
contexts (row / column classes, the previous exponent) with the table cost, the mantissa given
the exponent, rows or columns grouped by class before today's planes + zstd, and the low plane
grouped by each element's own exponent (benchmarks/probe_lowplane.py) with its speed beside
today's planes and zipnn (issue 12's base goal: >= 1% under zipnn at zipnn's speed).
``--palette-store``: only issue 12's palette plane mode as the store writes tensor objects, beside
zipnn and today's format, and its cost on grid-less ``--palette-other`` files.
``--palette``: the base as a palette per aligned 32-element block (benchmarks/probe_palette.py:
blocks decode independently, straight into bf16 words) in two stream settings, beside zipnn,
today's planes and the low plane as runs, in the same process; ``--palette-other FILE...``: whether
other safetensors files sit on such a grid (distinct words per block) and the palette's bytes there.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("DELTASTORE_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from deltastore.codec import from_bytes, to_bytes  # noqa: E402
from deltastore.codec import planes  # noqa: E402
from deltastore.codec.lossless import Lossless, diff_code, exponent_contexts, tensor_u8  # noqa: E402

MB = 1e6


def cpu(fn, repeat: int):
    best, res = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t0 = time.process_time()
        res = fn()
        best = min(best, time.process_time() - t0)
    return best, res


def cpu_split(fn) -> tuple[float, float]:  # noqa: ANN001
    """One call of ``fn``'s process CPU seconds, user + system, and the system part of them (page faults
    on fresh memory show there): getrusage (microseconds; os.times' 10 ms ticks were ~4% of a row), after
    a collection, the result dropped before returning."""
    gc.collect()
    t0 = resource.getrusage(resource.RUSAGE_SELF)
    res = fn()
    t1 = resource.getrusage(resource.RUSAGE_SELF)
    del res
    return (t1.ru_utime - t0.ru_utime) + (t1.ru_stime - t0.ru_stime), t1.ru_stime - t0.ru_stime


def changed_pairs(base: dict, ft: dict) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    return [(n, ft[n], base[n]) for n in ft if n in base and not torch.equal(ft[n].view(torch.uint8), base[n].view(torch.uint8))]


def changed_elements(pairs) -> int:
    return sum(int((t.view(torch.uint8).reshape(-1, t.element_size()) != b.view(torch.uint8).reshape(-1, t.element_size())).any(1).sum())
               for _, t, b in pairs)


def changed_bits(pairs) -> int:
    """Bits that differ between each pair (popcount of the XOR of their bytes)."""
    pop = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.int64)
    return sum(int((np.bincount(np.bitwise_xor(tensor_u8(t), tensor_u8(b)), minlength=256) * pop).sum()) for _, t, b in pairs)


def chain_table(ckpts: list[Path], base: dict, say, series_repeat: int) -> None:
    """Per checkpoint of a series, the default lossless codec's bytes against three delta bases:
    the previous checkpoint (an unbounded chain), the pure skip-delta base (index n with its lowest
    set bit cleared: deltastore.chains before the nineteenth session), and the base the
    store chooses now (deltastore.chains.base_index: linear runs, skip-deltas every LINEAR-th).
    The run's first checkpoint is stored against the base model (the series' root) in every column."""
    from deltastore.chains import base_index, chain_depth, linear, skip_index

    run = linear()
    say(f"Store's series base: deltastore.chains.base_index with LINEAR = {run}.  ")
    say("")
    say("| checkpoint (series index) | elements changed since the previous save | bits changed | zipnn MB (alone) "
        "| MB vs previous | MB vs skip-delta base (base) | MB vs the store's base (base; deltas walked) "
        "| x zipnn: previous | skip | store |")
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    paths: list[Path | None] = [None]  # series index -> checkpoint file (0: the base model)
    prev = base
    tot = dict(z=0, prev=0, sk=0, st=0)
    worst = dict(prev=float("inf"), sk=float("inf"), st=float("inf"))
    codec = Lossless()

    def against(k: int, j: int, b_prev: int, cur: dict) -> tuple[int, str]:
        target = 0 if k == 1 else (j or 1)  # the series index of the delta base (0: the base model, 1: the root)
        if target == k - 1:
            return b_prev, "previous" if k > 1 else "the base model"
        sb = load_file(str(paths[target]))
        return (sum(len(to_bytes(codec.encode(t, b))) for _, t, b in changed_pairs(sb, cur)),
                f"index {target}" if target > 1 else "the root")

    for k, c in enumerate(ckpts, start=1):
        cur = load_file(str(c / "model.safetensors"))
        pr = changed_pairs(prev, cur)
        nel = sum(t.numel() for t in cur.values())
        nbits = sum(t.numel() * t.element_size() * 8 for t in cur.values())
        bp = sum(len(to_bytes(codec.encode(t, b))) for _, t, b in pr)
        bs, sname = against(k, skip_index(k) if k > 1 else 0, bp, cur)
        bt, tname = against(k, base_index(k, run) if k > 1 else 0, bp, cur)
        zc = bench_zipnn(c / "model.safetensors", series_repeat)
        zb = zc["bytes"] if zc else float("nan")
        say(f"| {c.name} ({k}) | {changed_elements(pr) / nel:.2%} | {changed_bits(pr) / nbits:.3%} | {zb / MB:.2f} | {bp / MB:.2f} | "
            f"{bs / MB:.2f} ({sname}) | {bt / MB:.2f} ({tname}; {chain_depth(k, run) + 1}) | {zb / bp:.0f}x | {zb / bs:.0f}x | {zb / bt:.0f}x |")
        if k > 1:  # the root's row is a fine-tune against the base model, not a step of the series
            for key, v in (("prev", bp), ("sk", bs), ("st", bt)):
                tot[key] += v
                worst[key] = min(worst[key], zb / v)
            tot["z"] += zb
        paths.append(c / "model.safetensors")
        prev = cur
    if tot["prev"]:
        say("")
        say(f"Checkpoints 2..{len(ckpts)} together: zipnn {tot['z'] / MB:.1f} MB; against the previous "
            f"{tot['prev'] / MB:.2f} MB ({tot['z'] / tot['prev']:.0f}x, worst checkpoint {worst['prev']:.0f}x); "
            f"skip-deltas {tot['sk'] / MB:.2f} MB ({tot['z'] / tot['sk']:.0f}x, worst {worst['sk']:.0f}x); "
            f"the store's bases {tot['st'] / MB:.2f} MB ({tot['z'] / tot['st']:.0f}x, worst {worst['st']:.0f}x).")


#: what a compiled helper would do, for --compiled-probe: v2's grouping (a counting sort fused with
#: the plane split) and the difference transform, in C. Compiled at run time with the system's cc
#: into a temporary directory and called through ctypes: a measurement, not a dependency.
PROBE_C = r"""
#include <stdint.h>
#include <string.h>
void group_split16(const uint16_t *w, const uint8_t *ctx, int64_t n, uint8_t *hi, uint8_t *lo) {
    int64_t pos[256], s = 0, cnt[256]; memset(cnt, 0, sizeof cnt);
    for (int64_t i = 0; i < n; i++) cnt[ctx[i]]++;
    for (int c = 0; c < 256; c++) { pos[c] = s; s += cnt[c]; }
    for (int64_t i = 0; i < n; i++) { int64_t p = pos[ctx[i]]++; hi[p] = w[i] >> 8; lo[p] = (uint8_t)w[i]; }
}
void ungroup_join16(const uint8_t *hi, const uint8_t *lo, const uint8_t *ctx, int64_t n, uint16_t *w) {
    int64_t pos[256], s = 0, cnt[256]; memset(cnt, 0, sizeof cnt);
    for (int64_t i = 0; i < n; i++) cnt[ctx[i]]++;
    for (int c = 0; c < 256; c++) { pos[c] = s; s += cnt[c]; }
    for (int64_t i = 0; i < n; i++) { int64_t p = pos[ctx[i]]++; w[i] = (uint16_t)(hi[p] << 8 | lo[p]); }
}
static inline int16_t ord16(int16_t x) { return x ^ ((x >> 15) & 0x7fff); }
void diff16(const int16_t *t, const int16_t *b, int64_t n, int16_t *out) {
    for (int64_t i = 0; i < n; i++) { int16_t d = (int16_t)(ord16(t[i]) - ord16(b[i])); out[i] = (int16_t)((uint16_t)d << 1) ^ (d >> 15); }
}
void undiff16(const int16_t *z, const int16_t *b, int64_t n, int16_t *out) {
    for (int64_t i = 0; i < n; i++) { int16_t d = (int16_t)((uint16_t)z[i] >> 1) ^ (int16_t)(-(z[i] & 1)); out[i] = ord16((int16_t)(d + ord16(b[i]))); }
}
"""


def compiled_probe(base: dict, ft: dict, say, repeat: int) -> None:
    """ns per element of v2's grouping and of the difference, numpy (the codec as shipped) against
    the same work in C, on one real 1 MiB chunk; the outputs are checked equal."""
    import ctypes
    import subprocess
    import tempfile

    from deltastore.codec.lossless import diff_code_numpy, diff_decode_numpy

    fx = planes.fast()

    with tempfile.TemporaryDirectory() as d:
        src, lib = Path(d) / "probe.c", Path(d) / "probe.so"
        src.write_text(PROBE_C)
        try:
            subprocess.run(["cc", "-O3", "-march=native", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            say(f"(no C compiler: {e})")
            return
        c = ctypes.CDLL(str(lib))
        P, N = ctypes.c_void_p, ctypes.c_int64
        c.group_split16.argtypes = [P, P, N, P, P]
        c.ungroup_join16.argtypes = [P, P, P, N, P]
        c.diff16.argtypes = c.undiff16.argtypes = [P, P, N, P]
        name = max((k for k, t in base.items() if t.dim() == 2 and k in ft and "embed" not in k), key=lambda k: base[k].numel())
        bu, tu = tensor_u8(base[name]), tensor_u8(ft[name])
        n = min(bu.size // 2, planes.CHUNK_BYTES // 8)  # a v2 chunk: 1 MiB of bf16
        bu, tu = bu[: 2 * n].copy(), tu[: 2 * n].copy()
        code = diff_code(tu, bu, 2)
        ctx = exponent_contexts(bu, torch.bfloat16)
        hi, lo, w, o16 = np.empty(n, np.uint8), np.empty(n, np.uint8), np.empty(n, np.uint16), np.empty(n, np.int16)

        def np_group():
            order, _ = planes.group_order(ctx)
            return planes.split_planes(code.view(np.uint16)[order].view(np.uint8), 2, False)

        def np_ungroup():
            order, _ = planes.group_order(ctx)
            g = planes.join_planes([hi, lo], 2, False)
            out = np.empty(n, np.uint16)
            out[order] = g.view(np.uint16)
            return out

        shift, bits = 7, 8  # bf16's exponent field
        grouped, counts = fx.group_split(code, ctx, 2, False) if fx else (None, None)
        out8 = np.empty(2 * n, np.uint8)
        rows = [("v2 grouping, encode (stable order by context + gather + plane split)", np_group,
                 fx and (lambda: fx.group_split(code, ctx, 2, False)),
                 lambda: c.group_split16(code.ctypes.data, ctx.ctypes.data, n, hi.ctypes.data, lo.ctypes.data)),
                ("v2 grouping, decode (order + plane join + scatter)", np_ungroup,
                 fx and (lambda: fx.ungroup_join(grouped, ctx, fx.context_counts(ctx), 2, False, out8)),
                 lambda: c.ungroup_join16(hi.ctypes.data, lo.ctypes.data, ctx.ctypes.data, n, w.ctypes.data)),
                ("difference, encode (ordered ints, subtract, zigzag)", lambda: diff_code_numpy(tu, bu, 2),
                 fx and (lambda: fx.diff_code(tu, bu, 2)),
                 lambda: c.diff16(tu.ctypes.data, bu.ctypes.data, n, o16.ctypes.data)),
                ("difference, decode", lambda: diff_decode_numpy(code, bu, 2),
                 fx and (lambda: fx.diff_decode(code, bu, 2)),
                 lambda: c.undiff16(code.ctypes.data, bu.ctypes.data, n, o16.ctypes.data)),
                ("v2 encode as shipped: exponent, difference and grouping fused (numba)", None,
                 fx and (lambda: fx.diff_group_split(tu, bu, 2, shift, bits)), None),
                ("v2 decode as shipped: ungrouping and difference fused (numba)", None,
                 fx and (lambda: fx.ungroup_undiff(grouped, bu, 2, shift, bits, counts, out8)), None)]
        say(f"Compiled-helper probe on {name}'s first {n:,} elements (one v2 chunk), ns per element, best of {max(repeat, 5)}:")
        say("")
        say("| step | numpy (reference) | numba (shipped) | C (probe) |")
        say("|---|---:|---:|---:|")
        ns = lambda f: f"{cpu(f, max(repeat, 5))[0] / n * 1e9:.2f}" if f else "-"  # noqa: E731
        for label, fn, fb, fc in rows:
            say(f"| {label} | {ns(fn)} | {ns(fb)} | {ns(fc)} |")
            if label.startswith("v2 grouping, encode"):
                h, l = np_group()
                assert np.array_equal(h, hi) and np.array_equal(l, lo), "C grouping differs from numpy's"
            if label.startswith("v2 grouping, decode"):
                assert np.array_equal(w, code.view(np.uint16)), "C ungrouping differs"
        if fx:  # the compiled kernels as timed gave numpy's bytes
            assert np.array_equal(grouped[0], hi) and np.array_equal(grouped[1], lo), "numba grouping differs"
            assert np.array_equal(fx.diff_group_split(tu, bu, 2, shift, bits)[0], grouped), "numba fused encode differs"
            assert np.array_equal(out8, tu), "numba fused decode differs"
        say("")


def rans_probe(pairs, say, repeat: int, z: dict | None, v2: dict) -> None:
    """benchmarks/probe_rans.py on the fine-tune's changed bf16 tensors: bytes against v2 and
    speed per core (the same units as the table above), the round trip checked exact. Each tensor's
    decode includes building its decoder table from the stored frequencies."""
    import probe_rans as pr

    bf = [(n, t, b) for n, t, b in pairs if t.dtype == torch.bfloat16]
    words = [(t.reshape(-1).view(torch.int16).numpy().view(np.uint16), b.reshape(-1).view(torch.int16).numpy().view(np.uint16))
             for _, t, b in bf]
    nel = sum(t.size for t, _ in words)
    pr.decode(pr.encode(words[0][0][:4099], words[0][1][:4099]), words[0][1][:4099], np.empty(4099, np.uint16))  # compile
    te, coded = cpu(lambda: [pr.encode(t, b) for t, b in words], repeat)
    outs = [np.empty(t.size, np.uint16) for t, _ in words]
    td, _ = cpu(lambda: [pr.decode(c, b, o) for c, (_, b), o in zip(coded, words, outs)], repeat)
    for o, (t, _), (n, _, _) in zip(outs, words, bf):
        assert np.array_equal(o, t), f"{n}: rANS probe round trip is not exact"
    nb = sum(c.nbytes for c in coded)
    ntab = sum(c.ntab for c in coded)
    v2b = sum(len(to_bytes(Lossless().encode(t, b))) for _, t, b in bf)
    say(f"Per-context rANS probe (benchmarks/probe_rans.py: 60 symbols + raw bits, one 12-bit table per base exponent "
        f"per tensor ({ntab} tables in all), 4 interleaved states, decode fused with the exponent lookup), "
        f"{len(bf)} bf16 tensors, {nel:,} elements, CPU time, best of {repeat}:")
    say("")
    say("| method | MB | x v2 | encode MB/s/core | decode MB/s/core | encode ns/element | decode ns/element |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    ns = lambda mbs: 2e3 / mbs  # noqa: E731  (bf16: 2 bytes an element; MB/s -> ns per element)
    if z:
        say(f"| zipnn 0.5.4 (the file, table above) | {z['bytes'] / MB:.2f} | - | {z['enc']:,.0f} | {z['dec']:,.0f} | "
            f"{ns(z['enc']):.2f} | {ns(z['dec']):.2f} |")
    say(f"| lossless v2 (table above) | {v2['bytes'] / MB:.2f} | - | {v2['enc']:,.0f} | {v2['dec']:,.0f} | "
        f"{ns(v2['enc']):.2f} | {ns(v2['dec']):.2f} |")
    say(f"| lossless v2, these tensors | {v2b / MB:.2f} | 1.000 | | | | |")
    say(f"| rANS probe, these tensors | {nb / MB:.2f} | {nb / v2b:.3f} | {2 * nel / te / MB:,.0f} | {2 * nel / td / MB:,.0f} | "
        f"{te / nel * 1e9:.2f} | {td / nel * 1e9:.2f} |")
    say("")
    # the kernels alone on one chunk, beside zipnn's whole decode of the same bytes
    k = max((i for i, (n, _, _) in enumerate(bf) if "embed" not in n), key=lambda i: words[i][0].size)
    t, b = (a[: pr.CHUNK] for a in words[k])
    c = pr.encode(t, b)
    pr.fill_dtab(c.freq, c.cum, pr.NRAW, pr.ZBASE, pr._DTAB)
    zs, o = np.empty(t.size, np.uint16), np.empty(t.size, np.uint16)
    tk, _ = cpu(lambda: pr.decode_chunk(c.chunks[0][0], c.chunks[0][1], b, pr._DTAB, zs, o), max(repeat, 5))
    assert np.array_equal(o, t)
    line = (f"One chunk ({bf[k][0]}, first {t.size:,} elements), best of {max(repeat, 5)}: the probe's decode kernel alone "
            f"(table built) {tk / t.size * 1e9:.2f} ns/element")
    try:
        from zipnn import ZipNN

        zz = ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=1)
        comp = zz.compress(bytearray(t.tobytes()))
        tz, _ = cpu(lambda: zz.decompress(comp), max(repeat, 5))
        line += f"; zipnn's whole decode of the same {2 * t.size:,} bytes {tz / t.size * 1e9:.2f} ns/element"
    except ImportError:
        pass
    say(line + ".")
    say("")


def store_chain(ckpts: list[Path], base_dir: Path, say, base_from: bool = False) -> None:
    """The series through a real store (a temporary one): add base, then each checkpoint with
    ``--base RUN@latest --codec lossless``; per version what the store added and its delta base;
    then every checkpoint checked out and compared byte for byte with its file, timed. ``base_from``:
    the same adds again into a second store, each given the previous checkpoint's directory
    (``--base-from``), alternating with the first store's add of the same checkpoint."""
    import hashlib
    import shutil
    import tempfile

    import deltastore

    def sha(p: Path) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        return h.hexdigest()

    tmp = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    try:
        with deltastore.open(tmp / "home") as st:
            t0 = time.perf_counter()
            st.add_base("base", base_dir)
            say(f"Store: workers {st.workers}; add base {time.perf_counter() - t0:.1f} s wall.  ")
            say("")
            say("| version | checkpoint | delta base | stored MB (new objects) | add s (wall) | checkout s (wall) | deltas walked | exact |"
                + " add s, --base-from the previous checkpoint | same stored bytes |" * base_from)
            say("|---|---|---|---:|---:|---:|---:|---|" + "---:|---|" * base_from)
            rows = []
            st2 = deltastore.open(tmp / "home2") if base_from else None
            if st2 is not None:
                st2.add_base("base", base_dir)
            for i, c in enumerate(ckpts):
                t0 = time.perf_counter()
                v = st.add_finetune("run", c, base="base" if i == 0 else "run@latest", codec="lossless")
                rows.append([v, c, time.perf_counter() - t0])
                if st2 is not None:
                    t0 = time.perf_counter()
                    v2 = st2.add_finetune("run", c, base="base" if i == 0 else "run@latest", codec="lossless",
                                          base_from=base_dir if i == 0 else ckpts[i - 1])
                    rows[-1] += [time.perf_counter() - t0, v2.stored_bytes == v.stored_bytes]
            if st2 is not None:
                st2.close()
            for v, c, add_s, *more in rows:
                out = tmp / "out"
                t0 = time.perf_counter()
                st.checkout(v.ref, out)
                co = time.perf_counter() - t0
                exact = sha(out / "model.safetensors") == sha(c / "model.safetensors")
                shutil.rmtree(out)
                depth, b = 0, v
                while b.base is not None:
                    depth, b = depth + 1, st.resolve(b.base)
                say(f"| {v.ref} | {c.name} | {v.base} | {v.stored_bytes / MB:.2f} | {add_s:.1f} | {co:.1f} | {depth} | {exact} |"
                    + (f" {more[0]:.1f} | {more[1]} |" if more else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_codec(codec: Lossless, pairs, repeat: int) -> dict:
    raw = sum(t.numel() * t.element_size() for _, t, _ in pairs)
    tc, encs = cpu(lambda: [codec.encode(t, b) for _, t, b in pairs], repeat)
    payloads = [to_bytes(e) for e in encs]
    encs = [from_bytes(p) for p in payloads]
    td, outs = cpu(lambda: [codec.reconstruct(e, b) for e, (_, _, b) in zip(encs, pairs)], repeat)  # b None: plain
    for o, (n, t, _) in zip(outs, pairs):
        assert torch.equal(o.view(torch.uint8), t.view(torch.uint8)), f"{n}: round trip is not exact"
    return dict(bytes=sum(len(p) for p in payloads), raw=raw, enc=raw / tc / MB, dec=raw / td / MB)


def bench_zipnn(path: Path, repeat: int) -> dict | None:
    try:
        from zipnn import ZipNN
    except ImportError:
        return None
    data = path.read_bytes()
    z = ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=1)
    tc = td = float("inf")
    for _ in range(repeat):
        buf = bytearray(data)  # zipnn reorders its input in place: a copy, not timed
        t, comp = cpu(lambda: z.compress(buf), 1)
        tc = min(tc, t)
        t, out = cpu(lambda: z.decompress(comp), 1)
        td = min(td, t)
        assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    return dict(bytes=len(comp), raw=len(data), enc=len(data) / tc / MB, dec=len(data) / td / MB)


def entropy_bytes(x: np.ndarray, nbins: int) -> float:
    c = np.bincount(x, minlength=nbins).astype(np.float64)
    c = c[c > 0]
    return float(-(c * np.log2(c / c.sum())).sum()) / 8


def diff_entropies(pairs) -> tuple[float, float, float]:
    codes, ctxs = [], []
    for _, t, b in pairs:
        if t.dtype != torch.bfloat16:
            continue
        bu = tensor_u8(b)
        codes.append(diff_code(tensor_u8(t), bu, 2).view(np.uint16))
        ctxs.append(exponent_contexts(bu, torch.bfloat16))
    c, e = np.concatenate(codes), np.concatenate(ctxs)
    h0 = entropy_bytes(c, 65536)
    order = np.argsort(e, kind="stable")
    cs, es = c[order], e[order]
    cuts = np.flatnonzero(np.diff(es)) + 1
    hc = sum(entropy_bytes(seg, 65536) for seg in np.split(cs, cuts))
    return h0, hc, float((c != 0).mean())


def base_exponent_entropy(base: dict) -> tuple[float, float, float, int]:
    """Entropy of the bf16 exponents: order-0, order-1 (given the previous element's exponent,
    row-major) and given the row (each row of a matrix its own order-0 table, tables not counted)."""
    ts = [t for t in base.values() if t.dtype == torch.bfloat16]
    e = np.concatenate([exponent_contexts(tensor_u8(t), torch.bfloat16) for t in ts])
    h0 = entropy_bytes(e, 256)
    pair = e[1:].astype(np.int64) * 256 + e[:-1]
    h1 = entropy_bytes(pair, 65536) - entropy_bytes(e[:-1], 256)  # H(X_i | X_{i-1})
    hrow = 0.0
    for t in ts:
        x = exponent_contexts(tensor_u8(t), torch.bfloat16).astype(np.int64)
        rows = t.shape[0] if t.dim() == 2 else 1
        key = np.repeat(np.arange(rows, dtype=np.int64), x.size // rows) * 256 + x
        c = np.bincount(key, minlength=rows * 256).reshape(rows, 256).astype(np.float64)
        tot = c.sum(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            hrow += float(-np.nansum(c * np.log2(c / tot))) / 8
    return h0, h1, hrow, e.size


def _quantile_classes(v: np.ndarray, k: int) -> np.ndarray:
    """Each value's class among ``k`` equal-count classes of ``v`` (what a coder would store as one
    byte per row or column)."""
    return np.searchsorted(np.quantile(v, np.linspace(0, 1, k + 1)[1:-1]), v, side="right").astype(np.int64)


def lowplane_probe(base: dict, base_file: Path | None, say, repeat: int = 2) -> None:
    """benchmarks/probe_lowplane.py on the base's bf16 tensors: bytes and speed per core at a few
    zstd levels beside today's planes and zipnn on the file (same process), round trip checked;
    and how many distinct values aligned 32-element blocks hold (the grid the low plane's runs come from)."""
    import probe_lowplane as pl

    ts = [t.reshape(-1).view(torch.int16).numpy().view(np.uint16) for t in base.values() if t.dtype == torch.bfloat16]
    raw = sum(2 * w.size for w in ts)
    pl.decode(pl.encode(ts[0][:4099], 3), 4099)  # compile
    sums = {k: [0, 0] for k in ("aligned", "shifted", "shuffled")}
    rng = np.random.default_rng(0)
    for w in ts:
        o = w.astype(np.int64)
        for k, (x, off) in {"aligned": (o, 0), "shifted": (o, 16), "shuffled": (rng.permutation(o), 0)}.items():
            d, b = pl.distinct_per_block(x, 32, off)
            sums[k][0] += d
            sums[k][1] += b
    say("Distinct values per 32-element block of the base's bf16 tensors: aligned blocks " +
        ", ".join(f"{k} {d / b:.1f}" for k, (d, b) in sums.items()).removeprefix("aligned ") +
        " (the values of an aligned block lie on an equally spaced grid: group-wise quantization's trace).")
    say("")
    tp, streams = cpu(lambda: [planes.compress(w.view(np.uint8), 2, rotate=True) for w in ts], repeat)
    tq, _ = cpu(lambda: [planes.decompress(p) for p in streams], repeat)
    say(f"| the base's bf16 tensors ({raw / MB:.2f} MB) | MB | vs today | encode MB/s/core | decode MB/s/core |")
    say("|---|---:|---:|---:|---:|")
    today = sum(map(len, streams))
    z = bench_zipnn(base_file, repeat) if base_file else None
    if z:
        say(f"| zipnn 0.5.4, the base file ({z['raw'] / MB:.2f} MB) | {z['bytes'] / MB:.2f} | {z['bytes'] / today - 1:+.2%} | "
            f"{z['enc']:,.0f} | {z['dec']:,.0f} |")
    say(f"| today's planes + zstd | {today / MB:.2f} | - | {raw / tp / MB:,.0f} | {raw / tq / MB:,.0f} |")
    for level in (-1, 1, 3):
        te, enc = cpu(lambda: [pl.encode(w, level) for w in ts], repeat)
        td, outs = cpu(lambda: [pl.decode(c, w.size) for c, w in zip(enc, ts)], repeat)
        assert all(np.array_equal(o, w) for o, w in zip(outs, ts)), "low-plane probe round trip is not exact"
        nb = sum(pl.nbytes(c) for c in enc)
        say(f"| low plane grouped by the element's own exponent, zstd {level} | {nb / MB:.2f} | {nb / today - 1:+.2%} | "
            f"{raw / te / MB:,.0f} | {raw / td / MB:,.0f} |")
    te, enc = cpu(lambda: [pl.encode_runs(w) for w in ts], repeat)
    td, outs = cpu(lambda: [pl.decode_runs(c, w.size) for c, w in zip(enc, ts)], repeat)
    assert all(np.array_equal(o, w) for o, w in zip(outs, ts)), "runs probe round trip is not exact"
    nb = sum(pl.nbytes_runs(c) for c in enc)
    say(f"| low plane as runs: a flag per element (same low byte as the last with its exponent) + raw literals | "
        f"{nb / MB:.2f} | {nb / today - 1:+.2%} | {raw / te / MB:,.0f} | {raw / td / MB:,.0f} |")
    say("")


def _bf16_words(sd: dict) -> list[np.ndarray]:
    """Each floating tensor of ``sd`` as bf16 words (uint16; fp32/fp16 rounded to bf16 by torch)."""
    return [t.to(torch.bfloat16).reshape(-1).view(torch.int16).numpy().view(np.uint16)
            for t in sd.values() if t.is_floating_point() and t.numel()]


def palette_probe(base: dict, base_file: Path | None, say, repeat: int, others: list[Path]) -> None:
    """benchmarks/probe_palette.py (a palette per aligned 32-element block, blocks decoded
    independently) on the base's bf16 tensors: bytes and CPU-time speed per core beside zipnn on
    the file, today's planes and the runs coding of probe_lowplane.py, in the same process, every
    round trip checked; then, for ``others`` (safetensors files), whether their weights sit on
    such a grid (distinct words per block) and what the palette gives there against today's planes."""
    import probe_lowplane as pl
    import probe_palette as pp

    ts = _bf16_words({n: t for n, t in base.items() if t.dtype == torch.bfloat16})
    raw = sum(2 * w.size for w in ts)
    variants = {"every stream through zstd where it shrinks": (), "`pal` and `idx` raw (not tried)": ("pal", "idx")}
    for r in variants.values():
        pp.decode(pp.encode(ts[0][:4099], 3, r), 4099)  # compile
    pl.decode_runs(pl.encode_runs(ts[0][:4099]), 4099)
    say("### The base as a palette per aligned 32-element block (benchmarks/probe_palette.py)")
    say("")
    say(f"Load average before: {os.getloadavg()[0]:.1f}. CPU seconds of this process, one thread, best of {repeat}; "
        "every row's round trip checked bit for bit.")
    say("")
    say(f"| the base's bf16 tensors ({raw / MB:.2f} MB) | MB | vs zipnn | vs today | encode MB/s/core | decode MB/s/core |")
    say("|---|---:|---:|---:|---:|---:|")
    tp, streams = cpu(lambda: [planes.compress(w.view(np.uint8), 2, rotate=True) for w in ts], repeat)
    tq, _ = cpu(lambda: [planes.decompress(p) for p in streams], repeat)
    today = sum(map(len, streams))
    z = bench_zipnn(base_file, repeat) if base_file else None
    zb = z["bytes"] if z else float("nan")

    def row(name: str, nb: int, te: float | None, td: float | None) -> None:
        sp = (f"{raw / te / MB:,.0f} | {raw / td / MB:,.0f}") if te else f"{z['enc']:,.0f} | {z['dec']:,.0f}"
        say(f"| {name} | {nb / MB:.2f} | {nb / zb - 1:+.2%} | {nb / today - 1:+.2%} | {sp} |")

    if z:
        row(f"zipnn 0.5.4, the base file ({z['raw'] / MB:.2f} MB)", zb, None, None)
    row("today's planes + zstd", today, tp, tq)
    te, enc = cpu(lambda: [pl.encode_runs(w) for w in ts], repeat)
    td, outs = cpu(lambda: [pl.decode_runs(c, w.size) for c, w in zip(enc, ts)], repeat)
    assert all(np.array_equal(o, w) for o, w in zip(outs, ts)), "runs probe round trip is not exact"
    row("low plane as runs (probe_lowplane.py, run 9's row)", sum(pl.nbytes_runs(c) for c in enc), te, td)
    details = []
    for name, r in variants.items():
        te, enc = cpu(lambda: [pp.encode(w, 3, r) for w in ts], repeat)
        td, outs = cpu(lambda: [pp.decode(c, w.size) for c, w in zip(enc, ts)], repeat)
        assert all(np.array_equal(o, w) for o, w in zip(outs, ts)), "palette probe round trip is not exact"
        chunks = [c for cs in enc for c in cs]
        row(f"palette per 32-element block, {name}", pp.nbytes(chunks), te, td)
        details.append((name, pp.stream_bytes(chunks), sum(c.n for c in chunks if c.planes is not None)))
    say("")
    say(f"Load average after: {os.getloadavg()[0]:.1f}.")
    say("")
    for name, sb, nplanes in details:
        say(f"Palette streams ({name}), MB: " + ", ".join(f"{k} {v / MB:.2f}" for k, v in sb.items()) +
            f"; elements in chunks kept as today's planes (the palette did not pay): {nplanes:,} of {raw // 2:,}.  ")
    say("")
    if not others:
        return
    say("#### Do other weights sit on such a grid?")
    say("")
    say("Floating tensors of each file as bf16 words (fp32 rounded to bf16). Distinct words per 32-element "
        "block: aligned, shifted by 16, shuffled (no grid: aligned = shifted ~ shuffled ~ 32). Palette "
        "(`pal`, `idx` raw) against today's planes on the same words.")
    say("")
    say("| file | elements | distinct aligned | shifted | shuffled | planes MB | palette MB | palette vs planes |")
    say("|---|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for f in others:
        ws = _bf16_words(load_file(str(f)))
        sums = [[0, 0], [0, 0], [0, 0]]
        for w in ws:
            o = w.astype(np.int64)
            for acc, (x, off) in zip(sums, ((o, 0), (o, 16), (rng.permutation(o), 0))):
                d, b = pl.distinct_per_block(x, 32, off)
                acc[0] += d
                acc[1] += b
        npl = sum(len(planes.compress(w.view(np.uint8), 2, rotate=True)) for w in ws)
        encs = [pp.encode(w, 3, ("pal", "idx")) for w in ws]
        assert all(np.array_equal(pp.decode(c, w.size), w) for c, w in zip(encs, ws)), f"{f}: palette round trip"
        npp = sum(pp.nbytes(c) for c in encs)
        say(f"| {f.parent.parent.name}/{f.parent.name}/{f.name} | {sum(w.size for w in ws):,} | " +
            " | ".join(f"{d / max(b, 1):.1f}" for d, b in sums) + f" | {npl / MB:.2f} | {npp / MB:.2f} | {npp / npl - 1:+.2%} |")
    say("")


def _float16_tensors(sd: dict) -> list[np.ndarray]:
    """The bf16/fp16 tensors of ``sd`` as the store hands them to ``put_tensor`` (uint8 views)."""
    return [t.reshape(-1).view(torch.uint8).numpy() for t in sd.values() if t.dtype in (torch.bfloat16, torch.float16) and t.numel()]


def palette_store(base: dict, base_file: Path, say, repeat: int, others: list[Path]) -> None:
    """Issue 12, bases: plane mode 2 (codec/palette.py) as the store writes tensor objects
    (``planes.compress_framed``, palette on) against today's format (the same call with
    ``palette=False``) and zipnn on the base file: bytes, and MB/s per core both ways (one thread,
    CPU seconds of this process, best of ``repeat``), every round trip checked bit for bit. Then
    the cost where there is no grid (``others``, e.g. MiniLM as bf16 and a fine-tune trained off the
    grid): the same two encodes, and the grid test's own time (:func:`codec.palette.worth_trying`
    on every chunk) as a share of today's encode."""
    from deltastore.codec import palette

    def enc(ts, pal):
        return [planes.compress_framed(t, 2, b"", rotate=True, level=3, threads=1, palette=pal) for t in ts]

    def dec(streams):
        return [planes.decompress(s, threads=1) for s in streams]

    def measure(ts, zfile=None):
        """(today, palette) rows, their timings interleaved (today, palette, today, ...) so that a
        change in the machine's load falls on both alike; with ``zfile``, zipnn on that file in the
        same rounds (zipnn, today, palette, zipnn, ...) and its row too."""
        best = {(pal, way): float("inf") for pal in (False, True) for way in ("enc", "dec")}
        streams, zs, rounds = {}, [], []
        raw = sum(t.size for t in ts)
        for _ in range(repeat):
            if zfile is not None:
                zs.append(bench_zipnn(zfile, 1))
            for pal in (False, True):
                t, streams[pal] = cpu(lambda: enc(ts, pal), 1)
                best[pal, "enc"] = min(best[pal, "enc"], t)
                te = t
                t, outs = cpu(lambda: dec(streams[pal]), 1)
                best[pal, "dec"] = min(best[pal, "dec"], t)
                if pal and zs:  # this round's palette speeds over zipnn's, timed minutes apart at most
                    rounds.append((raw / te / MB / zs[-1]["enc"], raw / t / MB / zs[-1]["dec"]))
                assert all(np.array_equal(o, x) for o, x in zip(outs, ts)), "palette store round trip is not exact"
                del outs
        rows = []
        for pal in (False, True):
            modes = [m for s in streams[pal] for m in planes.read_info(memoryview(s)).modes]
            rows.append(dict(bytes=sum(s.size for s in streams[pal]), raw=raw, enc=raw / best[pal, "enc"] / MB,
                             dec=raw / best[pal, "dec"] / MB, pal=sum(m[0] == palette.MODE for m in modes), chunks=len(modes)))
        if zs:
            rows.append(dict(zs[0], enc=max(z["enc"] for z in zs), dec=max(z["dec"] for z in zs), rounds=rounds))
        return rows

    ts = _float16_tensors(base)
    rng = np.random.default_rng(0)  # a small grid, so numba's kernels are loaded and compiled before timing
    warm = np.repeat((rng.standard_normal(4096).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16), 16)
    assert np.array_equal(planes.decompress(enc([warm.view(np.uint8)], True)[0]), warm.view(np.uint8))
    say("## Issue 12, bases: the palette as plane mode 2 of the store's tensor objects (codec/palette.py)")
    say("")
    say(f"Load average before: {os.getloadavg()[0]:.1f}. One thread, CPU seconds of this process, best of {repeat} "
        "(zipnn's, today's and the palette's runs interleaved round by round); every round trip checked bit for bit. numba kernels: palette "
        f"{'loaded' if palette.kernels() else 'not used (numpy path)'}, plane join {'loaded' if planes._loaded() else 'numpy'}.")
    say("")
    today, new, z = measure(ts, base_file)
    say(f"| SmolLM2-135M base, bf16 tensors ({today['raw'] / MB:.2f} MB) | MB | vs zipnn | vs today | "
        "encode MB/s/core | decode MB/s/core | x zipnn encode / decode |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in ((f"zipnn 0.5.4, the base file ({z['raw'] / MB:.2f} MB)", z), ("today's format (palette=False)", today),
                    ("plane mode 2 where it wins (palette=True, the store's writer)", new)):
        say(f"| {name} | {r['bytes'] / MB:.2f} | {r['bytes'] / z['bytes'] - 1:+.2%} | {r['bytes'] / today['bytes'] - 1:+.2%} | "
            f"{r['enc']:,.0f} | {r['dec']:,.0f} | {r['enc'] / z['enc']:.2f} / {r['dec'] / z['dec']:.2f} |")
    say("")
    re_, rd_ = (sorted(r[i] for r in z["rounds"]) for i in (0, 1))
    say(f"Round by round (zipnn, then the palette, each round): palette / zipnn encode median {np.median(re_):.2f} "
        f"(rounds {', '.join(f'{x:.2f}' for x in re_)}), decode median {np.median(rd_):.2f} (rounds {', '.join(f'{x:.2f}' for x in rd_)}).")
    say("")
    say(f"Chunks coded as palettes: {new['pal']} of {new['chunks']}. Load average after: {os.getloadavg()[0]:.1f}.")
    say("")
    if not others:
        return
    say("### Where there is no grid: what the palette costs")
    say("")
    say("Floating tensors of each file as bf16 words (fp32 rounded to bf16, as a bf16 copy of it would be stored). "
        "Grid test: `palette.worth_trying` on every chunk (4 MiB, or the tensor), CPU seconds, as a share of today's encode.")
    say("")
    say("| file | MB | chunks as palettes | bytes vs today | encode MB/s/core today / palette=True | decode today / palette=True | grid test, % of today's encode |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    step = planes.CHUNK_BYTES
    for f in others:
        ws = [w.view(np.uint8) for w in _bf16_words(load_file(str(f)))]
        a, b = measure(ws)
        tt, _ = cpu(lambda: [palette.worth_trying(w[i : i + step].view(np.uint16)) for w in ws for i in range(0, w.size, step)],
                    repeat)
        say(f"| {f.parent.parent.name}/{f.parent.name}/{f.name} | {a['raw'] / MB:.2f} | {b['pal']} of {b['chunks']} | "
            f"{b['bytes'] / a['bytes'] - 1:+.3%} | {a['enc']:,.0f} / {b['enc']:,.0f} | {a['dec']:,.0f} / {b['dec']:,.0f} | "
            f"{tt / (a['raw'] / a['enc'] / MB):.2%} |")
    say("")
    say(f"Load average after: {os.getloadavg()[0]:.1f}.")
    say("")


def decode_stages(base: dict, ft_file: Path, pairs, say, repeat: int) -> None:
    """Issue 12's decode goal, fair both ways: v2's and v3's decode of the fine-tune beside zipnn's
    decode of the fine-tune file in the same process, per core (CPU time, one thread, median and
    best of ``repeat``, rows interleaved; the system-time share beside it: page faults on fresh
    output memory). v3 (the default before v4; pinned here with zero_planes=False) is v2's stream plus each chunk's context counts, so its
    decode of 2-byte words skips the base's histogram. zipnn's
    figure is: its header, Huffman of the exponent plane, the raw mantissa plane, the join, into
    one fresh buffer; no hash, and no base. So v2 is timed as the store calls it today
    (``from_bytes`` + ``reconstruct``, a fresh array per tensor), into one fresh buffer for the whole
    model (``reconstruct_into`` slices: zipnn's output), and into one buffer reused across repeats
    (``from_bytes(copy=False)`` throughout, as the store's checkout reads a payload: views, no copies;
    before the twenty-ninth session's run 67 these rows copied every array of the payload)
    (the decode's own work, no page faults); the first two plus the store's sha256 of every tensor
    (zipnn plus a sha256 of its output beside them); v1's payloads and v2 with python-zstandard
    decoding the frames (the frame decode before this change), the store's way; and what a checkout
    adds where the base's bytes are not in memory: the base's tensors decoded from their own
    objects (plain planes). Then each stage on its own over the same tensors, ns per element."""
    from deltastore.codec import _zstd

    fx = planes.fast()
    lx, l1, l2 = Lossless(zero_planes=False), Lossless(by_exponent=False), Lossless(context_counts=False, zero_planes=False)
    l4 = Lossless()  # today's default (v4: v3 plus all-zero planes without a payload)
    payloads4 = [to_bytes(l4.encode(t, b)) for _, t, b in pairs]
    payloads = [to_bytes(lx.encode(t, b)) for _, t, b in pairs]
    payloads1 = [to_bytes(l1.encode(t, b)) for _, t, b in pairs]
    payloads2 = [to_bytes(l2.encode(t, b)) for _, t, b in pairs]
    nel = sum(t.numel() for _, t, _ in pairs)
    raw = 2 * nel
    sizes = [t.numel() * t.element_size() for _, t, _ in pairs]
    offs = np.cumsum([0] + sizes).tolist()
    lib = _zstd.lib()
    lib_name = "libzstd " + ".".join(str(lib.ZSTD_versionNumber() // d % 100) for d in (10000, 100, 1)) \
        if lib else "python-zstandard (no libzstd)"

    def per_tensor(sha: bool, pl=payloads, codec=lx):  # noqa: ANN001
        def f():
            outs = []
            for p, (_, _, b) in zip(pl, pairs):
                o = codec.reconstruct(from_bytes(p, copy=False), b)  # views of the payload, as the store's checkout
                if sha:
                    hashlib.sha256(o.reshape(-1).view(torch.uint8).numpy()).digest()
                outs.append(o)
            return outs
        return f

    def one_buffer(sha: bool, keep: np.ndarray | None = None):
        def f():
            out = np.empty(offs[-1], dtype=np.uint8) if keep is None else keep
            for p, (_, _, b), lo, hi in zip(payloads, pairs, offs, offs[1:]):
                lx.reconstruct_into(from_bytes(p, copy=False), b, out[lo:hi])
                if sha:
                    hashlib.sha256(out[lo:hi]).digest()
            return out
        return f

    def without_libzstd(fn):  # noqa: ANN001
        def f():
            global_lib, _zstd._LIB = _zstd._LIB, None
            try:
                return fn()
            finally:
                _zstd._LIB = global_lib
        return f

    warm = np.zeros(offs[-1], dtype=np.uint8)
    for variant in (one_buffer(False), per_tensor(False, payloads4, l4), per_tensor(False, payloads1, l1), per_tensor(False, payloads2, l2),
                    without_libzstd(per_tensor(False))):
        got = variant()
        for k, (_, t, _) in enumerate(pairs):
            part = got[offs[k] : offs[k + 1]] if isinstance(got, np.ndarray) else tensor_u8(got[k])
            assert np.array_equal(part, tensor_u8(t)), "a decode is not exact"
        del got
    from zipnn import ZipNN

    data = ft_file.read_bytes()
    z = ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=1)
    comp = z.compress(bytearray(data))
    assert hashlib.sha256(z.decompress(comp)).digest() == hashlib.sha256(data).digest()
    base_streams = [(planes.compress(tensor_u8(b), 2, rotate=True), b.numel() * 2) for _, _, b in pairs]
    rows = [
        ("zipnn 0.5.4: the fine-tune file into one buffer", len(data), lambda: z.decompress(comp)),
        ("zipnn 0.5.4, + sha256 of its output", len(data), lambda: hashlib.sha256(z.decompress(comp)).digest()),
        ("**v4, the default, as the store calls it** (from_bytes + reconstruct, a fresh array a tensor)", raw,
         per_tensor(False, payloads4, l4)),
        ("v4 as the store calls it, + sha256 of each tensor (the store's verify)", raw, per_tensor(True, payloads4, l4)),
        ("v3 as the store calls it (from_bytes + reconstruct, a fresh array a tensor)", raw,
         per_tensor(False)),
        ("v2 payloads (context_counts=false) as the store calls it", raw, per_tensor(False, payloads2, l2)),
        ("v3 as the store calls it, + sha256 of each tensor (the store's verify)", raw, per_tensor(True)),
        ("v3 into one fresh buffer (from_bytes + reconstruct_into)", raw, one_buffer(False)),
        ("v3 into one buffer reused across repeats (no page faults: the decode's own work)", raw,
         one_buffer(False, warm)),
        ("v1 payloads (by_exponent=false) as the store calls it", raw, per_tensor(False, payloads1, l1)),
        ("v3 as the store calls it, frames by python-zstandard", raw, without_libzstd(per_tensor(False))),
        ("the base's tensors from their objects (plain planes), a checkout's extra where the base is not in memory",
         raw, lambda: [planes.decompress(s, out=np.empty(n, np.uint8)) for s, n in base_streams]),
    ]
    say(f"Bytes: v4 {sum(map(len, payloads4)) / MB:.3f} MB, v3 {sum(map(len, payloads)) / MB:.3f} MB, v2 {sum(map(len, payloads2)) / MB:.3f} MB "
        f"(v3 {sum(map(len, payloads)) / sum(map(len, payloads2)) - 1:+.3%}), v1 {sum(map(len, payloads1)) / MB:.3f} MB, "
        f"zipnn {len(comp) / MB:.3f} MB.")
    say("")
    say(f"Decode of the fine-tune's {len(pairs)} changed tensors ({raw / MB:.2f} MB, {nel:,} bf16 elements) and of "
        f"its file by zipnn ({len(data) / MB:.2f} MB), one thread, CPU time (user + system), median and best of "
        f"{repeat}, rows interleaved (x zipnn: each row's median against zipnn's median, and best against best); "
        f"zstd frames by {lib_name}; load average before {os.getloadavg()[0]:.1f}:")
    say("")
    times: list[list[tuple[float, float]]] = [[] for _ in rows]
    for _ in range(repeat):  # interleaved: a burst of other load hits every row alike
        for k, (_, _, fn) in enumerate(rows):
            times[k].append(cpu_split(fn))
    med = [sorted(ts)[len(ts) // 2] for ts in times]
    best = [min(ts) for ts in times]
    say("| decode | MB/s per core, median | x zipnn, median | x zipnn, best | ns per element, median | "
        "of which system time |")
    say("|---|---:|---:|---:|---:|---:|")
    zm, zb = rows[0][1] / med[0][0], rows[0][1] / best[0][0]
    for (label, nbytes, _), (t, st), (tb, _) in zip(rows, med, best):
        say(f"| {label} | {nbytes / t / MB:,.0f} | {nbytes / t / zm:.2f} | {nbytes / tb / zb:.2f} | "
            f"{t / (nbytes / 2) * 1e9:.2f} | {st / (nbytes / 2) * 1e9:.2f} |")
    say("")
    # the stages, each over every changed tensor
    encs = [from_bytes(p) for p in payloads]
    bufs = [e.arrays["stream"].numpy() for e in encs]
    infos = [planes.read_info(memoryview(b)) for b in bufs]
    braws = [tensor_u8(b) for _, _, b in pairs]
    chunks = []  # (stream index, chunk index, payload offset, base bytes of the chunk)
    for j, info in enumerate(infos):
        co, dst = info.chunk_offsets(), np.cumsum([0] + info.raw_lens).tolist()
        chunks += [(j, i, co[i], braws[j][dst[i] : dst[i + 1]]) for i in range(len(info.raw_lens))]
    counts = [fx.exp_counts(bb, 2, 7, 8) for _, _, _, bb in chunks]
    from deltastore.codec.lossless import grouped_chunk_planes, unpack_counts

    grouped = [grouped_chunk_planes(bufs[j], infos[j], i, o, c).copy() for (j, i, o, _), c in zip(chunks, counts)]
    outs = [np.empty(bb.size, np.uint8) for _, _, _, bb in chunks]
    frames = []  # (stream index, offset, length, elements)
    for j, info in enumerate(infos):
        pos = info.data_start
        for groups in info.groups:
            for g in groups:
                for m, ln in zip(g.modes, g.payloads):
                    if m == 1:
                        frames.append((j, pos, ln, g.n))
                    pos += ln
    scratch = np.empty(max(n for *_, n in frames), np.uint8)

    def zstd_frames(decode) -> None:  # noqa: ANN001
        srcs, dst = [_zstd.address(b) for b in bufs], _zstd.address(scratch)
        for j, o, ln, n in frames:
            decode(bufs[j], srcs[j], o, ln, scratch, dst, 0, n)

    dctx = planes._thread_decompressor()
    stages = [
        ("payload table (read_info)", lambda: [planes.read_info(memoryview(b)) for b in bufs]),
        (f"zstd frames into the chunk's scratch ({lib_name}, ctypes)",
         lambda: zstd_frames(_zstd.decoder()) if _zstd.lib() else None),
        ("zstd frames by python-zstandard 0.25 (new bytes a frame; before this change)",
         lambda: [planes.unzstd(dctx, memoryview(bufs[j])[o : o + ln], n) for j, o, ln, n in frames]),
        ("the base's context histogram (exp_counts)", lambda: [fx.exp_counts(bb, 2, 7, 8) for *_, bb in chunks]),
        ("ungroup + plane join + the difference undone (ungroup_undiff, v2)",
         lambda: [fx.ungroup_undiff(g, bb, 2, 7, 8, c, o) for g, (*_, bb), c, o in zip(grouped, chunks, counts, outs)]),
        ("the same with the stored counts checked at its end (ungroup_undiff_stored, v3)",
         lambda: [fx.ungroup_undiff_stored(g, bb, 7, 8, c, o) for g, (*_, bb), c, o in zip(grouped, chunks, counts, outs)]),
        ("v3's counts read from the payload (unpack_counts)",
         lambda: [unpack_counts(e.arrays["counts"].numpy(), info) for e, info in zip(encs, infos)]),
        ("sha256 of the output", lambda: [hashlib.sha256(o).digest() for o in outs]),
    ]
    stimes: list[list[float]] = [[] for _ in stages]
    for _ in range(repeat):
        for k, (_, fn) in enumerate(stages):
            stimes[k].append(cpu(fn, 1)[0])
    say(f"Stages on their own (the same tensors: {len(chunks)} chunks, {len(frames)} zstd frames; "
        f"chunks' inputs warm, not fresh), ns per element, median and best of {repeat}:")
    say("")
    say("| stage | ns per element, median | best |")
    say("|---|---:|---:|")
    for (label, fn), ts in zip(stages, stimes):
        say(f"| {label} | {sorted(ts)[len(ts) // 2] / nel * 1e9:.2f} | {min(ts) / nel * 1e9:.2f} |")
    say("")
    say(f"zipnn's whole decode, for scale: {med[0][0] / (len(data) / 2) * 1e9:.2f} ns per element (median). "
        f"Load average after: {os.getloadavg()[0]:.1f}.")
    say("")


def class_probe(pairs, say) -> None:
    """What v2's bytes need of its 256 exponent contexts: the difference grouped into K classes of
    the base's exponent instead (per-tensor quantile thresholds of the exponent, K - 1 bytes a
    tensor not counted), the same planes + zstd, against v1 (no grouping) and v2. A decoder that
    merges K streams with K counters in registers would not need v2's histogram and gather through
    memory (not built; the bytes only)."""
    tot = {"v1 (no grouping)": 0, "v2 (256 exponent contexts)": 0, "2 classes": 0, "4 classes": 0, "8 classes": 0}
    for _, t, b in pairs:
        tu, bu = tensor_u8(t), tensor_u8(b)
        code, ctx = diff_code(tu, bu, 2), exponent_contexts(bu, torch.bfloat16)
        tot["v1 (no grouping)"] += len(planes.compress(code, 2))
        tot["v2 (256 exponent contexts)"] += len(planes.compress(code, 2, contexts=ctx, chunk_bytes=1 << 20))
        for k in (2, 4, 8):
            qs = np.quantile(ctx[:: max(1, ctx.size // 65536)], np.linspace(0, 1, k + 1)[1:-1])
            cls = np.searchsorted(qs, ctx, side="right").astype(np.uint8)
            tot[f"{k} classes"] += len(planes.compress(code, 2, contexts=cls, chunk_bytes=1 << 20))
    v2 = tot["v2 (256 exponent contexts)"]
    say("| grouping of the difference (bf16 tensors) | MB (planes only) | x v2 |")
    say("|---|---:|---:|")
    for k, v in tot.items():
        say(f"| {k} | {v / MB:.2f} | {v / v2:.3f} |")
    say("")


def base_contexts(base: dict, base_file: Path | None, say) -> None:
    """Issue 12's base goal: the bf16 exponents' entropy given richer contexts than the row, with
    the count of (context, symbol) pairs a coder would have to store tables for, against what
    today's exponent plane costs (zstd, as ``planes`` codes it); and what grouping a matrix's rows
    or columns by class before today's planes + zstd (a decoder-cheap way to use those contexts:
    whole rows move) actually saves. Matrices under 65,536 elements are counted unconditioned.
    Then :func:`lowplane_probe`."""
    keys = ["per tensor", "row", "column class (8)", "column class (16)", "row class (8) x column class (8)",
            "row class (4) x column class (16)", "previous exponent", "previous exponent, column class (8)",
            "row class (8) x column class (8), previous exponent"]
    ent, pairs = dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 0)
    mant0, mantc, signs, explane, plain = 0.0, 0.0, 0.0, 0, 0
    perm = {"rows grouped by class (8)": 0, "rows (32)": 0, "columns (8)": 0, "rows (8) and columns (8)": 0,
            "columns (16), the matrix stored column-major (each class's columns one run)": 0}

    def h_given(x: np.ndarray, ctx: np.ndarray) -> float:
        return entropy_bytes(ctx * 256 + x, int(ctx.max() + 1) * 256) - entropy_bytes(ctx, int(ctx.max() + 1))

    for t in base.values():
        if t.dtype != torch.bfloat16:
            continue
        w = t.reshape(-1).view(torch.int16).numpy().view(np.uint16)
        e = ((w >> 7) & 0xFF).astype(np.int64)
        m = (w & 0x7F).astype(np.int64)  # the 7 mantissa bits: with the sign, today's low plane (stored raw)
        mant0 += entropy_bytes(m, 128)
        mantc += entropy_bytes(e * 128 + m, 256 * 128) - entropy_bytes(e, 256)
        signs += entropy_bytes((w >> 15).astype(np.int64), 2)
        explane += len(planes.compress(e.astype(np.uint8), 1, rotate=False, chunk_bytes=planes.CHUNK_BYTES // 2))
        nplain = len(planes.compress(tensor_u8(t), 2, rotate=True))
        plain += nplain
        if t.dim() != 2 or t.numel() < 65536:
            for k in keys:
                ent[k] += entropy_bytes(e, 256)
                pairs[k] += int(np.unique(e).size)
            for k in perm:
                perm[k] += nplain
            continue
        rows, cols = t.shape
        em = e.reshape(rows, cols).astype(np.float64)
        r4, r8, r32 = (_quantile_classes(em.mean(1), k) for k in (4, 8, 32))
        c8, c16 = _quantile_classes(em.mean(0), 8), _quantile_classes(em.mean(0), 16)
        prev = np.concatenate([[0], e[:-1]])
        rc8 = (r8[:, None] * 8 + c8[None, :]).reshape(-1)
        ctxs = {"per tensor": np.zeros_like(e), "row": np.repeat(np.arange(rows), cols), "column class (8)": np.tile(c8, rows),
                "column class (16)": np.tile(c16, rows), "row class (8) x column class (8)": rc8,
                "row class (4) x column class (16)": (r4[:, None] * 16 + c16[None, :]).reshape(-1),
                "previous exponent": prev, "previous exponent, column class (8)": prev * 8 + np.tile(c8, rows),
                "row class (8) x column class (8), previous exponent": prev * 64 + rc8}
        for k, c in ctxs.items():
            ent[k] += h_given(e, c)
            pairs[k] += int(np.unique(c * 256 + e).size)
        wm = w.reshape(rows, cols)
        for k, (kr, kc) in zip(perm, [(r8, None), (r32, None), (None, c8), (r8, c8), (None, c16)]):
            x = wm if kr is None else wm[np.argsort(kr, kind="stable")]
            x = x if kc is None else x[:, np.argsort(kc, kind="stable")]
            x = x.T if k.startswith("columns (16)") else x
            perm[k] += len(planes.compress(np.ascontiguousarray(x).reshape(-1).view(np.uint8), 2, rotate=True))
    say("### Base exponents given richer contexts (issue 12, goal: a base >= 1% under zipnn)")
    say("")
    say(f"Today's exponent plane (zstd, as planes codes it): {explane / MB:.2f} MB; the base in today's planes: {plain / MB:.2f} MB. "
        f"Classes: equal-count classes of each row's / column's mean exponent (one stored byte per row or column). "
        f"Tables: one frequency per (context, symbol) pair used, counted here at 1.5 bytes each. Saving: against the "
        f"exponent plane, as a share of today's base bytes (zipnn ties with them).")
    say("")
    say("| exponent given | entropy MB | (context, symbol) pairs | tables MB (1.5 B a pair) | saving after tables, % of the base |")
    say("|---|---:|---:|---:|---:|")
    for k in keys:
        tab = 1.5 * pairs[k]
        say(f"| {k} | {ent[k] / MB:.2f} | {pairs[k]:,} | {tab / MB:.2f} | {(explane - ent[k] - tab) / plain:.2%} |")
    say("")
    nel = sum(t.numel() for t in base.values() if t.dtype == torch.bfloat16)
    say(f"Today's low plane (the sign and the 7 mantissa bits, {nel / MB:.2f} MB) is stored raw (zstd cannot shrink it "
        f"below 0.98 of its size). Entropy, per tensor: the 7 mantissa bits {mant0 / MB:.2f} MB of {nel * 7 / 8 / MB:.2f} "
        f"(order-0), {mantc / MB:.2f} MB given the element's own exponent (saving {(nel * 7 / 8 - mantc) / plain:.2%} of "
        f"the base, tables not counted); the sign {signs / MB:.2f} MB of {nel / 8 / MB:.2f}.")
    say("")
    lowplane_probe(base, base_file, say)
    say("| rows / columns of each matrix grouped by class before today's planes + zstd | MB | vs today |")
    say("|---|---:|---:|")
    for k, v in perm.items():
        say(f"| {k} | {v / MB:.3f} | {v / plain - 1:+.3%} |")
    say("")


def fmt_row(name: str, r: dict, ref: dict | None) -> str:
    rel = f"{r['bytes'] / ref['bytes']:.3f}" if ref else "-"
    return f"| {name} | {r['bytes'] / MB:.2f} | {rel} | {r['enc']:,.0f} | {r['dec']:,.0f} |"


def make_series(steps: int, every: int, lr: float) -> Path:
    """A real SmolLM2 full fine-tune on the zoo's math task, bf16 checkpoints every ``every`` steps."""
    from transformers import AutoModelForCausalLM

    from deltastore.zoo._hfdir import save_like
    from deltastore.zoo.cache import cache_dir
    from deltastore.zoo.finetune import _lr_at, _math_batches
    from deltastore.zoo.smollm2 import load_tokenizer, smollm2_dir

    out = cache_dir("bench", f"smollm2-math-series-{steps}x{every}-lr{lr:g}")
    base = smollm2_dir()
    torch.manual_seed(0)
    tok = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model.train()
    model.config.use_cache = False
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    batches = _math_batches(tok, 4, 128, 0, steps)
    warm = max(1, min(10, steps // 10))
    for step in range(steps):
        x, m, y = next(batches)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, warm)
        loss = model(input_ids=x, attention_mask=m, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        print(f"step {step + 1} loss {float(loss):.4f}", flush=True)
        if (step + 1) % every == 0:
            save_like(base, out / f"step{step + 1:04d}", model.state_dict())
    (out / "series.json").write_text(json.dumps(dict(steps=steps, every=every, lr=lr, batch_size=4, seq_len=128,
                                                     task="math", seed=0)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=Path, help="directory of stepNNNN/ checkpoints (a real fine-tune)")
    ap.add_argument("--base", type=Path, help="base HF dir (default: the zoo's SmolLM2 bf16)")
    ap.add_argument("--make-series", nargs=3, metavar=("STEPS", "EVERY", "LR"), help="make a series first")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--series-repeat", type=int, default=1)
    ap.add_argument("--machine", default=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--chain", type=Path, help="a series measured as the store chains it (skip-deltas); see above")
    ap.add_argument("--chain-only", action="store_true", help="only the --chain table")
    ap.add_argument("--skip-chain-table", action="store_true", help="with --chain --store: only the store's run")
    ap.add_argument("--store", action="store_true", help="with --chain: the series through a real (temporary) store too")
    ap.add_argument("--base-from", action="store_true", help="with --store: also each add given the previous checkpoint (--base-from)")
    ap.add_argument("--compiled-probe", action="store_true", help="time v2's grouping and the difference in C too (needs cc)")
    ap.add_argument("--base-contexts", action="store_true", help="the base's exponents given richer contexts (slow)")
    ap.add_argument("--base-only", action="store_true", help="only the base file's sections (no --series needed)")
    ap.add_argument("--palette", action="store_true",
                    help="the base as a palette per 32-element block (benchmarks/probe_palette.py) beside zipnn")
    ap.add_argument("--palette-other", type=Path, nargs="*", default=[], metavar="FILE",
                    help="with --palette: other safetensors files checked for the grid")
    ap.add_argument("--palette-store", action="store_true",
                    help="only the palette plane mode as the store writes it (codec/palette.py) beside zipnn and today's "
                         "format, and its cost on the --palette-other files")
    ap.add_argument("--rans-probe", action="store_true", help="the per-context rANS probe (benchmarks/probe_rans.py)")
    ap.add_argument("--skip-series", action="store_true", help="leave out the --series per-checkpoint table")
    ap.add_argument("--skip-base-speed", action="store_true", help="leave out the base file's speed rows")
    ap.add_argument("--decode-stages", action="store_true",
                    help="v2's decode beside zipnn's, fair both ways, and each stage timed (then stops)")
    ap.add_argument("--class-probe", action="store_true",
                    help="with --decode-stages: v2's bytes with K classes of the exponent instead of 256 contexts")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.make_series:
        args.series = make_series(int(args.make_series[0]), int(args.make_series[1]), float(args.make_series[2]))
    if args.base is None:
        from deltastore.zoo.smollm2 import smollm2_dir

        args.base = smollm2_dir()
    if args.series is None and not (args.chain_only or args.base_only):
        raise SystemExit("give --series DIR (or --chain DIR --chain-only)")
    ckpts = [] if args.series is None else sorted(
        p for p in args.series.iterdir() if p.name.startswith("step") and (p / "model.safetensors").is_file())
    if args.series is not None and not ckpts:
        raise SystemExit(f"no stepNNNN/model.safetensors under {args.series}")
    base_file = args.base / "model.safetensors"
    base = load_file(str(base_file))
    meta = json.loads((args.series / "series.json").read_text()) if args.series and (args.series / "series.json").is_file() else {}
    lines = [f"# Lossless fine-tune codec: format v1, v2 and zipnn ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `python benchmarks/bench_lossless.py {shlex.join(argv if argv is not None else sys.argv[1:])}`  ",
             f"Machine: {args.machine}; load average at start {os.getloadavg()[0]:.1f}  ",
             f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
             f"zipnn {_version('zipnn')}, zstandard {_version('zstandard')}, "
             f"numba {_version('numba') if planes.fast() else 'not used (numpy path)'}  "]
    if ckpts:
        lines.append(f"Fine-tune: SmolLM2-135M-Instruct bf16, full fine-tune on the zoo math task "
                     f"({json.dumps(meta) if meta else args.series.name}); checkpoints {', '.join(c.name for c in ckpts)}")
    lines.append("")

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    if args.palette_store:
        palette_store(base, base_file, say, args.repeat, args.palette_other)
        if args.out:
            args.out.write_text("\n".join(lines) + "\n")
        return 0
    if args.chain:
        chain_ckpts = sorted(p for p in args.chain.iterdir() if p.name.startswith("step") and (p / "model.safetensors").is_file())
        cmeta = json.loads((args.chain / "series.json").read_text()) if (args.chain / "series.json").is_file() else {}
        say(f"## Checkpoint series as the store chains it: {args.chain.name}")
        say("")
        say(f"Series: {json.dumps(cmeta) if cmeta else args.chain.name}; checkpoints {', '.join(c.name for c in chain_ckpts)}.  ")
        say("Checkpoint 1 is the series' root (a fine-tune of the base model); checkpoint n > 1 is stored against "
            "its predecessor, or where n's lowest set bit is LINEAR or more against n with that bit cleared (the root "
            "when that is 0): deltastore.chains.base_index.")
        say("")
        if not args.skip_chain_table:
            chain_table(chain_ckpts, base, say, args.series_repeat)
            say("")
        if args.store:
            say("### The same series through the store (`add finetune run CKPT --base run@latest --codec lossless`)")
            say("")
            store_chain(chain_ckpts, args.base, say, base_from=args.base_from)
            say("")
    if args.compiled_probe:
        say("## Where v2's time goes: numpy against a compiled helper")
        say("")
        compiled_probe(base, load_file(str((ckpts[-1] if ckpts else chain_ckpts[-1]) / "model.safetensors")), say, args.repeat)
    if args.chain_only:
        if args.out:
            args.out.write_text("\n".join(lines) + "\n")
        return 0
    if not args.base_only:  # the fine-tune and its series
        last = ckpts[-1]
        ft = load_file(str(last / "model.safetensors"))
        pairs = changed_pairs(base, ft)
        raw_all = sum(t.numel() * t.element_size() for t in ft.values())
        h0, hc, frac = diff_entropies(pairs)
        say(f"## The fine-tune ({last.name}) against its base")
        say("")
        say(f"{len(pairs)} of {len(ft)} tensors changed; {frac:.1%} of the changed tensors' elements changed; "
            f"{raw_all / MB:.1f} MB of weights.  ")
        say(f"Order-0 entropy of the difference: {h0 / MB:.2f} MB; given the base's exponent: {hc / MB:.2f} MB "
            f"({hc / h0 - 1:+.1%}).")
        say("")
        if args.decode_stages:
            say("## Decode: v4 (the default), v3 and v2 beside zipnn, stage by stage")
            say("")
            decode_stages(base, last / "model.safetensors", pairs, say, args.repeat)
            if args.class_probe:
                say("### What v2's bytes need of its contexts")
                say("")
                class_probe([p for p in pairs if p[1].dtype == torch.bfloat16], say)
            if args.out:
                args.out.write_text("\n".join(lines) + "\n")
            return 0
        z = bench_zipnn(last / "model.safetensors", args.repeat)
        v1 = bench_codec(Lossless(by_exponent=False), pairs, args.repeat)
        v2 = bench_codec(Lossless(by_exponent=True), pairs, args.repeat)
        say("| method | MB | x zipnn | encode MB/s/core | decode MB/s/core |")
        say("|---|---:|---:|---:|---:|")
        if z:
            say(fmt_row("zipnn 0.5.4, fine-tune file alone", z, z))
        say(fmt_row("lossless v1 (by_exponent=False), vs base", v1, z))
        say(fmt_row("lossless, the default (v4: grouped by base exponent), vs base", v2, z))
        say("")
        say(f"v2 / v1 bytes: {v2['bytes'] / v1['bytes']:.3f}")
        say("")
        if args.rans_probe:
            rans_probe(pairs, say, args.repeat, z, v2)

        if not args.skip_series:
            say("## Checkpoint series: each checkpoint against the one before")
            say("")
            say("| checkpoint | elements changed | v1 MB | v2 MB | zipnn MB (alone) | v2 x zipnn | v2 MB against the base (an anchor) |")
            say("|---|---:|---:|---:|---:|---:|---:|")
            prev = base
            for c in ckpts:
                cur = load_file(str(c / "model.safetensors"))
                pr = changed_pairs(prev, cur)
                nel = sum(t.numel() for t in cur.values())
                nch = changed_elements(pr)
                b1 = sum(len(to_bytes(Lossless(by_exponent=False).encode(t, b))) for _, t, b in pr)
                b2 = sum(len(to_bytes(Lossless(by_exponent=True).encode(t, b))) for _, t, b in pr)
                anchor = b2 if prev is base else sum(len(to_bytes(Lossless(by_exponent=True).encode(t, b)))
                                                     for _, t, b in changed_pairs(base, cur))
                zc = bench_zipnn(c / "model.safetensors", args.series_repeat)
                zb = zc["bytes"] if zc else float("nan")
                say(f"| {c.name} vs {'base' if prev is base else 'previous'} | {nch / nel:.1%} | {b1 / MB:.2f} | {b2 / MB:.2f} | "
                    f"{zb / MB:.2f} | {b2 / zb:.3f} | {anchor / MB:.2f} |")
                prev = cur
            say("")

    say("## Base file: what context coding of the exponents could save")
    say("")
    if not args.skip_base_speed:
        bt = [(n, t, None) for n, t in base.items()]
        pb = bench_codec(Lossless(), bt, args.repeat)
        zb0 = bench_zipnn(base_file, args.repeat)
        say("| base file on its own (add base) | MB | x zipnn | encode MB/s/core | decode MB/s/core |")
        say("|---|---:|---:|---:|---:|")
        if zb0:
            say(fmt_row("zipnn 0.5.4", zb0, zb0))
        say(fmt_row("lossless, no base (byte planes + zstd)", pb, zb0))
        say("")
    e0, e1, erow, n = base_exponent_entropy(base)
    pl = len(b"".join(planes.compress(tensor_u8(t), 2, rotate=True) for t in base.values() if t.dtype == torch.bfloat16))
    zb = bench_zipnn(base_file, 1)
    say(f"bf16 exponents of the base ({n:,} elements): order-0 entropy {e0 / MB:.2f} MB, order-1 (given the previous "
        f"element's exponent) {e1 / MB:.2f} MB: at best {(e0 - e1) / MB:.2f} MB saved, "
        f"{(e0 - e1) / (zb['bytes'] if zb else pl):.2%} of zipnn's {((zb['bytes'] if zb else pl)) / MB:.2f} MB "
        f"(today's byte planes: {pl / MB:.2f} MB). Given the row instead: {erow / MB:.2f} MB, "
        f"{(e0 - erow) / (zb['bytes'] if zb else pl):.2%} of zipnn's bytes before the per-row tables are paid for. "
        "Below the 1% a context coder for bases would have to win: not built.")
    say("")
    if args.base_contexts:
        base_contexts(base, base_file, say)
    if args.palette:
        palette_probe(base, base_file, say, args.repeat, args.palette_other)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
