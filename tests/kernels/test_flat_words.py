"""The GEMV kernels' words loaded in their unpack's layout (triton_ops.GEMV_FLAT_WORDS: the shrink's as one
contiguous run a component, the one-row expand's permuted from (components out, in, words)) and
the shrink's activations as one run a step: a layout change only, so every tier width (1, 2, 4, 8 bits; 3-bit
planes keep their own shrink loads) gives the default load's numbers (bit for bit under the interpreter; on a
GPU the reductions' order may follow the layout: within 1e-6 of the output's largest), at one row
and at a block of several, with base rows left as they were."""

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
    got = {}
    for flat in (True, False):
        monkeypatch.setattr(triton_ops, "GEMV_FLAT_WORDS", flat)
        z = triton_ops.shrink(x, ds, plan, split, zsum=torch.zeros(M, ds.zcols, device=DEVICE))
        got[flat] = triton_ops.expand(z, y0.clone(), ds, plan)
    want = ref_ops.expand(ref_ops.shrink(x, ds, plan), y0.clone(), ds, plan)
    served = torch.tensor(ids, device=DEVICE) >= 0
    if triton_ops.interpreting():
        assert torch.equal(got[True], got[False])
    assert float((got[True] - got[False]).abs().max()) <= 1e-6 * float(want.abs().max())
    assert rel(got[True][served] - y0[served], want[served] - y0[served]) < 1e-4
    assert torch.equal(got[True][~served], y0[~served])
