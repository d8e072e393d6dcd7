"""Compiled (numba) unpack + dequantize of the packed layout in ``codec.quant``: one pass from the
packed words to float32 values, the same values as ``dequantize(unpack(...))``.

Why: the torch composition widens every word to int64, unpacks into an int64 tensor of all the
values, converts it to float32 and indexes the group parameters out to one per value: four
tensor-sized temporaries for each factor of each delta-come tier. On the dev VM that was ~1.2 of
the ~2.5 CPU seconds a CPU decode of a SmolLM2 delta-come fine-tune took (cProfile of
``materialize.tensor_bytes``), a cost the mount's cold reads, ``checkout`` and ``state_dict`` on
the CPU all pay. Here each value is extracted, offset and scaled once, in the order torch does it
((float32(q) - z) * s, float32 throughout, no fused multiply-add), so the results are equal bit for
bit (tests/codec/test_quant_numba.py checks every packable width against the torch path).

``nogil`` and ``cache=True`` as the lossless kernels (``codec._numba``); ``quant.unpack_dequantize``
chooses this or the torch path (DELTASTORE_NUMBA=0, no numba, or a tensor not on the CPU).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def unpack_dequantize(words, bits, length, scale, zero, group_size, out):  # noqa: ANN001, ANN201
    """``out[r, l] = (float32(q[r, l]) - zero[r, l // gs]) * scale[r, l // gs]`` for the b-bit
    values q of ``words`` (uint32, (R, bits * ceil(length / 32))); scale/zero float32 (R, G);
    out float32 (R, length). The caller checks the shapes."""
    rows = words.shape[0]
    chunks = (length + 31) // 32
    mask = (1 << bits) - 1
    per_word = 32 // bits if bits != 3 else 16
    for r in range(rows):
        for c in range(chunks):
            w0 = c * bits
            top = min(32, length - c * 32)
            if bits == 3:
                hi = np.int64(words[r, w0 + 2])
                for j in range(top):
                    lo = np.int64(words[r, w0 + j // 16])
                    q = ((lo >> (2 * (j % 16))) & 3) | (((hi >> j) & 1) << 2)
                    idx = c * 32 + j
                    g = idx // group_size
                    out[r, idx] = (np.float32(q) - zero[r, g]) * scale[r, g]
            else:
                for j in range(top):
                    w = np.int64(words[r, w0 + j // per_word])
                    q = (w >> (bits * (j % per_word))) & mask
                    idx = c * 32 + j
                    g = idx // group_size
                    out[r, idx] = (np.float32(q) - zero[r, g]) * scale[r, g]
    return out
