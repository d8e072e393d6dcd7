"""Packed delta -> dense delta, on the device the packed arrays are on (GPU materialization).

On a GPU the tiers are dequantized by the Triton ``dequant_rows`` kernel and multiplied by one
float32 GEMM, ``(U^ * S) @ V^^T``; elsewhere the codec's own unpack does the first step. The
result equals the codec's ``decode_delta`` up to float32 rounding of the product.
"""

from __future__ import annotations

import torch

from . import ref_ops, triton_ops
from .linear import KernelPreference, resolve_preference
from .packed import PackedDeltaCoMe


def decode_delta(d: PackedDeltaCoMe, preference: KernelPreference | str = KernelPreference.AUTO) -> torch.Tensor:
    """The float32 delta (m, n) of a packed delta-come payload, on its device."""
    m, n = d.shape
    if not d.tiers:
        return torch.zeros(m, n, device=d.S.device)
    use_triton = resolve_preference(preference, d.S) is KernelPreference.TRITON
    deq = triton_ops.dequant_rows if use_triton else ref_ops.dequant_rows
    V = torch.cat([deq(v.q, v.s, v.z, v.bits, n, d.group_size) for v, _ in d.tiers])  # (r, n)
    U = torch.cat([deq(u.q, u.s, u.z, u.bits, m, d.group_size) for _, u in d.tiers])  # (r, m)
    return (U.T * d.S) @ V


def reconstruct(d: PackedDeltaCoMe, base: torch.Tensor, preference: KernelPreference | str = KernelPreference.AUTO) -> torch.Tensor:
    """The fine-tune's weight in the base's dtype: base + delta in float32, rounded once (as the codec does)."""
    delta = decode_delta(d.to(base.device), preference)
    return delta.add_(base.to(torch.float32)).to(base.dtype)
