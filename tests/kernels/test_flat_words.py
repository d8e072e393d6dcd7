"""The GEMV kernels' words loaded in their unpack's layout (triton_ops.GEMV_FLAT_WORDS, on by default: the
shrink's as one contiguous run a component, the one-row expand's permuted from (components out, in, words)) and
the shrink's activations as one run a step: a layout change only, so every tier width (1, 2, 4, 8 bits; 3-bit
planes keep their own shrink loads) gives the default load's numbers bit for bit with the shrink's splits kept
apart, at one row and at a block of several, with base rows left as they were. With the splits summed into one z
by float32 atomics (the default where summed z is given) the sum's order varies from run to run on a GPU (as it
did in the thirty-first session's device run: 1.3e-6 to 5.6e-6 of the output's largest between the two loads,
raw_h200/s31/c), so there each load is held to the reference's bound instead."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import plan_rows, ref_ops, triton_ops

from .kernel_testlib import DEVICE, rel, tenant_set

pytestmark = pytest.mark.skipif(not triton_ops.HAVE_TRITON, reason="triton is not installed")

N_IN, OUTS = 600, [150, 70]  # inputs: one split's share ends inside a step (600 is not a multiple of 512)


@pytest.mark.parametrize("schedule", [[[8, 2], [3, 5], [2, None]], [[4, 3], [1, None]]])
@pytest.mark.parametrize("ids", [[0], [0, -1, 0]])
def test_flat_loads_give_the_default_loads_numbers(schedule, ids: list[int], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    ds = tenant_set(N_IN, OUTS, 1, seed=21, step=0, schedule=schedule)
    M = len(ids)
    plan = plan_rows(torch.tensor(ids, device=DEVICE), 1)
    split = triton_ops.pick_split_k(M, ds, plan=plan)
    assert triton_ops.use_gemv(M, ds, plan=plan)
    x = torch.randn(M, N_IN, generator=torch.Generator().manual_seed(7)).to(torch.bfloat16).to(DEVICE)
    y0 = torch.randn(M, sum(OUTS), generator=torch.Generator().manual_seed(8)).to(DEVICE)
    monkeypatch.setattr(triton_ops, "GEMV_ATOMIC", False)  # the expand's ordered handshake: only the shrink differs
    want = ref_ops.expand(ref_ops.shrink(x, ds, plan), y0.clone(), ds, plan)
    served = torch.tensor(ids, device=DEVICE) >= 0
    # under the interpreter the summed z's order is fixed, so its bit-for-bit check covers both (and halves the time)
    for summed in ((True,) if triton_ops.interpreting() else (False, True)):
        got = {}
        for flat in (True, False):
            monkeypatch.setattr(triton_ops, "GEMV_FLAT_WORDS", flat)
            zsum = torch.zeros(M, ds.zcols, device=DEVICE) if summed else None
            z = triton_ops.shrink(x, ds, plan, split, zsum=zsum)
            got[flat] = triton_ops.expand(z, y0.clone(), ds, plan)
        if not summed or triton_ops.interpreting():
            assert torch.equal(got[True], got[False])
        for flat in (True, False):
            assert rel(got[flat][served] - y0[served], want[served] - y0[served]) < 1e-4
            assert torch.equal(got[flat][~served], y0[~served])
