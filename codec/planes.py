"""Byte planes + zstd: the lossless coding every stored tensor goes through.

Neighbouring floats share their exponents but not their low mantissa bits. Split a run of
w-byte elements into w planes (all first bytes, all second bytes, ...) and zstd compresses the
exponent plane well while the noisy mantissa planes stay near raw: the ZipNN observation. For
float dtypes the bits are first rotated left by one so the sign lands in the lowest bit and the
exponent fills the top byte on its own (bf16, fp32), instead of straddling two planes.

The stream is chunked (``CHUNK_BYTES`` raw bytes a chunk) with a table up front, so a reader can
decode one byte range without the rest, and chunks compress and decompress in parallel threads
(zstd releases the GIL).

Stream layout (little-endian)::

    b"DSP1" u8 width  u8 flags  u16 reserved  u32 nchunks  u64 raw_total
    nchunks x (u64 raw_len, width x u32 plane_len, width x u8 mode)   (the chunk table)
    plane payloads, chunk after chunk, most significant plane first

``mode`` 0 = stored raw (zstd did not help), 1 = zstd frame, 2 = palette chunk (codec/palette.py:
every plane of the chunk has mode 2, plane 0's slot holds the chunk's palette payload and the other
slots are empty). The palette is tried on 16-bit float chunks (``width`` 2, ``rotate``) of the
store's tensor objects (:func:`compress_parts`, unless ``DELTASTORE_PALETTE=0``; :func:`compress`
only when asked) that show a grid
of few values per 32-element block (weights dequantized from a group-quantized file), and kept
only where it is smaller than the planes; a reader from before mode 2 refuses such a chunk with
"unknown plane mode 2", and every older stream decodes as before. Mode 3 (:data:`ZERO_MODE`,
grouped streams of the lossless codec's format v4): the plane is all zero bytes and its length is
0; any reader decodes it, and one from before mode 3 refuses it ("unknown plane mode 3").

Grouped streams (``b"DSP2"``, written when the caller gives a *context* byte per element): within
each chunk the elements are stably grouped by context (ascending), and each group gets planes and
zstd frames of its own, so each group's frames carry entropy tables for that group's statistics.
The decoder must be given the same contexts (the lossless codec derives them from the base
tensor, which both sides hold), so the grouping costs no stored bytes::

    b"DSP2" u8 width  u8 flags  u16 reserved  u32 nchunks  u64 raw_total
    per chunk: u64 raw_len  u16 ngroups
               ngroups x (u8 context, u32 nelems, width x u32 plane_len, width x u8 mode)
    plane payloads, chunk after chunk, group after group, most significant plane first

A group holds the elements of one or more adjacent contexts (the encoder joins rare ones, see
:func:`merge_groups`); ``context`` is its first. The decoder sorts the contexts it is given the
same way and checks that every group starts where its first context starts, so a stream paired
with another base is refused rather than decoded to wrong bits (unless that base's exponents
happen to fall the same way; the store's sha256 check catches the rest).

Every zstd frame is decoded into at most the size the table gives it: a frame whose header
claims another size is refused before anything is allocated.

The grouping (a stable counting sort by context, straight into the planes) and its inverse run
as compiled numba kernels (``codec._numba``, :func:`fast`) with the same bytes as the numpy code
here, which stays as the reference and the fallback. :func:`compress_grouped` and
:func:`decompress_grouped` let a caller make and consume each chunk's grouped planes itself, so
the lossless codec fuses its difference transform into the same pass.

Encoder settings (they change no byte of the layout: any zstd frame decodes with the standard
decoder). For ``level`` 1..3 the planes are compressed with :data:`LITERAL_PARAMS`: zstd's fast
strategy with min_match 7 and a 64-entry hash table. An exponent plane has 2-3 bits of entropy a
byte and almost no real repeats, so zstd's own levels find many short, chance matches that cost
more than they save; this setting codes it nearly as Huffman literals, near the order-0 entropy,
at two to three times the speed (SmolLM2 bf16 exponent plane: level 3 0.409 of raw, these 0.334;
entropy 0.335). Runs (zero planes of a fine-tune's difference) still collapse. On top, the search
skips ahead where it finds nothing (:data:`ACCEL`) while the literals stay Huffman-coded, which
python-zstandard's C extension cannot ask for (``codec._zstd_encode`` says how and what it
measured: the difference planes compress 1.3-2x faster at -7.5% to +0.2% bytes). Levels 4..22 use
zstd's own parameters. Before compressing a whole plane, a 3 x 16 KiB sample is tried: a plane
whose sample does not shrink below :data:`RAW_IF_ABOVE` of its size (the noisy low mantissa
bytes) is stored raw without spending a full zstd pass on it.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import zstandard

from . import _compiled, _zstd, _zstd_encode
from . import palette as _palette
from ._zstd import unzstd
from .errors import CodecError, CorruptPayloadError

MAGIC = b"DSP1"
MAGIC_GROUPED = b"DSP2"
CHUNK_BYTES = 4 << 20
#: zstd parameters for levels 1..3 (see the module docstring)
LITERAL_PARAMS = dict(window_log=17, hash_log=6, chain_log=6, search_log=1, min_match=7, target_length=0,
                      strategy=zstandard.STRATEGY_FAST)
FAST_LEVEL_MAX = 3
#: levels 1..3: where the match search finds nothing, zstd skips ahead faster by this (its
#: ``targetLength`` for the fast strategy), literals still Huffman-coded (``codec._zstd_encode``).
#: 0: a match tried at every position, the frames every object had before (the golden fixtures)
ACCEL = 16
SAMPLE_BYTES = 16 << 10
RAW_IF_ABOVE = 0.98
#: grouped streams: contexts are joined until a group holds this many elements (:func:`merge_groups`)
MIN_GROUP = 16384
FLAG_ROTATE = 1
#: plane mode 3 (format v4 of the lossless codec's grouped streams): the plane is all zero bytes and
#: has no payload (a fine-tune's difference leaves the high byte 0 in most groups: 91% of a dense
#: SmolLM2 fine-tune's elements); a reader from before it refuses it as "unknown plane mode 3"
ZERO_MODE = 3
#: an encoder checks a plane for all zeros only where its payload is at most this many bytes (a zero
#: plane's zstd frame is an RLE block a 128 KiB: ~13 bytes each; a small plane is stored raw)
ZERO_PROBE = 64
_HEAD = struct.Struct("<4sBBHIQ")

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


_POOLS: dict[int, ThreadPoolExecutor] = {}
_FAST: object = False  # not looked up yet
#: per-thread scratch arrays and zstd contexts of the chunk workers
_LOCAL = threading.local()


def fast():
    """The compiled kernels (``codec._numba``), or None where numba does not import or
    ``DELTASTORE_NUMBA=0`` is set: then the numpy code here runs instead, with the same bytes
    3-10x slower. The numpy code is also the reference the kernels are tested against."""
    global _FAST
    if _FAST is False:
        _FAST = _compiled.load("_numba")
    return _FAST


def _loaded():
    """The compiled kernels if this process has loaded them already (the lossless codec loads
    them; so does a mount's warm-up), else None, without loading them: the plain plane split and
    join never do. A process's first use of numba costs about a second (the import, then the
    first compiled call sets up LLVM), which the numpy path below more than repays on a base
    model's add or checkout: measured on the H200 machine's 16 cores, loading it on a thread of
    its own beside the workers cost a checkout ~2 s of GIL hand-offs (scaling_h200.md)."""
    return _FAST or None


def _map_chunks(work, items, threads: int | None) -> list:  # noqa: ANN001
    """``[work(i) for i in items]``, in order, on up to ``threads`` threads (default
    :func:`default_threads`), at most one per item: the calling thread and up to ``threads - 1``
    helpers from the shared pool, each taking the next item not yet taken until none is left
    (:class:`_Claims`); inline where that is one thread.

    Not a future per item: a future's bookkeeping and its waiter's wake-up (``Future.set_result``:
    a ``Condition.notify`` while holding the GIL) came once per 1-4 MiB chunk, and on a loaded
    machine a waker is often preempted by the thread it wakes while it still holds the GIL (0.4
    of a 0.93 GB fine-tune add's 2.1 GIL-held s on the dev VM). Here a call wakes at most its
    helpers and, at the end, itself; the caller works instead of waiting.

    Helpers only for cores no chunk work holds (:class:`_Cores`): an add or a checkout runs a map
    per tensor on many tensor threads at once, and with ``threads - 1`` helpers each there were
    twice as many threads running chunks as cores; a thread preempted while it holds the GIL
    stops every other one that needs it. The caller asks again after each item it finishes, so
    a map started while the cores were taken gets helpers as they free up. Measured against
    ``threads - 1`` helpers a call (``DELTASTORE_CHUNK_HELPERS=all``, still there): on the H200
    machine's 16 cores +6-7% on a base's add and checkout and level on a fine-tune's add, within
    that host's spread between rounds; level on the dev VM's 2 (scaling_h200.md, thirteenth session)."""
    items = list(items)
    n = 1 if len(items) <= 1 else min(threads or default_threads(), len(items))  # (most tensors: one chunk)
    if n <= 1:
        return [work(i) for i in items]
    claims = _Claims(work, items, _pool(n - 1), n - 1)
    return claims.finish()


class _Cores:
    """How many threads run chunk work now, against the cores there are (:func:`default_threads`):
    a map's caller counts itself and reserves a core for each helper it submits, a helper gives
    its core back when it leaves. Where ``DELTASTORE_CHUNK_HELPERS=all`` every reservation is
    granted (the count is kept all the same)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.busy = 0

    def reserve(self, want: int) -> int:
        """Up to ``want`` cores (none if none is free), now counted as busy."""
        with self.lock:
            free = want if _ALL_HELPERS else min(want, default_threads() - self.busy)
            free = max(0, free)
            self.busy += free
            return free

    def enter(self) -> None:
        """A map's caller: counted as busy, free cores or not (it runs its items regardless)."""
        with self.lock:
            self.busy += 1

    def release(self, k: int = 1) -> None:
        with self.lock:
            self.busy -= k


_ALL_HELPERS = os.environ.get("DELTASTORE_CHUNK_HELPERS", "").strip() == "all"
_CORES = _Cores()


class _Claims:
    """One :func:`_map_chunks` call's items, taken one at a time (``itertools.count``, atomic
    under the GIL) by its calling thread and by the helpers that join before it is closed. The
    caller closes it once no item is left to take (or one failed) and waits only for helpers that
    joined, which finish the items they took; a helper that starts later finds it closed and
    returns at once, so nothing runs behind the caller's back and no caller waits on a queue.
    Helpers are submitted to ``pool`` as :data:`_CORES` grants cores, at most ``most`` of them:
    some at the start, more after each item the caller finishes."""

    __slots__ = ("work", "items", "out", "take", "n", "lock", "wake", "helping", "closed", "error", "pool", "wanted")

    def __init__(self, work, items: list, pool: ThreadPoolExecutor, most: int):  # noqa: ANN001
        self.work, self.items, self.n = work, items, len(items)
        self.out: list = [None] * self.n
        self.take = itertools.count().__next__
        self.lock = threading.Lock()
        self.wake = threading.Lock()
        self.wake.acquire()  # released by the last helper out, once the caller waits
        self.helping = 0
        self.closed = False
        self.error: BaseException | None = None
        self.pool, self.wanted = pool, most

    def _recruit(self) -> None:
        """Submit a helper for each core :data:`_CORES` grants, up to the helpers still wanted."""
        if self.wanted > 0:
            got = _CORES.reserve(self.wanted)
            self.wanted -= got
            for k in range(got):
                try:
                    self.pool.submit(self.help)
                except BaseException:  # (a pool shut down at exit): the cores not handed to a helper go back
                    _CORES.release(got - k)
                    raise

    def _run(self, caller: bool = False) -> None:
        while self.error is None:
            k = self.take()
            if k >= self.n:
                return
            try:
                self.out[k] = self.work(self.items[k])
            except BaseException as e:  # noqa: BLE001 - raised by the caller
                if self.error is None:
                    self.error = e
                return
            if caller and k + 1 < self.n:
                self._recruit()

    def help(self) -> None:
        try:
            with self.lock:
                if self.closed:
                    return
                self.helping += 1
            try:
                self._run()
            finally:
                with self.lock:
                    self.helping -= 1
                    if self.closed and self.helping == 0:
                        self.wake.release()
        finally:
            _CORES.release()  # the core reserved when this helper was submitted

    def finish(self) -> list:
        _CORES.enter()
        try:
            self._recruit()
            self._run(caller=True)
        finally:
            _CORES.release()
        with self.lock:
            self.closed = True
            wait = self.helping > 0
        if wait:
            self.wake.acquire()
        if self.error is not None:
            raise self.error
        return self.out


def _pool(n: int) -> ThreadPoolExecutor:
    """One long-lived pool per size. A new pool per call would start new threads, and glibc gives
    each new thread its own malloc arena: freed chunk buffers then pile up across arenas and the
    process's memory grows with the number of tensors instead of staying near one tensor."""
    pool = _POOLS.get(n)
    if pool is None:
        pool = _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="deltastore-planes")
    return pool


