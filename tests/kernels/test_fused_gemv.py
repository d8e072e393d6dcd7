"""The fused base GEMV + delta expand (``fused_gemv``) against its torch twin (``ref_ops.fused_linear``).

Runs under TRITON_INTERPRET=1 on the CPU (conftest) and natively on a GPU. Shapes are odd on
purpose (75 x 100: not multiples of 32, of the kernel blocks, or of the group of 64), and the
payload holds every packed layout (8, 4, 3, 2, 1 bits).

Bounds, and why: the kernel and the twin add the same float32 products (exact integer weights
times the same scales, the same bf16/fp16 inputs) in another order, so with a float32 output
they agree within 1e-5 relative. Rounded to bf16/fp16 once, an element may land one unit in the
last place away (another sum order; and Triton's CPU interpreter converts float32 -> bf16 by
truncation, not to nearest): the bound is 2 units in the last place of |y|.
"""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaSet, KernelError, fused_gemv, plan_rows, ref_ops, triton_ops

from .kernel_testlib import DEVICE, packed_delta, rel

pytestmark = pytest.mark.skipif(not triton_ops.HAVE_TRITON, reason="triton is not installed")
#: slow only under the interpreter; on a GPU a no-op mark (usable as a decorator and in marks=)
slow_here = pytest.mark.slow if triton_ops.interpreting() else pytest.mark.skipif(False, reason="runs on a GPU")


def _within_ulps(yt: torch.Tensor, yr: torch.Tensor) -> bool:
    bound = 2 * torch.finfo(yr.dtype).eps * yr.float().abs() + 1e-6
    return bool(((yt.float() - yr.float()).abs() <= bound).all())


@pytest.mark.parametrize("dtype, M", [
    (torch.bfloat16, 1), (torch.float16, 4),
    pytest.param(torch.bfloat16, 2, marks=slow_here), pytest.param(torch.bfloat16, 3, marks=slow_here),
    pytest.param(torch.bfloat16, 4, marks=slow_here), pytest.param(torch.float16, 1, marks=slow_here),
    pytest.param(torch.float16, 2, marks=slow_here), pytest.param(torch.float16, 3, marks=slow_here),
])
def test_fused_gemv_matches_reference_every_layout(dtype: torch.dtype, M: int) -> None:
    m, n = 75, 100
    W, pk, _ = packed_delta(m, n, dtype=dtype)
    assert [v.bits for v, _ in pk.tiers] == [8, 4, 3, 2, 1]
    ds = DeltaSet(n, [m], DEVICE)
    ds.add([pk])
    W = W.to(DEVICE)
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(M)).to(dtype).to(DEVICE)
    ids = torch.zeros(M, dtype=torch.int64, device=DEVICE)
    if M > 2:
        ids[1] = -1  # a base-only row in the middle
    plan = plan_rows(ids, ds.n_slots)
    z = triton_ops.shrink(x, ds, plan, 1)
    yr = ref_ops.fused_linear(x, W, None, z, ds, plan)
    y32 = fused_gemv.fused_linear(x, W, None, z, ds, plan, out=torch.empty(M, m, device=DEVICE))
    d = (y32 - x.float() @ W.float().T)
    y_ref32 = x.float() @ W.float().T + ref_ops.expand(z, torch.zeros(M, m, device=DEVICE), ds, plan)
    assert rel(y32, y_ref32) < 1e-5
    assert d.abs().amax() > 1e-3  # the delta is there (not the base alone)
    yt = fused_gemv.fused_linear(x, W, None, z, ds, plan)
    assert yt.dtype == dtype and _within_ulps(yt, yr)
    if M > 2:  # the base-only row has no delta: exactly the base (in float32)
        assert torch.allclose(y32[1], (x[1:2].float() @ W.float().T)[0], rtol=1e-5, atol=1e-6)


