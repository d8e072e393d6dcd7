"""Deltas computed on a side stream beside the base GEMM (``kernels.linear.beside``), as every
DeltaLinear and DeltaGroup serves a GPU: the same outputs as the one-stream order
(``DELTASTORE_DELTA_STREAM=0``), also inside a captured CUDA graph replayed with new inputs.

Bounds, and why: a DeltaGroup computes the same float32 delta with the same kernels in both orders
and adds it to the base output rounding once: equal bit for bit. A lone DeltaLinear without the
side stream lets the expand add into its bf16 output in place (as before the side stream), which
may round that element again: within 4 eps(bf16) x rms(y) of the side-stream output."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaContext, DeltaGroup, DeltaLinear
from deltastore.kernels.linear import side_stream

from .kernel_testlib import capture, packed_delta

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the side stream exists only there)")


def _members(n: int, ms: list[int], device: str, group_size: int = 32):
    dtype = torch.bfloat16
    made = [packed_delta(m, n, seed=40 + i, dtype=dtype, group_size=group_size, schedule=[[8, 1], [3, 2], [2, None]])
            for i, m in enumerate(ms)]
    ctx = DeltaContext(1, default_id=0)
    group = DeltaGroup(n, ms, device)
    group.deltas.add([pk for _, pk, _ in made])
    members = [DeltaLinear(W.to(device), None, ctx, "triton", group, i) for i, (W, _, _) in enumerate(made)]
    lone = DeltaLinear(made[0][0].to(device), None, ctx, "triton")
    lone.add_delta(made[0][1])
    return members, lone


def test_no_side_stream_off_the_gpu() -> None:
    x = torch.zeros(2, 8)
    assert side_stream(x, "torch") is None and side_stream(x, "auto") is None


@cuda
@pytest.mark.parametrize("M", [1, 4, 40])  # GEMV path, GEMV with 4-row blocks, tl.dot path
def test_side_stream_outputs_equal_one_stream(M: int, monkeypatch) -> None:
    n, ms = 320, [256, 96, 96]
    members, lone = _members(n, ms, "cuda")
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(M)).to(torch.bfloat16).cuda()
    assert side_stream(x, "triton") is not None
    side = [m(x) for m in members] + [lone(x)]
    monkeypatch.setenv("DELTASTORE_DELTA_STREAM", "0")
    assert side_stream(x, "triton") is None
    x2 = x.clone()  # a new tensor: nothing served from the group's kept outputs
    one = [m(x2) for m in members] + [lone(x2)]
    for a, b in zip(side[:-1], one[:-1]):
        assert torch.equal(a, b)
    a, b = side[-1].float(), one[-1].float()
    assert float((a - b).abs().amax()) <= 4 * torch.finfo(torch.bfloat16).eps * float(b.pow(2).mean().sqrt())


@cuda
@pytest.mark.parametrize("M", [8, 16])
def test_tensor_core_path_beside_the_base_gemm_within_rounding(M: int, monkeypatch) -> None:
    """One fine-tune's batch of 8 or 16 rows takes the tensor-core kernels (``mma.use_mma``), on the
    side stream (``mma.SIDE``): the outputs of the one-stream order within 2 eps(bf16) x the largest
    |y| (their float32 atomic adds sum in no fixed order, so a last bit may differ either way)."""
    from deltastore.kernels import mma

    if not mma.HAVE_GLUON:
        pytest.skip("the tensor-core kernels need Triton with Gluon")
    n, ms = 320, [256, 96, 96]
    members, lone = _members(n, ms, "cuda", group_size=128)
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(M)).to(torch.bfloat16).cuda()
    assert mma.use_mma(x, members[0].deltas, members[0].ctx.plan(M, x.device))
    side = [m(x) for m in members] + [lone(x)]
    monkeypatch.setenv("DELTASTORE_DELTA_STREAM", "0")
    x2 = x.clone()
    one = [m(x2) for m in members] + [lone(x2)]
    for a, b in zip(side, one):
        a, b = a.float(), b.float()
        assert float((a - b).abs().amax()) <= 2 * torch.finfo(torch.bfloat16).eps * float(b.abs().amax())


@cuda
def test_side_stream_inside_a_cuda_graph() -> None:
    """Captured with the fork and join, replayed after the input changed: equal to eager calls."""
    n, ms = 320, [256, 96, 96]
    members, lone = _members(n, ms, "cuda")
    static = torch.randn(2, n, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).cuda()

    def step():
        return [m(static) for m in members] + [lone(static)]

    g, outs = capture(step)
    new = torch.randn(2, n, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16).cuda()
    static.copy_(new)
    g.replay()
    torch.cuda.synchronize()
    eager = [m(new) for m in members] + [lone(new)]
    for a, b in zip(outs, eager):
        assert torch.equal(a, b)
