"""The dense path (kernels/dense.py): one dequant launch into a scratch buffer, then cuBLAS GEMMs,
for many rows of one fine-tune; against the torch reference (``ref_ops``) on odd shapes.

Runs under TRITON_INTERPRET=1 on the CPU (the dequant kernel interpreted, the GEMMs torch's) and
natively on a GPU.

Bounds, as tests/kernels/test_ops.py: the delta part of y within 1e-2 (bf16) / 3e-3 (fp16)
relative of the float32 reference (here S V^, z and U^ are each rounded to the activation dtype
before cuBLAS multiplies them in float32; the tl.dot path rounds z * scale the same way: on the
every-layout payload both land near 6e-3 in bf16); each element of y within 2 units in the last
place of |y| plus that tolerance times the row's largest delta element; base-only rows bit for
bit. The dequantized factors: within one unit in the last place of the codec's own dequantize
(times S for V^), rounded to the dtype (equal under the interpreter; a GPU may fuse a multiply-add).
"""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaContext, DeltaSet, KernelError, plan_rows, ref_ops, triton_ops
from deltastore.kernels import dense
from deltastore.kernels.deltaset import F, host_hint, known_slot
from deltastore.kernels.linear import DeltaLinear, apply_deltas

from .kernel_testlib import DEVICE, capture, every_layout_set, packed_delta, qkv_members, rel

pytestmark = pytest.mark.skipif(not triton_ops.HAVE_TRITON, reason="triton is not installed")

DELTA_TOL = {torch.bfloat16: 1e-2, torch.float16: 3e-3}
THRESHOLD = 10  # DENSE_MIN_ROWS in these tests: 17 rows above it, 3 below


@pytest.fixture(autouse=True)
def _threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dense, "DENSE_MIN_ROWS", THRESHOLD)


def _check_y(yt: torch.Tensor, yr: torch.Tensor, d_r: torch.Tensor, dtype: torch.dtype) -> None:
    bound = 2 * torch.finfo(dtype).eps * yr.float().abs() + DELTA_TOL[dtype] * d_r.float().abs().amax(dim=1, keepdim=True)
    assert bool(((yt.float() - yr.float()).abs() <= bound + 1e-6).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [3, 17])
def test_dense_matches_reference_every_layout(M: int, dtype: torch.dtype) -> None:
    W, _, _, ds = every_layout_set(dtype)
    m, n = W.shape
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(M)).to(dtype).to(DEVICE)
    ids = torch.zeros(M, dtype=torch.int64)
    ids[1] = -1  # a base-only row
    plan = plan_rows(ids.to(DEVICE), 1)
    assert dense.use_dense(ds, plan) == (M >= THRESHOLD) and dense.use_dense(ds, plan, "dense")
    assert not dense.use_dense(ds, plan, "dot")
    y0 = (x.float() @ W.to(DEVICE).float().T).to(dtype)
    zr = ref_ops.shrink(x, ds, plan)
    yr = ref_ops.expand(zr, y0.clone(), ds, plan)
    d_r = ref_ops.expand(zr, torch.zeros_like(y0), ds, plan)
    d_t = dense.apply(x, torch.zeros_like(y0), ds, plan)
    assert rel(d_t.float(), d_r.float()) < DELTA_TOL[dtype]
    yt = dense.apply(x, y0.clone(), ds, plan)
    _check_y(yt, yr, d_r, dtype)
    assert torch.equal(yt[1], y0[1])  # the base-only row, bit for bit
    if M >= THRESHOLD:  # other dequant blocks (inside one group of 64: a scale a row), the other unpack: the same numbers
        for kw in (dict(block_c=64), dict(block_c=32, block_r=8, gather=True), dict(span=3, stages=2), dict(span=4, stages=3, block_c=64),
                   dict(span=2, stages=3, block_c=32, block_r=8, gather=True)):
            assert torch.equal(dense.apply(x, y0.clone(), ds, plan, **kw), yt), kw
    # apply_deltas takes the dense path above the threshold (and is told so below it)
    ya = apply_deltas(x, y0.clone(), ds, plan, "triton", path=None if M >= THRESHOLD else "dense")
    assert torch.equal(ya, yt)
    with pytest.raises(KernelError):
        triton_ops.shrink(x, ds, plan, 1, path="dense")


