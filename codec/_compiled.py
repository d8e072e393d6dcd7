"""The codec's compiled (numba) kernel modules: each looked up by its user at most once a process.

One switch for all of them: ``DELTASTORE_NUMBA=0`` keeps every codec on its numpy/torch reference
path (same bytes, slower); where numba does not import (missing, or broken for this numpy) the
same happens without a word. Each user keeps what :func:`load` gave in a module global of its own
(``planes._FAST``, ``palette._KERNELS``, ``quant._KERNEL``), which tests set to pick a path.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def load(name: str) -> ModuleType | None:
    """``codec.<name>`` (a kernel module), or None: DELTASTORE_NUMBA=0, or it does not import."""
    if os.environ.get("DELTASTORE_NUMBA", "1") == "0":
        return None
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None
