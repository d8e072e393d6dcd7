"""Each Triton kernel against its torch twin (``ref_ops``), and the twins against the codec's decode.

Runs under TRITON_INTERPRET=1 on the CPU (tests/kernels/conftest.py) and natively on a GPU.
Shapes are odd on purpose: not multiples of 32 (a packed chunk), the kernel blocks, or the group.

Bounds, and why: z = (x V^) S is float32 arithmetic on the same bf16/fp16 inputs and exact
integer weights in both paths: relative 1e-4. The expand feeds tl.dot z * scale rounded to the
activation dtype (2^-9 relative for bf16, 2^-11 for fp16), so the delta part of y agrees with
the float32 reference within 1e-2 (bf16) / 3e-3 (fp16) relative; each element of y within 2 units
in the last place of |y| plus that tolerance times the row's largest delta element.
"""

from __future__ import annotations

import pytest
import torch

from deltastore.codec import get_codec
from deltastore.kernels import DeltaSet, plan_rows, ref_ops, triton_ops
from deltastore.kernels.deltaset import F, plan_blocks

from .kernel_testlib import DEVICE, encode_delta, every_layout_set, packed_delta, qkv_members, rel

pytestmark = pytest.mark.skipif(not triton_ops.HAVE_TRITON, reason="triton is not installed")

DELTA_TOL = {torch.bfloat16: 1e-2, torch.float16: 3e-3}
# tests of 6-8 launches take tens of seconds under the CPU interpreter (seconds each launch); on a GPU they are fast
interp_slow = pytest.mark.slow if triton_ops.interpreting() else (lambda f: f)


def _valid_z(dset: DeltaSet, slot: int, z: torch.Tensor, pos: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for recs in dset.records[slot]:
        for rec in recs:
            out.append(z.sum(0)[pos][:, rec[F["zcol"]] : rec[F["zcol"]] + rec[F["count"]]])
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 3, 17])
def test_shrink_expand_match_reference_every_layout(M: int, dtype: torch.dtype) -> None:
    W, pk, enc, ds = every_layout_set(dtype)
    m, n = W.shape
    g = torch.Generator().manual_seed(M)
    x = torch.randn(M, n, generator=g).to(dtype).to(DEVICE)
    ids = torch.zeros(M, dtype=torch.int64)
    if M > 2:
        ids[1] = -1  # a base-only row in the middle
    plan = plan_rows(ids.to(DEVICE), ds.n_slots)
    y0 = (x.float() @ W.to(DEVICE).float().T).to(dtype)
    zr = ref_ops.shrink(x, ds, plan)
    yr = ref_ops.expand(zr, y0.clone(), ds, plan)
    d_r = ref_ops.expand(zr, torch.zeros_like(y0), ds, plan)
    for split in ((1, 2) if M == 1 else (1,)):  # (each launch costs seconds under the interpreter)
        zt = triton_ops.shrink(x, ds, plan, split)
        pos = torch.arange(int(plan.counts[0]), device=zt.device)
        for a, b in zip(_valid_z(ds, 0, zt, pos), _valid_z(ds, 0, zr, pos)):
            assert rel(a, b) < 1e-4
        if M == 1:  # the delta part alone (y starts at 0, so rounding y costs only 2^-9 relative)
            d_t = triton_ops.expand(zt, torch.zeros_like(y0), ds, plan)
            assert rel(d_t.float(), d_r.float()) < DELTA_TOL[dtype]
    yt = triton_ops.expand(zt, y0.clone(), ds, plan)
    bound = 2 * torch.finfo(dtype).eps * yr.float().abs() + DELTA_TOL[dtype] * d_r.float().abs().amax(dim=1, keepdim=True)
    assert bool(((yt.float() - yr.float()).abs() <= bound + 1e-6).all())
    # base-only rows are untouched, bit for bit
    base_rows = (ids == -1).nonzero().flatten().to(DEVICE)
    assert torch.equal(yt[base_rows], y0[base_rows])
    # the reference itself is the codec's delta applied densely
    codec = get_codec("delta-come")
    D = codec.decode_delta(enc).to(DEVICE)
    dense = (y0.float() + (x.float() @ D.T) * (ids.to(DEVICE) >= 0).float()[:, None])
    assert rel(yr.float(), dense) < 1e-2 and bool(((yr.float() - dense).abs() <= 2 * torch.finfo(dtype).eps * dense.abs() + 1e-5).all())


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_dequant_rows_is_exact(bits: int) -> None:
    from deltastore.codec import quant

    g = torch.Generator().manual_seed(bits)
    x = torch.randn(19, 203, generator=g)  # 203 values: 7 chunks of 32, the last short; 2 groups of 128
    q, s, z = quant.quantize_rtn(x, bits, 128)
    packed = quant.pack(q, bits)
    args = (packed.to(DEVICE), s.to(DEVICE), z.to(DEVICE), bits, 203, 128)
    assert torch.equal(triton_ops.dequant_rows(*args).cpu(), ref_ops.dequant_rows(*args).cpu())


