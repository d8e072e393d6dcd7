"""The zstd compressor of the byte planes at levels 1..3: skip-ahead match search, Huffman literals.

Why not python-zstandard's C extension: its ``ZstdCompressionParameters`` cannot set
``ZSTD_c_literalCompressionMode``, and zstd turns Huffman coding of literals *off* whenever the
fast strategy skips ahead (``targetLength`` > 0, the negative levels), so from the C extension a
plane could have either a full match search at every position or no entropy coding. A fine-tune's
difference planes and a base's exponent planes are mostly literals (2-3 bits of entropy a byte,
few real repeats), and trying a match at every position was most of the encode: on the dev VM,
one thread, over every plane the lossless codec compresses, accel 16 against the C extension's
frames in the same rounds (`benchmarks/probe_zstd_accel.py`, `benchmarks/results/zstd_accel_devvm.md`):

- the 7B-shaped bench fine-tune (a few ulps on 40% of weights): encode 474-556 -> 895-914 MB/s,
  decode 1390-1463 -> 1976-2026, -7.55% bytes;
- a real SmolLM2 fine-tune (40 steps, 75% of weights changed): encode 829-924 -> 888-1113 MB/s,
  decode 1701-1818 -> 1824-1961, +0.18% bytes;
- SmolLM2's base exponent planes: encode 571-660 -> 660-739 MB/s, decode level, -0.16% bytes.

python-zstandard ships a second backend over the same bundled libzstd, through cffi, whose ``lib``
takes any parameter; this module drives ``ZSTD_compress2`` through it. The frames are standard
zstd frames (any decoder reads them; no format changes) and come from python-zstandard's bundled
libzstd as before, so stored bytes depend on python-zstandard's version only, not on the
machine's libzstd. Where cffi does not import, :func:`make` returns None and the planes keep the C
extension's compressor (the ``accel = 0`` settings below, which wrote every object before this).

A ctypes or cffi call releases the GIL, so the chunk workers compress in parallel.

**Sparse groups.** The skip-ahead settings suit planes of literals; a checkpoint series' delta is the
opposite (two saves of a small-lr run differ in ~1% of the elements: long runs of zeros), where the
tiny match table (hash log 6) and the skips cost bytes. So in a group of a 2-byte difference's two
planes whose low plane (the mantissa's low bits: dense in any fine-tune, sparse only where few
elements changed) comes out under 1/:data:`SPARSE_RATIO` of its bytes, each zstd frame is made again
with zstd's own level-:data:`SPARSE_LEVEL` settings and kept where smaller (:meth:`LiteralCompressor.again`;
the compiled loop in ``codec._numba`` applies the same rule, so both write the same frames). Measured
(runs 54-55 of benchmarks/results/lossless_amd-epyc-2c.md): a delta between consecutive saves of a
SmolLM2 series 1.11 -> 0.93 MB, encode 904 -> 820 MB/s a core; a dense 40-step fine-tune has 9.3% of
its plane bytes in such groups, made twice for the same bytes (encode within the VM's round-to-round
spread), where run 53's rule on each frame alone made 55% twice and cost that encode 12-17%. Run 64: the
ratio 4 -> 8. A 150-step fine-tune (55% of elements changed) had 52.5% of its elements in groups under
1/4, made twice for 0.04% of the bytes, its encode at 287-448 MB/s a core against 564-616 without the
rule; under 1/8 it is 8.9% of them, the encode level with the rule off. A series of ten saves (lr 1e-6)
loses little: checkpoints 2..10 14.71 -> 14.93 MB (110x -> 108x zipnn's), the last 0.86 -> 0.90 MB.
"""

from __future__ import annotations

import threading

import numpy as np

#: the match finder's table sizes and minimum match, as the planes have used since format v1
WINDOW_LOG, HASH_LOG, CHAIN_LOG, SEARCH_LOG, MIN_MATCH = 17, 6, 6, 1, 7
#: zstd's largest ``targetLength`` (ZSTD_TARGETLENGTH_MAX)
MAX_ACCEL = 1 << 17
#: a group whose low plane's frame is under 1/SPARSE_RATIO of the plane has its frames made again at
#: zstd's level SPARSE_LEVEL, each kept where smaller (codec._numba.SPARSE_RATIO: the same, tested)
SPARSE_RATIO = 8
SPARSE_LEVEL = 1

