"""Packed deltas made by the real codec, for the kernel tests."""

from __future__ import annotations

import torch

from deltastore.codec import Encoded, get_codec
from deltastore.kernels import PackedDeltaCoMe, from_encoded

#: one payload with every packed layout the kernels read: 8, 4, 3, 2 and 1 bits
ALL_LAYOUTS = [[8, 1], [4, 2], [3, 3], [2, 4], [1, None]]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def encode_delta(m: int, n: int, *, seed: int = 0, alpha: float = 0.25, schedule=None, group_size: int = 64,
                 dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, Encoded]:
    """(base weight, delta-come payload of a random low-rank-plus-noise fine-tune of it)."""
    g = torch.Generator().manual_seed(seed)
    W = 0.05 * torch.randn(m, n, generator=g)
    D = 0.02 * (torch.randn(m, 6, generator=g) @ torch.randn(6, n, generator=g)) / 6 + 1e-3 * torch.randn(m, n, generator=g)
    codec = get_codec("delta-come", alpha=alpha, schedule=schedule or ALL_LAYOUTS, group_size=group_size, seed=seed)
    return W.to(dtype), codec.encode((W + D).to(dtype), W.to(dtype))


def packed_delta(m: int, n: int, **kw) -> tuple[torch.Tensor, PackedDeltaCoMe, Encoded]:
    W, enc = encode_delta(m, n, **kw)
    return W, from_encoded(enc, (m, n)), enc


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