@interp_slow
def test_mixed_batch_rows_match_each_tenant_alone() -> None:
    dtype = torch.bfloat16
    m, n = 70, 90
    tenants = [packed_delta(m, n, seed=s, dtype=dtype, group_size=32, schedule=[[8, 1], [3, 4], [2, None]]) for s in (1, 2, 3)]
    W = tenants[0][0].to(DEVICE)
    mixed = DeltaSet(n, [m], DEVICE)
    for _, pk, _ in tenants:
        mixed.add([pk])
    ids = torch.tensor([2, 0, -1, 1, 0, 2, 2, 1, -1, 0, 1], device=DEVICE)
    x = torch.randn(len(ids), n, generator=torch.Generator().manual_seed(5)).to(dtype).to(DEVICE)
    y0 = (x.float() @ W.float().T).to(dtype)
    for impl in (triton_ops,):  # (the torch path groups rows the same way; the kernel is what is tested)
        y = impl.expand(impl.shrink(x, mixed, plan_rows(ids, 3)), y0.clone(), mixed, plan_rows(ids, 3))
        for t, (_, pk, _) in enumerate(tenants):
            alone = DeltaSet(n, [m], DEVICE)
            alone.add([pk])
            rows = (ids == t).nonzero().flatten()
            one = torch.zeros(len(rows), dtype=torch.int64, device=DEVICE)
            ya = impl.expand(impl.shrink(x[rows], alone, plan_rows(one, 1)), y0[rows].clone(), alone, plan_rows(one, 1))
            assert torch.equal(y[rows], ya), (impl.__name__, t)
        assert torch.equal(y[ids == -1], y0[ids == -1])


@interp_slow
def test_fused_slices_with_a_missing_delta_and_a_dropped_slot() -> None:
    """q/k/v-style: three linears of different widths share x; tenant 1 has no delta for k."""
    dtype = torch.float16
    n, ms = 96, [64, 33, 33]
    a = [packed_delta(mm, n, seed=10 + i, dtype=dtype, group_size=32, schedule=[[8, 2], [2, None]])[1] for i, mm in enumerate(ms)]
    b = [packed_delta(mm, n, seed=20 + i, dtype=dtype, group_size=32, schedule=[[3, 3], [2, None]])[1] for i, mm in enumerate(ms)]
    b[1] = None
    ds = DeltaSet(n, ms, DEVICE)
    assert ds.add(a) == 0 and ds.add(b) == 1
    ids = torch.tensor([1, 0, 1, -1, 0], device=DEVICE)
    x = torch.randn(5, n, generator=torch.Generator().manual_seed(0)).to(dtype).to(DEVICE)
    y0 = torch.randn(5, sum(ms), generator=torch.Generator().manual_seed(1)).to(dtype).to(DEVICE)
    plan = plan_rows(ids, 2)
    yt = triton_ops.expand(triton_ops.shrink(x, ds, plan, 1), y0.clone(), ds, plan)
    dr = ref_ops.expand(ref_ops.shrink(x, ds, plan), torch.zeros_like(y0), ds, plan)
    dt = triton_ops.expand(triton_ops.shrink(x, ds, plan, 1), torch.zeros_like(y0), ds, plan)
    assert rel(dt.float(), dr.float()) < DELTA_TOL[dtype]
    k_cols = slice(64, 97)
    assert torch.equal(yt[ids == 1][:, k_cols], y0[ids == 1][:, k_cols])  # no k delta for tenant 1
    ds.drop(0)  # rows that name a dropped slot get the base alone
    plan = plan_rows(ids, 2)
    yd = triton_ops.expand(triton_ops.shrink(x, ds, plan, 1), y0.clone(), ds, plan)
    assert torch.equal(yd[ids == 0], y0[ids == 0])
    assert torch.equal(yd[ids == 1], yt[ids == 1])


