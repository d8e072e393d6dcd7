"""``lossless``: the fine-tune's exact bits, coded as a difference of bit patterns.

A fine-tune moves most weights by a few units in the last place. Subtracting the *values* would
round; subtracting the bit patterns does not. Each float's bits are mapped to an integer that
keeps the float order (sign-magnitude to two's complement), the base's is subtracted with
wrap-around in the same width, the difference is zigzagged so small negatives become small
positives, and the result goes through byte planes + zstd (``planes``). Decoding runs the same
steps backwards and gives back the same bits, NaN payloads and signed zeros included.

With no base, or a base of another dtype or shape, the tensor is stored on its own in byte planes.

Payload format versions (``Encoded.version``; every version still decodes):

- v1: the difference in one byte-plane stream (``b"DSP1"``, ``planes``); also every ``plain``
  payload, whatever the version of the writer.
- v2 (``Lossless()``, the default; ``by_exponent=True``): the same difference, with each chunk's
  elements grouped by the *base* weight's exponent before planes + zstd (``b"DSP2"``), so each
  exponent gets zstd frames and entropy tables of its own. A fine-tune's change is a similar step in value for
  weights of any size (Adam), so in units of the last place it is large on small weights and
  small on large ones: the exponent predicts the size of the difference (and, in a checkpoint
  series, whether a weight changed at all: small weights cross a rounding step first). The decoder
  holds the base, so it regroups the same way and the grouping costs no stored bytes. fp8 (e4m3fn,
  e5m2) differences are coded too (v1 stores fp8 fine-tunes plain).
- v3 (``Lossless()``, the default since issue 12's decode work; ``context_counts=False`` writes
  v2): v2's stream byte for byte, plus an int32 array ``counts``: per chunk a 256-bit bitmap of the
  contexts present and each one's elements (:func:`pack_counts`; ~150 bytes a 1 MiB chunk, +0.105%
  on a SmolLM2 fine-tune). The decoder of 2-byte words then skips the base's histogram (a pass
  over the base) and proves the counts are the base's at the end of its gather (every context's
  counter ends where the next one starts): 5-8% faster than v2, 0.46-0.48x zipnn's decode per core
  against v2's 0.43-0.44x (benchmarks/results/lossless_amd-epyc-2c.md, runs 18-19);
  counts that do not fit, do not add up, or are not the base's are a CorruptPayloadError on the
  compiled and the numpy path alike. Other widths count the base's contexts and compare.
- v4 (``Lossless()``, the default since the twenty-fourth session; ``zero_planes=False`` writes v3):
  v3 with plane mode 3 (``planes.ZERO_MODE``): a group's plane of all zero bytes has no payload. A
  fine-tune's difference leaves its high byte 0 in most groups (a dense 40-step SmolLM2 fine-tune:
  1,686 of its 2,212 high-plane frames, 91% of its elements), whose zstd frames, a few RLE blocks
  each, cost a call and a pass over the bytes to decode. A reader before v4 refuses such a payload
  by its version.

Measured (benchmarks/results/lossless_amd-epyc-2c.md, dev VM, per core): on a real SmolLM2
fine-tune v2 is 0.81x v1's bytes (0.27x of zipnn's; v1 0.33x), within 1% of the order-0 entropy
given the exponent; on a small-lr checkpoint series (0.5-1.7% of elements changed between saves)
it is 0.31-0.51x v1's bytes, 79-211x under zipnn per checkpoint against v1's 35-103x. Speed, with
the grouping, the difference and the exponent in compiled kernels (``codec._numba``, numba; the
numpy functions here stay as the reference and the fallback, same bytes): 276 / 280 MB/s encode /
decode against v1's 356 / 431 and zipnn's 260 / 763 in the same run (numpy grouping, an earlier
run: 88 / 88). Encode is at zipnn's speed; decode is not (zstd's decode of the grouped planes
alone takes most of zipnn's whole time). ``Lossless(by_exponent=False)`` (``--param by_exponent=false``) writes v1.

Decode (run 13 in the same file, issue 12): the frames are decoded by the system's libzstd where
it loads (``codec._zstd``, ctypes, each frame straight into the chunk's scratch; python-zstandard
otherwise, same bytes and refusals), v2's gather runs on unsigned positions eight elements a step,
and v1 joins its planes and undoes the difference in one compiled loop. No byte that the encoder
writes changed. Per core beside zipnn's decode in the same process (zipnn 2.2 ns an element, of
which 1.3 are page faults on its fresh output): **v1 now decodes at zipnn's speed (1.07x)**, v2 at
0.43x (5.1 ns an element: ungrouping 1.6, zstd 1.1, the base's histogram 0.5, the rest Python per
tensor and garbage collection). :meth:`Lossless.reconstruct_into` decodes into a caller's window.

Measured and not built (same results file, run 6): a per-context rANS coder that reads the base's
exponent directly (``benchmarks/probe_rans.py``) codes the fine-tune in 0.96x v2's bytes but
decodes at ~0.27x zipnn's speed (about 30 scalar operations an element in numba; zipnn's C
Huffman does all its work in ~2 ns an element). For a base, richer exponent contexts (row and
column classes, the previous exponent) bound the saving at 0.82%. The larger lead is the low plane:
SmolLM2's values lie on a grid per 32-element block, and a flag "same low byte as the last one with
my exponent" plus raw literals makes a base 12.3% smaller than zipnn's at its encode speed, but
decodes at ~0.5x zipnn's speed (``benchmarks/probe_lowplane.py``; a base is a tensor object coded
by ``planes``, not by this codec).
"""