def default_threads() -> int:
    return int(os.environ.get("DELTASTORE_THREADS", "0")) or (os.cpu_count() or 1)


def rotate_left1(words: np.ndarray) -> np.ndarray:
    """Rotate each unsigned word left by one bit: sign to bit 0, exponent to the top byte."""
    bits = words.dtype.itemsize * 8
    return (words << 1) | (words >> (bits - 1))


def rotate_right1(words: np.ndarray) -> np.ndarray:
    bits = words.dtype.itemsize * 8
    return (words >> 1) | (words << (bits - 1))


def _scratch_words(name: str, n: int, dtype) -> np.ndarray:  # noqa: ANN001
    """A per-thread array of ``n`` words, kept for the thread's next chunk: a fresh chunk-sized
    temporary per call costs a page fault per 4 KiB on first touch (on the dev VM more than the
    arithmetic)."""
    buf = getattr(_LOCAL, name, None)
    if buf is None or buf.size < n:
        buf = np.empty(n, dtype=dtype)
        setattr(_LOCAL, name, buf)
    return buf[:n]


def split_planes(raw: np.ndarray, width: int, rotate: bool, out: np.ndarray | None = None, *,
                 compiled: bool = True) -> list[np.ndarray]:
    """uint8 array of whole elements -> ``width`` contiguous planes, most significant byte first
    (with ``rotate``, of the words rotated left by one bit: for bf16/fp16 the exponent's byte first),
    as the rows of ``out`` (width x n uint8) when given.

    A few calls a chunk, each releasing the GIL for all of it: the (rotated) words into a
    per-thread scratch array, then each plane gathered from its byte of every word by a strided
    copy (byte k from the top is byte ``width-1-k`` of a little-endian word). The earlier
    block-by-block code made ~6 numpy calls per 64 Ki elements, each taking the GIL back; on 16
    cores the workers queued for it. With ``compiled``, one call of the numba kernel instead
    where this process has it loaded (:func:`_loaded`)."""
    n = raw.size // width
    if out is None:
        out = np.empty((width, n), dtype=np.uint8)
    if width == 1:
        out[0] = raw
        return list(out)
    fx = _loaded() if compiled else None
    if fx is not None:
        fx.split_planes(raw, width, rotate, out)
        return list(out)
    src = raw
    if rotate:  # rotl1: sign to bit 0, exponent to the top byte
        words, bits = raw.view(_UINT[width]), width * 8
        a, b = _scratch_words(f"rot_a{width}", n, words.dtype), _scratch_words(f"rot_b{width}", n, words.dtype)
        np.left_shift(words, 1, out=a)
        np.right_shift(words, bits - 1, out=b)
        np.bitwise_or(a, b, out=a)
        src = a.view(np.uint8)
    for k in range(width):
        out[k] = src[width - 1 - k :: width]
    return list(out)


