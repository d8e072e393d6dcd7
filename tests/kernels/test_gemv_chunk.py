"""The GEMV expand's runs of components: shortened where the grid would leave the GPU short of
programs (triton_ops.gemv_chunk), counted on the host exactly as the device tables are built, and
the expand at the run it picks gives the reference's numbers.

Sizes are odd on purpose: tiers whose counts are not multiples of any run, outputs not a multiple of
the column block."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaSet, plan_rows, ref_ops, triton_ops
from deltastore.kernels.deltaset import F, plan_blocks

from .kernel_testlib import DEVICE, packed_delta, rel

pytestmark = pytest.mark.skipif(not triton_ops.HAVE_TRITON, reason="triton is not installed")

M_OUT, N_IN = 150, 160
SCHEDULE = [[8, 2], [3, 37], [2, None]]  # 2 + 37 + the rest: runs of 32/64 cut every tier unevenly


@pytest.fixture(scope="module")
def two_tenants() -> DeltaSet:
    ds = DeltaSet(N_IN, [M_OUT], DEVICE)
    for seed in (3, 4):
        ds.add([packed_delta(M_OUT, N_IN, seed=seed, alpha=0.5, schedule=SCHEDULE, group_size=32)[1]])
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


def test_runs_are_halved_until_the_grid_holds_the_programs_asked_for(two_tenants: DeltaSet, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = two_tenants
    nb, rowblocks = 2, 1

    def grid(chunk: int) -> int:
        return nb * ds.n_slices * ds.most_items(chunk) * rowblocks

    monkeypatch.setattr(triton_ops, "GEMV_EXPAND_PROGRAMS", 0)
    assert triton_ops.gemv_chunk(ds, nb, rowblocks) == triton_ops.GEMV_CHUNK  # off: the fixed run
    target = grid(64)  # reached at 64 components a run, not at 128
    assert grid(128) < target
    monkeypatch.setattr(triton_ops, "GEMV_EXPAND_PROGRAMS", target)
    assert triton_ops.gemv_chunk(ds, nb, rowblocks) == 64
    assert triton_ops.gemv_chunk(ds, nb, 8 * rowblocks) > 64  # more row blocks (tenants): longer runs suffice
    monkeypatch.setattr(triton_ops, "GEMV_EXPAND_PROGRAMS", 10**9)
    assert triton_ops.gemv_chunk(ds, nb, rowblocks) == triton_ops.GEMV_STEP_R  # never under a step
    assert triton_ops.gemv_chunk(ds, nb, rowblocks, step=16) == 16


def test_the_expand_at_the_picked_run_matches_the_reference(two_tenants: DeltaSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """One row per tenant (the GEMV path's case), the run picked by the rule (no chunk passed): at
    a short run (many partial sums) and at the default one, against the torch reference."""
    ds = two_tenants
    dtype = torch.bfloat16
    ids = torch.tensor([1, 0], device=DEVICE)
    plan = plan_rows(ids, 2)
    x = torch.randn(2, N_IN, generator=torch.Generator().manual_seed(5)).to(dtype).to(DEVICE)
    zr = ref_ops.shrink(x, ds, plan)
    dr = ref_ops.expand(zr, torch.zeros(2, M_OUT, dtype=torch.float32, device=DEVICE), ds, plan)
    z = triton_ops.shrink(x, ds, plan, triton_ops.pick_split_k(2, ds))
    nb = -(-M_OUT // ds.block_k)
    rowblocks = plan_blocks(plan, 1).shape[0]
    got = {}
    for programs in (10**9, 0):
        monkeypatch.setattr(triton_ops, "GEMV_EXPAND_PROGRAMS", programs)
        chunk = triton_ops.gemv_chunk(ds, nb, rowblocks)
        got[chunk] = triton_ops.expand(z, torch.zeros(2, M_OUT, dtype=torch.float32, device=DEVICE), ds, plan)
        assert rel(got[chunk], dr) < 1e-4, chunk  # float32 out: only the sums' order differs
    assert sorted(got) == [triton_ops.GEMV_STEP_R, triton_ops.GEMV_CHUNK]