def _three_slices(dtype: torch.dtype) -> tuple[DeltaSet, list, list[int], int]:
    """q/k/v-style: three linears of odd widths share x (groups of 32); tenant 0 every layout
    with no delta for the second linear, tenant 1 8/3/2 bits."""
    n, ms = 96, [64, 33, 40]
    a = [packed_delta(m, n, seed=50 + i, dtype=dtype, group_size=32)[1] for i, m in enumerate(ms)]
    a[1] = None
    b = [packed_delta(m, n, seed=60 + i, dtype=dtype, group_size=32, schedule=[[8, 1], [3, 2], [2, None]])[1] for i, m in enumerate(ms)]
    ds = DeltaSet(n, ms, DEVICE)
    assert ds.add(a) == 0 and ds.add(b) == 1
    return ds, [a, b], ms, n


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dense_dequant_writes_each_slice_at_its_place_and_zero_pads(dtype: torch.dtype) -> None:
    ds, tenants, ms, n = _three_slices(dtype)
    for slot in (0, 1):
        lay = dense.layout(ds, slot)
        dense.scratch(ds.device, dtype, lay.numel).fill_(float("nan"))  # whatever was there: pads must be written
        f = dense.dequantize(ds, slot, dtype)
        assert f.v.shape == (sum(lay.padded), n) and all(p % dense.PAD == 0 for p in lay.padded)
        for b, recs in enumerate(ds.records[slot]):
            r, p, v0 = lay.ranks[b], lay.padded[b], lay.v_rows[b]
            if not recs:
                assert r == p == 0 and f.u[b] is None
                continue
            vs = []
            us = []
            for rec in recs:
                sv = ds.svals[rec[F["s_off"]] : rec[F["s_off"]] + rec[F["count"]]]
                vs.append(ref_ops.tier_factor(ds, rec, "v", n) * sv[:, None])
                us.append(ref_ops.tier_factor(ds, rec, "u", ms[b]))
            for got, want in ((f.v[v0 : v0 + r], torch.cat(vs)), (f.u[b][:r], torch.cat(us))):
                want = want.to(dtype).float()
                ulp = torch.finfo(dtype).eps * want.abs().clamp_min(torch.finfo(dtype).tiny)
                assert bool(((got.float() - want).abs() <= ulp).all())
            assert bool((f.v[v0 + r : v0 + p] == 0).all()) and bool((f.u[b][r:] == 0).all())
    # both tenants through the set, rows of the other tenant masked: each alone matches the reference
    M = 13
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(3)).to(dtype).to(DEVICE)
    y0 = torch.randn(M, sum(ms), generator=torch.Generator().manual_seed(4)).to(dtype).to(DEVICE)
    for slot in (0, 1):
        ids = torch.full((M,), slot, dtype=torch.int64, device=DEVICE)
        ids[[2, 7]] = -1
        plan = plan_rows(ids, 2)
        d_r = ref_ops.expand(ref_ops.shrink(x, ds, plan), torch.zeros_like(y0), ds, plan)
        d_t = dense.apply(x, torch.zeros_like(y0), ds, plan, slot)
        assert rel(d_t.float(), d_r.float()) < DELTA_TOL[dtype], slot
        yt = dense.apply(x, y0.clone(), ds, plan, slot)
        _check_y(yt, ref_ops.expand(ref_ops.shrink(x, ds, plan), y0.clone(), ds, plan), d_r, dtype)
        assert torch.equal(yt[ids == -1], y0[ids == -1])
        if slot == 0:  # no delta for the second linear: its columns untouched
            assert torch.equal(yt[:, 64:97], y0[:, 64:97])
    # a float32 y (a linear with lowrank deltas adds into its float32 base output)
    d32 = dense.apply(x, torch.zeros(M, sum(ms), device=DEVICE), ds, plan, 1)
    assert d32.dtype == torch.float32 and rel(d32, d_r.float()) < DELTA_TOL[dtype]


