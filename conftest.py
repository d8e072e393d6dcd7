"""Test-session setup at the repository root: the Hugging Face ``kernels`` package before ours.

The source tree keeps the kernels layer in ./kernels, installed as ``deltastore.kernels`` by
pyproject's package-dir mapping (DESIGN.md), so nothing named ``kernels`` lands in site-packages.
But pytest run from here puts this directory on ``sys.path`` (``python -m pytest`` adds the working
directory, and the ``tests`` package's root is inserted to import it), where ./kernels shadows the
Hugging Face ``kernels`` package that transformers 5.25 and later imports as it loads: importing
transformers then fails ("cannot import name 'CUDAProperties' from 'kernels'"). So the installed
``kernels`` is imported first, from every path but this directory, and later imports find it in
``sys.modules``. Nothing of ours imports a top-level ``kernels``. Where it is not installed (older
transformers), nothing is done.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys


def _import_hf_kernels_first() -> None:
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        importlib.import_module("kernels")  # Hugging Face's: see the module docstring
    finally:
        sys.path[:] = saved


_import_hf_kernels_first()
