"""The one-row shrink by table lookup (kernels/lut.py): what a one-row decode step takes on the GEMV path
when every tier is 2-bit as stored or as planes. It must give the reference's z within a stated bound for
each tier layout it takes (2-bit; 8- and 3-bit tiers as 2-bit planes), each group size (32, 64, 128), inputs
that are not a multiple of the group, bf16 and fp16 activations; leave a base-only row's z alone; be the
path a one-row ``apply_deltas`` takes when switched on (off by default: slower through the modules on the
H200), with the same numbers as the GEMV shrink's path; and step aside for
what it does not serve (4- or 1-bit tiers, several rows, no summed z, a fused join, mixed group sizes, switched off).

Bound: each table entry is (e & 3) x0 + (e >> 2) x1 rounded once to float32 and summed in float32 (as the
GEMV shrink sums its products), so z is held to rel < 1e-5 of the float64 reference (observed ~1e-7)."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaSet, KernelError, join, lut, plan_rows, ref_ops, triton_ops
from deltastore.kernels.linear import apply_deltas

from .kernel_testlib import DEVICE, packed_delta, rel

pytestmark = pytest.mark.skipif(not triton_ops.HAVE_TRITON, reason="triton is not installed")

BOUND = 1e-5


@pytest.fixture(autouse=True)
def _lut_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup is off by default (slower through the modules on the H200: kernels/lut.py); these tests
    hold what a user who switches it on (DELTASTORE_LUT_SHRINK=1) gets."""
    monkeypatch.setattr(lut, "ENABLED", True)


def _set(n: int, outs: list[int], schedule, gs: int, *, planes: bool = True, seed: int = 3) -> DeltaSet:  # noqa: ANN001
    ds = DeltaSet(n, outs, DEVICE)
    ds.planes = planes  # (on a GPU the one-row path asks for them itself; the CPU keeps none unless told)
    ds.add([packed_delta(m, n, seed=seed + i, schedule=schedule, group_size=gs)[1] for i, m in enumerate(outs)])
    return ds.build()


def _x(n: int, dtype: torch.dtype = torch.bfloat16, rows: int = 1) -> torch.Tensor:
    return torch.randn(rows, n, generator=torch.Generator().manual_seed(7)).to(dtype).to(DEVICE)


