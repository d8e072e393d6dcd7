"""The GEMV kernels' shorter prologue (triton_ops.GEMV_KNOWN_SLOT): where the host knows the batch's
one slot (deltaset.known_slot) the shrink and the expand ask for that slot's table entries beside the
row block instead of after it, a one-row batch's x offset is not read from the rows table, and the
shrink's exit test reads the tile's fields (so their loads are not sunk below it). What a user relies
on: the same numbers as the general prologue, bit for bit (through the expand's ordered handshake; its
float32 atomics on a GPU add in a varying order), for a set of one fine-tune (its row, a base row, a
mix), for a set of two whose batch names one (the ids on the host) and for a batch of both (no known
slot), with base rows left as they were."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaContext, DeltaSet, plan_rows, ref_ops, triton_ops
from deltastore.kernels.deltaset import known_slot

from .kernel_testlib import DEVICE, rel, tenant_set

pytestmark = pytest.mark.skipif(not triton_ops.HAVE_TRITON, reason="triton is not installed")

N_IN, OUTS = 200, [150, 70]  # odd shapes: a short last column block, inputs not a multiple of a step
SCHEDULE = [[8, 2], [3, 5], [2, None]]


def _set(n_tenants: int) -> DeltaSet:
    return tenant_set(N_IN, OUTS, n_tenants, seed=11, step=7, schedule=SCHEDULE)


def _plan(ds: DeltaSet, ids: list[int], host: bool):  # noqa: ANN202
    if host:  # the modules' way: the ids held on the host, so the plan carries what the host knows
        ctx = DeltaContext(ds.n_slots)
        ctx.set(ids)
        return ctx.plan(len(ids), torch.device(DEVICE))
    return plan_rows(torch.tensor(ids, device=DEVICE), ds.n_slots)


def test_the_known_slot_is_the_one_the_host_can_name() -> None:
    one, two = _set(1), _set(2)
    assert known_slot(one, _plan(one, [0, -1, 0], host=False)) == 0  # a set of one fine-tune: slot 0 or none
    assert known_slot(two, _plan(two, [1, -1, 1], host=True)) == 1  # ids on the host naming one slot
    assert known_slot(two, _plan(two, [1, 0], host=True)) is None  # two slots named
    assert known_slot(two, _plan(two, [1, -1], host=False)) is None  # ids on the device only: not known


@pytest.mark.parametrize("n_tenants,ids,host", [
    (1, [0], False),  # one row of the one fine-tune: the known slot and the one-row x offset
    (1, [-1], False),  # one base row: no delta
    (1, [0, -1, 0], False),  # rows of the fine-tune beside a base row
    (2, [1], True),  # a set of two, the batch's one row naming the second
    (2, [1, -1], True),
    (2, [1, 0, -1], False),  # two fine-tunes, ids on the device: no known slot, the fields before the exit test
])
def test_short_prologue_gives_the_general_prologues_numbers(n_tenants: int, ids: list[int], host: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _set(n_tenants)
    plan = _plan(ds, ids, host)
    M = len(ids)
    assert triton_ops.use_gemv(M, ds, plan=plan)
    known = n_tenants == 1 or host
    assert triton_ops.known_args(ds, plan) == {"KNOWN": known, "s_known": max(max(ids), 0) if known else 0}  # the path under test
    x = torch.randn(M, N_IN, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16).to(DEVICE)
    y0 = torch.randn(M, sum(OUTS), generator=torch.Generator().manual_seed(4)).to(DEVICE)  # float32, not zero
    split = triton_ops.pick_split_k(M, ds, plan=plan)
    assert split > 1  # several programs a tile, as a one-row layer has
    got = {}
    # the expand's atomics too on a GPU, where they run in parallel; under the interpreter (CI) the ordered
    # expand alone, which halves this test's time there: test_gemv_atomic checks the atomic expand under it
    for atomic in ((False,) if triton_ops.interpreting() else (False, True)):
        monkeypatch.setattr(triton_ops, "GEMV_ATOMIC", atomic)
        for on in (True, False):
            monkeypatch.setattr(triton_ops, "GEMV_KNOWN_SLOT", on)
            z = triton_ops.shrink(x, ds, plan, split, path="gemv")
            got[atomic, on] = triton_ops.expand(z, y0.clone(), ds, plan, path="gemv")
    served = torch.tensor(ids, device=DEVICE) >= 0
    assert torch.equal(got[False, True], got[False, False])  # y bit for bit (z's unserved rows and columns are never written)
    want = ref_ops.expand(ref_ops.shrink(x, ds, plan), y0.clone(), ds, plan)
    for key, y in got.items():
        if bool(served.any()):
            assert rel(y[served] - y0[served], want[served] - y0[served]) < 1e-4, key  # each served row's delta
        assert torch.equal(y[~served], y0[~served]), key  # base rows as they were
    if (True, True) in got:
        assert float((got[True, True] - got[False, True]).abs().max()) <= 1e-5 * float(want.abs().max())
