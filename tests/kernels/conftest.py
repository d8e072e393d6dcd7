"""Kernel tests run the Triton kernels under Triton's CPU interpreter when there is no GPU.

TRITON_INTERPRET must be set before the kernels are defined (at import of
``deltastore.kernels.triton_ops``), so it is set here, before any test module imports them.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
