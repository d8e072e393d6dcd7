"""Issue 12: layouts of the lossless fine-tune difference that might keep format v3's bytes (grouped
by the base's exponent) and decode at zipnn's speed. Bytes and MB/s per core, in the same rounds as
zipnn 0.5.4 and the codec's v1 (no grouping) and v3 (the default when this probe ran; pinned with
``zero_planes=False`` since v4 became the default).

    python benchmarks/probe_layouts.py FT_FILE [FT_FILE ...] [--repeat N] [--out FILE]

Candidates (every one writes byte planes + zstd through ``planes.compress_grouped``, the codec's
own stream writer, and decodes its frames through ``lossless.grouped_chunk_planes``, the codec's
own frame decoder: only the grouping and its inverse differ):

  v3, chunk C          the codec's format v3 with its grouped chunk set to C bytes (candidate a:
                       the whole counting-sort ungroup stays in L2 when C is small).
  K classes, chunk C   (candidate b) each chunk's elements split into K classes of the base's
                       exponent (K - 1 thresholds a chunk: the exponent's quantiles in the chunk,
                       K - 1 bytes a chunk counted), one zstd frame per class and plane. The
                       decoder merges the K streams with K counters held in registers (no
                       histogram, no position table in memory), fused with the plane join and
                       the difference's undo (candidate c: each element touched once).
  K classes, joined    the same bytes; the planes joined to words first (a vectorized pass), then
                       the merge (2 classes: unsigned positions, four elements a step), then the
                       difference undone (a vectorized pass).

Speeds: MB of the changed tensors' bytes (zipnn: of the file) over CPU seconds of this process,
one thread, best of --repeat, every decode into a fresh array (as the codec's reconstruct and
zipnn's decompress). Per round, each candidate's time over zipnn's in that round: the median of
those ratios is printed beside the best-of figure. Every round trip is checked bit for bit.
Bytes: the candidates' streams plus their thresholds plus the codec's per-tensor envelope (the v1
payloads' bytes minus their streams'); zipnn: the whole fine-tune file, as bench_lossless.py does.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("DELTASTORE_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from numba import njit  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from deltastore.codec import from_bytes, lossless, planes, to_bytes  # noqa: E402
from deltastore.codec._numba import _code2, _uncode2  # noqa: E402  (the codec's own difference, inlined)
from deltastore.codec.lossless import Lossless, context_field, tensor_u8  # noqa: E402

MB = 1e6


@njit(cache=True, nogil=True, inline="always")
def _cls(y, shift, t1, t2, t3):
    e = (y >> shift) & 0xFF
    return np.int64(e >= t1) + np.int64(e >= t2) + np.int64(e >= t3)


@njit(cache=True, nogil=True)
def split_classes(target, base, shift, t1, t2, t3, hi, lo, tmp):
    """Encode one chunk (uint16 words): the zigzagged ordered difference, scattered stably into
    up to 4 classes (class = how many of t1 <= t2 <= t3 the exponent reaches; 256 = unused), into
    the planes ``hi``/``lo``. Returns the class sizes."""
    n = target.size
    c0 = c1 = c2 = 0
    for i in range(n):
        tmp[i] = _code2(np.int64(target[i]), np.int64(base[i]))
    for i in range(n):
        c = _cls(np.int64(base[i]), shift, t1, t2, t3)
        c0 += c == 0
        c1 += c == 1
        c2 += c == 2
    s1 = c0
    s2 = c0 + c1
    s3 = c0 + c1 + c2
    p0, p1, p2, p3 = np.int64(0), np.int64(s1), np.int64(s2), np.int64(s3)
    for i in range(n):
        e = (np.int64(base[i]) >> shift) & 0xFF
        a = np.int64(e >= t1)
        b = np.int64(e >= t2)
        d = np.int64(e >= t3)
        k0, k1, k2, k3 = 1 - a, a - b, b - d, d  # one-hot, chosen by masks (no branch)
        p = (p0 & -k0) | (p1 & -k1) | (p2 & -k2) | (p3 & -k3)
        p0 += k0
        p1 += k1
        p2 += k2
        p3 += k3
        z = tmp[i]
        hi[p] = np.uint8(z >> 8)
        lo[p] = np.uint8(z & 0xFF)
    return c0, c1, c2, n - s3


@njit(cache=True, nogil=True)
def merge2_fused(hi, lo, base, shift, t1, n0, out):
    """2 classes: out[i] from class 1's stream (at n0 + j) or class 0's (at i - j), j = class-1
    elements so far, a register; planes joined and the difference undone in the same step; the
    choice by a mask, not a branch (the class of the next element is not predictable). Returns j
    (must be n - n0)."""
    j = 0
    for i in range(base.size):
        y = np.int64(base[i])
        c = np.int64(((y >> shift) & 0xFF) >= t1)
        m = -c
        p = ((n0 + j) & m) | ((i - j) & ~m)
        u = (np.int64(hi[p]) << 8) | np.int64(lo[p])
        out[i] = _uncode2(u, y)
        j += c
    return j


@njit(cache=True, nogil=True)
def merge2_joined(hi, lo, base, shift, t1, n0, out, words):
    """merge2_fused with the planes first joined into words (a vectorized pass), the difference
    undone in a third (vectorized) pass."""
    for i in range(hi.size):
        words[i] = (np.uint16(hi[i]) << np.uint16(8)) | np.uint16(lo[i])
    j = 0
    for i in range(base.size):
        c = np.int64(((np.int64(base[i]) >> shift) & 0xFF) >= t1)
        m = -c
        out[i] = words[((n0 + j) & m) | ((i - j) & ~m)]
        j += c
    for i in range(base.size):
        out[i] = _uncode2(np.int64(out[i]), np.int64(base[i]))
    return j


@njit(cache=True, nogil=True)
def merge2_unsigned(hi, lo, base, shift, t1, n0, out, words):
    """merge2_joined on unsigned (uint64) positions and words, four elements a step: numba adds a
    negative-index wrap-around (a compare and a select) to every load through a signed index."""
    n = base.size
    for i in range(hi.size):
        words[i] = (np.uint16(hi[i]) << np.uint16(8)) | np.uint16(lo[i])
    j = np.uint64(0)
    b0 = np.uint64(n0)
    one = np.uint64(1)
    m4 = n - n % 4
    for i in range(0, m4, 4):
        u = np.uint64(i)
        c0 = np.uint64(((base[i] >> shift) & np.uint16(0xFF)) >= t1)
        c1 = np.uint64(((base[i + 1] >> shift) & np.uint16(0xFF)) >= t1)
        c2 = np.uint64(((base[i + 2] >> shift) & np.uint16(0xFF)) >= t1)
        c3 = np.uint64(((base[i + 3] >> shift) & np.uint16(0xFF)) >= t1)
        j1 = j + c0
        j2 = j1 + c1
        j3 = j2 + c2
        out[i] = words[((b0 + j) & (np.uint64(0) - c0)) | ((u - j) & (c0 - one))]
        out[i + 1] = words[((b0 + j1) & (np.uint64(0) - c1)) | ((u + one - j1) & (c1 - one))]
        out[i + 2] = words[((b0 + j2) & (np.uint64(0) - c2)) | ((u + np.uint64(2) - j2) & (c2 - one))]
        out[i + 3] = words[((b0 + j3) & (np.uint64(0) - c3)) | ((u + np.uint64(3) - j3) & (c3 - one))]
        j = j3 + c3
    for i in range(m4, n):
        c = np.uint64(((base[i] >> shift) & np.uint16(0xFF)) >= t1)
        out[i] = words[((b0 + j) & (np.uint64(0) - c)) | ((np.uint64(i) - j) & (c - one))]
        j += c
    for i in range(n):
        out[i] = _uncode2(np.int64(out[i]), np.int64(base[i]))
    return np.int64(j)


@njit(cache=True, nogil=True)
def merge4_joined(hi, lo, base, shift, t1, t2, t3, s1, s2, s3, out, words):
    """Up to 4 classes, the counters in registers, chosen by masks; planes joined first, the
    difference undone after. True if every counter ends where the next class starts."""
    for i in range(hi.size):
        words[i] = (np.uint16(hi[i]) << np.uint16(8)) | np.uint16(lo[i])
    p0, p1, p2, p3 = np.int64(0), np.int64(s1), np.int64(s2), np.int64(s3)
    for i in range(base.size):
        e = (np.int64(base[i]) >> shift) & 0xFF
        a = np.int64(e >= t1)
        b = np.int64(e >= t2)
        d = np.int64(e >= t3)
        k0, k1, k2, k3 = 1 - a, a - b, b - d, d  # one-hot
        p = (p0 & -k0) | (p1 & -k1) | (p2 & -k2) | (p3 & -k3)
        out[i] = words[p]
        p0 += k0
        p1 += k1
        p2 += k2
        p3 += k3
    for i in range(base.size):
        out[i] = _uncode2(np.int64(out[i]), np.int64(base[i]))
    return p0 == s1 and p1 == s2 and p2 == s3 and p3 == base.size


def thresholds(counts: np.ndarray, k: int) -> tuple[int, int, int]:
    """K - 1 exponent thresholds splitting a chunk into K classes of about equal count (256: unused)."""
    cum = np.cumsum(counts)
    n = int(cum[-1])
    ts = []
    for q in range(1, k):
        e = int(np.searchsorted(cum, n * q / k, side="right"))  # first exponent above the quantile
        ts.append(min(max(e, 1), 255))
    ts = sorted(set(ts))
    ts += [256] * (3 - len(ts))
    return tuple(ts)


class Classes:
    """Candidate b: K classes a chunk."""

    def __init__(self, k: int, chunk_bytes: int, decode: str):
        self.k, self.chunk_bytes, self.decode = k, chunk_bytes, decode
        self.name = f"{k} classes, chunk {chunk_bytes >> 10} KiB, {decode}"

    def encode(self, t: torch.Tensor, b: torch.Tensor):
        raw, base_raw = tensor_u8(t), tensor_u8(b)
        shift, bits = context_field(t.dtype)
        fx = planes.fast()
        ths = []

        def split(lo: int, hi: int):
            bw = base_raw[lo:hi].view(np.uint16)
            counts = fx.exp_counts(base_raw[lo:hi], 2, shift, bits)
            t1, t2, t3 = thresholds(counts, self.k)
            ths.append((t1, t2, t3))
            n = bw.size
            out = np.empty((2, n), dtype=np.uint8)
            sizes = split_classes(raw[lo:hi].view(np.uint16), bw, shift, t1, t2, t3, out[0], out[1],
                                  np.empty(n, dtype=np.uint16))
            cc = np.zeros(256, dtype=np.int64)
            cc[:4] = sizes
            return out, cc

        stream = planes.compress_grouped(raw.size, 2, split, level=3, chunk_bytes=self.chunk_bytes, min_group=1)
        return stream, ths

    def nbytes(self, enc) -> int:
        stream, ths = enc
        return len(stream) + (self.k - 1) * len(ths)

    def reconstruct(self, enc, b: torch.Tensor) -> np.ndarray:
        stream, ths = enc
        buf = np.frombuffer(stream, dtype=np.uint8)
        info = planes.read_info(memoryview(buf))
        base_raw = tensor_u8(b)
        shift, _ = context_field(b.dtype)
        out = np.empty(info.raw_total, dtype=np.uint8)
        offs = info.chunk_offsets()
        lo = 0
        words = np.empty(max(info.raw_lens) // 2, dtype=np.uint16)
        for i, (rl, (t1, t2, t3)) in enumerate(zip(info.raw_lens, ths)):
            counts = np.zeros(256, dtype=np.int64)
            for g in info.groups[i]:
                counts[g.context] = g.n
            grouped = lossless.grouped_chunk_planes(buf, info, i, offs[i], counts)
            bw, ow = base_raw[lo:lo + rl].view(np.uint16), out[lo:lo + rl].view(np.uint16)
            if self.decode == "fused":
                ok = merge2_fused(grouped[0], grouped[1], bw, shift, t1, int(counts[0]), ow) == rl // 2 - counts[0]
            elif self.k == 2:
                ok = merge2_unsigned(grouped[0], grouped[1], bw, np.uint16(shift), np.uint16(min(t1, 255)), int(counts[0]), ow,
                                     words) == rl // 2 - counts[0]
            else:
                s = np.cumsum(counts[:4]).tolist()
                ok = merge4_joined(grouped[0], grouped[1], bw, shift, t1, t2, t3, s[0], s[1], s[2], ow, words)
            if not ok:
                raise AssertionError("class counts do not match the base")
            lo += rl
        return out


class Codec:
    """The codec itself (v1, v3) with its grouped chunk size set."""

    def __init__(self, name: str, codec: Lossless, chunk_bytes: int = lossless.GROUPED_CHUNK_BYTES):
        self.name, self.codec, self.chunk_bytes = name, codec, chunk_bytes

    def encode(self, t, b):
        old, lossless.GROUPED_CHUNK_BYTES = lossless.GROUPED_CHUNK_BYTES, self.chunk_bytes
        try:
            return from_bytes(to_bytes(self.codec.encode(t, b)))
        finally:
            lossless.GROUPED_CHUNK_BYTES = old

    def nbytes(self, enc) -> int:
        return len(to_bytes(enc))

    def reconstruct(self, enc, b) -> np.ndarray:
        return self.codec._raw(enc, b)


class ScalarGather(Codec):
    """v3 with the scalar scatter and gather where the AVX-512 ones would run (``DELTASTORE_SIMD=0``'s
    path, switched in this process so both run in the same rounds)."""

    def _scalar(self, fn, *a):  # noqa: ANN001, ANN202
        from deltastore.codec import _numba

        old, _numba._X512 = _numba.x512_available(), False
        try:
            return fn(*a)
        finally:
            _numba._X512 = old

    def encode(self, t, b):
        return self._scalar(super().encode, t, b)

    def reconstruct(self, enc, b) -> np.ndarray:
        return self._scalar(self.codec._raw, enc, b)


class NoSparse(Codec):
    """v3 without the sparse groups' second frames (``DELTASTORE_ZSTD_SPARSE=0``, switched in this
    process so both run in the same rounds)."""

    def encode(self, t, b):
        with mock.patch.dict(os.environ, {"DELTASTORE_ZSTD_SPARSE": "0"}):
            return super().encode(t, b)


def zipnn_round(data: bytes, z):
    buf = bytearray(data)
    t0 = time.process_time()
    comp = z.compress(buf)
    te = time.process_time() - t0
    t0 = time.process_time()
    out = z.decompress(comp)
    td = time.process_time() - t0
    return len(comp), te, td, out


def measure(ft_file: Path, base: dict, cands, repeat: int, say) -> None:
    from zipnn import ZipNN

    ft = load_file(str(ft_file))
    pairs = [(n, ft[n], base[n]) for n in ft if n in base and ft[n].dtype == torch.bfloat16
             and not torch.equal(ft[n].view(torch.uint8), base[n].view(torch.uint8))]
    other = [n for n in ft if n in base and ft[n].dtype != torch.bfloat16]
    assert not other, f"probe covers bf16 tensors only: {other[:3]}"
    raw = sum(t.numel() * 2 for _, t, _ in pairs)
    nel = sum(t.numel() for _, t, _ in pairs)
    changed = sum(int((t.view(torch.int16) != b.view(torch.int16)).sum()) for _, t, b in pairs)
    data = ft_file.read_bytes()
    z = ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=1)
    say(f"### {ft_file.parent.parent.name}/{ft_file.parent.name}")
    say("")
    say(f"{len(pairs)} of {len(ft)} tensors changed (bf16); {changed / nel:.1%} of their elements changed; "
        f"{raw / MB:.1f} MB of changed tensors, file {len(data) / MB:.1f} MB.")
    say("")
    v1 = next(c for c in cands if c.name.startswith("v1"))
    env = None
    nb = {}
    te = {c.name: [] for c in cands}
    td = {c.name: [] for c in cands}
    zt = {"enc": [], "dec": []}
    zbytes = 0
    for r in range(repeat):
        gc.collect()
        zb, a, d, out = zipnn_round(data, z)
        if r == 0:
            assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
        del out
        zbytes = zb
        zt["enc"].append(a)
        zt["dec"].append(d)
        for c in cands:
            gc.collect()
            t0 = time.process_time()
            e = [c.encode(t, b) for _, t, b in pairs]
            te[c.name].append(time.process_time() - t0)
            gc.collect()
            t0 = time.process_time()
            outs = [c.reconstruct(x, b) for x, (_, _, b) in zip(e, pairs)]
            td[c.name].append(time.process_time() - t0)
            if r == 0:
                for o, (n, t, _) in zip(outs, pairs):
                    assert np.array_equal(o, tensor_u8(t)), f"{c.name}: {n} does not round-trip"
                nb[c.name] = sum(c.nbytes(x) for x in e)
                if c is v1:
                    env = sum(len(to_bytes(x)) - x.arrays["stream"].numel() for x in e)
            del outs, e
    zenc, zdec = len(data) / min(zt["enc"]) / MB, len(data) / min(zt["dec"]) / MB
    say(f"Bytes of the per-tensor envelope (v1's payloads minus their streams), added to each probe candidate's: {env / MB:.3f} MB.")
    say("")
    say("| layout | MB | x zipnn | x v3 | encode MB/s/core | decode MB/s/core | x zipnn enc / dec (best of) | per-round median x zipnn enc / dec |")
    say("|---|---:|---:|---:|---:|---:|---:|---:|")
    say(f"| zipnn 0.5.4, the file alone | {zbytes / MB:.2f} | 1.000 | - | {zenc:,.0f} | {zdec:,.0f} | 1.00 / 1.00 | - |")
    v3b = nb[next(c.name for c in cands if c.name.startswith("v3 ("))]
    for c in cands:
        b = nb[c.name] + (0 if isinstance(c, Codec) else env)
        enc, dec = raw / min(te[c.name]) / MB, raw / min(td[c.name]) / MB
        # per round: (candidate MB/s) / (zipnn MB/s) in that round
        re = statistics.median((raw / a) / (len(data) / b_) for a, b_ in zip(te[c.name], zt["enc"]))
        rd = statistics.median((raw / a) / (len(data) / b_) for a, b_ in zip(td[c.name], zt["dec"]))
        say(f"| {c.name} | {b / MB:.2f} | {b / zbytes:.3f} | {b / v3b:.3f} | {enc:,.0f} | {dec:,.0f} | "
            f"{enc / zenc:.2f} / {dec / zdec:.2f} | {re:.2f} / {rd:.2f} |")
    say("")
    say("Every round's MB/s per core, encode / decode, in the order run (zipnn first in each round):")
    say("")
    say("| " + " | ".join(["implementation"] + [f"round {r + 1}" for r in range(repeat)] + ["median"]) + " |")
    say("|---" * (repeat + 2) + "|")
    rows = [("zipnn 0.5.4", len(data), zt["enc"], zt["dec"])] + [(c.name, raw, te[c.name], td[c.name]) for c in cands]
    for name, size, tes, tds in rows:
        cells = [f"{size / a / MB:,.0f} / {size / d / MB:,.0f}" for a, d in zip(tes, tds)]
        med = f"{size / statistics.median(tes) / MB:,.0f} / {size / statistics.median(tds) / MB:,.0f}"
        say(f"| {name} | " + " | ".join(cells) + f" | {med} |")
    say("")


def kernels(ft_file: Path, base: dict, repeat: int, say, max_chunks: int = 64) -> None:
    """Each decode stage alone on warm inputs (the same chunks, one after another, min of
    ``repeat``): ns per element of the zstd frames of each layout and of each ungroup kernel,
    beside v1's join-and-undo. Chunks: 1 MiB (512 Ki elements) of the largest changed tensors."""
    from deltastore.codec import _numba as nk

    ft = load_file(str(ft_file))
    names = sorted((n for n in ft if n in base and ft[n].dtype == torch.bfloat16), key=lambda n: -ft[n].numel())
    chunks, step = [], 1 << 20
    for n in names:
        t, b = tensor_u8(ft[n]), tensor_u8(base[n])
        for lo in range(0, t.size - step + 1, step):
            chunks.append((t[lo:lo + step], b[lo:lo + step]))
        if len(chunks) >= max_chunks:
            break
    chunks = chunks[:max_chunks]
    nel = sum(t.size // 2 for t, _ in chunks)
    shift, bits = context_field(torch.bfloat16)
    fx = planes.fast()
    prep = []
    for t, b in chunks:
        v1s = planes.compress(lossless.diff_code(t, b, 2), 2, rotate=False, level=3)
        g3, c3 = fx.diff_group_split(t, b, 2, shift, bits)
        v3s = planes._pack_grouped([planes._compress_grouped_planes(g3, c3, 3, planes.MIN_GROUP)], 2, False, t.size)
        def classed(n_classes: int):
            """(thresholds, stream, counts, class planes) of this chunk split into n_classes exponent classes."""
            th = thresholds(c3, n_classes)
            k = np.empty((2, t.size // 2), dtype=np.uint8)
            c = np.zeros(256, dtype=np.int64)
            c[:4] = split_classes(t.view(np.uint16), b.view(np.uint16), shift, *th, k[0], k[1], np.empty(t.size // 2, dtype=np.uint16))
            return th, planes._pack_grouped([planes._compress_grouped_planes(k, c, 3, 1)], 2, False, t.size), c, k

        (t1, _t2, _t3), k2s, c2, k2 = classed(2)
        (u1, u2, u3), k4s, c4, k4 = classed(4)
        prep.append(dict(t=t, b=b, v1=np.frombuffer(v1s, np.uint8), v3=np.frombuffer(v3s, np.uint8), c3=c3,
                         k2=np.frombuffer(k2s, np.uint8), c2=c2, t1=t1, k4=np.frombuffer(k4s, np.uint8), c4=c4,
                         u=(u1, u2, u3), g3=g3.copy(), p2=k2, p4=k4))
    out = np.empty(step, dtype=np.uint8)
    words = np.empty(step, dtype=np.uint16)

    def frames(key, counts_key):
        for p in prep:
            buf = p[key]
            info = planes.read_info(memoryview(buf))
            if info.groups is None:
                lossless.chunk_planes(buf, info, 0, info.data_start)
            else:
                lossless.grouped_chunk_planes(buf, info, 0, info.data_start, p[counts_key])

    def v1_join():
        for p in prep:
            nk.join_undiff(p["p2"], p["b"], 2, out)  # (the planes' content does not matter for the time)

    def v3_gather():
        for p in prep:
            nk.ungroup_undiff_stored(p["g3"], p["b"], shift, bits, p["c3"], out)

    def m2_fused():
        for p in prep:
            k = p["p2"]
            merge2_fused(k[0], k[1], p["b"].view(np.uint16), shift, p["t1"], int(p["c2"][0]), out.view(np.uint16))

    def m2_joined():
        for p in prep:
            k = p["p2"]
            merge2_joined(k[0], k[1], p["b"].view(np.uint16), shift, p["t1"], int(p["c2"][0]), out.view(np.uint16), words)

    def m2_unsigned():
        for p in prep:
            k = p["p2"]
            merge2_unsigned(k[0], k[1], p["b"].view(np.uint16), np.uint16(shift), np.uint16(min(p["t1"], 255)), int(p["c2"][0]),
                            out.view(np.uint16), words)

    def m4_joined():
        for p in prep:
            k, (u1, u2, u3) = p["p4"], p["u"]
            s = np.cumsum(p["c4"][:4]).tolist()
            merge4_joined(k[0], k[1], p["b"].view(np.uint16), shift, u1, u2, u3, s[0], s[1], s[2], out.view(np.uint16), words)

    def check():
        for p in prep:
            k = p["p2"]
            assert merge2_fused(k[0], k[1], p["b"].view(np.uint16), shift, p["t1"], int(p["c2"][0]), out.view(np.uint16)) \
                == p["c2"][1] + p["c2"][2] + p["c2"][3]
            assert np.array_equal(out, p["t"])
            out[:] = 0
            m2_unsigned()  # (all chunks; the last is checked)
            assert np.array_equal(out, prep[-1]["t"]) or p is not prep[-1]
            k, (u1, u2, u3) = p["p4"], p["u"]
            s = np.cumsum(p["c4"][:4]).tolist()
            assert merge4_joined(k[0], k[1], p["b"].view(np.uint16), shift, u1, u2, u3, s[0], s[1], s[2], out.view(np.uint16), words)
            assert np.array_equal(out, p["t"])

    check()
    stages = [("zstd frames, v1 layout", lambda: frames("v1", None)), ("zstd frames, v3 layout", lambda: frames("v3", "c3")),
              ("zstd frames, 2 classes", lambda: frames("k2", "c2")), ("zstd frames, 4 classes", lambda: frames("k4", "c4")),
              ("v1 join + undo", v1_join), ("v3 gather (stored counts) + undo", v3_gather),
              ("2 classes: merge + join + undo fused", m2_fused), ("2 classes: join, merge, undo", m2_joined),
              ("2 classes: join, merge (unsigned, 4 a step), undo", m2_unsigned),
              ("4 classes: join, merge, undo", m4_joined)]
    best = {k: float("inf") for k, _ in stages}
    for _ in range(repeat):
        for k, f in stages:
            t0 = time.process_time()
            f()
            best[k] = min(best[k], time.process_time() - t0)
    say(f"Decode stages alone, warm, {len(chunks)} chunks of 1 MiB of {ft_file.parent.name}, CPU time of this process, min of {repeat}:")
    say("")
    say("| stage | ns / element |")
    say("|---|---:|")
    for k, _ in stages:
        say(f"| {k} | {best[k] / nel * 1e9:.2f} |")
    say("")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", type=Path, nargs="+", help="fine-tune safetensors files of the zoo's SmolLM2 (bf16)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--machine", default=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--kernels", action="store_true", help="only the decode stages alone, warm (ns per element)")
    ap.add_argument("--only", default="", help="comma-separated substrings: only candidates whose name has one")
    ap.add_argument("--base", type=Path, default=None, help="the base's safetensors file (default: SmolLM2's; "
                    "a checkpoint series: the save before)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from deltastore.zoo.smollm2 import smollm2_dir

    base = load_file(str(args.base or smollm2_dir() / "model.safetensors"))
    lines = [f"Command: `python benchmarks/probe_layouts.py {shlex.join(argv if argv is not None else sys.argv[1:])}`  ",
             f"Machine: {args.machine}; load average at start {os.getloadavg()[0]:.2f}  "]
    for s in lines:
        print(s)

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    cands = [Codec("v1 (no grouping)", Lossless(by_exponent=False)),
             Codec("v3 (default until v4), chunk 1024 KiB", Lossless(zero_planes=False)),
             ScalarGather("v3, scalar kernels (DELTASTORE_SIMD=0)", Lossless(zero_planes=False)),
             NoSparse("v3, no sparse groups' second frames (DELTASTORE_ZSTD_SPARSE=0)", Lossless(zero_planes=False)),
             Codec("v3, chunk 256 KiB", Lossless(zero_planes=False), 256 << 10),
             Codec("v3, chunk 128 KiB", Lossless(zero_planes=False), 128 << 10)]
    cands += [Classes(2, 1 << 20, "fused"), Classes(2, 1 << 20, "joined"), Classes(4, 1 << 20, "joined"),
              Classes(2, 128 << 10, "joined")]
    if args.only:
        keys = args.only.split(",")
        cands = [c for c in cands if c.name.startswith("v1") or c.name.startswith("v3 (") or any(k in c.name for k in keys)]
    say("")
    for f in args.files:
        if args.kernels:
            kernels(f, base, args.repeat, say)
        else:
            measure(f, base, cands, args.repeat, say)
    say(f"Load average at end: {os.getloadavg()[0]:.2f}")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
