"""The join of a delta into its base output by the last program (kernels/join.py): the base GEMV's
programs and the GEMV expand's count themselves on a counter a block of 128 columns, and the last
one adds the float32 delta d into y. A user relies on y getting exactly what the separate add gives
(float(y) + d rounded once: the same bits, given the same d), whichever kernel finishes last, and on
the counters being back at zero (a CUDA graph replays the step). Under TRITON_INTERPRET the programs
run one after another, so both orders are forced: base first (an expand program joins) and expand
first (a base program joins)."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaContext, DeltaGroup, DeltaLinear, DeltaSet, KernelError, base_gemv, join, plan_rows, triton_ops

from .kernel_testlib import DEVICE, packed_delta

pytestmark = pytest.mark.skipif(not triton_ops.HAVE_TRITON, reason="triton is not installed")

OUTS, N_IN = [128, 256], 96  # two slices (q/k-like), three blocks of 128 columns


def _same(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal bits on the CPU (the interpreter's atomics add in one order); on a GPU the float32
    atomics' order varies between runs, so d within 1e-6 of its size and y within one ulp."""
    if DEVICE == "cpu":
        return torch.equal(got, want)
    if got.dtype == torch.float32:
        return float((got - want).abs().max()) <= 1e-6 * float(want.abs().max())
    return bool(((got.float() - want.float()).abs() <= torch.finfo(got.dtype).eps * want.float().abs() + 1e-30).all())


def _set(seeds: tuple[int, ...]) -> DeltaSet:
    ds = DeltaSet(N_IN, OUTS, DEVICE)
    for seed in seeds:
        ds.add([packed_delta(m, N_IN, seed=seed + j, schedule=[[8, 2], [3, 9], [2, None]], group_size=128)[1] for j, m in enumerate(OUTS)])
    return ds


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, N_IN, generator=g).to(torch.bfloat16).to(DEVICE)
    W = torch.randn(sum(OUTS), N_IN, generator=g).to(torch.bfloat16).to(DEVICE)
    b = torch.randn(sum(OUTS), generator=g).to(torch.bfloat16).to(DEVICE)
    return x, W, b