def test_decode_matches_the_codec() -> None:
    from deltastore.kernels import decode_delta, reconstruct

    W, pk, enc = packed_delta(75, 100, dtype=torch.bfloat16)
    codec = get_codec("delta-come")
    want = codec.decode_delta(enc)
    got = decode_delta(pk.to(DEVICE), "triton").cpu()
    assert rel(got, want) < 1e-6
    assert torch.equal(reconstruct(pk, W.to(DEVICE), "torch").cpu(), codec.reconstruct(enc, W))


def test_bad_payloads_are_refused_when_loaded() -> None:
    from deltastore.codec import CorruptPayloadError, from_bytes, to_bytes
    from deltastore.kernels import KernelError, NotServableError, from_encoded

    W, enc = encode_delta(40, 70, group_size=32, schedule=[[8, 1], [2, None]])
    with pytest.raises(NotServableError, match="base weight is 40x71"):
        from_encoded(enc, (40, 71))
    other = get_codec("bitdelta").encode((W.float() + 0.01).to(W.dtype), W)
    with pytest.raises(NotServableError, match="no lazy kernel.*lazy=False"):
        from_encoded(other, (40, 70))
    bad = from_bytes(to_bytes(enc))
    bad.arrays["v1.q"] = bad.arrays["v1.q"][:, :-1]
    with pytest.raises(CorruptPayloadError, match="v1.q"):
        from_encoded(bad, (40, 70))
    bad = from_bytes(to_bytes(enc))
    bad.arrays["u0.z"] = torch.full_like(bad.arrays["u0.z"], 300.0)
    with pytest.raises(CorruptPayloadError, match="zero points"):
        from_encoded(bad, (40, 70))
    bad = from_bytes(to_bytes(enc))
    bad.arrays["S"] = bad.arrays["S"].clone()
    bad.arrays["S"][0] = float("nan")
    with pytest.raises(CorruptPayloadError, match="finite"):
        from_encoded(bad, (40, 70))
    bad = from_bytes(to_bytes(enc))
    del bad.arrays["u1.s"]
    with pytest.raises(CorruptPayloadError, match="u1.s"):
        from_encoded(bad, (40, 70))
    bad = from_bytes(to_bytes(enc))
    bad.params = {**bad.params, "group_size": 48}
    with pytest.raises((NotServableError, CorruptPayloadError)):
        from_encoded(bad, (40, 70))
    ds = DeltaSet(70, [41], DEVICE)
    with pytest.raises(KernelError, match="40x70; the linear is 41x70"):
        ds.add([from_encoded(enc, (40, 70))])
    ok = DeltaSet(70, [40], DEVICE)
    ok.add([from_encoded(enc, (40, 70))])
    from deltastore.kernels.deltaset import check_ids

    with pytest.raises(KernelError, match="delta ids"):
        check_ids(torch.tensor([0, 1]), ok.n_slots)


def test_reshape_unpack_matches_gather() -> None:
    """The two ways the kernels split packed words (see triton_ops._unpack) give the same numbers."""
    m, n = 75, 100
    W, pk, _ = packed_delta(m, n, dtype=torch.float16)
    ds = DeltaSet(n, [m], DEVICE)
    ds.add([pk])
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(4)).to(torch.float16).to(DEVICE)
    plan = plan_rows(torch.zeros(3, dtype=torch.int64, device=DEVICE), 1)
    y0 = torch.zeros(3, m, dtype=torch.float16, device=DEVICE)
    out = [triton_ops.expand(triton_ops.shrink(x, ds, plan, 1, gather=g), y0.clone(), ds, plan, gather=g) for g in (True, False)]
    assert torch.equal(out[0], out[1])


def test_delta_linear_refuses_an_input_on_another_device_and_follows_its_module() -> None:
    from deltastore.kernels import DeltaContext, DeltaLinear, KernelError

    W, pk, _ = packed_delta(40, 64, group_size=32, schedule=[[8, 1], [2, None]])
    lin = DeltaLinear(W, None, DeltaContext(1, default_id=0), "torch")
    lin.add_delta(pk)
    with pytest.raises(KernelError, match="input on meta"):
        lin(torch.zeros(2, 64, device="meta", dtype=W.dtype))
    x = torch.randn(2, 64).to(W.dtype)
    want = (x.float() @ (W.float() + pk.dense()).T)
    got = lin.to(torch.float32)(x.float())  # moved/cast by nn.Module: the deltas follow
    assert rel(got, want) < 1e-5