def test_dense_serves_the_one_slot_the_host_knows() -> None:
    dtype = torch.bfloat16
    ds, _, ms, n = _three_slices(dtype)
    M = 12
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(5)).to(dtype).to(DEVICE)
    y0 = torch.randn(M, sum(ms), generator=torch.Generator().manual_seed(6)).to(dtype).to(DEVICE)
    host_ids = torch.ones(M, dtype=torch.int64)
    host_ids[4] = -1
    assert host_hint(host_ids) == (1, True) and host_hint(torch.tensor([0, 1, -1])) == (None, True)
    assert host_hint(torch.tensor([0, 0])) == (0, False) and host_hint(torch.tensor([-1])) == (None, True)
    ctx = DeltaContext(2)
    ctx.set(host_ids)
    plan = ctx.plan(M, x.device)
    assert plan.only_slot == 1 and plan.base_rows and known_slot(ds, plan) == 1 and dense.use_dense(ds, plan)
    few = DeltaContext(2)
    few.set([-1] * (M - 2) + [1, 1])  # 2 rows of the fine-tune beside 10 base rows: counted as 2, under the threshold
    fp = few.plan(M, x.device)
    assert (fp.only_slot, fp.served) == (1, 2) and known_slot(ds, fp) == 1 and not dense.use_dense(ds, fp)
    yr = ref_ops.expand(ref_ops.shrink(x, ds, plan), y0.clone(), ds, plan)
    d_r = ref_ops.expand(ref_ops.shrink(x, ds, plan), torch.zeros_like(y0), ds, plan)
    yt = apply_deltas(x, y0.clone(), ds, plan, "triton")
    _check_y(yt, yr, d_r, dtype)
    assert torch.equal(yt[4], y0[4])
    # ids the host did not read (a device plan, a graph's static buffer): today's paths, dense refused
    blind = plan_rows(host_ids.to(DEVICE), 2)
    assert blind.only_slot is None and not dense.use_dense(ds, blind)
    with pytest.raises(KernelError):
        dense.apply(x, y0.clone(), ds, blind)
    with ctx.static_ids(host_ids.to(DEVICE)):
        assert ctx.plan(M, x.device).only_slot is None
    # every row on slot 0 (host ids): no mask is needed, none is made
    ctx.set([0] * M)
    p0 = ctx.plan(M, x.device)
    assert (p0.only_slot, p0.base_rows) == (0, False)
    dense.apply(x, y0.clone(), ds, p0)
    assert not p0.masks
    # a default fine-tune, no ids
    assert DeltaContext(2, default_id=1).plan(M, x.device).only_slot == 1
    ds.drop(1)  # a dropped slot: the base alone
    assert torch.equal(dense.apply(x, y0.clone(), ds, plan), y0)