@slow_here
def test_fused_gemv_multi_tenant_split_k_bias_and_a_second_slice() -> None:
    """Rows of two fine-tunes and one base-only row; the set's second linear (slice 1, its own
    out width), a bias, z from a split shrink; split-K 1 and 3 agree, and a second launch with
    split-K gives the same numbers (ordered sum, counters back at zero)."""
    dtype = torch.bfloat16
    n, outs = 100, [40, 75]
    ds = DeltaSet(n, outs, DEVICE)
    Ws = []
    for s in (1, 2):
        pair = [packed_delta(mo, n, seed=s * 10 + i, dtype=dtype) for i, mo in enumerate(outs)]
        Ws = [p[0].to(DEVICE) for p in pair]  # a base of the right shape (the kernel does not care whose)
        ds.add([p[1] for p in pair])
    W = Ws[1]
    bias = torch.randn(outs[1], generator=torch.Generator().manual_seed(5)).to(dtype).to(DEVICE)
    ids = torch.tensor([1, -1, 0, 1], device=DEVICE)
    x = torch.randn(4, n, generator=torch.Generator().manual_seed(3)).to(dtype).to(DEVICE)
    plan = plan_rows(ids, 2)
    z = triton_ops.shrink(x, ds, plan, 2)
    yr = ref_ops.fused_linear(x, W, bias, z, ds, plan, 1)
    ys = [fused_gemv.fused_linear(x, W, bias, z, ds, plan, 1, split_k=sk, out=torch.empty(4, outs[1], device=DEVICE))
          for sk in (1, 3, 3)]
    y_ref32 = (x.float() @ W.float().T + bias.float()
               + ref_ops.expand(z, torch.zeros(4, sum(outs), device=DEVICE), ds, plan)[:, outs[0]:])
    for y in ys:
        assert rel(y, y_ref32) < 1e-5
    assert torch.equal(ys[1], ys[2])
    assert bool((torch.cat([t.reshape(-1) for t in ds._sems.values()]) == 0).all())
    assert _within_ulps(fused_gemv.fused_linear(x, W, bias, z, ds, plan, 1), yr)
    # each tenant's row is what it gets alone
    for r in (0, 2, 3):
        p1 = plan_rows(ids[r : r + 1], 2)
        z1 = triton_ops.shrink(x[r : r + 1], ds, p1, 1)
        y1 = fused_gemv.fused_linear(x[r : r + 1], W, bias, z1, ds, p1, 1, out=torch.empty(1, outs[1], device=DEVICE))
        assert rel(y1[0], ys[0][r]) < 1e-5


def test_fused_gemv_is_off_by_default_and_refuses_what_it_cannot_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    m, n = 40, 64
    ds = DeltaSet(n, [m], DEVICE)
    ds.add([packed_delta(m, n)[1]])
    monkeypatch.delenv("DELTASTORE_FUSED_GEMV", raising=False)
    assert not fused_gemv.enabled(ds)
    monkeypatch.setenv("DELTASTORE_FUSED_GEMV", "1")
    assert fused_gemv.enabled(ds)
    ds.fused_gemv = False  # a set's own choice wins over the environment
    assert not fused_gemv.enabled(ds)
    ds.fused_gemv = None
    W = torch.zeros(m, n, dtype=torch.bfloat16, device=DEVICE)
    x5 = torch.zeros(5, n, dtype=torch.bfloat16, device=DEVICE)
    assert not fused_gemv.applies(x5, ds) or not triton_ops.usable(x5)
    plan5 = plan_rows(torch.zeros(5, dtype=torch.int64, device=DEVICE), 1)
    z5 = torch.zeros(1, 5, ds.build().zcols, device=DEVICE)
    with pytest.raises(KernelError, match="1..4 rows"):
        fused_gemv.fused_linear(x5, W, None, z5, ds, plan5)
    x1 = x5[:1]
    p1 = plan_rows(torch.zeros(1, dtype=torch.int64, device=DEVICE), 1)
    with pytest.raises(KernelError, match="do not match"):
        fused_gemv.fused_linear(x1, W[:, :32], None, z5[:, :1], ds, p1)
    with pytest.raises(KernelError, match="dtype"):
        fused_gemv.fused_linear(x1, W.half(), None, z5[:, :1], ds, p1)
    # what a DeltaLinear asks before taking the fused path: anything it cannot serve takes the two-launch path
    assert fused_gemv.applies(x1, ds, W) == triton_ops.usable(x1)
    assert not fused_gemv.applies(x1, ds, W.half()) and not fused_gemv.applies(x1, ds, W.T.contiguous().T)
    assert not fused_gemv.applies(x1[None], ds, W)


