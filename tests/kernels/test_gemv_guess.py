"""The GEMV kernels' prologue guessing slot 0 (triton_ops.GEMV_GUESS_SLOT0): slot 0's table entries
are read beside the row block; a block of another slot must read its own, so each row still gets its
own tenant's delta, whether the guess was right (one fine-tune) or wrong (blocks of slots 1 and 2)."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaSet, plan_rows, ref_ops, triton_ops

from .kernel_testlib import DEVICE, packed_delta, rel

pytestmark = pytest.mark.skipif(not triton_ops.HAVE_TRITON, reason="triton is not installed")

M_OUT, N_IN = 70, 96


@pytest.mark.parametrize("ids", [[0], [2, 0, 1], [1, -1, 2, 2]])
def test_guessed_slot_gives_each_row_its_own_tenants_delta(ids: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    ds = DeltaSet(N_IN, [M_OUT], DEVICE)
    for seed, sched in ((3, [[8, 2], [2, None]]), (4, [[3, 5], [2, None]]), (5, [[2, None]])):  # other tiers a slot
        ds.add([packed_delta(M_OUT, N_IN, seed=seed, schedule=sched, group_size=32)[1]])
    plan = plan_rows(torch.tensor(ids, device=DEVICE), 3)
    x = torch.randn(len(ids), N_IN, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16).to(DEVICE)
    want = ref_ops.expand(ref_ops.shrink(x, ds, plan), torch.zeros(len(ids), M_OUT, device=DEVICE), ds, plan)
    assert triton_ops.use_gemv(len(ids), ds)
    got = {}
    for guess in (True, False):
        monkeypatch.setattr(triton_ops, "GEMV_GUESS_SLOT0", guess)
        z = triton_ops.shrink(x, ds, plan, triton_ops.pick_split_k(len(ids), ds))
        got[guess] = triton_ops.expand(z, torch.zeros(len(ids), M_OUT, device=DEVICE), ds, plan)
        assert rel(got[guess], want) < 1e-4, guess
    assert float((got[True] - got[False]).abs().max()) <= 1e-5 * float(want.abs().max())