from __future__ import annotations

import itertools
from typing import Iterable

import numpy as np
import torch

from . import _zstd, planes
from .base import Codec, EncodeContext, Encoded, check_pair
from .errors import CodecError, CorruptPayloadError
from .registry import register_codec

_SINT = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_FLOATS = {torch.float16, torch.bfloat16, torch.float32, torch.float64}
_FP8 = {torch.float8_e4m3fn, torch.float8_e5m2}
_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
#: where each float dtype's exponent field sits: (first bit, width in bits)
EXPONENT_FIELD = {
    torch.float64: (52, 11), torch.float32: (23, 8), torch.bfloat16: (7, 8), torch.float16: (10, 5),
    torch.float8_e4m3fn: (3, 4), torch.float8_e5m2: (2, 5),
}


#: v2's chunk size: its per-chunk sort and scatter stay in cache (1.5x faster on large tensors than
#: 4 MiB chunks, for about 1% more bytes, measured on SmolLM2's embedding)
GROUPED_CHUNK_BYTES = 1 << 20


#: elements per block of the difference transforms: their temporaries stay in L2 and are reused
#: (2.5-3x faster than whole-array numpy expressions, which page in fresh temporaries)
BLOCK = 1 << 16


def exponent_contexts(raw: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """One uint8 context per element of ``raw`` (the tensor's bytes): its exponent field (float64's
    11 bits without their lowest 3). The sign is left out: it does not change the size of a step.
    Compiled (``codec._numba``) where numba imports, else :func:`exponent_contexts_numpy`."""
    fx = planes.fast()
    if fx is None:
        return exponent_contexts_numpy(raw, dtype)
    return fx.exponent_contexts(raw, torch.empty((), dtype=dtype).element_size(), *context_field(dtype))


def context_field(dtype: torch.dtype) -> tuple[int, int]:
    """(shift, bits) of the context :func:`exponent_contexts` takes: the exponent field, or
    float64's top 8 of its 11 bits (a context is one byte)."""
    shift, bits = EXPONENT_FIELD[dtype]
    return (shift + bits - 8, 8) if bits > 8 else (shift, bits)


def exponent_contexts_numpy(raw: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """:func:`exponent_contexts` in numpy (the reference): a shift and a truncating cast (which
    drops the sign above the field), block by block."""
    shift, bits = EXPONENT_FIELD[dtype]
    width = torch.empty((), dtype=dtype).element_size()
    words = raw.view(_UINT[width])
    if bits > 8:
        shift, bits = shift + bits - 8, 8
    out = np.empty(words.size, dtype=np.uint8)
    t = np.empty(min(words.size, BLOCK), dtype=words.dtype)
    for i in range(0, words.size, BLOCK):
        w = words[i : i + BLOCK]
        a, o = t[: w.size], out[i : i + BLOCK]
        np.right_shift(w, shift, out=a)
        np.copyto(o, a, casting="unsafe")
    if bits < 8:
        out &= np.uint8((1 << bits) - 1)
    return out


def tensor_u8(t: torch.Tensor) -> np.ndarray:
    """The tensor's raw little-endian bytes as a flat uint8 numpy array (no copy when contiguous)."""
    t = t.detach().contiguous().cpu()
    return t.reshape(-1).view(torch.uint8).numpy()


def _base_u8(base: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """``tensor_u8(base.to(dtype))``, in two torch calls where ``base`` is already a contiguous CPU
    tensor of ``dtype`` without grad (a checkout's base tensor): the general path's seven cost
    more than their work once a tensor, run between kernels that evict torch's code from the
    caches (benchmarks/probe_decode_overhead.py)."""
    if base.dtype is dtype and base.is_cpu and not base.requires_grad and base.dim() and base.is_contiguous():
        return base.view(torch.uint8).numpy().reshape(-1)
    return tensor_u8(base.to(dtype))


def ordered(bits: np.ndarray) -> np.ndarray:
    """Float bit patterns (as signed ints) -> integers in the same order as the floats. Involution."""
    nbits = bits.dtype.itemsize * 8
    mag = np.array((1 << (nbits - 1)) - 1, dtype=bits.dtype)
    return bits ^ ((bits >> (nbits - 1)) & mag)


def zigzag(d: np.ndarray) -> np.ndarray:
    nbits = d.dtype.itemsize * 8
    return (d << 1) ^ (d >> (nbits - 1))


def unzigzag(z: np.ndarray) -> np.ndarray:
    u = z.view(np.dtype(f"u{z.dtype.itemsize}"))
    return ((u >> 1).view(z.dtype)) ^ -(z & 1)


def _ordered_into(x: np.ndarray, tmp: np.ndarray, out: np.ndarray, sh: int, mag) -> None:
    """out = ordered(x), through ``tmp``; ``out`` may be ``x``."""
    np.right_shift(x, sh, out=tmp)
    np.bitwise_and(tmp, mag, out=tmp)
    np.bitwise_xor(tmp, x, out=out)


def diff_code(target: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    """uint8 bytes of target and base (same length) -> uint8 bytes of the zigzagged ordered difference:
    ``zigzag(ordered(target) - ordered(base))``, wrapping in the element's width. One fused
    compiled loop (``codec._numba``) where numba imports, else :func:`diff_code_numpy`."""
    fx = planes.fast()
    return diff_code_numpy(target, base, width) if fx is None else fx.diff_code(target, base, width)


def diff_decode(code: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    """Inverse of :func:`diff_code`: the target's bytes from the code and the base's bytes."""
    fx = planes.fast()
    return diff_decode_numpy(code, base, width) if fx is None else fx.diff_decode(code, base, width)


def diff_code_numpy(target: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    """:func:`diff_code` in numpy, block by block (the reference the compiled loop is tested against)."""
    st, sb = target.view(_SINT[width]), base.view(_SINT[width])
    n, sh = st.size, width * 8 - 1
    mag = _SINT[width]((1 << sh) - 1)
    out = np.empty(n, dtype=_SINT[width])
    tmp, tb = np.empty(min(n, BLOCK), dtype=_SINT[width]), np.empty(min(n, BLOCK), dtype=_SINT[width])
    with np.errstate(over="ignore"):
        for i in range(0, n, BLOCK):
            o = out[i : i + BLOCK]
            t, u = tmp[: o.size], tb[: o.size]
            _ordered_into(st[i : i + BLOCK], t, o, sh, mag)
            _ordered_into(sb[i : i + BLOCK], t, u, sh, mag)
            np.subtract(o, u, out=o)
            np.right_shift(o, sh, out=t)  # zigzag: (d << 1) ^ (d >> sh)
            np.left_shift(o, 1, out=o)
            np.bitwise_xor(o, t, out=o)
    return out.view(np.uint8)


def diff_decode_numpy(code: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    """:func:`diff_decode` in numpy (the reference)."""
    z, sb = code.view(_SINT[width]), base.view(_SINT[width])
    n, sh = z.size, width * 8 - 1
    mag, one, uint = _SINT[width]((1 << sh) - 1), _SINT[width](1), _UINT[width]
    out = np.empty(n, dtype=_SINT[width])
    tmp = np.empty(min(n, BLOCK), dtype=_SINT[width])
    with np.errstate(over="ignore"):
        for i in range(0, n, BLOCK):
            zi, o = z[i : i + BLOCK], out[i : i + BLOCK]
            t = tmp[: o.size]
            np.right_shift(zi.view(uint), 1, out=o.view(uint))  # unzigzag: (z >>> 1) ^ -(z & 1)
            np.bitwise_and(zi, one, out=t)
            np.negative(t, out=t)
            np.bitwise_xor(o, t, out=o)
            _ordered_into(sb[i : i + BLOCK], t, t, sh, mag)
            np.add(o, t, out=o)
            _ordered_into(o, t, o, sh, mag)
    return out.view(np.uint8)


def grouped_chunk_planes(buf: np.ndarray, info: planes.StreamInfo, i: int, start: int, counts: np.ndarray) -> np.ndarray:
    """Chunk ``i``'s planes as stored, grouped (width x n uint8, this thread's scratch), each zstd
    frame decoded straight into its place (``codec._zstd``: the system's libzstd where it loads),
    once the chunk's groups are checked against ``counts`` (the elements per context of the base's
    words under it): ``planes._grouped_planes`` with the faster frame decode and no copy."""
    n, w = info.raw_lens[i] // info.width, info.width
    runs = _checked_runs(info, i, counts)
    grouped = planes._scratch(w * n).reshape(w, n)
    _fill_planes(buf, start, runs, grouped)
    return grouped


def _checked_runs(info: planes.StreamInfo, i: int, counts: np.ndarray) -> list[tuple]:
    """Chunk ``i``'s groups as :func:`_fill_planes`' runs ``(modes, lengths, elements, first
    column)``, once checked against ``counts``: they add up to the chunk, and each group starts
    where its first context starts in the base's order (the table already checked that the
    groups' contexts ascend and their sizes add up to the chunk)."""
    n, groups = info.raw_lens[i] // info.width, info.groups[i]
    cl = counts.tolist()  # Python ints: a chunk's few dozen groups cost less so than as numpy calls
    if sum(cl) != n:
        raise CorruptPayloadError(_NOT_ITS_CONTEXTS)
    runs, at, below, c0 = [], 0, 0, 0  # below: elements whose context is under g.context
    for g in groups:
        below += sum(cl[c0 : g.context])
        c0 = g.context
        if below != at or cl[c0] <= 0:
            raise CorruptPayloadError(_GROUPS_ELSEWHERE)
        runs.append((g.modes, g.payloads, g.n, at))
        at += g.n
    return runs


_NOT_ITS_CONTEXTS = "a grouped plane stream decodes only with its contexts (the base tensor)"
_GROUPS_ELSEWHERE = "plane stream groups do not match the contexts given (another base tensor?)"


def _frame_table(info: planes.StreamInfo, i: int, start: int) -> list[int]:
    """Chunk ``i``'s frames (a grouped stream of 2-byte words) as ``_numba.fill_undiff_stored``'s
    flat table: per group its two planes' rows (mode, source offset, size, destination offset,
    elements, the group's context), for planes ``2 x n`` back to back. That call checks the groups
    against the counts (:func:`_checked_runs`' checks, its codes -3 and -4 named by
    :func:`_decode_stored_chunk`). Those checks in Python, the table built apart and three compiled
    calls a chunk were ~65 us a tensor inside the decode loop, this table, its call and its wrapper
    ~20 (dev VM, 150-step fine-tune; ``probe_decode_overhead.py --stages``)."""
    n = info.raw_lens[i] // 2
    table, at, pos = [], 0, start
    for g in info.groups[i]:
        m, c, (m0, m1), (l0, l1) = g.n, g.context, g.modes, g.payloads
        table += (m0, pos, l0, at, m, c, m1, pos + l0, l1, n + at, m, c)
        pos += l0 + l1
        at += m
    return table


def _decode_stored_chunk(fx, buf: np.ndarray, info: planes.StreamInfo, i: int, start: int, counts: np.ndarray,  # noqa: ANN001
                         base: np.ndarray, out: np.ndarray, fns: tuple[int, int, int], shift: int, bits: int) -> None:
    """Chunk ``i`` of a grouped stream of 2-byte words with its stored counts (format v3+) into
    ``out`` in one compiled call (``_numba.fill_undiff_stored``): the same checks, in the same
    order, and the same errors as :func:`grouped_chunk_planes` then ``ungroup_undiff_stored``."""
    scratch = planes._scratch(out.size)
    bad = fx.fill_undiff_stored(fns, _zstd.thread_dctx(), buf, _frame_table(info, i, start), scratch, base, shift, bits,
                                counts, out)
    if bad == -1:
        return
    if bad == -2:
        raise CorruptPayloadError(_NOT_THE_BASE)
    if bad == -3:
        raise CorruptPayloadError(_NOT_ITS_CONTEXTS)
    if bad == -4:
        raise CorruptPayloadError(_GROUPS_ELSEWHERE)
    # a frame that is not right: decoded again one at a time, which names the error
    _fill_planes_slowly(buf, start, _checked_runs(info, i, counts), scratch.reshape(2, -1))
    raise CorruptPayloadError("a plane does not decode")


def chunk_planes(buf: np.ndarray, info: planes.StreamInfo, i: int, start: int) -> np.ndarray:
    """Chunk ``i`` of a plain stream (``b"DSP1"``) as its planes (width x n uint8, this thread's
    scratch), frames decoded in place as in :func:`grouped_chunk_planes`."""
    n, w = info.raw_lens[i] // info.width, info.width
    out = planes._scratch(w * n).reshape(w, n)
    _fill_planes(buf, start, [(info.modes[i], info.plane_lens[i], n, 0)], out)
    return out


def _fill_planes(buf: np.ndarray, pos: int, runs, out: np.ndarray) -> None:
    """Decode, one after another from ``buf[pos:]``, each run ``(modes, lengths, elements, first
    column)``'s planes into ``out[k, first : first + elements]`` (zstd in place, or a stored copy)."""
    fx, n = planes.fast(), out.shape[1]
    fns = (_zstd.frame_functions() if fx is not None and out.flags.c_contiguous and buf.ndim == 1 and buf.flags.c_contiguous
           and buf.dtype == np.uint8 else None)
    if fns is not None:  # every frame of the chunk in one compiled call, with the GIL released
        table, at_ = [], pos
        for modes, lens, m, at in runs:
            for k, (mode, ln) in enumerate(zip(modes, lens)):
                table += (mode, at_, ln, k * n + at, m)
                at_ += ln
        if fx.fill_frames(fns, _zstd.thread_dctx(), buf, out.reshape(-1), table) < 0:
            return
        # a run that is not right: decoded again below, one frame at a time, which names the error
    _fill_planes_slowly(buf, pos, runs, out)
    if fns is not None:
        raise CorruptPayloadError("a plane does not decode")  # (the compiled call found it, the frame by frame decode did not)


def _fill_planes_slowly(buf: np.ndarray, pos: int, runs, out: np.ndarray) -> None:  # noqa: ANN001
    """:func:`_fill_planes` one frame at a time by ``codec._zstd`` (or python-zstandard): where the
    compiled call is not taken, or to name the error of a run it found not right."""
    n = out.shape[1]
    decode = _zstd.decoder(planes._thread_decompressor() if _zstd.lib() is None else None)
    src, dst = _zstd.address(buf), _zstd.address(out)
    for modes, lens, m, at in runs:
        for k, (mode, ln) in enumerate(zip(modes, lens)):
            if mode == 1:
                decode(buf, src, pos, ln, out, dst, k * n + at, m)
            elif mode == 0:
                if ln != m:
                    raise CorruptPayloadError("plane has the wrong length")
                out[k, at : at + m] = buf[pos : pos + ln]
            elif mode == planes.ZERO_MODE:
                if ln:
                    raise CorruptPayloadError("a zero plane has a payload")
                out[k, at : at + m] = 0
            else:
                raise CorruptPayloadError(f"unknown plane mode {mode}")
            pos += ln


def decode_plain_diff(buf: np.ndarray, info: planes.StreamInfo, base_raw: np.ndarray, out: np.ndarray,
                      threads: int | None = None) -> None:
    """A v1 difference stream (``b"DSP1"``, not rotated) into ``out``: per chunk the frames in
    place (:func:`chunk_planes`), then the planes joined and the difference undone in one compiled
    loop; the same bytes as ``planes.decompress`` + :func:`diff_decode`."""
    fx, width, buf = planes.fast(), info.width, np.ascontiguousarray(buf)
    offs = info.chunk_offsets()
    dst = np.cumsum([0] + info.raw_lens).tolist()
    if info.groups is not None or info.rotate or dst[-1] != out.size or base_raw.size != out.size:
        raise CorruptPayloadError("not a v1 difference stream of this size")

    def work(i: int) -> None:
        lo, hi = dst[i], dst[i + 1]
        fx.join_undiff(chunk_planes(buf, info, i, offs[i]), base_raw[lo:hi], width, out[lo:hi])

    planes._map_chunks(work, range(len(info.raw_lens)), threads)


def decode_grouped_diff(buf: np.ndarray, info: planes.StreamInfo, base_raw: np.ndarray, dtype: torch.dtype,
                        out: np.ndarray, threads: int | None = None, stored: list[np.ndarray] | None = None) -> None:
    """A v2 difference stream (``info``: its table, read from ``buf``) into ``out`` (the target's
    bytes), chunk by chunk on the planes pool: the base's context histogram, the frames
    (:func:`grouped_chunk_planes`), then ungrouping and the difference undone in one compiled pass.
    ``stored`` (format v3: :func:`unpack_counts`): each chunk's counts from the payload, used in
    place of the histogram for 2-byte words and proved to be the base's by the gather itself
    (``_numba.ungroup_undiff_stored``); other widths count and compare."""
    fx, width, buf = planes.fast(), info.width, np.ascontiguousarray(buf)
    shift, bits = context_field(dtype)
    offs = info.chunk_offsets()
    dst = list(itertools.accumulate(info.raw_lens, initial=0))  # Python ints (np.cumsum: two numpy calls a tensor)
    if dst[-1] != out.size or base_raw.size != out.size:
        raise CorruptPayloadError(f"plane stream holds {dst[-1]} bytes, expected {out.size}")
    if stored is not None and len(stored) != len(info.raw_lens):
        raise CorruptPayloadError("lossless payload has counts for another number of chunks")

    # format v3+'s 2-byte words: each chunk's frames, ungrouping and undoing in one compiled call
    fns = (_zstd.frame_functions() if stored is not None and width == 2 and buf.ndim == 1 and buf.dtype == np.uint8
           else None)

    def work(i: int) -> None:
        lo, hi = dst[i], dst[i + 1]
        if fns is not None:
            _decode_stored_chunk(fx, buf, info, i, offs[i], stored[i], base_raw[lo:hi], out[lo:hi], fns, shift, bits)
            return
        if stored is not None and width == 2:
            grouped = grouped_chunk_planes(buf, info, i, offs[i], stored[i])
            if not fx.ungroup_undiff_stored(grouped, base_raw[lo:hi], shift, bits, stored[i], out[lo:hi], summed=True):
                raise CorruptPayloadError(_NOT_THE_BASE)
            return
        counts = fx.exp_counts(base_raw[lo:hi], width, shift, bits)
        if stored is not None and not np.array_equal(counts, stored[i]):
            raise CorruptPayloadError(_NOT_THE_BASE)
        grouped = grouped_chunk_planes(buf, info, i, offs[i], counts)
        fx.ungroup_undiff(grouped, base_raw[lo:hi], width, shift, bits, counts, out[lo:hi])

    planes._map_chunks(work, range(len(info.raw_lens)), threads)


_NOT_THE_BASE = "lossless payload's context counts are not the base tensor's (another base tensor?)"


def pack_counts(info: planes.StreamInfo, chunk_counts: list[np.ndarray]) -> np.ndarray:
    """Format v3's ``counts`` array (int32): per chunk of the grouped stream ``info``, 8 words of
    a bitmap of the contexts present (bit ``c % 32`` of word ``c // 32``), then the elements of
    each present context, ascending; ``chunk_counts``: each chunk's elements per context
    (int64[256]). Real weights have 20-40 exponents in a chunk: ~150 bytes a 1 MiB chunk."""
    return _pack_counts(chunk_counts[: len(info.raw_lens)])


def _pack_counts(chunk_counts: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """:func:`pack_counts` of every chunk in ``chunk_counts`` (a list of int64[256], or chunks x 256),
    in whole-array steps: no Python loop over a tensor's chunks (``planes.diff_stream`` hands all of
    them at once)."""
    counts = np.asarray(chunk_counts, dtype=np.int64).reshape(-1, 256)
    if not counts.shape[0]:
        return np.zeros(0, dtype=np.int32)
    present = counts > 0
    lens = 8 + present.sum(axis=1)
    starts = np.cumsum(lens) - lens
    out = np.empty(int(lens.sum()), dtype=np.int64)
    out[(starts[:, None] + np.arange(8)).ravel()] = np.packbits(present, axis=1, bitorder="little").view("<u4").ravel()
    rows, cols = np.nonzero(present)  # row by row, each row's contexts ascending
    out[starts[rows] + 8 + np.cumsum(present, axis=1)[rows, cols] - 1] = counts[rows, cols]
    return out.astype(np.int32)


def unpack_counts(flat: np.ndarray, info: planes.StreamInfo) -> list[np.ndarray]:
    """Inverse of :func:`pack_counts`: each chunk's elements per context (int64[256]), checked:
    every chunk's entries inside the array, each present context with at least one element, the
    counts summing to the chunk's elements, nothing left over. Anything else is one
    :class:`CorruptPayloadError`. (Whether they are the base's is proved while decoding:
    :func:`decode_grouped_diff`.)

    In one compiled call (``codec._numba.unpack_counts``) where the kernels load and ``flat`` is
    int32, 1-D: the same checks in the same order, each error named here with the same words
    (22 -> 10 us a tensor inside the decode loop, 9.4 -> 3.4 in a tight loop; dev VM,
    ``probe_decode_overhead.py --ab``). Else (the reference, :func:`unpack_counts_numpy`) per chunk
    the bitmap is unpacked and the counts placed by numpy, and checked as Python ints."""
    fx = planes.fast()
    if fx is not None and flat.dtype == np.int32 and flat.ndim == 1:
        out, code, at = fx.unpack_counts(flat, info.raw_lens, info.width)
        if code == 0:
            return list(out)
        if code == 1:
            raise CorruptPayloadError(f"lossless payload's context counts stop before chunk {at}")
        if code == 2:
            raise CorruptPayloadError(f"lossless payload's context counts stop inside chunk {at}")
        if code == 3:
            n = info.raw_lens[at] // info.width
            raise CorruptPayloadError(f"lossless payload's context counts of chunk {at} do not add up to its {n} elements")
        raise CorruptPayloadError(f"lossless payload has {at} context counts more than its chunks")
    return unpack_counts_numpy(flat, info)


def unpack_counts_numpy(flat: np.ndarray, info: planes.StreamInfo) -> list[np.ndarray]:
    """:func:`unpack_counts` in Python and numpy (the reference, and the path without the kernels)."""
    nchunks, size, width = len(info.raw_lens), int(flat.size), info.width
    fl = flat.tolist()
    bits = flat.astype("<u4").view(np.uint8)  # word j's bit b (context 32j + b) is bit b % 8 of byte 4j + b // 8
    out = np.zeros((nchunks, 256), dtype=np.int64)
    pos = 0
    for i, raw_len in enumerate(info.raw_lens):
        if pos + 8 > size:
            raise CorruptPayloadError(f"lossless payload's context counts stop before chunk {i}")
        present = np.unpackbits(bits[4 * pos : 4 * pos + 32], bitorder="little").view(bool)
        k = int(np.count_nonzero(present))
        pos += 8
        if pos + k > size:
            raise CorruptPayloadError(f"lossless payload's context counts stop inside chunk {i}")
        got = fl[pos : pos + k]
        n = raw_len // width
        if (k and min(got) <= 0) or sum(got) != n:
            raise CorruptPayloadError(f"lossless payload's context counts of chunk {i} do not add up to its {n} elements")
        out[i, present] = flat[pos : pos + k]
        pos += k
    if pos != size:
        raise CorruptPayloadError(f"lossless payload has {size - pos} context counts more than its chunks")
    return list(out)


def chunk_counts_numpy(contexts: np.ndarray, info: planes.StreamInfo) -> list[np.ndarray]:
    """Each chunk's elements per context (int64[256]) of the grouped stream ``info``, from every
    element's context (the numpy path's :func:`pack_counts` input, and its check of stored ones)."""
    bounds = np.cumsum([0] + info.raw_lens) // info.width
    return [np.bincount(contexts[a:b], minlength=256).astype(np.int64) for a, b in zip(bounds, bounds[1:])]


@register_codec
class Lossless(Codec):
    """Bit-exact: the decoded tensor has the fine-tune's exact bits.

    ``by_exponent`` (the default) writes differences grouped by the base's exponent: format v4,
    with each chunk's context counts stored (``context_counts``, the default) and zero planes
    without a payload (``zero_planes``, the default), v3 with ``zero_planes=False``, or v2 without
    the counts (``context_counts=False``, which also writes no zero planes); False writes format
    v1 (faster, larger; see the module). Every version decodes whatever the setting.
    """

    codec_id = "lossless"
    version = 4
    lossless = True

    def __init__(self, level: int = 3, by_exponent: bool = True, context_counts: bool = True, zero_planes: bool = True):
        if not 1 <= int(level) <= 22:
            raise CodecError(f"zstd level must be 1..22, got {level}")
        for name, v in (("by_exponent", by_exponent), ("context_counts", context_counts), ("zero_planes", zero_planes)):
            if not isinstance(v, bool):
                raise CodecError(f"{name} must be true or false, got {v!r}")
        self.level = int(level)
        self.by_exponent = by_exponent
        self.context_counts = context_counts
        self.zero_planes = zero_planes

    @property
    def _zero(self) -> bool:
        """Whether this encoder writes zero planes (format v4: v3 with plane mode 3)."""
        return self.by_exponent and self.context_counts and self.zero_planes

    @property
    def _grouped_version(self) -> int:
        return 4 if self._zero else (3 if self.context_counts else 2)

    def encode(self, target: torch.Tensor, base: torch.Tensor | None, ctx: EncodeContext | None = None) -> Encoded:
        width = target.element_size()
        raw = tensor_u8(target)
        diffable = _FLOATS | _FP8 if self.by_exponent else _FLOATS
        usable = (
            base is not None
            and base.dtype == target.dtype
            and tuple(base.shape) == tuple(target.shape)
            and target.dtype in diffable
        )
        meta: dict = {}
        arrays: dict[str, torch.Tensor] = {}
        version = 1
        if usable:
            base_raw = tensor_u8(base)
            fx = planes.fast()
            whole = None
            if self.by_exponent:
                shift, bits = context_field(target.dtype)  # the base's exponent: each element's context
            if self.by_exponent and fx is not None and width == 2:  # the whole stream in a few compiled calls
                whole = planes.diff_stream(raw, base_raw, shift, bits, self.level, chunk_bytes=GROUPED_CHUNK_BYTES, zero=self._zero)
            if whole is not None:
                stream, chunk_counts = whole
                meta, version = {"mode": "diff", "context": "exponent"}, self._grouped_version
                if self.context_counts:
                    arrays["counts"] = torch.from_numpy(_pack_counts(chunk_counts))
            elif self.by_exponent and fx is not None:  # difference, context and grouping in one compiled pass a chunk
                seen: dict[int, np.ndarray] = {}  # each chunk's counts, by its first byte (chunks run on threads)

                def split(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray] | list:
                    made = planes.diff_groups(raw[lo:hi], base_raw[lo:hi], width, shift, bits, self.level, zero=self._zero)
                    if made is not None:  # the chunk's groups, compressed in the same compiled call
                        seen[lo] = made[1]
                        return made[0]
                    # into this thread's scratch: the planes are compressed (copied out) before its next chunk
                    scratch = planes._scratch_words("grouped_enc", hi - lo, np.uint8).reshape(width, (hi - lo) // width)
                    grouped, counts = fx.diff_group_split(raw[lo:hi], base_raw[lo:hi], width, shift, bits, out=scratch)
                    seen[lo] = counts
                    return grouped, counts

                stream = planes.compress_grouped(raw.size, width, split, level=self.level, chunk_bytes=GROUPED_CHUNK_BYTES,
                                                 zero=self._zero)
                meta, version = {"mode": "diff", "context": "exponent"}, self._grouped_version
                if self.context_counts:  # each chunk's counts in stream order (the chunks compress_grouped made),
                    step = planes.chunk_step(width, GROUPED_CHUNK_BYTES)  # not read back from the stream's table
                    arrays["counts"] = torch.from_numpy(_pack_counts([seen[lo] for lo in range(0, raw.size, step)]))
            elif self.by_exponent:  # the numpy reference: the same bytes
                code = diff_code(raw, base_raw, width)
                contexts = exponent_contexts(base_raw, target.dtype)
                stream = planes.compress(code, width, rotate=False, level=self.level, contexts=contexts,
                                         chunk_bytes=GROUPED_CHUNK_BYTES, zero=self._zero)
                meta, version = {"mode": "diff", "context": "exponent"}, self._grouped_version
                if self.context_counts:
                    info = planes.read_info(memoryview(stream))
                    arrays["counts"] = torch.from_numpy(pack_counts(info, chunk_counts_numpy(contexts, info)))
            else:
                code = diff_code(raw, base_raw, width)
                stream = planes.compress(code, width, rotate=False, level=self.level)
                meta = {"mode": "diff"}
        else:
            stream = planes.compress(raw, width, rotate=target.dtype in _FLOATS, level=self.level)
            meta = {"mode": "plain"}
        if isinstance(stream, np.ndarray):  # a new array of its own (planes.diff_stream)
            payload = torch.from_numpy(stream)
        else:  # numpy copies with the GIL released (bytearray(stream) held it for the whole payload)
            payload = torch.from_numpy(np.frombuffer(stream, dtype=np.uint8).copy()) if stream else torch.empty(0, dtype=torch.uint8)
        enc = self._new(target, {"stream": payload, **arrays}, meta)
        enc.version = version  # the payload's format, which a plain payload keeps at v1
        return enc

    def _raw(self, enc: Encoded, base: torch.Tensor | None, out: np.ndarray | None = None) -> np.ndarray:
        """The target's bytes, in ``out`` when given (checked: uint8, C-contiguous, writable, the
        tensor's size), else in a new array."""
        self._check_version(enc)
        if enc.version < 1:
            raise CorruptPayloadError(f"lossless payload has format version {enc.version}")
        try:
            dtype = getattr(torch, enc.dtype)
            if not isinstance(dtype, torch.dtype):
                raise AttributeError
        except (AttributeError, TypeError):
            raise CorruptPayloadError(f"lossless payload names an unknown dtype {enc.dtype!r}") from None
        width = dtype.itemsize
        if not all(isinstance(s, int) and s >= 0 for s in enc.shape):
            raise CorruptPayloadError(f"lossless payload has a bad shape {enc.shape!r}")
        stream = enc.arrays.get("stream")
        if stream is None or stream.dtype != torch.uint8:
            raise CorruptPayloadError("lossless payload has no byte stream")
        buf = stream.numpy()
        info = planes.read_info(memoryview(buf))
        expected = enc.numel * width
        if info.raw_total != expected or info.width != width:
            raise CorruptPayloadError(
                f"lossless stream holds {info.raw_total} bytes of width {info.width}; "
                f"a {enc.dtype} tensor of shape {tuple(enc.shape)} is {expected} bytes")
        given = out is not None
        if out is None:
            out = np.empty(expected, dtype=np.uint8)
        elif not (out.dtype == np.uint8 and out.ndim == 1 and out.size == expected and out.flags.c_contiguous
                  and out.flags.writeable):
            raise CodecError(f"out must be a writable contiguous uint8 array of {expected} bytes")
        mode = enc.meta.get("mode")
        if mode == "plain":
            return planes.decompress(buf, out=out)
        if mode != "diff":
            raise CorruptPayloadError(f"unknown lossless mode {mode!r}")
        if base is None:
            raise CodecError("this lossless delta needs its base tensor to decode")
        if tuple(base.shape) != tuple(enc.shape):  # (a meta tensor a call only to word the error as check_pair does)
            check_pair(torch.empty(enc.shape, device="meta"), base)
        base_raw = _base_u8(base, dtype)
        contexts, stored = None, self._stored_counts(enc, info)
        if enc.meta.get("context") == "exponent":
            if dtype not in EXPONENT_FIELD:
                raise CorruptPayloadError(f"lossless payload groups a {enc.dtype} tensor by exponent")
            fx = planes.fast()
            if fx is not None and info.groups is not None:  # ungroup and undo the difference in one pass a chunk
                decode_grouped_diff(buf, info, base_raw, dtype, out, stored=stored)
                return out
            contexts = exponent_contexts(base_raw, dtype)
            if stored is not None and not all(np.array_equal(a, b) for a, b in zip(chunk_counts_numpy(contexts, info), stored)):
                raise CorruptPayloadError(_NOT_THE_BASE)
        elif enc.meta.get("context") is not None:
            raise CorruptPayloadError(f"unknown lossless context {enc.meta.get('context')!r}")
        elif planes.fast() is not None and info.groups is None and not info.rotate:  # v1: join and undo in one pass
            decode_plain_diff(buf, info, base_raw, out)
            return out
        code = planes.decompress(buf, out=out, contexts=contexts)
        if not given:
            return diff_decode(code, base_raw, width)
        out[:] = diff_decode(code, base_raw, width)
        return out

    @staticmethod
    def _stored_counts(enc: Encoded, info: planes.StreamInfo) -> list[np.ndarray] | None:
        """Format v3's context counts per chunk (:func:`unpack_counts`), None before v3."""
        if enc.version < 3:
            return None
        if enc.meta != {"mode": "diff", "context": "exponent"} or info.groups is None:
            raise CorruptPayloadError("a lossless v3 payload is a difference grouped by exponent")
        flat = enc.arrays.get("counts")
        if flat is None or flat.dtype != torch.int32 or flat.dim() != 1:
            raise CorruptPayloadError("a lossless v3 payload has its context counts (int32, 1-D)")
        return unpack_counts(flat.numpy(), info)

    def reconstruct(self, enc: Encoded, base: torch.Tensor | None) -> torch.Tensor:
        raw = self._raw(enc, base)
        dtype = getattr(torch, enc.dtype)
        if raw.size == 0:  # torch cannot view an empty byte array as a wider dtype
            out = torch.empty(enc.shape, dtype=dtype)
        else:
            out = torch.from_numpy(raw.copy() if not raw.flags.writeable else raw).view(dtype).reshape(enc.shape)
        return out if base is None else out.to(base.device)

    def reconstruct_into(self, enc: Encoded, base: torch.Tensor | None, out: np.ndarray) -> np.ndarray:
        """:meth:`reconstruct`'s bytes written into ``out`` (uint8, contiguous, the tensor's size:
        e.g. a checkout's window onto the file it writes), returned. A fresh array per tensor costs
        a page fault per 4 KiB on its first write (a tensor under 2 MiB gets no huge pages), about
        1.3-1.8 ns per bf16 element on the dev VM, as much as the ungrouping; and materialize then
        copies it into the window."""
        return self._raw(enc, base, out)

    def warm(self, dtypes: Iterable[torch.dtype]) -> None:
        """Load the compiled kernels (codec._numba: numba's cached machine code) that this codec's
        encode and decode of these dtypes call, and the plane join a base tensor's decode calls
        once they are loaded, by a round trip of a tiny delta of each dtype in the calling thread.

        Why: a kernel's first call in a process loads it under numba's compiler lock, with the GIL
        held for most of it (tens of ms a kernel, ~0.3 s to import numba). When 16 workers reach
        their first chunk together every one of them waits on that load: on the H200 machine's 16
        cores a 2.1 GB lossless fine-tune add spent 38 s of its threads' summed wall time waiting
        inside the base decode's plane join and 16 s inside the encode's split (2 and 5 s of CPU),
        in a 4.8 s add (benchmarks/results/scaling_h200.md). Loaded first, the same load costs
        its time once with nothing waiting on it. Where numba does not load, nothing to do."""
        kinds = [d for d in dict.fromkeys(dtypes) if d in _FLOATS | _FP8]
        bases = {d: torch.linspace(-3.0, 3.0, 96).to(d) for d in kinds}
        # a base tensor object's stream of each dtype, made before the kernels load (the numpy split:
        # no add or checkout of a fine-tune splits planes, so the split kernel is not loaded for it)
        streams = [planes.compress(tensor_u8(b), b.element_size(), rotate=True) for b in bases.values()]
        if planes.fast() is None:
            return
        for dtype, base in bases.items():
            bits = _INT_OF_WIDTH[base.element_size()]
            target = (base.view(bits) + (torch.arange(96) % 3 == 0).to(bits)).view(dtype)  # one ulp on a third
            enc = self.encode(target, base)
            out = np.empty(target.numel() * target.element_size(), dtype=np.uint8)
            self.reconstruct_into(enc, base, out)
        for stream in streams:
            planes.decompress(stream)  # the plane join a base tensor's decode calls

    def decode_delta(self, enc: Encoded, device: torch.device | str | None = None) -> torch.Tensor:
        raise CodecError("a lossless payload decodes to the fine-tune itself: use reconstruct(enc, base)")

    def decode_delta_with_base(self, enc: Encoded, base: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(enc, base).to(torch.float32) - base.to(torch.float32)