def test_fused_gemv_two_tenants_split_k_in_one_launch() -> None:
    """The quick version of the test above for the default suite: rows of two fine-tunes and a
    base-only row, split-K 2, z from a split shrink, one launch against the float32 twin."""
    dtype, m, n = torch.bfloat16, 75, 100
    ds = DeltaSet(n, [m], DEVICE)
    W = packed_delta(m, n, seed=1, dtype=dtype)[0].to(DEVICE)
    for s in (1, 2):
        ds.add([packed_delta(m, n, seed=s, dtype=dtype)[1]])
    ids = torch.tensor([1, -1, 0], device=DEVICE)
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(4)).to(dtype).to(DEVICE)
    plan = plan_rows(ids, 2)
    z = triton_ops.shrink(x, ds, plan, 2)
    y = fused_gemv.fused_linear(x, W, None, z, ds, plan, split_k=2, out=torch.empty(3, m, device=DEVICE))
    y_ref32 = x.float() @ W.float().T + ref_ops.expand(z, torch.zeros(3, m, device=DEVICE), ds, plan)
    assert rel(y, y_ref32) < 1e-5
    assert bool((torch.cat([t.reshape(-1) for t in ds._sems.values()]) == 0).all())


def test_linear_forward_shares_one_shrink_across_a_group() -> None:
    """Two linears of one set (a q/k-like group) on the same input: the second reuses the first's
    z (the cache) and both match the float32 twin; a changed input computes a new z."""
    dtype, n, outs = torch.bfloat16, 64, [40, 33]
    ds = DeltaSet(n, outs, DEVICE)
    pairs = [packed_delta(m, n, seed=7 + i, dtype=dtype) for i, m in enumerate(outs)]
    ds.add([p[1] for p in pairs])
    x = torch.randn(2, n, generator=torch.Generator().manual_seed(2)).to(dtype).to(DEVICE)
    plan = plan_rows(torch.zeros(2, dtype=torch.int64, device=DEVICE), 1)
    cache: dict = {}
    ys = [fused_gemv.linear_forward(x, p[0].to(DEVICE), None, ds, plan, i, cache) for i, p in enumerate(pairs)]
    z = cache["z"]
    d = ref_ops.expand(ref_ops.shrink(x, ds, plan), torch.zeros(2, sum(outs), device=DEVICE), ds, plan)
    for i, (y, p) in enumerate(zip(ys, pairs)):
        yr = (x.float() @ p[0].to(DEVICE).float().T + d[:, ds.col_offsets[i] : ds.col_offsets[i] + outs[i]]).to(dtype)
        assert _within_ulps(y, yr)
    x.mul_(2)  # in place: a new version, so a new z
    fused_gemv.linear_forward(x, pairs[0][0].to(DEVICE), None, ds, plan, 0, cache)
    assert cache["z"] is not z


def test_fused_gemv_serves_a_whole_group_in_one_launch() -> None:
    """slice_index=None: the set's two linears (widths 40 and 75, a bias) stored as one weight, two
    fine-tunes and a base-only row, split-K 2: y is both linears side by side, as each gives alone."""
    dtype, n, outs = torch.bfloat16, 100, [40, 75]
    ds = DeltaSet(n, outs, DEVICE)
    for s in (1, 2):
        ds.add([packed_delta(mo, n, seed=s * 10 + i, dtype=dtype)[1] for i, mo in enumerate(outs)])
    W = torch.cat([packed_delta(mo, n, seed=20 + i, dtype=dtype)[0] for i, mo in enumerate(outs)]).to(DEVICE)
    bias = torch.randn(sum(outs), generator=torch.Generator().manual_seed(6)).to(dtype).to(DEVICE)
    ids = torch.tensor([1, -1, 0], device=DEVICE)
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(8)).to(dtype).to(DEVICE)
    plan = plan_rows(ids, 2)
    z = triton_ops.shrink(x, ds, plan, 1)
    y = fused_gemv.fused_linear(x, W, bias, z, ds, plan, None, split_k=2, out=torch.empty(3, sum(outs), device=DEVICE))
    y_ref32 = (x.float() @ W.float().T + bias.float()
               + ref_ops.expand(z, torch.zeros(3, sum(outs), device=DEVICE), ds, plan))
    assert rel(y, y_ref32) < 1e-5
    assert _within_ulps(fused_gemv.fused_linear(x, W, bias, z, ds, plan, None), ref_ops.fused_linear(x, W, bias, z, ds, plan, None))
    y1 = fused_gemv.fused_linear(x, W[40:], bias[40:], z, ds, plan, 1, out=torch.empty(3, 75, device=DEVICE))
    assert rel(y1, y[:, 40:]) < 1e-6
