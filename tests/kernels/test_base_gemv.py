"""The Triton base GEMV (``kernels.base_gemv``): x W^T + b for 1..4 rows, float32 sums rounded once.

Bound, and why: the kernel and torch's float64 reference of the same bf16/fp16 inputs differ by the
float32 sums' order (a few ulps of float32, far under the output's rounding) and then by one
rounding to the output dtype: within 1 eps(dtype) x |y| + 1e-6 x sum|x||W| of the exact value.
On the CPU this runs under TRITON_INTERPRET (tests/kernels/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaContext, DeltaGroup, DeltaLinear, KernelError, base_gemv, linear

from .kernel_testlib import DEVICE, packed_delta


def _check(M: int, N: int, K: int, dtype: torch.dtype, bias: bool, seed: int = 0, path: str | None = None) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(dtype).to(DEVICE)
    W = torch.randn(N, K, generator=g).to(dtype).to(DEVICE)
    b = torch.randn(N, generator=g).to(dtype).to(DEVICE) if bias else None
    y = base_gemv.gemv(x, W, b, path=path)
    assert y.dtype == dtype and y.shape == (M, N)
    exact = x.double() @ W.double().T + (b.double() if bias else 0)
    mag = x.double().abs() @ W.double().abs().T
    eps = torch.finfo(dtype).eps
    err = (y.double() - exact).abs()
    assert bool((err <= eps * exact.abs() + 1e-6 * mag + 1e-30).all()), float((err / (exact.abs() + 1e-9)).max())


@pytest.mark.parametrize("M", [1, 2, 3, 4])
def test_rows_and_odd_shapes(M: int) -> None:
    # K not a multiple of the step (masked tail), N not a multiple of the block (rows past N)
    _check(M, 37, 300, torch.bfloat16, bias=M % 2 == 1, seed=M, path="gemv")


@pytest.mark.parametrize("M", [1, 5, 16, 17, 32])
def test_dot_rows_and_odd_shapes(M: int) -> None:
    _check(M, 45, 300, torch.bfloat16, bias=M % 2 == 1, seed=M, path="dot")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtypes_whole_steps(dtype: torch.dtype) -> None:
    _check(2, 64, 512, dtype, bias=True, path="gemv")
    _check(3, 64, 512, dtype, bias=True, path="dot")


@pytest.mark.parametrize("M", [1, 3])
def test_capped_grid_same_bits(M: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GEMV with its grid capped (PROGRAMS_PER_SM: programs take the column blocks in turn) gives
    the uncapped kernel's bits: each block is computed the same way whichever program takes it. Odd
    shapes: more blocks than programs, the last block past N, a masked tail of K."""
    g = torch.Generator().manual_seed(M)
    x = torch.randn(M, 300, generator=g).to(torch.bfloat16).to(DEVICE)
    W = torch.randn(37, 300, generator=g).to(torch.bfloat16).to(DEVICE)
    b = torch.randn(37, generator=g).to(torch.bfloat16).to(DEVICE)
    monkeypatch.setattr(base_gemv, "MIN_PROGRAMS", 1)  # blocks of 8 columns: 5 of them
    want = base_gemv.gemv(x, W, b, path="gemv")
    monkeypatch.setattr(base_gemv, "PROGRAMS_PER_SM", 2)  # the interpreter counts one SM: 2 programs
    if DEVICE != "cpu":  # a cap under the blocks on a GPU too
        monkeypatch.setattr(base_gemv, "_programs_cap", lambda device: 2)
    got = base_gemv.gemv(x, W, b, path="gemv")
    assert torch.equal(got, want)
    _check(M, 37, 300, torch.bfloat16, bias=True, seed=M, path="gemv")


@pytest.mark.parametrize("M,stages", [(1, 3), (1, 4), (3, 3)])
def test_pipelined_loop_same_bits(M: int, stages: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GEMV's loop software-pipelined (STAGES: W's next steps by cp.async on a GPU) sums in the
    same order, so it gives the unpipelined kernel's bits; odd shapes (a masked tail of K, the last
    block past N) and blocks of 16 columns by 128 inputs (more steps than stages)."""
    g = torch.Generator().manual_seed(10 + M)
    x = torch.randn(M, 700, generator=g).to(torch.bfloat16).to(DEVICE)
    W = torch.randn(45, 700, generator=g).to(torch.bfloat16).to(DEVICE)
    b = torch.randn(45, generator=g).to(torch.bfloat16).to(DEVICE)
    monkeypatch.setattr(base_gemv, "BLOCK_N", 16)
    monkeypatch.setattr(base_gemv, "BLOCK_K", 128)
    monkeypatch.setattr(base_gemv, "MIN_PROGRAMS", 1)
    monkeypatch.setattr(base_gemv, "STAGES_MIN_K", 0)
    monkeypatch.setattr(base_gemv, "STAGES", 1)
    want = base_gemv.gemv(x, W, b, path="gemv")
    monkeypatch.setattr(base_gemv, "STAGES", stages)
    got = base_gemv.gemv(x, W, b, path="gemv")
    assert torch.equal(got, want)
    _check(M, 45, 700, torch.bfloat16, bias=True, seed=10 + M, path="gemv")


def test_refuses_what_it_does_not_serve() -> None:
    x = torch.zeros(33, 16, dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(KernelError, match="rows"):
        base_gemv.gemv(x, torch.zeros(8, 16, dtype=torch.bfloat16, device=DEVICE))
    with pytest.raises(KernelError, match="rows"):
        base_gemv.gemv(x[:5], torch.zeros(8, 16, dtype=torch.bfloat16, device=DEVICE), path="gemv")
    with pytest.raises(KernelError, match="rows"):
        base_gemv.gemv(x[:1], torch.zeros(8, 15, dtype=torch.bfloat16, device=DEVICE))


def test_group_output_through_the_gemv(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DeltaGroup's members with the base GEMV switched on give the outputs they give with
    cuBLAS (torch's linear): the same float32 delta joined to a base output within the bound above.
    The GEMV serves only a base the deltas run beside (it exists to leave them SMs)."""
    n, ms = 96, [64, 32]
    made = [packed_delta(m, n, seed=70 + i, dtype=torch.bfloat16, group_size=32, schedule=[[8, 1], [3, 2], [2, None]])
            for i, m in enumerate(ms)]
    ctx = DeltaContext(1, default_id=0)
    group = DeltaGroup(n, ms, DEVICE)
    group.deltas.add([pk for _, pk, _ in made])
    lins = [DeltaLinear(W.to(DEVICE), None, ctx, "triton", group, i) for i, (W, _, _) in enumerate(made)]
    x = torch.randn(1, n, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16).to(DEVICE)
    ref = [lin(x).float() for lin in lins]
    monkeypatch.setattr(base_gemv, "ENABLED", True)
    monkeypatch.setattr(base_gemv, "serves", lambda x2, W: x2.shape[0] <= base_gemv.MAX_ROWS)  # the CPU too
    called = []
    gemv = base_gemv.gemv
    monkeypatch.setattr(base_gemv, "gemv", lambda *a, **k: called.append(1) or gemv(*a, **k))
    [lin(x.clone()) for lin in lins]
    assert not called  # no deltas beside it (one stream, as an eager forward): cuBLAS, faster alone
    monkeypatch.setattr(linear, "_triton_base_here", lambda: True)  # as beside a side stream's deltas
    got = [lin(x.clone()).float() for lin in lins]
    assert called
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, rtol=2 * torch.finfo(torch.bfloat16).eps, atol=1e-3 * float(b.abs().max()))
