"""zstd frames decoded straight into a caller's buffer by the system's libzstd, where it loads.

Why: the lossless codec's v2 decode spends a third of its time in zstd's decode of the grouped
byte planes, and the same frames decode about 2x faster through the system's libzstd (Debian's
1.5.4, built with zstd's x86-64 Huffman assembly) than through python-zstandard 0.25's bundled
1.5.7 (measured on the dev VM, one thread: benchmarks/results/lossless_amd-epyc-2c.md, run 13).
ctypes also lets each frame land in its place in the chunk's scratch array, where
python-zstandard returns a new ``bytes`` object that is then copied. A ctypes call releases the
GIL, so the chunk workers decode frames in parallel as before.

Where libzstd does not load (another OS, a minimal image), or ``DELTASTORE_LIBZSTD=0`` is set,
:func:`decode_into` falls back to python-zstandard (:func:`unzstd`) and a copy: the same bytes
out, the same errors. Nothing here writes: the encoder keeps python-zstandard, so stored bytes do
not depend on which library a machine has.

Every frame is decoded into exactly the bytes the chunk table gives it: libzstd never writes past
``dstCapacity`` (a frame that claims more fails inside it), and a frame that decodes to fewer
bytes, or not at all, is a :class:`CorruptPayloadError`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

import numpy as np
import zstandard

from .errors import CorruptPayloadError

#: the oldest libzstd used: 1.4.0
MIN_VERSION = 10400

_LIB: object = False  # not looked up yet
_LOCAL = threading.local()
_LOCK = threading.Lock()


def lib() -> ctypes.CDLL | None:
    """The system's libzstd with the functions used here typed, or None (not found, older than
    :data:`MIN_VERSION`, or ``DELTASTORE_LIBZSTD=0``): then python-zstandard decodes."""
    global _LIB
    if _LIB is False:
        with _LOCK:
            if _LIB is False:
                _LIB = _load()
    return _LIB  # type: ignore[return-value]


def _load() -> ctypes.CDLL | None:
    if os.environ.get("DELTASTORE_LIBZSTD", "1") == "0":
        return None
    for name in ("libzstd.so.1", ctypes.util.find_library("zstd")):
        if not name:
            continue
        try:
            z = ctypes.CDLL(name)
            z.ZSTD_versionNumber.restype = ctypes.c_uint
            if z.ZSTD_versionNumber() < MIN_VERSION:
                continue
            z.ZSTD_createDCtx.restype = ctypes.c_void_p
            z.ZSTD_createDCtx.argtypes = []
            z.ZSTD_freeDCtx.restype = ctypes.c_size_t
            z.ZSTD_freeDCtx.argtypes = [ctypes.c_void_p]
            z.ZSTD_decompressDCtx.restype = ctypes.c_size_t
            z.ZSTD_decompressDCtx.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                              ctypes.c_size_t]
            z.ZSTD_findFrameCompressedSize.restype = ctypes.c_size_t
            z.ZSTD_findFrameCompressedSize.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            z.ZSTD_isError.restype = ctypes.c_uint
            z.ZSTD_isError.argtypes = [ctypes.c_size_t]
            z.ZSTD_getErrorName.restype = ctypes.c_char_p
            z.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
            return z
        except (OSError, AttributeError):
            continue
    return None


class _DCtx:
    """One libzstd decompression context, freed with its thread's locals."""

    def __init__(self, z: ctypes.CDLL):
        self.z = z
        self.ptr = z.ZSTD_createDCtx()
        if not self.ptr:
            raise MemoryError("ZSTD_createDCtx failed")

    def __del__(self) -> None:
        ptr, self.ptr = getattr(self, "ptr", None), None
        if ptr:
            try:
                self.z.ZSTD_freeDCtx(ptr)
            except Exception:  # noqa: BLE001 (interpreter shutdown: ctypes may be half torn down; the process frees it)
                pass


def _dctx(z: ctypes.CDLL) -> int:
    d = getattr(_LOCAL, "dctx", None)
    if d is None:
        d = _LOCAL.dctx = _DCtx(z)
    return d.ptr


def address(a: np.ndarray) -> int:
    """Where a C-contiguous array's first byte lies (read-only arrays too: libzstd only reads a source)."""
    if not a.flags.c_contiguous:
        raise ValueError("not a contiguous array")
    return a.__array_interface__["data"][0]


