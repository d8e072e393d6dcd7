"""The delta buffer zeroed by the delta kernels themselves (``apply_deltas(overwrite=True)``, what
``beside`` does with ``linear.ZERO_IN_KERNELS``): the GEMV shrink's programs zero the float32 output
before the expand adds into it, the tensor-core path zeroes it with its z in one launch, every other
path by ``zero_()``. Whatever the buffer held before (NaN here: a missed element shows), each row
gets its tenant's delta and nothing else, on every path and with the buffer's size not a multiple of
what the shrink's programs zero.

Bounds, and why: the same kernels add the same parts as into a zeroed buffer, so within float32
reordering of the atomic adds (1e-5 of the largest value) of ``apply_deltas`` into zeros, and the
reference within each path's own bound (:data:`TOL`)."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaSet, plan_rows, ref_ops, triton_ops
from deltastore.kernels import linear as linear_mod
from deltastore.kernels.linear import apply_deltas, beside

from .kernel_testlib import DEVICE, packed_delta, rel

pytestmark = pytest.mark.skipif(not triton_ops.usable(torch.empty(0, device=DEVICE)), reason="needs triton (a GPU, or the interpreter)")

N_IN, M_OUT = 96, 150
#: against the float32 reference: the GEMV kernels keep float32 (1e-4), and so do the tl.dot ones under
#: the interpreter; on a GPU tl.dot takes float32 operands as tf32 (10-bit mantissa: 4.0e-4 seen on the
#: H200, 2e-3 as test_lazy_bitdelta.py bounds it); the tensor-core kernels round z to bf16, the dense
#: path the factors (test_mma.py's and test_dense.py's bounds)
TOL = {"mma": 5e-3, "dense": 1e-2, "dot": 1e-4 if DEVICE == "cpu" else 2e-3}


def _set(slots: int, n: int = N_IN, group_size: int = 32) -> DeltaSet:
    ds = DeltaSet(n, [M_OUT, 40], DEVICE)  # two slices: 190 outputs a row
    for s in range(slots):
        ds.add([packed_delta(m, n, seed=11 + 2 * s + i, schedule=[[8, 2], [3, 9], [2, None]], group_size=group_size)[1]
                for i, m in enumerate((M_OUT, 40))])
    return ds


def _case(ids: list[int], slots: int, path: str | None = None):  # noqa: ANN202
    # the tensor-core kernels read groups of 128 alone (mma.GROUP): that case gets 128 inputs in one group
    n, gs = (128, 128) if path == "mma" else (N_IN, 32)
    ds = _set(slots, n, gs)
    plan = plan_rows(torch.tensor(ids, device=DEVICE), slots)
    x = torch.randn(len(ids), n, generator=torch.Generator().manual_seed(len(ids))).to(torch.bfloat16).to(DEVICE)
    want = ref_ops.expand(ref_ops.shrink(x, ds, plan), torch.zeros(len(ids), M_OUT + 40, device=DEVICE), ds, plan)
    return ds, plan, x, want


@pytest.mark.parametrize("ids,slots,path", [([0], 1, None), ([1, 0, -1], 2, None), ([0, 0, 1, 1, 0], 2, "dot"),
                                            ([0, 1, 1, 0], 2, "mma"), ([0, 0, 0], 1, "dense")])
def test_overwrite_gives_the_delta_whatever_the_buffer_held(ids: list[int], slots: int, path: str | None) -> None:
    ds, plan, x, want = _case(ids, slots, path)
    if path == "mma":
        from deltastore.kernels import mma

        if not (x.is_cuda and mma.HAVE_GLUON and torch.cuda.get_device_capability(x.device) >= (8, 0)):
            pytest.skip("the tensor-core kernels need a CUDA GPU of compute capability 8.0+ and Gluon")
        assert mma.usable(x, ds)  # the case is one they serve (it was not, groups of 32, until 2026-12-03)
    into_zeros = apply_deltas(x, torch.zeros_like(want), ds, plan, "triton", path=path)
    got = apply_deltas(x, torch.full_like(want, float("nan")), ds, plan, "triton", path=path, overwrite=True)
    assert not got.isnan().any()
    assert float((got - into_zeros).abs().max()) <= 1e-5 * float(want.abs().max())
    assert rel(got, want) < TOL.get(path, 1e-4)
    none = torch.tensor(ids, device=DEVICE) < 0
    assert bool((got[none] == 0).all())  # a row of no tenant: +0, not what the buffer held


def test_the_gemv_shrink_zeroes_a_buffer_larger_than_its_programs_cover_at_the_least_block() -> None:
    """Many rows' outputs over few programs: each zeroes a block of more than 128 floats (a power of
    two); a buffer the shrink cannot zero (bf16, or not contiguous) is zeroed by zero_() instead."""
    ds, plan, x, _ = _case([0], 1)
    grid = ds.n_slices * ds.tiles(triton_ops.GEMV_TILE_R)[2] * 1
    big = torch.full((grid * 300 + 7,), float("nan"), device=DEVICE)
    assert triton_ops._zero_block(big, grid) == 512
    triton_ops.shrink(x, ds, plan, 1, zero=big)
    assert bool((big == 0).all())
    for odd in (torch.full((5, 190), float("nan"), dtype=torch.bfloat16, device=DEVICE),
                torch.full((190, 5), float("nan"), device=DEVICE).T):
        assert triton_ops._zero_block(odd, grid) == 0
        triton_ops.shrink(x, ds, plan, 1, zero=odd)
        assert bool((odd == 0).all())


@pytest.mark.parametrize("zero_in_kernels", [False, True])
def test_beside_gives_the_same_delta_either_way(zero_in_kernels: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linear_mod, "ZERO_IN_KERNELS", zero_in_kernels)
    ds, plan, x, want = _case([1, 0], 2)
    out = torch.full_like(want, float("nan"))
    y, d = beside(x, ds, plan, lambda: "base", "triton", out=out)
    assert y == "base" and d is out and rel(d, want) < 1e-4
