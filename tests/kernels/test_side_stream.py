"""Deltas computed on a side stream beside the base GEMM (``kernels.linear.beside``), as every
DeltaLinear and DeltaGroup serves a GPU in graph decoding's steps (by default; ``DELTASTORE_DELTA_STREAM=1``
everywhere): the same outputs as the one-stream order (``DELTASTORE_DELTA_STREAM=0``, and eager
forwards by default), also inside a captured CUDA graph replayed with new inputs.

Bounds, and why: a DeltaGroup computes the same float32 delta with the same kernels in both orders
and adds it to the base output rounding once: equal bit for bit where the kernels sum in a fixed
order (the GEMV kernels' atomics off: triton_ops.GEMV_ATOMIC, GEMV_Z_ATOMIC); with them on (the
default) the float32 sums' order varies from run to run, so an element may round to the next bf16
value: within one bf16 rounding of each element. A lone DeltaLinear without the side stream lets the
expand add into its bf16 output in place (as before the side stream), which may round that element
again: within 4 eps(bf16) x rms(y) of the side-stream output."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaContext, DeltaGroup, DeltaLinear, KernelError, triton_ops
from deltastore.kernels.linear import side_stream

from .kernel_testlib import DEVICE, capture, packed_delta

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
def test_side_stream_priority_is_the_greatest_or_the_default_and_a_bad_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """``linear.SIDE_PRIORITY`` (DELTASTORE_SIDE_PRIORITY): "high" gives the device's greatest stream
    priority, "default" a stream's default (the base GEMM's), anything else one clear error."""
    from deltastore.kernels import linear

    monkeypatch.setenv("DELTASTORE_DELTA_STREAM", "1")
    x = torch.zeros(1, 8, device="cuda")
    lo, hi = torch.cuda.Stream.priority_range()
    monkeypatch.setattr(linear, "SIDE_PRIORITY", "high")
    assert side_stream(x, "triton").priority == min(lo, hi) < 0
    monkeypatch.setattr(linear, "SIDE_PRIORITY", "default")
    assert side_stream(x, "triton").priority == torch.cuda.current_stream().priority == 0
    monkeypatch.setattr(linear, "SIDE_PRIORITY", "low")
    with pytest.raises(KernelError, match="'high' or 'default'"):
        side_stream(x, "triton")


def _ordered(monkeypatch, ordered: bool) -> None:  # noqa: ANN001
    """The GEMV kernels' float32 atomics off (a fixed order of sums: outputs equal bit for bit) or as by default."""
    if ordered:
        monkeypatch.setattr(triton_ops, "GEMV_ATOMIC", False)
        monkeypatch.setattr(triton_ops, "GEMV_Z_ATOMIC", False)


def _group_equal(a: torch.Tensor, b: torch.Tensor, ordered: bool) -> bool:
    """Bit for bit where the sums' order is fixed, else within one bf16 rounding of each element."""
    if ordered:
        return torch.equal(a, b)
    return bool(((a.float() - b.float()).abs() <= torch.finfo(torch.bfloat16).eps * b.float().abs()).all())


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit where not NaN (a NaN's payload is the converter's), NaN where the other is."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(a.view(torch.int16)[~nan], b.view(torch.int16)[~nan])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_join_adds_as_torch_does_bit_for_bit(dtype: torch.dtype) -> None:
    """The join of a side-stream delta into the base output (``with_delta`` -> the Triton add on a
    GPU): the same bits as torch's ``y.add_(d)`` (float32 sum, rounded once to nearest even), over
    sizes that are not multiples of its block, with values where rounding ties and overflow occur.
    (Triton's CPU interpreter converts float32 to bf16 by truncation, the GPU to nearest even: under
    the interpreter bf16 is checked against the float32 sum truncated.)"""
    from deltastore.kernels import triton_ops
    from deltastore.kernels.linear import with_delta

    if not triton_ops.usable(torch.empty(0, device=DEVICE)):
        pytest.skip("needs triton (a GPU, or the interpreter)")
    g = torch.Generator().manual_seed(5)
    for rows, cols in [(1, 12288), (3, 2051), (17, 4096)]:
        y = torch.randn(rows, cols, generator=g).to(dtype)
        d = torch.randn(rows, cols, generator=g) * 1e-2
        d[0, :8] = torch.tensor([2.0 ** -9, -(2.0 ** -9), 2.0 ** -8, 3 * 2.0 ** -9, 7e4, -7e4, float("inf"), float("nan")])
        y[0, :8] = 1.0
        want = y.clone().add_(d)
        got = triton_ops.add_f32_(y.clone().to(DEVICE), d.to(DEVICE)).cpu()
        if DEVICE == "cuda" or dtype == torch.float16:
            assert _same_bits(got, want), (rows, cols)
        else:  # the interpreter's conversion: the same float32 sum, its low 16 bits dropped
            trunc = ((y.float() + d).view(torch.int32) & -65536).view(torch.float32).to(dtype)
            assert _same_bits(got, trunc), (rows, cols)
        if DEVICE == "cuda":  # what the modules call
            assert _same_bits(with_delta(y.clone().cuda(), d.cuda(), dtype).cpu(), want)
    with pytest.raises(KernelError):
        triton_ops.add_f32_(torch.zeros(2, 4, dtype=dtype, device=DEVICE), torch.zeros(4, 2, device=DEVICE))


