"""C library functions through ctypes, each looked up once.

Why: a ctypes call releases the GIL for its duration, where Python's own wrappers of some system
calls hold it (``mmap.mmap`` on Python 3.11 while MAP_POPULATE zeroes every page, ``mmap.madvise``),
so a checkout's windows (materialize.py) and the pages of a large object read whole (objects.py)
go through here.
"""

from __future__ import annotations

import ctypes
import functools
import sys


@functools.cache
def function(name: str, restype: type, *argtypes: type) -> "ctypes._CFuncPtr | None":
    """libc's ``name`` with that signature, or None where it cannot be had (not Linux; no such
    function in this libc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        f = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    f.restype, f.argtypes = restype, list(argtypes)
    return f