def join_planes(planes: list[np.ndarray], width: int, rotate: bool, out: np.ndarray | None = None, *,
                compiled: bool = True) -> np.ndarray:
    """Inverse of :func:`split_planes`, written into ``out`` (uint8, ``width * n`` bytes) when given:
    each plane put into its byte of every word (2-byte words: two whole-word passes; wider: a
    strided copy a plane), then the rotation undone in place."""
    if width == 1:
        if out is None:
            return planes[0]
        out[:] = planes[0]
        return out
    n = planes[0].size
    if out is None:
        out = np.empty(n * width, dtype=np.uint8)
    fx = _loaded() if compiled else None
    if fx is not None:
        fx.join_planes(planes, width, rotate, out)
        return out
    if width == 2:  # two whole-word passes: a strided byte copy a plane cost twice as much
        words = out.view(np.uint16)
        np.left_shift(planes[0], 8, out=words, dtype=np.uint16)
        np.bitwise_or(words, planes[1], out=words, dtype=np.uint16)
    else:
        for k, p in enumerate(planes):
            out[width - 1 - k :: width] = p
    if rotate:  # rotr1, in place (a file window may be unaligned: numpy handles that)
        words, bits = out.view(_UINT[width]), width * 8
        t = _scratch_words(f"rot_a{width}", n, words.dtype)
        np.left_shift(words, bits - 1, out=t)
        np.right_shift(words, 1, out=words)
        np.bitwise_or(words, t, out=words)
    return out


@dataclass
class _Chunk:
    raw_len: int
    modes: list[int]
    payloads: list  # bytes (compressed, or stored planes for a bytes stream) or np.ndarray (stored planes)


def compressor(level: int):  # noqa: ANN201 (a zstandard.ZstdCompressor or a _zstd_encode.LiteralCompressor)
    """The zstd compressor a plane of ``level`` gets: levels 1..3 :data:`LITERAL_PARAMS` skipping
    :data:`ACCEL` steps ahead with Huffman literals (``codec._zstd_encode``; python-zstandard's C
    extension, which cannot set that, where its cffi backend does not load), 4..22 zstd's own."""
    if 1 <= level <= FAST_LEVEL_MAX:
        accel = _accel()
        if accel:
            c = _zstd_encode.make(accel, sparse=_sparse())
            if c is not None:
                return c
        return zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(**LITERAL_PARAMS))
    return zstandard.ZstdCompressor(level=level)


def _thread_compressor(level: int) -> zstandard.ZstdCompressor:
    """:func:`compressor` kept per thread and level (a compressor serves one thread at a time):
    a fresh one per chunk allocated and cleared its working memory each time. Every ``compress``
    call is a frame of its own, so reuse changes no byte."""
    cache = getattr(_LOCAL, "cctx", None)
    if cache is None:
        cache = _LOCAL.cctx = {}
    key = (level, _accel(), _sparse())
    c = cache.get(key)
    if c is None:
        c = cache[key] = compressor(level)
    return c


def _accel() -> int:
    """:data:`ACCEL`, or ``DELTASTORE_ZSTD_ACCEL`` where set (0 writes the frames of before; an A/B
    of the two in one install, as the benchmarks run it)."""
    env = os.environ.get("DELTASTORE_ZSTD_ACCEL")
    if env is None:
        return ACCEL
    if not (env.isascii() and env.isdigit() and int(env) <= _zstd_encode.MAX_ACCEL):
        raise CodecError(f"DELTASTORE_ZSTD_ACCEL={env!r}: give a whole number from 0 to {_zstd_encode.MAX_ACCEL}")
    return int(env)


def _sparse() -> bool:
    """Whether sparse groups get their second frames (``_zstd_encode``, sparse groups; the default),
    or not with ``DELTASTORE_ZSTD_SPARSE=0`` (the frames of before: an A/B in one install)."""
    return os.environ.get("DELTASTORE_ZSTD_SPARSE", "1") != "0"


def _thread_decompressor() -> zstandard.ZstdDecompressor:
    """One zstd decompressor per thread, kept (see :func:`_thread_compressor`)."""
    d = getattr(_LOCAL, "dctx", None)
    if d is None:
        d = _LOCAL.dctx = zstandard.ZstdDecompressor()
    return d


