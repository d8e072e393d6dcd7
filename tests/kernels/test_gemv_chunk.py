"""The GEMV expand's programs: narrower column blocks, then shorter runs of components, where the
grid would leave the GPU short of programs (triton_ops.gemv_runs); items counted on the host exactly
as the device tables are built; the expand at the shape the rule picks gives the reference's numbers.

Sizes are odd on purpose: tiers whose counts are not multiples of any run, outputs not a multiple of
the column block."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaSet, plan_rows, ref_ops, triton_ops
from deltastore.kernels.deltaset import F, plan_blocks

from .kernel_testlib import DEVICE, packed_delta, rel

pytestmark = pytest.mark.skipif(not triton_ops.HAVE_TRITON, reason="triton is not installed")

M_OUT, N_IN = 300, 160  # 3 blocks of 128 columns, the last short
SCHEDULE = [[8, 2], [3, 37], [2, None]]  # 2 + 37 + the rest: runs of 32/64 cut every tier unevenly


@pytest.fixture(scope="module")
def two_tenants() -> DeltaSet:
    ds = DeltaSet(N_IN, [M_OUT], DEVICE)
    for seed in (3, 4):
        ds.add([packed_delta(M_OUT, N_IN, seed=seed, alpha=0.5, schedule=SCHEDULE, group_size=128)[1]])
    return ds


def test_items_counted_on_the_host_match_the_device_tables(two_tenants: DeltaSet) -> None:
    ds = two_tenants
    ds.build()
    counts = [rec[F["count"]] for recs in ds.records[0] for rec in recs]
    assert len(counts) == 3 and max(counts) > 64  # three tiers, one longer than the shortest run
    for chunk in (256, 128, 64, 32, 7):
        items, n_items, most = ds.items(chunk)
        assert ds.most_items(chunk) == most == int(n_items.max())
        assert most == sum(-(-c // chunk) for c in counts)


def test_columns_then_runs_are_halved_until_the_grid_holds_the_programs_asked_for(two_tenants: DeltaSet, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = two_tenants
    assert ds.block_k == 128
    rowblocks = 1

    def grid(bn: int, chunk: int) -> int:
        return -(-M_OUT // bn) * ds.n_slices * ds.most_items(chunk) * rowblocks

    full = (128, triton_ops.GEMV_CHUNK)
    monkeypatch.setattr(triton_ops, "GEMV_EXPAND_PROGRAMS", 0)
    assert triton_ops.gemv_runs(ds, rowblocks, 128) == full  # off: the whole block, the fixed run
    monkeypatch.setattr(triton_ops, "GEMV_EXPAND_PROGRAMS", grid(*full))
    assert triton_ops.gemv_runs(ds, rowblocks, 128) == full  # already enough programs
    # columns first, down to GEMV_MIN_BLOCK_N, then the runs, down to a step
    monkeypatch.setattr(triton_ops, "GEMV_MIN_BLOCK_N", 64)
    monkeypatch.setattr(triton_ops, "GEMV_EXPAND_PROGRAMS", grid(64, 64))
    assert grid(64, 128) < grid(64, 64)
    assert triton_ops.gemv_runs(ds, rowblocks, 128) == (64, 64)
    monkeypatch.setattr(triton_ops, "GEMV_EXPAND_PROGRAMS", grid(64, triton_ops.GEMV_CHUNK))
    assert triton_ops.gemv_runs(ds, rowblocks, 128) == (64, triton_ops.GEMV_CHUNK)  # narrower columns suffice
    monkeypatch.setattr(triton_ops, "GEMV_MIN_BLOCK_N", 128)  # the columns kept whole: only the runs shorten
    monkeypatch.setattr(triton_ops, "GEMV_EXPAND_PROGRAMS", grid(128, 64))
    assert triton_ops.gemv_runs(ds, rowblocks, 128) == (128, 64)
    monkeypatch.setattr(triton_ops, "GEMV_EXPAND_PROGRAMS", grid(32, triton_ops.GEMV_CHUNK))
    assert triton_ops.gemv_runs(ds, rowblocks, 128, min_block_n=32) == (32, triton_ops.GEMV_CHUNK)  # a caller's floor
    monkeypatch.setattr(triton_ops, "GEMV_EXPAND_PROGRAMS", 10**9)
    assert triton_ops.gemv_runs(ds, rowblocks, 128) == (128, triton_ops.GEMV_STEP_R)  # never under a step
    assert triton_ops.gemv_runs(ds, rowblocks, 128, step=16, min_block_n=32) == (32, 16)


def test_the_expand_at_the_picked_shape_matches_the_reference(two_tenants: DeltaSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """One row per tenant (the GEMV path's case), the shape picked by the rule (neither block_n nor
    chunk passed): narrow columns and short runs (many partial sums), and the defaults, against the
    torch reference."""
    ds = two_tenants
    dtype = torch.bfloat16
    ids = torch.tensor([1, 0], device=DEVICE)
    plan = plan_rows(ids, 2)
    x = torch.randn(2, N_IN, generator=torch.Generator().manual_seed(5)).to(dtype).to(DEVICE)
    zr = ref_ops.shrink(x, ds, plan)
    dr = ref_ops.expand(zr, torch.zeros(2, M_OUT, dtype=torch.float32, device=DEVICE), ds, plan)
    z = triton_ops.shrink(x, ds, plan, triton_ops.pick_split_k(2, ds))
    rowblocks = plan_blocks(plan, 1).shape[0]
    monkeypatch.setattr(triton_ops, "GEMV_MIN_BLOCK_N", 64)
    got = {}
    for programs in (10**9, 0):
        monkeypatch.setattr(triton_ops, "GEMV_EXPAND_PROGRAMS", programs)
        shape = triton_ops.gemv_runs(ds, rowblocks, ds.block_k)
        got[shape] = triton_ops.expand(z, torch.zeros(2, M_OUT, dtype=torch.float32, device=DEVICE), ds, plan)
        assert rel(got[shape], dr) < 1e-4, shape  # float32 out: only the sums' order differs
    assert sorted(got) == [(64, triton_ops.GEMV_STEP_R), (128, triton_ops.GEMV_CHUNK)]
