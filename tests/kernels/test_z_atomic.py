"""The GEMV shrink's splits summed into one z by float32 atomics (triton_ops.GEMV_Z_ATOMIC): given a
zeroed (M, zcols) buffer, the shrink adds every split of the inputs into it and the expand reads one
z a component. What a user relies on: each served row's delta as with the split z's (float32 sums
in another order: within 1e-5 of the output's largest), base rows left as they were, and a buffer of
the wrong shape or dtype never used (the split z's instead)."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaSet, plan_rows, ref_ops, triton_ops
from deltastore.kernels.linear import beside

from .kernel_testlib import DEVICE, rel, tenant_set

pytestmark = pytest.mark.skipif(not triton_ops.HAVE_TRITON, reason="triton is not installed")

N_IN, OUTS = 200, [150, 70]
SCHEDULE = [[8, 2], [3, 5], [2, None]]


def _set(n_tenants: int) -> DeltaSet:
    return tenant_set(N_IN, OUTS, n_tenants, seed=5, step=3, schedule=SCHEDULE)


@pytest.mark.parametrize("n_tenants,ids", [(1, [0]), (1, [0, -1, 0]), (2, [1, 0, -1])])
def test_summed_z_gives_each_rows_delta(n_tenants: int, ids: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_ops, "GEMV_Z_ATOMIC", True)
    ds = _set(n_tenants)
    M = len(ids)
    plan = plan_rows(torch.tensor(ids, device=DEVICE), ds.n_slots)
    split = triton_ops.pick_split_k(M, ds, plan=plan)
    assert triton_ops.use_gemv(M, ds, plan=plan) and split > 1
    x = torch.randn(M, N_IN, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16).to(DEVICE)
    y0 = torch.randn(M, sum(OUTS), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    zsum = torch.zeros(M, ds.zcols, device=DEVICE)
    z = triton_ops.shrink(x, ds, plan, split, zsum=zsum)
    assert z.shape == (1, M, ds.zcols) and z.data_ptr() == zsum.data_ptr()  # summed in the caller's buffer
    got = triton_ops.expand(z, y0.clone(), ds, plan)
    zs = triton_ops.shrink(x, ds, plan, split)  # the split z's
    assert zs.shape == (split, M, ds.zcols)
    split_y = triton_ops.expand(zs, y0.clone(), ds, plan)
    want = ref_ops.expand(ref_ops.shrink(x, ds, plan), y0.clone(), ds, plan)
    served = torch.tensor(ids, device=DEVICE) >= 0
    assert float((got - split_y).abs().max()) <= 1e-5 * float(want.abs().max())
    assert rel(got[served] - y0[served], want[served] - y0[served]) < 1e-4
    assert torch.equal(got[~served], y0[~served])


def test_a_buffer_that_does_not_fit_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_ops, "GEMV_Z_ATOMIC", True)
    ds = _set(1)
    plan = plan_rows(torch.tensor([0], device=DEVICE), 1)
    x = torch.randn(1, N_IN, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).to(DEVICE)
    split = triton_ops.pick_split_k(1, ds, plan=plan)
    for bad in (torch.zeros(1, ds.zcols + 1, device=DEVICE), torch.zeros(1, ds.zcols, dtype=torch.float16, device=DEVICE),
                torch.zeros(2, ds.zcols, device=DEVICE)[:, :1]):
        assert not triton_ops.zsum_ok(bad, 1, ds)
        z = triton_ops.shrink(x, ds, plan, split, zsum=bad)
        assert z.shape == (split, 1, ds.zcols) and not bool(bad.any())  # the split z's; the buffer untouched
    monkeypatch.setattr(triton_ops, "GEMV_Z_ATOMIC", False)  # off: never used
    assert not triton_ops.zsum_ok(torch.zeros(1, ds.zcols, device=DEVICE), 1, ds)


@pytest.mark.skipif(DEVICE != "cuda", reason="beside() sums z only on a GPU")
@pytest.mark.parametrize("ids", [[0], [0, -1]])
def test_beside_sums_z_in_its_zeroed_buffer(ids: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """The modules' path: beside() zeroes d and the summed z in one launch; twice in a row, so a z
    left from the first call would show in the second."""
    ds = _set(1)
    plan = plan_rows(torch.tensor(ids, device=DEVICE), 1)
    x = torch.randn(len(ids), N_IN, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16).to(DEVICE)
    out = {}
    for on in (False, True, True):
        monkeypatch.setattr(triton_ops, "GEMV_Z_ATOMIC", on)
        _, d = beside(x, ds, plan, lambda: None, "triton")
        out.setdefault(on, []).append(d.clone())
    ref = out[False][0]
    for d in out[True]:
        assert float((d - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