_BACKEND: object = False  # not looked up yet
_LOCK = threading.Lock()


def _backend():  # noqa: ANN202
    """(ffi, lib) of python-zstandard's cffi backend, or None where it does not import."""
    global _BACKEND
    if _BACKEND is False:
        with _LOCK:
            if _BACKEND is False:
                try:
                    from zstandard import _cffi  # needs the cffi package's _cffi_backend

                    _BACKEND = (_cffi.ffi, _cffi.lib)
                except ImportError:
                    _BACKEND = None
    return _BACKEND


class LiteralCompressor:
    """zstd's fast strategy, skipping ``accel`` steps ahead where no match is found, with the
    literals Huffman-coded: ``compress(data) -> bytes`` (one frame, its content size in the
    header), as python-zstandard's compressor; beside it a context at zstd's level
    :data:`SPARSE_LEVEL` for sparse groups (:meth:`again`; ``sparse=False``: none, the frames of
    before, for A/B runs). One compressor: one thread at a time."""

    def __init__(self, accel: int, sparse: bool = True):
        ffi, lib = _backend()
        self._ffi, self._lib = ffi, lib
        self._cctx = ffi.gc(lib.ZSTD_createCCtx(), lib.ZSTD_freeCCtx)
        if self._cctx == ffi.NULL:
            raise MemoryError("ZSTD_createCCtx failed")
        for param, value in ((lib.ZSTD_c_strategy, lib.ZSTD_fast), (lib.ZSTD_c_windowLog, WINDOW_LOG),
                             (lib.ZSTD_c_hashLog, HASH_LOG), (lib.ZSTD_c_chainLog, CHAIN_LOG),
                             (lib.ZSTD_c_searchLog, SEARCH_LOG), (lib.ZSTD_c_minMatch, MIN_MATCH),
                             (lib.ZSTD_c_targetLength, int(accel)),
                             (lib.ZSTD_c_literalCompressionMode, lib.ZSTD_ps_enable)):
            self._check(lib.ZSTD_CCtx_setParameter(self._cctx, param, value))
        self._sparse = None
        if sparse:
            self._sparse = ffi.gc(lib.ZSTD_createCCtx(), lib.ZSTD_freeCCtx)
            if self._sparse == ffi.NULL:
                raise MemoryError("ZSTD_createCCtx failed")
            self._check(lib.ZSTD_CCtx_setParameter(self._sparse, lib.ZSTD_c_compressionLevel, SPARSE_LEVEL))
        self._out = bytearray(0)
        self._out_ptr = None

    def _reserve(self, n: int) -> None:
        """The output buffer holds at least ``n`` bytes (grown to twice its size at least: few regrowths)."""
        if n > len(self._out):
            self._out = bytearray(max(n, 2 * len(self._out)))
            self._out_ptr = self._ffi.from_buffer(self._out)

    def _check(self, r: int) -> int:
        if self._lib.ZSTD_isError(r):
            raise RuntimeError(f"zstd: {self._ffi.string(self._lib.ZSTD_getErrorName(r)).decode(errors='replace')}")
        return r

    def compress(self, data) -> bytes:  # noqa: ANN001
        """One frame of ``data``. One call into libzstd: every cffi call releases the GIL and takes
        it back, and asking zstd for the bound and then whether the result is an error made three
        such hand-offs a frame (a base add compresses five frames a 4 MiB chunk, on 16 threads)."""
        src = np.ascontiguousarray(data).reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else data
        n = src.nbytes if isinstance(src, np.ndarray) else memoryview(src).nbytes
        bound = _bound(n)
        self._reserve(bound)
        k = self._lib.ZSTD_compress2(self._cctx, self._out_ptr, len(self._out), self._ffi.from_buffer(src), n)
        if k > bound:  # a zstd error code (near 2**64): no frame outgrows its bound
            self.raise_for(k)
        return bytes(memoryview(self._out)[:k])

    def again(self, data: np.ndarray, size: int) -> bytes | None:
        """The frame of a sparse group's plane ``data`` (contiguous uint8) made again at zstd's level
        :data:`SPARSE_LEVEL`, where it takes fewer than ``size`` bytes (the first frame's); else None
        (also without that context)."""
        if self._sparse is None or size <= 1:
            return None
        cap = size - 1
        self._reserve(cap)
        k = self._lib.ZSTD_compress2(self._sparse, self._out_ptr, cap, self._ffi.from_buffer(data), data.nbytes)
        return bytes(memoryview(self._out)[:k]) if k <= cap else None  # (else an error: it did not fit)

    def addresses(self) -> tuple[int, int, int]:
        """(address of ``ZSTD_compress2``, of this compressor's context, of its sparse groups' context
        or 0), for compiled code that compresses with it (``codec._numba``) while this object lives."""
        sparse = 0 if self._sparse is None else int(self._ffi.cast("uintptr_t", self._sparse))
        return _compress2_address(), int(self._ffi.cast("uintptr_t", self._cctx)), sparse

    def raise_for(self, code: int) -> None:
        """Raise the error a ``ZSTD_compress2`` result ``code`` names (compiled callers check sizes
        against capacities and hand back what did not fit)."""
        self._check(code)
        raise RuntimeError(f"zstd: a frame of {code} bytes outgrew its buffer")

    def compress_segments(self, src: np.ndarray, starts: np.ndarray, lens: np.ndarray, kernel) -> list[bytes]:  # noqa: ANN001
        """``[compress(src[s : s + n]) for s, n in zip(starts, lens)]``, the same frames, made by one
        call of ``kernel`` (``codec._numba.compress_frames``) that holds no GIL from the first frame
        to the last: a chunk's tens of frames one cffi call each made every call release and
        re-take the GIL, and at 16 threads the workers queued on it. ``src``: one contiguous uint8
        array; ``starts``, ``lens``: uint64."""
        caps = compress_bound(lens)
        offs = np.zeros(lens.size + 1, dtype=np.uint64)
        np.cumsum(caps, out=offs[1:])
        self._reserve(int(offs[-1]))
        sizes = np.empty(lens.size, dtype=np.uint64)
        kernel(*self.addresses()[:2], src, starts, lens, np.frombuffer(self._out, dtype=np.uint8), offs, sizes)
        bad = np.flatnonzero(sizes > caps)  # a zstd error code is near 2**64, above any capacity
        if bad.size:
            self.raise_for(int(sizes[bad[0]]))
        out = memoryview(self._out)
        return [out[o:o + k].tobytes() for o, k in zip(offs.tolist(), sizes.tolist())]


def _bound(n: int) -> int:
    """zstd's ``ZSTD_COMPRESSBOUND(n)``: the most a frame of ``n`` bytes takes, as
    ``ZSTD_compressBound`` answers, in Python (no call into libzstd)."""
    return n + (n >> 8) + (((128 << 10) - n) >> 11 if n < 128 << 10 else 0)


def compress_bound(n: np.ndarray) -> np.ndarray:
    """:func:`_bound` of each size in ``n`` (uint64; a chunk's frames, tens of them)."""
    return np.array([_bound(x) for x in n.tolist()], dtype=np.uint64)


_COMPRESS2: int | None = None


def _compress2_address() -> int:
    """The address of the bundled libzstd's ``ZSTD_compress2`` (the one the cffi backend calls)."""
    global _COMPRESS2
    if _COMPRESS2 is None:
        ffi, lib = _backend()
        _COMPRESS2 = int(ffi.cast("uintptr_t", ffi.addressof(lib, "ZSTD_compress2")))
    return _COMPRESS2


def make(accel: int, sparse: bool = True) -> LiteralCompressor | None:
    """A :class:`LiteralCompressor`, or None where python-zstandard's cffi backend does not load."""
    return LiteralCompressor(accel, sparse) if _backend() is not None else None
