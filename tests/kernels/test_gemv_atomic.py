"""The GEMV expand into a float32 y with atomics (triton_ops.GEMV_ATOMIC: the side stream's delta
buffer): each program adds its partial into y, so y's rows must get their own tenant's delta, added
to what y held, from every tier (several programs a column block), at one and two rows a block."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaSet, plan_rows, ref_ops, triton_ops

from .kernel_testlib import DEVICE, packed_delta, rel

pytestmark = pytest.mark.skipif(not triton_ops.HAVE_TRITON, reason="triton is not installed")

M_OUT, N_IN = 150, 96  # two column blocks of 128, the second short


def _two_tenants(seeds: tuple[int, int]) -> DeltaSet:
    ds = DeltaSet(N_IN, [M_OUT], DEVICE)
    for seed in seeds:
        ds.add([packed_delta(M_OUT, N_IN, seed=seed, schedule=[[8, 2], [3, 9], [2, None]], group_size=32)[1]])
    return ds


@pytest.mark.parametrize("ids", [[1, 0], [1, 0, 1, -1, 0]])  # one row a tenant; two a tenant and a row of none
def test_atomic_expand_adds_each_rows_delta_into_a_float32_y(ids: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _two_tenants((3, 4))
    t = torch.tensor(ids, device=DEVICE)
    plan = plan_rows(t, 2)
    x = torch.randn(len(ids), N_IN, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16).to(DEVICE)
    y0 = torch.randn(len(ids), M_OUT, generator=torch.Generator().manual_seed(6)).to(DEVICE)  # float32, not zero
    zr = ref_ops.shrink(x, ds, plan)
    want = ref_ops.expand(zr, y0.clone(), ds, plan)
    assert triton_ops.use_gemv(len(ids), ds)
    z = triton_ops.shrink(x, ds, plan, triton_ops.pick_split_k(len(ids), ds))
    got = {}
    for atomic in (True, False):
        monkeypatch.setattr(triton_ops, "GEMV_ATOMIC", atomic)
        got[atomic] = triton_ops.expand(z, y0.clone(), ds, plan)
        assert rel(got[atomic] - y0, want - y0) < 1e-4, atomic  # the delta, to float32 rounding
    none = t < 0
    assert torch.equal(got[True][none], y0[none])  # a row of no tenant is left as it was
    assert float((got[True] - got[False]).abs().max()) <= 1e-5 * float(want.abs().max())


@pytest.mark.parametrize("ids,regs", [([1, 0], 0), ([0], 96), ([-1, 1, 1], 0)])
def test_gemv_launch_defaults_reach_both_kernels(ids: list[int], regs: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """triton_ops.GEMV_WARPS (a batch of one row block) / GEMV_WARPS_MANY (several) and GEMV_MAXNREG
    (the module path's warps and register cap): the shrink and expand launch with them and still give
    each row its tenant's delta (on a GPU: the compiled kernels have those warps and at most that
    many registers). Set to 8 and 1 here, neither the default, so a swapped rule shows."""
    monkeypatch.setattr(triton_ops, "GEMV_WARPS", 8)
    monkeypatch.setattr(triton_ops, "GEMV_WARPS_MANY", 1)
    monkeypatch.setattr(triton_ops, "GEMV_MAXNREG", regs)
    ds = _two_tenants((7, 8))
    plan = plan_rows(torch.tensor(ids, device=DEVICE), 2)
    blocks = triton_ops.plan_blocks(plan, triton_ops._gemv_block_m(len(ids), ds)).shape[0]
    assert (blocks == 1) == (len(ids) == 1)  # both rules taken: one block for the lone row, several else
    x = torch.randn(len(ids), N_IN, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16).to(DEVICE)
    want = ref_ops.expand(ref_ops.shrink(x, ds, plan), torch.zeros(len(ids), M_OUT, device=DEVICE), ds, plan)
    z = triton_ops.shrink(x, ds, plan, triton_ops.pick_split_k(len(ids), ds), path="gemv")
    got = triton_ops.expand(z, torch.zeros(len(ids), M_OUT, device=DEVICE), ds, plan, path="gemv")
    assert rel(got, want) < 1e-4
    if not triton_ops.interpreting():
        warps = 8 if blocks == 1 else 1
        for kind in ("shrink", "expand"):
            k = triton_ops.LAST[kind]
            assert k.metadata.num_warps == warps and (not regs or k.n_regs <= regs), (kind, k.metadata.num_warps, k.n_regs)


def test_a_fine_tunes_row_beside_base_rows_takes_the_gemv_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """One fine-tune's row beside nine base rows, the ids on the host (DeltaContext.plan): one row
    to the GEMV choice (triton_ops.gemv_rows, RowPlan.served), not ten spread over two fine-tunes
    (5 each: the tl.dot kernels). Through apply_deltas, the path users take: that row gets its
    delta, the base rows stay as they were, bit for bit."""
    from deltastore.kernels import DeltaContext, deltaset
    from deltastore.kernels.linear import apply_deltas

    ds = _two_tenants((3, 4))
    ids = [-1, -1, 1, -1, -1, -1, -1, -1, -1, -1]
    ctx = DeltaContext(2)
    ctx.set(torch.tensor(ids))
    plan = ctx.plan(len(ids), torch.device(DEVICE))
    M = len(ids)
    assert triton_ops.gemv_rows(M, ds, plan) == 1 and triton_ops.use_gemv(M, ds, plan=plan)
    assert triton_ops._gemv_block_m(M, ds, plan) == 1
    assert not triton_ops.use_gemv(M, ds)  # a device plan: 5 rows a fine-tune
    monkeypatch.setattr(deltaset, "COUNT_SERVED", False)
    assert not triton_ops.use_gemv(M, ds, plan=plan)  # the A/B knob off: as a device plan
    monkeypatch.setattr(deltaset, "COUNT_SERVED", True)
    x = torch.randn(M, N_IN, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16).to(DEVICE)
    y0 = torch.randn(M, M_OUT, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    want = ref_ops.expand(ref_ops.shrink(x, ds, plan), y0.clone(), ds, plan)
    got = apply_deltas(x, y0.clone(), ds, plan, "triton")
    assert rel(got - y0, want - y0) < 1e-4  # the delta, to float32 rounding
    base = torch.tensor(ids, device=DEVICE) < 0
    assert torch.equal(got[base], y0[base])