def decoder(fallback_dctx=None):  # noqa: ANN001
    """A function ``decode(src, src_addr, at, size, dst, dst_addr, dst_at, n)`` that decodes the
    zstd frame ``src[at : at + size]`` into ``dst.reshape(-1)[dst_at : dst_at + n]`` (both uint8,
    C-contiguous; ``*_addr``: :func:`address` of each, taken once a chunk, not once a frame), which
    it must fill exactly, else :class:`CorruptPayloadError`. By libzstd where :func:`lib` loads
    (this thread's context), else by python-zstandard (``fallback_dctx``) and a copy. The
    happy path is two ctypes calls: libzstd never writes past ``n``, so a frame that claims more
    fails inside it ("Destination buffer is too small") and one that decodes to less is caught by
    its returned size; the error is named only then. Only the piece's first frame is decoded (bytes
    after it are ignored), as python-zstandard does, so both refuse and accept the same pieces
    (tests/codec/test_lossless_decode.py)."""
    z = lib()
    if z is None:
        def slow(src, src_addr, at, size, dst, dst_addr, dst_at, n):  # noqa: ANN001
            _check_range(src, at, size, dst, dst_at, n)
            dst.reshape(-1)[dst_at : dst_at + n] = np.frombuffer(unzstd(fallback_dctx, memoryview(src)[at : at + size], n),
                                                                 dtype=np.uint8)
        return slow
    ctx, run, first = _dctx(z), z.ZSTD_decompressDCtx, z.ZSTD_findFrameCompressedSize

    def fast(src, src_addr, at, size, dst, dst_addr, dst_at, n):  # noqa: ANN001
        _check_range(src, at, size, dst, dst_at, n)
        one = first(src_addr + at, size)  # the first frame only, as python-zstandard decodes
        if z.ZSTD_isError(one):
            raise CorruptPayloadError(f"not a zstd frame: {z.ZSTD_getErrorName(one).decode(errors='replace')}")
        r = run(ctx, dst_addr + dst_at, n, src_addr + at, one)
        if r != n:
            if z.ZSTD_isError(r):
                raise CorruptPayloadError(f"zstd frame does not decode: {z.ZSTD_getErrorName(r).decode(errors='replace')}")
            raise CorruptPayloadError(f"zstd frame decodes to {r} bytes where the table says {n}")
    return fast


_FUNCTIONS: tuple = (None, None)  # (the library, its functions) last made


def frame_functions() -> tuple[int, int, int] | None:
    """The addresses of :func:`lib`'s ZSTD_decompressDCtx, ZSTD_findFrameCompressedSize and
    ZSTD_isError, for ``codec._numba.fill_frames`` to call from compiled code (a chunk's frames
    in one call, GIL released); None without libzstd."""
    global _FUNCTIONS
    z = lib()
    if z is None:
        return None
    if _FUNCTIONS[0] is not z:
        at = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
        _FUNCTIONS = (z, (at(z.ZSTD_decompressDCtx), at(z.ZSTD_findFrameCompressedSize), at(z.ZSTD_isError)))
    return _FUNCTIONS[1]


def thread_dctx() -> int:
    """This thread's libzstd decompression context (:func:`lib` must have loaded)."""
    return _dctx(lib())


def _check_range(src: np.ndarray, at: int, size: int, dst: np.ndarray, dst_at: int, n: int) -> None:
    if at < 0 or size < 0 or at + size > src.size or dst_at < 0 or n < 0 or dst_at + n > dst.size:
        raise CorruptPayloadError("zstd frame or its destination lies outside its buffer")


def decode_into(src: np.ndarray, at: int, size: int, dst: np.ndarray, dst_at: int, n: int, *, fallback_dctx=None) -> None:
    """One frame, as :func:`decoder`'s function does it (addresses taken here)."""
    decoder(fallback_dctx)(src, address(src), at, size, dst, address(dst), dst_at, n)


def unzstd(dctx: zstandard.ZstdDecompressor, frame: bytes | memoryview, n: int) -> bytes:
    """One zstd frame that must decode to exactly ``n`` bytes. The frame's own size claim is
    checked first: python-zstandard allocates what a frame header claims, whatever
    ``max_output_size`` says, so an altered header could otherwise ask for any amount of memory."""
    try:
        claimed = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise CorruptPayloadError(f"not a zstd frame: {e}") from None
    if claimed not in (-1, n):
        raise CorruptPayloadError(f"zstd frame claims {claimed} bytes where the table says {n}")
    try:
        raw = dctx.decompress(frame, max_output_size=max(n, 1))
    except zstandard.ZstdError as e:
        raise CorruptPayloadError(f"zstd frame does not decode: {e}") from None
    if len(raw) != n:
        raise CorruptPayloadError("plane has the wrong length")
    return raw