@pytest.mark.parametrize("schedule, gs, n, outs", [
    ([[2, None]], 128, 300, [150, 70]),  # 2-bit only; 300 inputs: the last group short, a word past the end
    ([[8, 2], [3, 5], [2, None]], 64, 256, [96]),  # the codec's tiers: 8 and 3 bits as 2-bit planes
    ([[3, 3], [2, None]], 32, 130, [64, 33]),  # groups of 32 (2 words), odd outputs
    ([[8, 1], [2, None]], 128, 4100, [40]),  # more groups than splits (4100 / 128 > lut.MAX_SPLIT)
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lut_shrink_matches_the_reference(schedule, gs: int, n: int, outs: list[int], dtype: torch.dtype) -> None:  # noqa: ANN001
    ds = _set(n, outs, schedule, gs)
    plan = plan_rows(torch.tensor([0], device=DEVICE), 1)
    x = _x(n, dtype)
    zsum = torch.zeros(1, ds.zcols, device=DEVICE)
    assert lut.serves(x, ds, plan, zsum)
    z = lut.shrink(x, ds, plan, zsum)
    want = ref_ops.shrink(x, ds, plan)
    assert z.shape == want.shape
    assert rel(z, want) < BOUND


def test_a_base_only_row_leaves_z_alone() -> None:
    ds = _set(256, [64], [[2, None]], 128)
    plan = plan_rows(torch.tensor([-1], device=DEVICE), 1)
    zsum = torch.zeros(1, ds.zcols, device=DEVICE)
    lut.shrink(_x(256), ds, plan, zsum)
    assert not zsum.any()


def test_one_row_apply_deltas_takes_it_with_the_gemv_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    n, outs = 300, [150, 70]
    ds = _set(n, outs, [[8, 2], [3, 5], [2, None]], 64)
    plan = plan_rows(torch.tensor([0], device=DEVICE), 1)
    x = _x(n)
    got = {}
    for on in (True, False):
        monkeypatch.setattr(lut, "ENABLED", on)
        zsum = torch.zeros(1, ds.zcols, device=DEVICE)
        assert lut.serves(x, ds, plan, zsum) is on
        got[on] = apply_deltas(x, torch.zeros(1, sum(outs), device=DEVICE), ds, plan, zsum=zsum)
    want = ref_ops.expand(ref_ops.shrink(x, ds, plan), torch.zeros(1, sum(outs), device=DEVICE), ds, plan)
    assert rel(got[True], want) < 1e-4  # (the GEMV expand's own bound, as test_ops holds it)
    assert rel(got[True], got[False]) < 1e-4


def test_its_table_launch_zeroes_the_side_streams_buffer() -> None:
    """beside() hands apply_deltas its buffer (d, then the summed z) to zero: with the lookup serving, its
    table launch does it (no zero_() launch of its own); garbage left in the buffer must not reach y."""
    n, outs = 300, [150, 70]
    ds = _set(n, outs, [[8, 2], [3, 5], [2, None]], 64)
    plan = plan_rows(torch.tensor([0], device=DEVICE), 1)
    x = _x(n)
    N = sum(outs)
    buf = torch.full((N + ds.zcols,), 7.0, device=DEVICE)  # what an earlier step left
    d, zsum = buf[:N].view(1, N), buf[N:].view(1, ds.zcols)
    assert lut.serves(x, ds, plan, zsum)
    apply_deltas(x, d, ds, plan, zsum=zsum, zero=buf)
    want = ref_ops.expand(ref_ops.shrink(x, ds, plan), torch.zeros(1, N, device=DEVICE), ds, plan)
    assert rel(d, want) < 1e-4
    big = torch.full((70_000,), 3.0, device=DEVICE)  # more than one table program zeroes at 300 inputs: zero_() instead
    lut.table(x, zero=big)
    assert not big.any()
    with pytest.raises(KernelError, match="float32"):
        lut.table(x, zero=torch.zeros(8, dtype=torch.float16, device=DEVICE))


def test_the_word_major_copy_holds_each_rows_words() -> None:
    """lut_tiles' copy: word j of a tile's row r at off + j * stride + r, equal to that row's word j in the set's
    own (row-major) words, for every 2-bit row of every tier (the 8- and 3-bit tiers' planes included)."""
    from deltastore.codec import quant
    from deltastore.kernels.deltaset import F

    n = 300
    ds = _set(n, [96], [[8, 2], [3, 5], [2, None]], 64)
    tiles, ntiles, _T, vt = ds.lut_tiles(lut.TILE_R)
    vw = quant.packed_words(n, 2)
    t = 0
    for rec in ds.mma_records[0][0]:
        cnt = rec[F["count"]]
        own = ds.words[rec[F["v_q"]]: rec[F["v_q"]] + cnt * vw].view(cnt, vw)
        for c0 in range(0, cnt, lut.TILE_R):
            off, stride, _v_sz, _s_off, count = (int(v) for v in tiles[0, 0, t, :5])
            assert (stride, count) == (cnt, min(lut.TILE_R, cnt - c0))
            copy = torch.stack([vt[off + j * stride: off + j * stride + count] for j in range(vw)], dim=1)
            assert torch.equal(copy, own[c0: c0 + count])
            t += 1
    assert t == int(ntiles[0, 0])


def test_it_steps_aside_for_what_it_does_not_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    plan1 = plan_rows(torch.tensor([0], device=DEVICE), 1)
    ds = _set(256, [64], [[2, None]], 128)
    z = torch.zeros(1, ds.zcols, device=DEVICE)
    assert lut.serves(_x(256), ds, plan1, z)
    assert not lut.serves(_x(256), ds, plan1, None)  # no summed z (the ordered GEMV path)
    fj = join.Join(torch.empty(1, 64), torch.empty(1, 64), torch.zeros(1, dtype=torch.int32), 1, z)
    assert not lut.serves(_x(256), ds, plan1, z, fj)  # a fused join counts the GEMV shrink's programs
    two = plan_rows(torch.tensor([0, 0], device=DEVICE), 1)
    assert not lut.serves(_x(256, rows=2), ds, two, torch.zeros(2, ds.zcols, device=DEVICE))
    for schedule in ([[4, 2], [2, None]], [[2, 3], [1, None]]):  # 4- and 1-bit tiers have no 2-bit planes
        other = _set(256, [64], schedule, 128)
        assert not lut.serves(_x(256), other, plan1, torch.zeros(1, other.zcols, device=DEVICE))
    mixed = DeltaSet(256, [64, 64], DEVICE)
    mixed.planes = True
    mixed.add([packed_delta(64, 256, seed=1, schedule=[[2, None]], group_size=g)[1] for g in (64, 128)])
    mixed.build()
    assert not lut.serves(_x(256), mixed, plan1, torch.zeros(1, mixed.zcols, device=DEVICE))
    monkeypatch.setattr(lut, "ENABLED", False)
    assert not lut.serves(_x(256), ds, plan1, z)


def test_a_wrong_input_width_is_refused() -> None:
    ds = _set(256, [64], [[2, None]], 128)
    plan = plan_rows(torch.tensor([0], device=DEVICE), 1)
    with pytest.raises(KernelError, match="expect 256"):
        lut.shrink(_x(200), ds, plan, torch.zeros(1, ds.zcols, device=DEVICE))
