"""The palette plane mode: a 16-bit float chunk coded as a palette per aligned 32-element block.

Why: weights dequantized from a group-quantized file (SmolLM2's base is a 4-bit GGUF, decoded to
bf16) sit on a grid of ~16 values per aligned block of 32. Byte planes + zstd cannot see that
(zipnn and today's planes tie at 1.50x on SmolLM2); coding each block as its distinct values plus
a packed index an element takes ~20% off the base, and every block decodes on its own (no state
carried from element to element), so the decode beats zipnn's too (benchmarks/probe_palette.py,
runs 10-12 in benchmarks/results/lossless_amd-epyc-2c.md). Trained weights have no grid (~31.6
distinct words a block): :func:`worth_trying` tells them apart from a sample at a small cost, and
codec/planes.py keeps today's planes for them.

A palette chunk sits in a plain plane stream (``b"DSP1"``, codec/planes.py) as plane mode 2: every
plane of the chunk has mode 2, plane 0's slot holds the payload below and the others are empty,
so the chunk table, ranged reads and the thread pool are unchanged, and readers from before the
mode refuse it with "unknown plane mode 2". The payload (little-endian)::

    u8 zstd_flags (bit i: stream i is a zstd frame, else stored)   3 x (u32 stored_len, u32 raw_len)
    ks, pal, idx

* ``ks``: a byte a block, its count of distinct 16-bit words less one;
* ``pal``: each block's distinct words rotated left by one (magnitude above the sign, so +x sits
  beside -x) and sorted, coded from the largest down: the largest as the zigzagged difference
  from the previous block's largest (mod 2^16, 0 before the chunk's first), then each gap to the
  next smaller (>= 1); a value under 255 is a byte, else 255 and two bytes;
* ``idx``: each element's rank in its block's palette at ``WIDTH[k]`` bits (0..5), packed from the
  lowest bit up, 4 x width bytes a block (a short last block's unused bits zero).

The encoder zstd-codes ``ks`` where that shrinks it and stores ``pal`` and ``idx`` (zstd took only
7-13% off them and its decode cost as much as the palette join); any of the three may be either.

Kernels: ``codec._palette_numba`` (loaded by :func:`kernels` where numba imports and
``DELTASTORE_NUMBA`` is not 0), with the numpy code here as the reference and fallback: both write
the same bytes, and both refuse a payload whose counts, escapes, gaps or indices do not add up.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import numpy as np

from . import _compiled
from .errors import CorruptPayloadError

MODE = 2  # the plane mode of a palette chunk (codec/planes.py: 0 stored, 1 zstd)
BLOCK = 32
#: index bits of a palette of k + 1 words (k = 0..31)
WIDTH = np.array([0 if k == 0 else int(np.ceil(np.log2(k + 1))) for k in range(BLOCK)], np.int64)
STREAMS = ("ks", "pal", "idx")
_HEAD = struct.Struct("<B6I")
#: :func:`worth_trying`: samples of this many elements at a chunk's start, middle and end ...
SAMPLE = 512
#: chunks (tensors) under this many elements are left to the planes: the test's fixed cost
#: (~15 us) is a large share of a small tensor's encode, and its bytes hardly matter
MIN_ELEMENTS = 8192
#: ... whose palette streams must come under this many bytes an element (today's planes take
#: ~1.33 on trained bf16; a 16-level grid ~1.0, no grid >= 1.6)
TRY_BELOW = 1.3
#: a palette chunk over this many bytes an element is also coded as planes, and the smaller kept
KEEP_BELOW = 1.2


def enabled() -> bool:
    """Whether the store writes palette chunks: yes unless ``DELTASTORE_PALETTE=0``. Issue 12's bar for
    a base format (at least 1% under zipnn's bytes at no less than its speed) is met since the 4-bit
    blocks decode by AVX-512 (``_palette_numba``, run 56 of benchmarks/results/lossless_amd-epyc-2c.md,
    SmolLM2's base on a Zen 4, three runs of 5-7 rounds against zipnn in the same rounds): 19.7% under
    zipnn, encode 1.11-1.27x zipnn's per core best of N (per-round medians 1.10-1.22x), decode
    1.07-1.34x (1.06-1.96x). On a CPU without AVX-512 BW and VBMI2 the scalar decode is about level
    with zipnn's (run 48: 0.95x best of 7, 2.60x the median round; runs 25-30: 0.91-0.99x medians),
    and today's planes decode the same base at 1.8-1.9x zipnn's: ``DELTASTORE_PALETTE=0`` keeps them.
    Readers need no switch (every reader since plane mode 2 decodes both; older ones refuse such a
    chunk with "unknown plane mode 2"). Weights without a grid never take it (0 chunks, no byte changed)."""
    return os.environ.get("DELTASTORE_PALETTE", "1") != "0"


ERRORS = {-1: "a block's palette is larger than the block", -2: "the index stream is truncated",
          -3: "the palette stream is truncated", -4: "a palette escape codes a value under 255",
          -5: "a palette gap is zero or runs below zero", -6: "an index points past its block's palette",
          -7: "the palette streams have bytes left over"}

_KERNELS: object = False  # not looked up yet


def kernels():
    """``codec._palette_numba``, or None where numba does not import or ``DELTASTORE_NUMBA=0``
    is set (the numpy code here then runs, same bytes, several times slower)."""
    global _KERNELS
    if _KERNELS is False:
        _KERNELS = _compiled.load("_palette_numba")
    return _KERNELS


def _blocks(w: np.ndarray) -> tuple[np.ndarray, int]:
    """Rotated words (magnitude above the sign) as (blocks, 32) int64, a short last block padded
    with its first word (a repeat adds no palette entry), and the real length of the last block."""
    n = w.size
    key = ((w.astype(np.int64) << 1) | (w.astype(np.int64) >> 15)) & 0xFFFF
    nb = -(-n // BLOCK)
    m = n - (nb - 1) * BLOCK if n else 0
    if m != BLOCK and n:
        key = np.concatenate([key, np.full(nb * BLOCK - n, key[(nb - 1) * BLOCK])])
    return key.reshape(nb, BLOCK), m


def _escape_len(v: np.ndarray) -> np.ndarray:
    return np.where(v < 255, 1, 3)


def worth_trying(words: np.ndarray) -> bool:
    """Whether a chunk of 16-bit words looks like a grid: the palette streams of a sample of
    :data:`SAMPLE` elements at its start, then (only if that passes) at its middle and its end,
    each under :data:`TRY_BELOW` bytes an element (escapes not counted: rare on a grid). Four
    numpy calls a sample (a sort of 16 blocks of 32 words, no numba), about 15 us: a grid-less
    chunk costs one sample; a chunk under :data:`MIN_ELEMENTS` is not tried at all."""
    n = words.size // BLOCK * BLOCK
    if n < MIN_ELEMENTS:
        return False
    for at in (0, (n // 2) // BLOCK * BLOCK, n - SAMPLE):
        srt = np.sort(words[at : at + SAMPLE].reshape(-1, BLOCK), axis=1)  # distinct words: rotation not needed
        k = 1 + np.count_nonzero(np.diff(srt, axis=1), axis=1)
        # ks and the largest word's byte, a byte a gap, the indices
        if k.size + int(k.sum()) + 4 * int(WIDTH.take(k - 1).sum()) >= TRY_BELOW * SAMPLE:
            return False
    return True


def split_numpy(words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference encoder: (ks, pal, idx) of 16-bit words (see the module docstring)."""
    n = words.size
    if n == 0:
        return (np.empty(0, np.uint8),) * 3
    key, m = _blocks(words)
    order = np.argsort(key, axis=1, kind="stable")
    srt = np.take_along_axis(key, order, axis=1)
    new = np.ones(key.shape, bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    k = new.sum(axis=1)
    ranks = np.empty(key.shape, np.int64)
    np.put_along_axis(ranks, order, np.cumsum(new, axis=1) - 1, axis=1)
    ranks[-1, m:] = 0
    uniq = srt[new]  # each block's distinct words, ascending, block after block
    start = np.cumsum(k) - k
    kr = np.repeat(k, k)
    within = np.arange(uniq.size) - np.repeat(start, k)
    desc = uniq[np.repeat(start, k) + kr - 1 - within]  # each block's palette from the largest down
    tops = uniq[start + k - 1]
    d = ((tops - np.concatenate([[0], tops[:-1]]) + 0x8000) & 0xFFFF) - 0x8000
    vals = np.empty(uniq.size, np.int64)
    vals[1:] = desc[:-1] - desc[1:]
    vals[start] = (d << 1) ^ (d >> 63)
    ln = _escape_len(vals)
    at = np.cumsum(ln) - ln
    pd = np.zeros(int(ln.sum()), np.uint8)
    small = vals < 255
    pd[at[small]] = vals[small]
    big = at[~small]
    pd[big], pd[big + 1], pd[big + 2] = 255, vals[~small] & 0xFF, vals[~small] >> 8
    b = WIDTH[k - 1]
    slot = np.cumsum(4 * b) - 4 * b
    idx = np.zeros(int(4 * b.sum()), np.uint8)
    for bw in range(1, 6):
        sel = b == bw
        if sel.any():
            bits = (ranks[sel][:, :, None] >> np.arange(bw)) & 1
            packed = np.packbits(bits.reshape(-1, BLOCK * bw).astype(np.uint8), axis=1, bitorder="little")
            idx[slot[sel][:, None] + np.arange(4 * bw)] = packed
    return (k - 1).astype(np.uint8), pd, idx


def _corrupt(code: int) -> CorruptPayloadError:
    return CorruptPayloadError(f"palette chunk: {ERRORS.get(code, 'does not decode')}")


def join_numpy(ks: np.ndarray, pd: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """The reference decoder of :func:`split_numpy`'s streams into ``out`` (uint8, 2 bytes a word),
    with the same checks as the kernel (:data:`ERRORS`)."""
    n = out.size // 2
    if n == 0:
        if ks.size or pd.size or idx.size:
            raise _corrupt(-7)
        return
    nb = -(-n // BLOCK)
    m = n - (nb - 1) * BLOCK
    k = ks.astype(np.int64) + 1
    if k[-1] > m or (k > BLOCK).any():
        raise _corrupt(-1)
    b = WIDTH[k - 1]
    if int(4 * b.sum()) > idx.size:
        raise _corrupt(-2)
    # token starts of the escape code: a byte is a value unless it is one of an escape's two bytes.
    # A 255 with no 255 in the two bytes before it starts an escape; only the others (a 255 among
    # an escape's own two bytes, or escapes back to back) are resolved one by one, in order.
    ff = pd == 255
    near = np.zeros(pd.size, bool)
    near[1:] |= ff[:-1]
    near[2:] |= ff[:-2]
    esc_at = np.zeros(pd.size, bool)
    esc_at[ff & ~near] = True
    for e in np.flatnonzero(ff & near):
        esc_at[e] = not (esc_at[e - 1] or (e >= 2 and esc_at[e - 2]))
    if esc_at[-2:].any():
        raise _corrupt(-3)
    tok = np.ones(pd.size, bool)
    at = np.flatnonzero(esc_at)
    tok[at + 1] = False
    tok[at + 2] = False
    starts = np.flatnonzero(tok)
    total = int(k.sum())
    if starts.size < total:
        raise _corrupt(-3)
    if starts.size > total:
        raise _corrupt(-7)
    vals = pd[starts].astype(np.int64)
    esc = vals == 255
    vals[esc] = pd[starts[esc] + 1].astype(np.int64) | (pd[starts[esc] + 2].astype(np.int64) << 8)
    if (vals[esc] < 255).any():
        raise _corrupt(-4)
    first = np.cumsum(k) - k
    z = vals[first]
    tops = np.cumsum((z >> 1) ^ -(z & 1)) & 0xFFFF
    gaps = vals.copy()
    gaps[first] = 0
    isgap = np.ones(total, bool)
    isgap[first] = False
    if (gaps[isgap] == 0).any():
        raise _corrupt(-5)
    c = np.cumsum(gaps)
    desc = np.repeat(tops, k) - (c - np.repeat(c[first], k))
    if (desc < 0).any():
        raise _corrupt(-5)
    words = (desc >> 1) | ((desc & 1) << 15)  # palettes from the largest down, un-rotated
    x = np.zeros((nb, BLOCK), np.int64)
    slot = np.cumsum(4 * b) - 4 * b
    for bw in range(1, 6):
        sel = b == bw
        if sel.any():
            raw = idx[slot[sel][:, None] + np.arange(4 * bw)]
            bits = np.unpackbits(raw, axis=1, bitorder="little").reshape(-1, BLOCK, bw).astype(np.int64)
            x[sel] = (bits << np.arange(bw)).sum(axis=2)
    x = x.reshape(-1)[:n]
    kx = np.repeat(k, BLOCK)[:n]
    if (x >= kx).any():
        raise _corrupt(-6)
    if int(4 * b.sum()) != idx.size:
        raise _corrupt(-7)
    w = words[np.repeat(first, BLOCK)[:n] + kx - 1 - x].astype(np.uint16)
    out[:] = w.view(np.uint8)


def encode_chunk(raw: np.ndarray, compress: Callable[[np.ndarray], bytes]) -> bytes:
    """The palette payload of one chunk's bytes ``raw`` (uint8, whole 16-bit words); ``compress``
    makes a zstd frame (planes' per-thread compressor), tried on ``ks`` only."""
    fx = kernels()
    if fx is None:
        streams = split_numpy(raw.view(np.uint16) if raw.flags.aligned else raw.copy().view(np.uint16))
    else:
        nb = -(-(raw.size // 2) // BLOCK)
        ks, pd, idx = np.empty(nb, np.uint8), np.empty(nb * BLOCK * 3, np.uint8), np.zeros(nb * 20, np.uint8)
        q, p = fx.split(raw.view(np.uint16), WIDTH, ks, pd, idx)
        streams = (ks, pd[:q], idx[:p])
    parts, flags = [], 0
    for i, s in enumerate(streams):
        if i == 0 and s.size:
            f = compress(s)
            if len(f) < s.size:
                parts.append(f)
                flags |= 1 << i
                continue
        parts.append(s.tobytes())
    lens = [v for p, s in zip(parts, streams) for v in (len(p), s.size)]
    return b"".join([_HEAD.pack(flags, *lens), *parts])


def decode_chunk(payload: memoryview, out: np.ndarray, inflate: Callable[[memoryview, int], bytes]) -> None:
    """Decode a palette payload into ``out`` (uint8, the chunk's bytes); ``inflate(frame, n)``
    decodes a zstd frame to exactly ``n`` bytes (planes.unzstd). Every length is checked first."""
    n = out.size // 2
    nb = -(-n // BLOCK)
    if len(payload) < _HEAD.size:
        raise CorruptPayloadError("palette chunk is truncated (header)")
    flags, *lens = _HEAD.unpack(payload[: _HEAD.size])
    caps = (nb, nb * BLOCK * 3, nb * 20)
    if flags >> 3 or any(lens[2 * i + 1] > caps[i] for i in range(3)) or lens[1] != nb:
        raise CorruptPayloadError("palette chunk's stream table does not fit its chunk")
    if _HEAD.size + sum(lens[0::2]) != len(payload):
        raise CorruptPayloadError("palette chunk is truncated or has trailing bytes")
    streams, pos = [], _HEAD.size
    for i in range(3):
        stored, size = lens[2 * i], lens[2 * i + 1]
        piece = payload[pos : pos + stored]
        pos += stored
        if flags >> i & 1:
            piece = inflate(piece, size)
        elif stored != size:
            raise CorruptPayloadError("palette chunk's stored stream has the wrong length")
        streams.append(np.frombuffer(piece, np.uint8))
    ks, pd, idx = streams
    fx = kernels()
    if fx is None:
        join_numpy(ks, pd, idx, out)
        return
    aligned = out.ctypes.data % 2 == 0
    words = out.view(np.uint16) if aligned else np.empty(n, np.uint16)  # a file window may be odd
    code = fx.join(WIDTH, ks, pd, idx, words)
    if code:
        raise _corrupt(code)
    if not aligned:
        out[:] = words.view(np.uint8)