@cuda
@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("M", [1, 4, 40])  # GEMV path, GEMV with 4-row blocks, tl.dot path
def test_side_stream_outputs_equal_one_stream(M: int, ordered: bool, monkeypatch) -> None:
    _ordered(monkeypatch, ordered)
    n, ms = 320, [256, 96, 96]
    members, lone = _members(n, ms, "cuda")
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(M)).to(torch.bfloat16).cuda()
    monkeypatch.setenv("DELTASTORE_DELTA_STREAM", "1")
    assert side_stream(x, "triton") is not None
    side = [m(x) for m in members] + [lone(x)]
    monkeypatch.setenv("DELTASTORE_DELTA_STREAM", "0")
    assert side_stream(x, "triton") is None
    x2 = x.clone()  # a new tensor: nothing served from the group's kept outputs
    one = [m(x2) for m in members] + [lone(x2)]
    for a, b in zip(side[:-1], one[:-1]):
        assert _group_equal(a, b, ordered)
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
    monkeypatch.setenv("DELTASTORE_DELTA_STREAM", "1")
    side = [m(x) for m in members] + [lone(x)]
    monkeypatch.setenv("DELTASTORE_DELTA_STREAM", "0")
    x2 = x.clone()
    one = [m(x2) for m in members] + [lone(x2)]
    for a, b in zip(side, one):
        a, b = a.float(), b.float()
        assert float((a - b).abs().amax()) <= 2 * torch.finfo(torch.bfloat16).eps * float(b.abs().amax())


@cuda
def test_the_side_stream_serves_graph_decoding_by_default(monkeypatch) -> None:
    """By default an eager forward keeps one stream (it is bound by the host's launches, which the
    fork and join add to), and so does a graph captured by hand after an eager warm-up (its capture
    must launch only kernels the warm-up loaded); graph decoding's static-ids steps (its eager first
    step and its capture alike) take the side stream."""
    monkeypatch.delenv("DELTASTORE_DELTA_STREAM", raising=False)
    x = torch.randn(2, 64).to(torch.bfloat16).cuda()
    ctx = DeltaContext(1, default_id=0)
    assert side_stream(x, "triton") is None and side_stream(x, "triton", ctx) is None
    seen = []

    def step() -> torch.Tensor:
        seen.append(side_stream(x, "triton", ctx))
        return x.mul_(1)  # (a kernel, so the capture is not empty)

    capture(step)
    assert seen == [None, None]  # the warm-up eagerly, then the capture: one path
    buf = torch.zeros(2, dtype=torch.int64, device="cuda")
    with ctx.static_ids(buf):
        assert side_stream(x, "triton", ctx) is not None
        capture(step)
    assert seen[2] is not None and seen[3] is not None
    monkeypatch.setenv("DELTASTORE_DELTA_STREAM", "0")
    with ctx.static_ids(buf):
        assert side_stream(x, "triton", ctx) is None


@cuda
@pytest.mark.parametrize("ordered", [True, False])
def test_side_stream_inside_a_cuda_graph(ordered: bool, monkeypatch) -> None:
    """Captured with the fork and join (``DELTASTORE_DELTA_STREAM=1``: the warm-up and the capture
    both beside), replayed after the input changed: equal to eager calls of the one-stream default (a
    group's float32 delta added rounding once, bit for bit; the lone linear's expand adds into its
    bf16 output, within 4 eps(bf16) x rms(y)); with the atomics on, see the module's bounds."""
    _ordered(monkeypatch, ordered)
    n, ms = 320, [256, 96, 96]
    members, lone = _members(n, ms, "cuda")
    monkeypatch.setenv("DELTASTORE_DELTA_STREAM", "1")
    static = torch.randn(2, n, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).cuda()

    def step():
        return [m(static) for m in members] + [lone(static)]

    g, outs = capture(step)
    new = torch.randn(2, n, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16).cuda()
    static.copy_(new)
    g.replay()
    torch.cuda.synchronize()
    monkeypatch.delenv("DELTASTORE_DELTA_STREAM")
    eager = [m(new) for m in members] + [lone(new)]
    for a, b in zip(outs[:-1], eager[:-1]):
        assert _group_equal(a, b, ordered)
    a, b = outs[-1].float(), eager[-1].float()
    assert float((a - b).abs().amax()) <= 4 * torch.finfo(torch.bfloat16).eps * float(b.pow(2).mean().sqrt())
