"""How far the GEMV shrink's flat loads (triton_ops.GEMV_FLAT_WORDS) move the one-row output from the default
loads', with the shrink's splits summed by atomics into one z (the default) and kept apart, beside each path's
error against the torch reference: tells a wrong flat load from a reduction order. Prints one line a case
(10 cases; on the H200 each compiles its kernels, ~20 s a case: flat_device.sh's 120 s got through 5).
    python benchmarks/probe_flat_diff.py"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from deltastore.kernels import plan_rows, ref_ops, triton_ops

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kernels"))
from kernel_testlib import DEVICE, rel, tenant_set  # noqa: E402

N_IN, OUTS = 600, [150, 70]
triton_ops.GEMV_ATOMIC = False  # the expand's ordered handshake: only the shrink differs
for schedule in ([[8, 2], [3, 5], [2, None]], [[4, 3], [1, None]], [[2, None]], [[1, None]], [[8, None]]):
    for ids in ([0], [0, -1, 0]):
        ds = tenant_set(N_IN, OUTS, 1, seed=21, step=0, schedule=schedule)
        M = len(ids)
        plan = plan_rows(torch.tensor(ids, device=DEVICE), 1)
        split = triton_ops.pick_split_k(M, ds, plan=plan)
        x = torch.randn(M, N_IN, generator=torch.Generator().manual_seed(7)).to(torch.bfloat16).to(DEVICE)
        y0 = torch.randn(M, sum(OUTS), generator=torch.Generator().manual_seed(8)).to(DEVICE)
        want = ref_ops.expand(ref_ops.shrink(x, ds, plan), y0.clone(), ds, plan)
        served = torch.tensor(ids, device=DEVICE) >= 0
        line = [f"schedule {schedule} ids {ids} split {split}:"]
        for zs in (True, False):
            got = {}
            for flat in (True, False):
                triton_ops.GEMV_FLAT_WORDS = flat
                z = triton_ops.shrink(x, ds, plan, split, zsum=torch.zeros(M, ds.zcols, device=DEVICE) if zs else None)
                got[flat] = triton_ops.expand(z, y0.clone(), ds, plan)
            d = float((got[True] - got[False]).abs().max()) / float(want.abs().max())
            e = [rel(got[f][served] - y0[served], want[served] - y0[served]) for f in (True, False)]
            line.append(f"zsum={zs}: flat-default {d:.2e} of max; rel err flat {e[0]:.2e} default {e[1]:.2e};")
        print(" ".join(line), flush=True)
