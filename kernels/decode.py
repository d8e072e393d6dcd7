"""Packed delta -> dense delta, on the device the packed arrays are on (GPU materialization).

On a GPU the tiers are dequantized by the Triton ``dequant_rows`` kernel and multiplied by one
float32 GEMM, ``(U^ * S) @ V^^T``; elsewhere the codec's own unpack does the first step. The
result equals the codec's ``decode_delta`` up to float32 rounding of the product.
"""

from __future__ import annotations

import torch

from deltastore.codec import Encoded

from . import ref_ops, triton_ops
from .linear import KernelPreference, resolve_preference
from .packed import PackedDeltaCoMe, from_encoded


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


def reconstruct_encoded(enc: Encoded, base: torch.Tensor, preference: KernelPreference | str = KernelPreference.AUTO) -> torch.Tensor | None:
    """A stored lossy payload's tensor on ``base``'s device (the GPU materialization of
    ``state_dict(REF, device="cuda")`` and checkout): packed -> dense delta by the Triton dequant
    kernel and one float32 GEMM there, added to the base in float32 and rounded once to the
    fine-tune's dtype, as the codec's ``reconstruct`` does on the CPU (same numbers up to float32
    rounding of the GEMM). The payload is checked first (:func:`from_encoded`: a corrupt one
    raises CorruptPayloadError). None: no kernel decode for this payload (another codec, or a
    rotated delta-come): the caller uses the codec's own ``reconstruct`` on that device."""
    if enc.codec != "delta-come" or any((enc.meta or {}).get("rotated") or []):
        return None
    d = from_encoded(enc, tuple(base.shape), what="materialize")
    delta = decode_delta(d.to(base.device), preference)
    return delta.add_(base.to(torch.float32)).to(getattr(torch, enc.dtype))