def test_a_delta_set_holds_one_copy_of_each_delta() -> None:
    """Memory: after a build the slots' arrays are views of the flat buffers (one copy on the device)."""
    pks = [packed_delta(40, 64, seed=s, group_size=32, schedule=[[8, 1], [2, None]])[1] for s in (1, 2)]
    ds = DeltaSet(64, [40], DEVICE)
    for pk in pks:
        ds.add([pk])
    ds.build()
    assert ds.nbytes == sum(pk.nbytes for pk in pks)
    held = ds.slot(1)[0]
    assert held.tiers[0][1].q.untyped_storage().data_ptr() == ds.words.untyped_storage().data_ptr()
    assert torch.equal(held.dense().cpu(), pks[1].dense())


def test_gpu_materialization_matches_the_codec_and_declines_what_it_cannot_decode() -> None:
    """reconstruct_encoded (the state_dict/checkout GPU path) == the codec's reconstruct within
    float32 GEMM rounding: every element within one bf16 unit in the last place, nearly all equal."""
    from deltastore.kernels import reconstruct_encoded

    W, enc = encode_delta(75, 100, dtype=torch.bfloat16)
    want = get_codec("delta-come").reconstruct(enc, W)
    got = reconstruct_encoded(enc, W.to(DEVICE), "triton" if triton_ops.usable(W.to(DEVICE)) else "torch").cpu()
    assert got.dtype == want.dtype == torch.bfloat16 and got.shape == want.shape
    ulp = torch.finfo(torch.bfloat16).eps * want.float().abs().clamp_min(2.0**-126)
    assert bool(((got.float() - want.float()).abs() <= ulp).all())
    assert float((got == want).float().mean()) > 0.99
    other = get_codec("bitdelta").encode((W.float() + 0.01).to(W.dtype), W)
    assert reconstruct_encoded(other, W) is None  # no kernel decode: the caller falls back to the codec


@interp_slow
def test_gemv_and_dot_paths_agree_and_the_expand_handshake_resets() -> None:
    """The GEMV kernels (few rows per fine-tune) against the tl.dot ones and the reference, run
    twice on the same set (the expand's counters must be back at zero after each launch), for
    2 and 4 rows per fine-tune over 2 fine-tunes of every layout."""
    dtype = torch.bfloat16
    m, n = 75, 100
    pks = [packed_delta(m, n, seed=s, dtype=dtype)[1] for s in (1, 2)]
    ds = DeltaSet(n, [m], DEVICE)
    for pk in pks:
        ds.add([pk])
    ids = torch.tensor([1, 0, 0, 1, -1, 1, 0, 1], device=DEVICE)
    x = torch.randn(len(ids), n, generator=torch.Generator().manual_seed(9)).to(dtype).to(DEVICE)
    plan = plan_rows(ids, 2)
    zr = ref_ops.shrink(x, ds, plan)
    dr = ref_ops.expand(zr, torch.zeros(len(ids), m, dtype=dtype, device=DEVICE), ds, plan)
    outs = []
    for path in ("gemv", "gemv", "dot"):
        sk = triton_ops.pick_split_k(len(ids), ds, path)
        z = triton_ops.shrink(x, ds, plan, sk, path=path)
        outs.append(triton_ops.expand(z, torch.zeros_like(dr), ds, plan, path=path, chunk=32))
        assert rel(outs[-1].float(), dr.float()) < DELTA_TOL[dtype], path
    assert torch.equal(outs[0], outs[1])  # same launch twice: same numbers (ordered reduction, counters reset)
    assert bool((torch.cat([t.reshape(-1) for t in ds._sems.values()]) == 0).all())