def test_a_delta_group_above_the_threshold_gives_each_member_what_the_reference_gives() -> None:
    """DeltaGroup members (one base GEMM, the group's delta added in place: here by the dense
    path) against the reference delta of each member; the scratch is one buffer for both groups."""
    dtype = torch.bfloat16
    n, ms = 96, [64, 33, 40]
    ctx = DeltaContext(1, default_id=0)
    group, members, _ = qkv_members(n, ms, ctx, dtype=dtype)
    W2, pk2, _ = packed_delta(50, n, seed=9, dtype=dtype, group_size=32)
    lone = DeltaLinear(W2.to(DEVICE), None, ctx, "triton")
    lone.add_delta(pk2)
    M = 17
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(M)).to(dtype).to(DEVICE)
    plan = plan_rows(torch.zeros(M, dtype=torch.int64, device=DEVICE), 1)
    d_r = ref_ops.expand(ref_ops.shrink(x, group.deltas, plan), torch.zeros(M, sum(ms), device=DEVICE), group.deltas, plan)
    before = dense.scratch_bytes()
    for i, mod in enumerate(members):
        c = group.deltas.col_offsets[i]
        base = torch.nn.functional.linear(x, mod.weight).float()
        yr = base + d_r[:, c : c + ms[i]]
        _check_y(mod(x), yr, d_r[:, c : c + ms[i]], dtype)
    ptr = dense.scratch(x.device, dtype, 1).data_ptr()
    dl = ref_ops.expand(ref_ops.shrink(x, lone.deltas, plan), torch.zeros(M, 50, device=DEVICE), lone.deltas, plan)
    _check_y(lone(x), torch.nn.functional.linear(x, lone.weight).float() + dl, dl, dtype)
    grown = dense.layout(lone.deltas, 0).numel > dense.layout(group.deltas, 0).numel
    assert (dense.scratch(x.device, dtype, 1).data_ptr() == ptr) != grown  # one buffer, replaced only to grow
    assert dense.scratch_bytes() >= before


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU (the device run executes this)")
def test_the_dense_path_replays_in_a_cuda_graph() -> None:
    """Captured once (ids from a static buffer: the mask made inside the capture), replayed with
    other activations and other ids copied in: each replay gives what the eager path gives."""
    dtype = torch.bfloat16
    ds, _, ms, n = _three_slices(dtype)
    ds.drop(0)  # one fine-tune left (slot 1) in a set of two: the plan must say which
    M = 16
    ctx = DeltaContext(2)
    ids_buf = torch.ones(M, dtype=torch.int64, device=DEVICE)
    x = torch.randn(M, n, device=DEVICE).to(dtype)
    y = torch.empty(M, sum(ms), dtype=dtype, device=DEVICE)
    y0 = torch.randn(M, sum(ms), device=DEVICE).to(dtype)

    def step() -> None:
        with ctx.static_ids(ids_buf):
            plan = ctx.plan(M, x.device)
            plan.only_slot = 1  # (what a caller that knows its batch is one fine-tune's may say)
            y.copy_(y0)
            dense.apply(x, y, ds, plan)

    g, _ = capture(step)
    for seed in range(3):
        x.copy_(torch.randn(M, n, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE))
        ids = torch.ones(M, dtype=torch.int64)
        ids[seed::4] = -1
        ids_buf.copy_(ids.to(DEVICE))
        g.replay()
        torch.cuda.synchronize()
        plan = plan_rows(ids.to(DEVICE), 2)
        want = dense.apply(x, y0.clone(), ds, plan, 1)
        # (cuBLAS may pick another algorithm inside a capture: within 2 ulp, not bit for bit)
        assert bool(((y.float() - want.float()).abs() <= 2 * torch.finfo(dtype).eps * want.float().abs() + 1e-6).all()), seed
        assert torch.equal(y[ids.to(DEVICE) == -1], y0[ids.to(DEVICE) == -1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_aligned_stores_write_the_same_factors(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where every width is a multiple of 8 the dequant stores 16 bytes at a time (the ALIGNED hint);
    it writes what the unhinted kernel writes, every element; an odd width keeps the unhinted kernel."""
    n, ms = 96, [64, 40]
    ds = DeltaSet(n, ms, DEVICE)
    ds.add([packed_delta(m, n, seed=70 + i, dtype=dtype, group_size=32, schedule=[[8, 1], [3, 2], [2, None]])[1] for i, m in enumerate(ms)])
    assert dense.aligned(ds) and not dense.aligned(_three_slices(dtype)[0])
    lay = dense.layout(ds, 0)
    buf = dense.scratch(ds.device, dtype, lay.numel)
    buf.fill_(float("nan"))
    monkeypatch.setattr(dense, "ALIGN_STORES", False)
    dense.dequantize(ds, 0, dtype)
    want = dense.scratch(ds.device, dtype, lay.numel)[: lay.numel].clone()
    monkeypatch.setattr(dense, "ALIGN_STORES", True)
    assert not bool(want.isnan().any())
    for kw in ({}, dict(span=3, stages=3), dict(span=8, stages=2, block_c=32)):  # and a program walking a span of blocks, pipelined
        buf.fill_(float("nan"))
        dense.dequantize(ds, 0, dtype, **kw)
        assert torch.equal(dense.scratch(ds.device, dtype, lay.numel)[: lay.numel], want), kw