def _looks_incompressible(cctx: zstandard.ZstdCompressor, plane: np.ndarray) -> bool:
    n = plane.size
    if n < 8 * SAMPLE_BYTES:
        return False
    mid = (n // 2) & ~4095
    parts = (plane[:SAMPLE_BYTES], plane[mid : mid + SAMPLE_BYTES], plane[n - SAMPLE_BYTES :])
    return sum(len(cctx.compress(p)) for p in parts) > RAW_IF_ABOVE * 3 * SAMPLE_BYTES


def _split_scratch(raw: np.ndarray, width: int, rotate: bool) -> list[np.ndarray]:
    """:func:`split_planes` into this thread's scratch (the planes are compressed or copied out
    before the thread's next chunk): a fresh chunk-sized array per chunk is a page fault per
    4 KiB on first touch."""
    if width == 1:
        return [raw]
    buf = _scratch_words("split", raw.size, np.uint8)
    return split_planes(raw, width, rotate, buf.reshape(width, raw.size // width))


def _compress_chunk(raw: np.ndarray, width: int, rotate: bool, level: int, stored_as_bytes: bool = True,
                    palette: bool = False) -> _Chunk:
    """One chunk's planes, each a zstd frame or stored. ``stored_as_bytes``: stored planes as
    bytes (for :func:`compress`, whose final ``b"".join`` releases the GIL only when every part is
    bytes), else as numpy copies (for :func:`compress_parts`, written as they are): either
    way a copy, since the planes lie in this thread's scratch. ``palette``: a 16-bit float chunk
    that shows a grid (:func:`codec.palette.worth_trying`) is coded as a palette chunk (mode 2)
    where that is the smaller."""
    cctx = _thread_compressor(level)
    if palette and width == 2 and rotate and _palette.worth_trying(raw.view(np.uint16)):
        pal = _palette.encode_chunk(raw, cctx.compress)
        if len(pal) > _palette.KEEP_BELOW * (raw.size // 2):  # no clear win: the planes too, the smaller kept
            plain = _compress_chunk(raw, width, rotate, level, stored_as_bytes)
            if sum(memoryview(p).nbytes for p in plain.payloads) <= len(pal):
                return plain
        return _Chunk(raw.size, [_palette.MODE] * width, [pal] + [b""] * (width - 1))
    modes, payloads = [], []
    for plane in _split_scratch(raw, width, rotate):
        if not (width > 1 and _looks_incompressible(cctx, plane)):
            comp = cctx.compress(plane)
            if len(comp) < plane.size:
                modes.append(1)
                payloads.append(comp)
                continue
        modes.append(0)
        payloads.append(plane.tobytes() if stored_as_bytes else plane.copy())
    return _Chunk(raw.size, modes, payloads)


@dataclass(slots=True)
class _Group:
    context: int
    n: int  # elements
    modes: list[int]
    payloads: list  # bytes (compressed) or np.ndarray (stored) while encoding; lengths when read


_NEEDLES = np.arange(256, dtype=np.uint8)


def group_order(ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable order of a chunk's elements by context, and the element count of each context
    (read off the sorted contexts: np.bincount would first widen every byte to int64).

    The numpy reference of the grouping (and the path where numba does not import): about 12 ns
    an element on the dev VM, since numpy has no counting sort that returns the order (sorting
    64 Ki-element blocks and joining their runs, or one boolean mask per group, measured no
    faster). The shipped path is :func:`group_split`'s compiled counting sort (codec._numba)."""
    order = np.argsort(ctx, kind="stable")
    # np.take is faster than fancy indexing; needles of the haystack's own dtype spare a cast of it
    edges = np.searchsorted(np.take(ctx, order), _NEEDLES)
    return order, np.diff(np.append(edges, ctx.size))


def merge_groups(counts: np.ndarray, min_group: int) -> list[tuple[int, int]]:
    """(first context, elements) of each group: adjacent contexts (ascending) joined until a group
    holds ``min_group`` elements, a short tail joined to the group before it. Each group costs a
    table entry and zstd frame headers; a frame of a few elements would cost more than it saves."""
    groups: list[list[int]] = []
    open_ = False
    cl = counts.tolist()  # Python ints: numpy scalars and np.flatnonzero cost more than the loop
    for c in counts.nonzero()[0].tolist():
        n = cl[c]
        if open_:
            groups[-1][1] += n
        else:
            groups.append([int(c), n])
        open_ = groups[-1][1] < min_group
    if len(groups) > 1 and groups[-1][1] < min_group:
        groups[-2][1] += groups.pop()[1]
    return [(c, n) for c, n in groups]


def _compress_grouped_planes(grouped: np.ndarray, counts: np.ndarray, level: int, min_group: int, zero: bool = False) -> list[_Group]:
    """One chunk's groups from its planes already grouped by context (``grouped[k]``: plane k of
    the chunk's words in stable context order) and the elements per context.

    Every frame of the chunk (a group's plane each) is compressed in one call (the GIL released
    for all of them), not one ``compress`` a frame: a chunk has tens of frames, and at 16 threads
    each call's release and re-take of the GIL queued the workers behind one another (issue 7:
    16 threads inside the stage, 1-3 running; :func:`_frames`). The same frames, byte for byte,
    as ``compress`` of each. (A 2-byte fine-tune's chunk skips this: :func:`diff_groups`.)
    ``zero``: a plane of all zero bytes whose payload would be at most :data:`ZERO_PROBE` bytes gets
    mode :data:`ZERO_MODE` and no payload (format v4), decided on the final payloads as the compiled
    loop decides (``codec._numba._diff_groups2``)."""
    spans = merge_groups(counts, min_group)
    cctx = _thread_compressor(level)
    made = _frames(cctx, grouped, spans)
    again = getattr(cctx, "again", None)
    if again is not None and grouped.shape[0] == 2:
        _sparse_groups(again, grouped, spans, made)
    frames = iter(made)
    groups, pos = [], 0
    for c, k in spans:
        modes, payloads, end = [], [], pos + k
        for row in range(grouped.shape[0]):
            comp = next(frames)
            if 0 < len(comp) < k:
                mode, payload = 1, comp
            else:  # bytes: the final join then copies without the GIL (CPython keeps it for non-bytes parts)
                mode, payload = 0, grouped[row, pos:end].tobytes()
            if zero and k and len(payload) <= ZERO_PROBE and not grouped[row, pos:end].any():
                mode, payload = ZERO_MODE, b""
            modes.append(mode)
            payloads.append(payload)
        groups.append(_Group(c, k, modes, payloads))
        pos = end
    return groups


def _sparse_groups(again, grouped: np.ndarray, spans: list[tuple[int, int]], frames: list[bytes]) -> None:  # noqa: ANN001
    """In place: the frames of each sparse group of a 2-byte chunk (its low plane's frame under
    1/SPARSE_RATIO of the plane) made again by ``again`` (``LiteralCompressor.again``), each kept
    where smaller: the rule ``codec._numba``'s frame loop applies (``_zstd_encode``, sparse groups)."""
    pos = 0
    for g, (_c, k) in enumerate(spans):
        hi, lo = frames[2 * g], frames[2 * g + 1]
        if 0 < len(lo) < k and len(lo) * _zstd_encode.SPARSE_RATIO < k:
            for row, f in ((1, lo), (0, hi)):
                if 0 < len(f) < k:
                    f2 = again(np.ascontiguousarray(grouped[row, pos:pos + k]), len(f))
                    if f2 is not None:
                        frames[2 * g + row] = f2
        pos += k


def _frames(cctx: zstandard.ZstdCompressor, grouped: np.ndarray, spans: list[tuple[int, int]]) -> list[bytes]:
    """The zstd frame of every (group, plane) of a chunk, group by group, plane by plane, made in
    one call that releases the GIL for all of them where ``grouped`` is one contiguous array:
    python-zstandard's ``multi_compress_to_buffer`` (its C backend) or, for the skip-ahead
    compressor (its cffi backend), ``compress_segments`` with the compiled loop; else ``compress``
    one by one. Empty groups get ``b""`` (they are stored, never compressed)."""
    width = grouped.shape[0]
    bounds = list(zip(np.cumsum([0] + [k for _, k in spans[:-1]]).tolist(), (k for _, k in spans)))
    multi = getattr(cctx, "multi_compress_to_buffer", None)
    segments = getattr(cctx, "compress_segments", None)
    fx = fast() if segments is not None else None
    if (multi is None and fx is None) or not grouped.flags.c_contiguous or not any(k for _, k in spans):
        return [cctx.compress(grouped[row, pos:pos + k]) if k else b"" for pos, k in bounds for row in range(width)]
    n = grouped.shape[1]
    seg = np.array([(row * n + pos, k) for pos, k in bounds if k for row in range(width)], dtype=np.uint64)
    if fx is not None:  # the skip-ahead compressor (codec._zstd_encode): all frames in one GIL-free call
        made = iter(segments(grouped.reshape(-1), seg[:, 0].copy(), seg[:, 1].copy(), fx.compress_frames))
        return [next(made) if k else b"" for _, k in bounds for _row in range(width)]
    res = multi(zstandard.BufferWithSegments(grouped, seg.tobytes()), threads=0)
    made = iter([bytes(res[j]) for j in range(len(res))])
    return [next(made) if k else b"" for _, k in bounds for _row in range(width)]


def diff_groups(target: np.ndarray, base: np.ndarray, width: int, shift: int, bits: int, level: int,
                min_group: int | None = None, zero: bool = False) -> tuple[_Packed, np.ndarray] | None:
    """One chunk of a lossless difference, made in one compiled call without the GIL: the groups
    :func:`_compress_grouped_planes` would make of ``codec._numba.diff_group_split``'s planes
    (byte for byte the same stream; its payloads back to back in one bytes object, a
    :class:`_Packed`), and the chunk's elements per context. None where that call does
    not serve (numba absent, words other than 2 bytes, the C extension's compressor at
    ``DELTASTORE_ZSTD_ACCEL=0``): the caller takes the three-call path."""
    fx = fast()
    if fx is None or width != 2 or target.size // 2 >= 1 << 32:
        return None
    cctx = _thread_compressor(level)
    addresses = getattr(cctx, "addresses", None)
    if addresses is None:
        return None
    min_group = MIN_GROUP if min_group is None else int(min_group)
    n = target.size // 2
    grouped = _scratch_words("grouped_enc", target.size, np.uint8).reshape(2, n)
    out = _scratch_words("grouped_frames", fx.frames_capacity(n), np.uint8)
    counts, ng, gctx, gn, modes, sizes = fx.diff_groups2(target, base, shift, bits, min_group, grouped, *addresses(), out, zero)
    if ng < 0:
        cctx.raise_for(int(sizes[0]))
    modes, sizes = modes.tolist(), sizes.tolist()
    packed = _Packed(_Group(c, k, modes[2 * g:2 * g + 2], sizes[2 * g:2 * g + 2])
                     for g, (c, k) in enumerate(zip(gctx.tolist(), gn.tolist())))
    packed.blob = out[:sizes[-1]].tobytes()  # one copy of the chunk's payloads, back to back
    return packed, counts


#: chunks a :func:`diff_stream` work item encodes in one compiled call, at most; fewer where the
#: tensor would make fewer than 8 items. Every item is a GIL hand-off at its start and end; on the
#: H200 machine's 16 cores an add's 32 MiB attention tensors, then cut into one-chunk items (a
#: chunk per core, twice over), ran 12-13 threads where its 86 MiB MLP tensors (two-chunk items)
#: ran 16-19 (raw_h200/s15b/stages32.md); in items of 4, 13-15 (s15c/stages32.md, another machine:
#: not a clean A/B). Helpers only join where cores are free
#: (:class:`_Cores`), so a tensor's items matter for its speed only when it runs alone.
DIFF_ITEM_CHUNKS = 8


def _sparse_area(n: int) -> np.ndarray:
    """A new uint8 array of ``n`` bytes whose untouched pages cost nothing: of 4 MiB and more, a
    mapping of its own with transparent huge pages refused. numpy asks the kernel for huge pages
    on every array of 4 MiB and more, and :func:`diff_stream`'s area is written sparsely (each 1 MiB
    chunk's payloads at the start of a region of its worst case, ~1.09 MiB): with huge pages the
    first byte written into each 2 MiB zeroes all of it, so the whole area (1.09x the tensor) was
    faulted in where the payloads take a fraction (dev VM: 53 of 56 MiB in huge pages for 300 KiB
    written a region; more system time on the whole-stream encode than chunk by chunk)."""
    if n < (4 << 20) or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return np.empty(n, dtype=np.uint8)
    m = mmap.mmap(-1, n)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(m, dtype=np.uint8)  # the mapping lives as long as the array


def diff_stream(target: np.ndarray, base: np.ndarray, shift: int, bits: int, level: int, *,
                chunk_bytes: int = CHUNK_BYTES, threads: int | None = None,
                min_group: int | None = None, zero: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """A fine-tune's whole grouped difference stream of 2-byte words (bf16, fp16) against its base:
    the bytes :func:`compress_grouped` writes from :func:`diff_groups`' chunks, as a new uint8
    array, and each chunk's elements per context (chunks x 256). None where that path does not
    serve (as :func:`diff_groups`): the caller takes the chunk-by-chunk one.

    Why: chunk by chunk, each 1 MiB chunk came back to Python for its groups' objects and a copy
    of its payloads into a ``bytes`` (the GIL held through both), and the stream was then joined
    and copied once more. py-spy over a 16-thread fine-tune add on the H200 machine had those
    per-chunk steps holding the GIL for ~1.0 of the add's 2.0 GIL-held s (5.9 s wall;
    raw_h200/s13/prof_gil16.md), while 4-5 of its 16 cores waited. Here a work item encodes up to
    :data:`DIFF_ITEM_CHUNKS` chunks in one compiled call, each into a region of its own of one
    area, and one more call writes the table and moves the payloads into the stream: a handful
    of GIL hand-offs a tensor, no ``bytes`` per chunk, no join."""
    fx = fast()
    if fx is None or target.size % 2 or target.size != base.size:
        return None
    step = chunk_step(2, chunk_bytes)
    if step // 2 >= 1 << 32:
        return None
    if getattr(_thread_compressor(level), "addresses", None) is None:
        return None
    min_group = MIN_GROUP if min_group is None else int(min_group)
    nbytes, sw = target.size, step // 2
    nch, n = -(-nbytes // step), min(sw, nbytes // 2)  # chunks, and words in the largest
    t16, b16 = target.view(np.uint16), base.view(np.uint16)
    cap = fx.frames_capacity(n)
    area = _sparse_area(nch * cap)  # each chunk writes its payloads' bytes at its region's start
    counts = np.empty((nch, 256), dtype=np.int64)
    gctx = np.empty((nch, 256), dtype=np.int64)
    gn = np.empty((nch, 256), dtype=np.int64)
    modes = np.empty((nch, 512), dtype=np.uint8)
    sizes = np.empty((nch, 513), dtype=np.uint64)
    ngs = np.empty(nch, dtype=np.int64)
    per = max(1, min(DIFF_ITEM_CHUNKS, nch // 8))  # a 32 MiB tensor in 8 items of 4 chunks, 86 MiB in 11 of 8
    items = range(0, nch, per)
    shift16, fmask, mg = np.uint16(shift), np.uint16((1 << bits) - 1), np.int64(min_group)
    simd = fx.x512_available()  # the scatter by AVX-512 compress-stores where the CPU has them (same bytes)

    def work(c0: int) -> None:
        cctx = _thread_compressor(level)
        planes2 = _scratch_words("grouped_enc", 2 * n, np.uint8)
        scratch = _scratch_words("diff_words", 2 * n, np.uint16)
        bad = fx._diff_chunks2(t16, b16, np.int64(sw), np.int64(c0), np.int64(min(c0 + per, nch)), shift16, fmask, mg,
                               planes2[:n], planes2[n:], scratch[:n], scratch[n:], counts, ngs, gctx, gn,
                               *(np.uint64(a) for a in cctx.addresses()), area, np.int64(cap), modes, sizes, simd, bool(zero))
        if bad >= 0:
            cctx.raise_for(int(sizes[bad, 0]))

    _map_chunks(work, items, threads)
    head = np.frombuffer(_HEAD.pack(MAGIC_GROUPED, 2, 0, 0, nch, nbytes), dtype=np.uint8)
    payload = int(sizes[np.arange(nch), 2 * ngs].sum()) if nch else 0
    out = np.empty(head.size + 10 * nch + 15 * int(ngs.sum()) + payload, dtype=np.uint8)
    wrote = fx._assemble2(head, np.int64(step), np.int64(nbytes), ngs, gctx, gn, modes, sizes, area, np.int64(cap), out)
    assert wrote == out.size
    return out, counts


class _Packed(list):
    """A chunk's groups (:class:`_Group`, payloads given as their sizes) whose payloads lie back to
    back, in the stream's order, in one bytes object ``blob`` (:func:`diff_groups`): one copy a
    chunk instead of one a payload, all made with the GIL released."""

    blob: bytes = b""


def group_split(raw: np.ndarray, ctx: np.ndarray, width: int, rotate: bool) -> tuple[np.ndarray, np.ndarray]:
    """(grouped planes (width x n uint8), elements per context) of a chunk's bytes ``raw`` and its
    contexts: plane k of the words in stable context order. Compiled where numba imports; the
    numpy path (:func:`group_order`, a gather, :func:`split_planes`) is the reference."""
    fx = fast()
    if fx is not None:
        return fx.group_split(raw, ctx, width, rotate)
    order, counts = group_order(ctx)
    words = np.take(raw.view(_UINT[width]), order)
    out = np.empty((width, ctx.size), dtype=np.uint8)
    for k, plane in enumerate(split_planes(words.view(np.uint8), width, rotate)):
        out[k] = plane
    return out, counts


def compress_grouped(
    nbytes: int,
    width: int,
    chunk,
    *,
    rotate: bool = False,
    level: int = 3,
    chunk_bytes: int = CHUNK_BYTES,
    threads: int | None = None,
    min_group: int | None = None,
    zero: bool = False,
) -> bytes:
    """A grouped stream (``b"DSP2"``) of ``nbytes`` bytes of ``width``-byte elements whose grouped
    planes the caller makes: ``chunk(lo, hi)`` (byte offsets of one chunk) returns what
    :func:`group_split` would for those bytes and their contexts, or the chunk's groups made
    already (:func:`diff_groups`). The lossless codec makes them in one fused pass from the
    fine-tune and the base (no difference or context array in between);
    :func:`compress` with ``contexts`` makes them with :func:`group_split`. ``rotate`` is recorded
    in the header (the planes must already be of rotated words)."""
    min_group = MIN_GROUP if min_group is None else int(min_group)
    if width not in _UINT:
        raise ValueError(f"element width {width} is not 1, 2, 4 or 8 bytes")
    if nbytes % width:
        raise ValueError(f"{nbytes} bytes is not a whole number of {width}-byte elements")
    step = chunk_step(width, chunk_bytes)
    starts = range(0, nbytes, step)

    def work(i: int) -> list[_Group]:
        lo = starts[i]
        made = chunk(lo, min(lo + step, nbytes))
        if isinstance(made, _Packed):  # the chunk's groups already (diff_groups)
            return made
        return _compress_grouped_planes(*made, level, min_group, zero)

    chunks = _map_chunks(work, range(len(starts)), threads)
    return _pack_grouped(chunks, width, rotate, nbytes)


def _pack_grouped(chunks: list[list[_Group]], width: int, rotate: bool, raw_total: int) -> bytes:
    out = [_HEAD.pack(MAGIC_GROUPED, width, FLAG_ROTATE if rotate else 0, 0, len(chunks), raw_total)]
    head, entry = struct.Struct("<QH"), struct.Struct(f"<BI{width}I")
    for groups in chunks:
        out.append(head.pack(sum(g.n for g in groups) * width, len(groups)))
        packed = isinstance(groups, _Packed)
        for g in groups:
            out.append(entry.pack(g.context, g.n, *(g.payloads if packed else (memoryview(p).nbytes for p in g.payloads))))
            out.append(bytes(g.modes))
    for groups in chunks:
        if isinstance(groups, _Packed):
            out.append(groups.blob)
            continue
        for g in groups:
            out.extend(g.payloads)
    return b"".join(out)


def compress(
    data: bytes | bytearray | memoryview | np.ndarray,
    width: int,
    *,
    rotate: bool = False,
    level: int = 3,
    chunk_bytes: int = CHUNK_BYTES,
    threads: int | None = None,
    contexts: np.ndarray | None = None,
    min_group: int | None = None,
    palette: bool = False,
    zero: bool = False,
) -> bytes:
    """Compress whole ``width``-byte elements into one chunked plane stream; with ``contexts``
    (one uint8 per element) a grouped stream, which decodes only given the same contexts.
    ``palette``: 16-bit float chunks that show a grid may become palette chunks (plane mode 2;
    plain streams only). Off by default here: the lossless codec's payloads keep their format
    version's bytes; the store's tensor objects (:func:`compress_parts`) have it when enabled.
    ``min_group``: the fewest elements a group gets (default :data:`MIN_GROUP`; see
    :func:`merge_groups`). It is the encoder's choice: the decoder reads the groups from the table.
    ``zero``: grouped streams only, zero planes as :data:`ZERO_MODE` (no payload; format v4)."""
    min_group = MIN_GROUP if min_group is None else int(min_group)
    raw = _elements(data, width)
    if contexts is not None:
        ctx = np.asarray(contexts).reshape(-1)
        if ctx.dtype != np.uint8 or ctx.size * width != raw.size:
            raise ValueError(f"contexts must be one uint8 per element ({raw.size // width}), got {ctx.size} {ctx.dtype}")
        return compress_grouped(raw.size, width, lambda lo, hi: group_split(raw[lo:hi], ctx[lo // width : hi // width], width, rotate),
                                rotate=rotate, level=level, chunk_bytes=chunk_bytes, threads=threads, min_group=min_group, zero=zero)
    chunks = _plain_chunks(raw, width, rotate, level, chunk_bytes, threads, True, palette)
    return b"".join([_plain_table(chunks, width, rotate, raw.size)] + [p for c in chunks for p in c.payloads])


def compress_parts(
    data: bytes | bytearray | memoryview | np.ndarray,
    width: int,
    prefix: bytes,
    *,
    rotate: bool = False,
    level: int = 3,
    chunk_bytes: int = CHUNK_BYTES,
    threads: int | None = None,
    palette: bool | None = None,
) -> list:
    """``prefix`` + :func:`compress` of ``data`` (plain stream) as the list of its parts in order:
    the prefix, the header and chunk table, then every chunk's payloads (bytes or numpy copies).
    The store's tensor objects are written this way, their frame as the prefix, part by part:
    no copy of the stream is made to frame it. ``palette`` as in :func:`compress`; None =
    :func:`codec.palette.enabled` (on unless ``DELTASTORE_PALETTE=0``)."""
    raw = _elements(data, width)
    if palette is None:
        palette = _palette.enabled()
    chunks = _plain_chunks(raw, width, rotate, level, chunk_bytes, threads, False, palette)
    return [prefix, _plain_table(chunks, width, rotate, raw.size)] + [p for c in chunks for p in c.payloads]


def compress_framed(
    data: bytes | bytearray | memoryview | np.ndarray,
    width: int,
    prefix: bytes,
    *,
    rotate: bool = False,
    level: int = 3,
    chunk_bytes: int = CHUNK_BYTES,
    threads: int | None = None,
    palette: bool | None = None,
) -> np.ndarray:
    """:func:`compress_parts` joined into one uint8 array (by numpy, with the GIL released)."""
    parts = compress_parts(data, width, prefix, rotate=rotate, level=level, chunk_bytes=chunk_bytes, threads=threads,
                           palette=palette)
    out = np.empty(sum(memoryview(p).nbytes for p in parts), dtype=np.uint8)
    pos = 0
    for p in parts:
        n = memoryview(p).nbytes
        out[pos : pos + n] = p if isinstance(p, np.ndarray) else np.frombuffer(p, dtype=np.uint8)
        pos += n
    return out


def chunk_step(width: int, chunk_bytes: int) -> int:
    """Bytes of raw data a chunk of a stream covers: ``chunk_bytes`` cut to whole ``width``-byte
    elements, at least one (the last chunk may be shorter)."""
    return max(width, chunk_bytes - chunk_bytes % width)


def _elements(data: bytes | bytearray | memoryview | np.ndarray, width: int) -> np.ndarray:
    """``data`` as a flat uint8 array, checked to be whole ``width``-byte elements."""
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if width not in _UINT:
        raise ValueError(f"element width {width} is not 1, 2, 4 or 8 bytes")
    if raw.size % width:
        raise ValueError(f"{raw.size} bytes is not a whole number of {width}-byte elements")
    return raw


def _plain_chunks(raw: np.ndarray, width: int, rotate: bool, level: int, chunk_bytes: int, threads: int | None,
                  stored_as_bytes: bool, palette: bool = False) -> list[_Chunk]:
    step = chunk_step(width, chunk_bytes)
    work = lambda i: _compress_chunk(raw[i : i + step], width, rotate, level, stored_as_bytes, palette)  # noqa: E731
    return _map_chunks(work, range(0, raw.size, step), threads)


def _plain_table(chunks: list[_Chunk], width: int, rotate: bool, raw_total: int) -> bytes:
    """The stream's header and chunk table (``b"DSP1"``): everything before the payloads."""
    out = [_HEAD.pack(MAGIC, width, FLAG_ROTATE if rotate else 0, 0, len(chunks), raw_total)]
    for c in chunks:
        out.append(struct.pack(f"<Q{width}I", c.raw_len, *(memoryview(p).nbytes for p in c.payloads)))
        out.append(bytes(c.modes))
    return b"".join(out)


@dataclass
class StreamInfo:
    width: int
    rotate: bool
    raw_total: int
    raw_lens: list[int]
    plane_lens: list[list[int]]
    modes: list[list[int]]
    data_start: int
    #: grouped streams: per chunk, its groups (payloads = plane lengths); None for b"DSP1"
    groups: list[list[_Group]] | None = None

    def chunk_offsets(self) -> list[int]:
        offs, pos = [], self.data_start
        for lens in self.plane_lens:
            offs.append(pos)
            pos += sum(lens)
        offs.append(pos)
        return offs


#: a chunk's entry in a plain stream's table (raw length, plane lengths, modes), by width
_PLAIN_ENTRY = {w: struct.Struct(f"<Q{w}I{w}B") for w in _UINT}
#: a grouped chunk's head (raw length, groups) and a group's entry (context, elements, plane lengths, modes)
_GROUPED_HEAD = struct.Struct("<QH")
_GROUP_ENTRY = {w: struct.Struct(f"<BI{w}I{w}B") for w in _UINT}


def read_info(buf: memoryview, size: int | None = None) -> StreamInfo:
    """The stream's header and chunk table, checked against the stream's ``size`` (default
    ``len(buf)``; larger where ``buf`` holds the header and table only, its payloads kept apart).

    Every entry is read with one precompiled ``struct`` (``iter_unpack`` over the table) and
    checked as it is read: a lossless checkout reads a table a tensor (~8 groups), between
    kernels that evict the interpreter's caches."""
    if len(buf) < _HEAD.size:
        raise CorruptPayloadError("plane stream is truncated (header)")
    magic, width, flags, _, nchunks, raw_total = _HEAD.unpack_from(buf)
    if magic not in (MAGIC, MAGIC_GROUPED) or width not in _UINT:
        raise CorruptPayloadError("not a plane stream (bad magic or width)")
    if magic == MAGIC_GROUPED:
        if size is not None and size != len(buf):
            raise CorruptPayloadError("a grouped plane stream is read whole")
        return _read_info_grouped(buf, width, flags, nchunks, raw_total)
    pos = _HEAD.size
    entry = _PLAIN_ENTRY[width]
    if pos + nchunks * entry.size > len(buf):
        raise CorruptPayloadError("plane stream is truncated (chunk table)")
    raw_lens, plane_lens, modes, payload = [], [], [], 0
    for e in entry.iter_unpack(buf[pos : pos + nchunks * entry.size]):
        raw_lens.append(e[0])
        plane_lens.append(pl := list(e[1 : 1 + width]))
        modes.append(list(e[1 + width :]))
        payload += sum(pl)
    pos += nchunks * entry.size
    if sum(raw_lens) != raw_total or any(rl % width for rl in raw_lens):
        raise CorruptPayloadError("plane stream chunk table does not add up")
    for md, pl in zip(modes, plane_lens):
        if ZERO_MODE in md and any(m == ZERO_MODE and ln for m, ln in zip(md, pl)):
            raise CorruptPayloadError("a zero plane has a payload")
        if _palette.MODE in md and (width != 2 or any(m != _palette.MODE for m in md) or any(pl[1:])):
            raise CorruptPayloadError("plane stream has a malformed palette chunk entry")
    if pos + payload != (len(buf) if size is None else size):
        raise CorruptPayloadError("plane stream is truncated or has trailing bytes")
    return StreamInfo(width, bool(flags & FLAG_ROTATE), raw_total, raw_lens, plane_lens, modes, pos)


def _read_info_grouped(buf: memoryview, width: int, flags: int, nchunks: int, raw_total: int) -> StreamInfo:
    pos, end = _HEAD.size, len(buf)
    gentry = _GROUP_ENTRY[width]
    raw_lens, plane_lens, modes, chunks, payload = [], [], [], [], 0
    for _ in range(nchunks):
        if pos + _GROUPED_HEAD.size > end:
            raise CorruptPayloadError("plane stream is truncated (chunk table)")
        rl, ng = _GROUPED_HEAD.unpack_from(buf, pos)
        pos += _GROUPED_HEAD.size
        stop = pos + ng * gentry.size
        if stop > end:
            raise CorruptPayloadError("plane stream is truncated (group table)")
        groups, chunk_lens, chunk_modes, last, elems = [], [], [], -1, 0
        for e in gentry.iter_unpack(buf[pos:stop]):
            c, n = e[0], e[1]
            lens, md = list(e[2 : 2 + width]), list(e[2 + width :])
            if ZERO_MODE in md and any(m == ZERO_MODE and ln for m, ln in zip(md, lens)):
                raise CorruptPayloadError("a zero plane has a payload")
            if c <= last:
                raise CorruptPayloadError("plane stream groups are out of order")
            last = c
            elems += n
            groups.append(_Group(c, n, md, lens))
            chunk_lens += lens
            chunk_modes += md
        pos = stop
        if elems * width != rl:
            raise CorruptPayloadError("plane stream group table does not add up")
        raw_lens.append(rl)
        plane_lens.append(chunk_lens)
        modes.append(chunk_modes)
        chunks.append(groups)
        payload += sum(chunk_lens)
    if sum(raw_lens) != raw_total:
        raise CorruptPayloadError("plane stream chunk table does not add up")
    if pos + payload != end:
        raise CorruptPayloadError("plane stream is truncated or has trailing bytes")
    return StreamInfo(width, bool(flags & FLAG_ROTATE), raw_total, raw_lens, plane_lens, modes, pos, chunks)


def _decode_planes(dctx, buf: memoryview, pos: int, modes, lens, n: int) -> tuple[list[np.ndarray], int]:
    planes = []
    for mode, ln in zip(modes, lens):
        piece = buf[pos : pos + ln]
        pos += ln
        if mode == 1:
            raw = unzstd(dctx, piece, n)
        elif mode == 0:
            raw = piece  # stored plane: read in place, no copy
            if len(raw) != n:
                raise CorruptPayloadError("plane has the wrong length")
        elif mode == ZERO_MODE:
            if ln:
                raise CorruptPayloadError("a zero plane has a payload")
            raw = bytes(n)
        else:
            raise CorruptPayloadError(f"unknown plane mode {mode}")
        planes.append(np.frombuffer(raw, dtype=np.uint8))
    return planes, pos


def _scratch(nbytes: int) -> np.ndarray:
    """A uint8 scratch array kept per thread, for a chunk's grouped planes while it is decoded
    (nothing keeps them after the chunk; see :func:`_scratch_words`)."""
    return _scratch_words("buf", nbytes, np.uint8)


def _grouped_planes(dctx, buf: memoryview, info: StreamInfo, i: int, start: int, counts: np.ndarray) -> np.ndarray:
    """Chunk ``i``'s planes, grouped as stored (width x n uint8), once its groups are checked
    against ``counts`` (the elements per context of the contexts the decoder was given)."""
    n = info.raw_lens[i] // info.width
    if int(counts.sum()) != n:
        raise CorruptPayloadError("a grouped plane stream decodes only with its contexts (the base tensor)")
    below = np.concatenate(([0], np.cumsum(counts)))  # below[c]: elements whose context is < c
    at = 0
    for g in info.groups[i]:  # each group must start where its first context starts
        if int(below[g.context]) != at or counts[g.context] == 0:
            raise CorruptPayloadError("plane stream groups do not match the contexts given (another base tensor?)")
        at += g.n
    grouped = _scratch(info.width * n).reshape(info.width, n)
    pos, at = start, 0
    for g in info.groups[i]:
        planes, pos = _decode_planes(dctx, buf, pos, g.modes, g.payloads, g.n)
        for k, p in enumerate(planes):
            grouped[k, at : at + g.n] = p
        at += g.n
    return grouped


def _fill_join(buf: memoryview, info: StreamInfo, i: int, start: int, n: int, out: np.ndarray | None) -> np.ndarray | None:
    """Plain chunk ``i`` decoded into ``out`` (a new array where None) by one compiled call
    (``codec._numba.fill_join``: every frame by libzstd into a scratch of this thread's, then the
    join) where numba is loaded already (:func:`_loaded`) and libzstd loads, and returned; None
    where it does not serve or a plane was not right (the caller's path then names the error)."""
    fx = _loaded()
    if fx is None or n == 0 or info.width == 1 or (out is not None and not out.flags.c_contiguous):
        return None
    fns = _zstd.frame_functions()
    if fns is None:
        return None
    if out is None:
        out = np.empty(info.raw_lens[i], dtype=np.uint8)
    table, at = [], start
    for k, (mode, ln) in enumerate(zip(info.modes[i], info.plane_lens[i])):
        table += (mode, at, ln, k * n, n)
        at += ln
    scratch = _scratch_words("planes_dec", info.width * n, np.uint8)
    src = np.frombuffer(buf, dtype=np.uint8)
    return out if fx.fill_join(fns, _zstd.thread_dctx(), src, table, scratch, info.width, info.rotate, out) < 0 else None


def _decompress_chunk(buf: memoryview, info: StreamInfo, i: int, start: int, out: np.ndarray | None = None,
                      ctx: np.ndarray | None = None) -> np.ndarray:
    """Chunk ``i`` (its payloads start at ``start``); ``ctx``: its elements' contexts (grouped streams)."""
    n = info.raw_lens[i] // info.width
    dctx = _thread_decompressor()
    if info.groups is None and info.modes[i][0] == _palette.MODE:
        if out is None:
            out = np.empty(info.raw_lens[i], dtype=np.uint8)
        _palette.decode_chunk(buf[start : start + info.plane_lens[i][0]], out, lambda f, m: unzstd(dctx, f, m))
        return out
    if info.groups is None:
        done = _fill_join(buf, info, i, start, n, out)
        if done is not None:
            return done
        planes, _ = _decode_planes(dctx, buf, start, info.modes[i], info.plane_lens[i], n)
        return join_planes(planes, info.width, info.rotate, out)
    if ctx is None or ctx.size != n:
        raise CorruptPayloadError("a grouped plane stream decodes only with its contexts (the base tensor)")
    w, fx = info.width, fast()
    if fx is not None:
        counts = fx.context_counts(ctx)
    else:
        order, counts = group_order(ctx)
    grouped = _grouped_planes(dctx, buf, info, i, start, counts)
    if out is None:
        out = np.empty(n * w, dtype=np.uint8)
    if fx is not None:  # one gather by context straight from the planes
        fx.ungroup_join(grouped, ctx, counts, w, info.rotate, out)
    else:
        words = join_planes(list(grouped), w, info.rotate)
        out.view(_UINT[w])[order] = words.view(_UINT[w])
    return out


def decompress_grouped(data: bytes | memoryview, nbytes: int, counts, finish, *, threads: int | None = None) -> None:
    """Decode a grouped stream of ``nbytes`` bytes chunk by chunk, the caller turning each chunk's
    grouped planes into bytes: ``counts(lo, hi)`` gives the elements per context of the chunk's
    bytes ``[lo, hi)``, ``finish(lo, hi, grouped, counts)`` writes them (the inverse of
    :func:`compress_grouped`; the lossless codec ungroups and undoes the difference in one pass)."""
    buf = memoryview(data)
    info = read_info(buf)
    if info.groups is None:
        raise CorruptPayloadError("not a grouped plane stream")
    if info.raw_total != nbytes:
        raise CorruptPayloadError(f"plane stream holds {info.raw_total} bytes, expected {nbytes}")
    offs = info.chunk_offsets()
    dst = np.cumsum([0] + info.raw_lens).tolist()

    def work(i: int) -> None:
        lo, hi = dst[i], dst[i + 1]
        c = counts(lo, hi)
        finish(lo, hi, _grouped_planes(_thread_decompressor(), buf, info, i, offs[i], c), c)

    _map_chunks(work, range(len(info.raw_lens)), threads)


def _chunk_contexts(info: StreamInfo, contexts: np.ndarray | None) -> list[np.ndarray | None]:
    """Each chunk's slice of ``contexts`` (None for every chunk of a plain stream)."""
    if info.groups is None:
        return [None] * len(info.raw_lens)
    if contexts is None:
        raise CorruptPayloadError("a grouped plane stream decodes only with its contexts (the base tensor)")
    ctx = np.asarray(contexts).reshape(-1)
    if ctx.dtype != np.uint8 or ctx.size * info.width != info.raw_total:
        raise CorruptPayloadError(f"plane stream holds {info.raw_total // info.width} elements; {ctx.size} contexts given")
    bounds = np.cumsum([0] + info.raw_lens) // info.width
    return [ctx[bounds[i] : bounds[i + 1]] for i in range(len(info.raw_lens))]


def decompress(
    data: bytes | memoryview,
    *,
    out: np.ndarray | None = None,
    threads: int | None = None,
    contexts: np.ndarray | None = None,
) -> np.ndarray:
    """Decode a whole plane stream into ``out`` (uint8, preallocated) or a new array; a grouped
    stream needs the ``contexts`` it was written with."""
    buf = memoryview(data)
    info = read_info(buf)
    ctxs = _chunk_contexts(info, contexts)
    if out is None:
        out = np.empty(info.raw_total, dtype=np.uint8)
    elif out.size != info.raw_total:
        raise CorruptPayloadError(f"plane stream holds {info.raw_total} bytes, expected {out.size}")
    offs = info.chunk_offsets()
    dst = np.cumsum([0] + info.raw_lens)
    if info.groups is None and any(m[0] == _palette.MODE for m in info.modes):
        _palette.kernels()  # numba's import here, not on a worker beside the others (see _loaded)

    def work(i: int) -> None:
        _decompress_chunk(buf, info, i, offs[i], out[dst[i] : dst[i + 1]], ctxs[i])

    _map_chunks(work, range(len(info.raw_lens)), threads)
    return out


def decompress_each(data: bytes | memoryview, emit, *, body: bytes | memoryview | None = None) -> int:  # noqa: ANN001
    """Decode a plain stream (``b"DSP1"``) chunk after chunk on the calling thread, each into this
    thread's scratch, and hand each to ``emit(offset, chunk)`` in order (the chunk's bytes are only
    valid during the call): a caller that hashes and writes them reads them while they are still
    in cache, where a whole-tensor decode leaves the tensor in memory for a second and third pass.
    ``body``: the payloads, where ``data`` holds the header and chunk table only (a caller that
    reads an object a few chunks at a time need not join them to it). Returns the stream's size.
    A grouped stream is refused (it needs its contexts)."""
    head = memoryview(data)
    buf = head if body is None else memoryview(body)
    info = read_info(head, None if body is None else len(head) + len(buf))
    if info.groups is not None:
        raise CorruptPayloadError("a grouped plane stream decodes only with its contexts (the base tensor)")
    if any(m[0] == _palette.MODE for m in info.modes):
        _palette.kernels()  # (as decompress does)
    offs, pos = info.chunk_offsets(), 0
    shift = 0 if body is None else info.data_start  # the payloads' offsets in ``buf``
    for i, rl in enumerate(info.raw_lens):
        chunk = _scratch_words("each", rl, np.uint8)
        _decompress_chunk(buf, info, i, offs[i] - shift, chunk)
        emit(pos, chunk)
        pos += rl
    return info.raw_total


def decompress_range(data: bytes | memoryview, start: int, stop: int, *, contexts: np.ndarray | None = None) -> np.ndarray:
    """Raw bytes ``[start, stop)`` of the stream, decoding only the chunks that cover them."""
    buf = memoryview(data)
    info = read_info(buf)
    ctxs = _chunk_contexts(info, contexts)
    stop = min(stop, info.raw_total)
    if start >= stop:
        return np.empty(0, dtype=np.uint8)
    offs = info.chunk_offsets()
    parts, pos = [], 0
    for i, rl in enumerate(info.raw_lens):
        if pos + rl > start and pos < stop:
            chunk = _decompress_chunk(buf, info, i, offs[i], None, ctxs[i])
            parts.append(chunk[max(start - pos, 0) : min(stop - pos, rl)])
        pos += rl
        if pos >= stop:
            break
    return np.concatenate(parts)