@interp_slow
@pytest.mark.parametrize("M", [3, 17])  # the GEMV kernels, then the tl.dot ones (float32 y in both)
def test_a_delta_group_gives_each_member_what_it_gives_alone(M: int) -> None:
    """q/k/v-style members of one DeltaGroup (one shrink + one expand for all three) against
    three lone DeltaLinears, with the Triton kernels; the second and third members reuse the
    first's launch, and a changed input is recomputed, never served from the kept slices."""
    from deltastore.kernels import DeltaContext, DeltaLinear

    dtype = torch.bfloat16
    n, ms = 96, [64, 33, 40]
    ctx = DeltaContext(1, default_id=0)
    group, members, made = qkv_members(n, ms, ctx, dtype=dtype)
    alone = []
    for W, pk, _ in made:
        lin = DeltaLinear(W.to(DEVICE), None, ctx, "triton")
        lin.add_delta(pk)
        alone.append(lin)
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(M)).to(dtype).to(DEVICE)
    for i, (a, b) in enumerate(zip(members, alone)):
        ya, yb = a(x), b(x)
        assert set(group._kept) == set(range(i + 1, 3))  # the others' slices, kept from the first member's launch
        bound = 2 * torch.finfo(dtype).eps * yb.float().abs() + DELTA_TOL[dtype] * (yb.float() - torch.nn.functional.linear(x, b.weight).float()).abs().amax()
        assert bool(((ya.float() - yb.float()).abs() <= bound + 1e-6).all())
    x.mul_(2)  # in place: the kept slices are stale now
    assert rel(members[1](x).float(), alone[1](x).float()) < DELTA_TOL[dtype]


@interp_slow
def test_gemv_blocks_of_two_rows_match_the_reference() -> None:
    """Two rows per fine-tune: GEMV blocks of 2 rows (each row's activations and z picked at compile
    time, z read a step ahead), the shrink split in two, expand items of 2 components summed four
    at a time by the last program of each group."""
    dtype = torch.bfloat16
    m, n = 70, 90
    tenants = [packed_delta(m, n, seed=s, dtype=dtype, group_size=32, schedule=[[8, 1], [3, 4], [2, None]]) for s in (4, 5)]
    ds = DeltaSet(n, [m], DEVICE)
    for _, pk, _ in tenants:
        ds.add([pk])
    ids = torch.tensor([1, 0, 0, 1], device=DEVICE)
    plan = plan_rows(ids, 2)
    assert triton_ops.use_gemv(4, ds) and triton_ops._gemv_block_m(4, ds) == 2
    assert int(ds.items(2)[1].max()) > 4  # more than one batch of four partials
    x = torch.randn(4, n, generator=torch.Generator().manual_seed(6)).to(dtype).to(DEVICE)
    y0 = torch.zeros(4, m, dtype=dtype, device=DEVICE)
    zt = triton_ops.shrink(x, ds, plan, 2)
    zr = ref_ops.shrink(x, ds, plan)
    assert rel(zt.sum(0), zr.sum(0)) < 1e-4
    d_t = triton_ops.expand(zt, y0.clone(), ds, plan, chunk=2)
    d_r = ref_ops.expand(zr, y0.clone(), ds, plan)
    assert rel(d_t.float(), d_r.float()) < DELTA_TOL[dtype]


@pytest.mark.parametrize("block_m", [1, 2, 4])
def test_row_blocks_cover_each_slots_rows_once_in_a_fixed_size_table(block_m: int) -> None:
    """plan_blocks: every row a slot serves lies in exactly one block of that slot, blocks hold at
    most block_m rows, the table's size depends only on (rows, slots, block_m), spare rows are (-1, 0, 0)."""
    g = torch.Generator().manual_seed(block_m)
    for n_slots, M in ((1, 1), (1, 7), (3, 11), (8, 32), (5, 3)):
        ids = torch.randint(-1, n_slots, (M,), generator=g)
        plan = plan_rows(ids, n_slots)
        t = plan_blocks(plan, block_m)
        assert t.shape == (max(1, min(M, -(-M // block_m) + n_slots - 1)), 3) and t.dtype == torch.int32
        assert plan_blocks(plan, block_m) is t  # cached on the plan
        seen = []
        for slot, pos0, rows in t.tolist():
            if slot < 0:
                assert (pos0, rows) == (0, 0)
                continue
            assert 1 <= rows <= block_m
            st, cnt = int(plan.starts[slot]), int(plan.counts[slot])
            assert st <= pos0 and pos0 + rows <= st + cnt
            seen += list(range(pos0, pos0 + rows))
        assert sorted(seen) == list(range(int((ids >= 0).sum())))