@pytest.mark.parametrize("ids,base_first", [([1], True), ([1], False), ([0], True), ([-1], False)])
def test_last_program_joins_with_the_add_kernels_bits(ids: list[int], base_first: bool) -> None:
    ds = _set((3, 11))
    x, W, b = _inputs(5)
    plan = plan_rows(torch.tensor(ids, device=DEVICE), 2)
    N = sum(OUTS)
    ds.build()
    split = triton_ops.pick_split_k(1, ds, plan=plan)
    # the separate way: base GEMV, delta into a zeroed float32 d, then the add kernel
    y0 = base_gemv.gemv(x, W, b, path="gemv")
    d0 = triton_ops.expand(triton_ops.shrink(x, ds, plan, split), torch.zeros(1, N, device=DEVICE), ds, plan)
    want = triton_ops.add_f32_(y0.clone(), d0)
    # the fused way
    counters = torch.zeros(N // join.COLS, dtype=torch.int32, device=DEVICE)
    fused = join.Join(torch.empty(1, N, dtype=torch.bfloat16, device=DEVICE), torch.zeros(1, N, device=DEVICE), counters,
                      base_gemv.join_arrivals(N) + triton_ops.join_arrivals(1, ds, plan))
    steps = [lambda: base_gemv.gemv(x, W, b, out=fused.y, path="gemv", fused=fused),
             lambda: triton_ops.expand(triton_ops.shrink(x, ds, plan, split), fused.d, ds, plan, fused=fused)]
    for step in steps if base_first else steps[::-1]:
        step()
    if DEVICE != "cpu":
        torch.cuda.synchronize()
    assert _same(fused.d, d0)
    assert _same(fused.y, want)
    assert int(counters.abs().sum()) == 0
    if ids == [-1]:  # no fine-tune: every expand program counts itself without work, y is the base
        assert torch.equal(fused.y, y0) and not fused.d.any()
    # a second step on the same counters (a graph replay) joins again
    fused.d.zero_()
    for step in steps:
        step()
    assert _same(fused.y, want) and int(counters.abs().sum()) == 0


def test_refuses_what_it_cannot_join() -> None:
    ds = DeltaSet(N_IN, [150], DEVICE)  # a slice not a multiple of 128 columns
    ds.add([packed_delta(150, N_IN, seed=1, schedule=[[8, 2], [2, None]], group_size=32)[1]])
    plan = plan_rows(torch.tensor([0], device=DEVICE), 1)
    x = torch.zeros(1, N_IN, dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(KernelError, match="multiple of 128"):
        join.Join(torch.empty(1, 150, dtype=torch.bfloat16, device=DEVICE), torch.zeros(1, 150, device=DEVICE),
                  torch.zeros(1, dtype=torch.int32, device=DEVICE), 3).check()
    ds2 = _set((3,))
    plan2 = plan_rows(torch.tensor([0], device=DEVICE), 1)
    fused = join.Join(torch.empty(1, 384, dtype=torch.bfloat16, device=DEVICE), torch.zeros(1, 384, device=DEVICE),
                      torch.zeros(3, dtype=torch.int32, device=DEVICE), 9)
    with pytest.raises(KernelError, match="atomics"):  # d must be the expand's own y
        triton_ops.expand(triton_ops.shrink(x, ds2, plan2, 1), torch.zeros(1, 384, device=DEVICE), ds2, plan2, fused=fused)
    with pytest.raises(KernelError, match="GEMV path"):
        base_gemv.gemv(x, torch.zeros(384, N_IN, dtype=torch.bfloat16, device=DEVICE), out=fused.y, path="dot", fused=fused)
    assert ds.n_slots == 1 and plan.n_slots == 1


@pytest.mark.parametrize("fused_on", [True, False])
def test_group_members_through_the_fused_join(fused_on: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DeltaGroup's members at one row, as a lazy model runs them where the base GEMV serves (a
    GPU; on the CPU its check is told yes, so the interpreter runs the same kernels): with the fused
    join, the bits of the base GEMV + the add kernel; without it, the path before (the base by
    torch's linear where no side stream runs, then the add kernel); the join's counters made only
    when it is on."""
    monkeypatch.setattr(join, "ENABLED", fused_on)
    if DEVICE == "cpu":
        monkeypatch.setattr(base_gemv, "serves", lambda x, W: True)
    x, W, b = _inputs(7)
    ds = _set((3, 11))
    ctx = DeltaContext(2)
    ctx.set([1])
    g = DeltaGroup(N_IN, OUTS, DEVICE)
    g.deltas = ds
    offs = [0, OUTS[0]]
    mods = [DeltaLinear(W[o : o + m], b[o : o + m], ctx, "triton", g, j) for j, (o, m) in enumerate(zip(offs, OUTS))]
    outs = [m(x) for m in mods]
    plan = plan_rows(torch.tensor([1], device=DEVICE), 2)
    y0 = base_gemv.gemv(x, W, b, path="gemv") if fused_on else torch.nn.functional.linear(x, W, b)
    d0 = triton_ops.expand(triton_ops.shrink(x, ds, plan, triton_ops.pick_split_k(1, ds, plan=plan)),
                           torch.zeros(1, sum(OUTS), device=DEVICE), ds, plan)
    # the add kernel (Triton's interpreter rounds its float32 -> bf16 conversion otherwise than torch
    # does: the kernels' own bits on the CPU), or, without the join, the add a CPU forward takes (torch's)
    want = triton_ops.add_f32_(y0, d0) if fused_on else (y0.float() + d0).to(y0.dtype)
    assert _same(torch.cat(outs, 1), want)
    assert (("join", sum(OUTS) // join.COLS) in ds._sems) == fused_on


@pytest.mark.skipif(DEVICE == "cpu", reason="the side stream (and a lone linear's fused join) is on a GPU only")
@pytest.mark.parametrize("fused_on", [True, False])
def test_lone_linear_on_the_side_stream(fused_on: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone DeltaLinear (o- or down-shaped) at one row with its delta on the side stream (as graph
    decoding runs it): with the fused join its output is the base GEMV + its delta rounded once,
    within the atomics' run-to-run ulp, as without it; its counters made only when it is on."""
    monkeypatch.setattr(join, "ENABLED", fused_on)
    monkeypatch.setenv("DELTASTORE_DELTA_STREAM", "1")
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, N_IN, generator=g).to(torch.bfloat16).to(DEVICE)
    W = torch.randn(256, N_IN, generator=g).to(torch.bfloat16).to(DEVICE)
    ctx = DeltaContext(1)
    ctx.set([0])
    lin = DeltaLinear(W, None, ctx, "triton")
    lin.add_delta(packed_delta(256, N_IN, seed=4, schedule=[[8, 2], [3, 9], [2, None]], group_size=128)[1])
    got = lin(x)
    torch.cuda.synchronize()
    plan = plan_rows(torch.tensor([0], device=DEVICE), 1)
    ds = lin.deltas
    d0 = triton_ops.expand(triton_ops.shrink(x, ds, plan, triton_ops.pick_split_k(1, ds, plan=plan)), torch.zeros(1, 256, device=DEVICE), ds, plan)
    want = triton_ops.add_f32_(base_gemv.gemv(x, W, path="gemv"), d0)
    assert _same(got, want)
    assert (("join", 2) in ds._sems) == fused_on
