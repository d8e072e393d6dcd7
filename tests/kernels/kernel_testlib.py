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


def qkv_members(n: int, ms: list[int], ctx, *, dtype: torch.dtype = torch.bfloat16, seed: int = 30):  # noqa: ANN001
    """(group, members, made): q/k/v-style DeltaLinears of one DeltaGroup over x (n) with outputs
    ``ms`` (groups of 32, tiers 8/3/2 bits), the group's deltas loaded in slot 0; made: (W, packed,
    payload) per member."""
    from deltastore.kernels import DeltaGroup, DeltaLinear

    made = [packed_delta(m, n, seed=seed + i, dtype=dtype, group_size=32, schedule=[[8, 1], [3, 2], [2, None]]) for i, m in enumerate(ms)]
    group = DeltaGroup(n, ms, DEVICE)
    group.deltas.add([pk for _, pk, _ in made])
    members = [DeltaLinear(W.to(DEVICE), None, ctx, "triton", group, i) for i, (W, _, _) in enumerate(made)]
    return group, members, made


def capture(step):  # noqa: ANN001, ANN201
    """(graph, what step returned in it): ``step`` run once on a side stream (warm-up: kernels
    compiled, buffers allocated), then captured in a CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = step()
    return g, out


def every_layout_set(dtype: torch.dtype):  # noqa: ANN201
    """(W, packed, payload, set): one 75 x 100 linear whose delta has every packed layout (8, 4, 3,
    2, 1 bits; groups of 64: 2 per row, the last one short; rows of 100 values pad to 128), loaded
    in slot 0 of its own DeltaSet."""
    from deltastore.kernels import DeltaSet

    m, n = 75, 100
    W, pk, enc = packed_delta(m, n, dtype=dtype)
    assert [v.bits for v, _ in pk.tiers] == [8, 4, 3, 2, 1]
    ds = DeltaSet(n, [m], DEVICE)
    ds.add([pk])
    return W, pk, enc, ds


def tenant_set(n: int, ms: list[int], n_tenants: int, *, seed: int, step: int, schedule, group_size: int = 32):  # noqa: ANN001, ANN201
    """A built DeltaSet over x (n) with slices ``ms``: ``n_tenants`` fine-tunes in slots 0.., the delta of
    tenant t's slice i drawn with seed + step * t + i (tiers by ``schedule``)."""
    from deltastore.kernels import DeltaSet

    ds = DeltaSet(n, ms, DEVICE)
    for t in range(n_tenants):
        ds.add([packed_delta(m, n, seed=seed + step * t + i, schedule=schedule, group_size=group_size)[1] for i, m in enumerate(ms)])
    return ds.build()
