"""The tensor-core kernels (kernels/mma.py) on a GPU, against the torch reference (``ref_ops``).

Gluon kernels do not run under Triton's interpreter, so these tests need CUDA (the device run
executes them); their unpack is checked on the CPU by tests/kernels/test_mma_unpack.py.

Bounds: the delta part within 1e-2 relative of the float32 reference for bf16 and fp16 activations
alike (the expand rounds z S sc to bf16 once, as the tl.dot path rounds z * scale; x enters the MMA
as bf16, so fp16 activations lose 3 bits there: at 3 rows of fp16 the elementwise check at
test_dense's fp16 bound of 3e-3 failed on the H200); rows of the base alone get exactly +0; every
row its own fine-tune's delta.
"""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaSet, KernelError, plan_rows, ref_ops
from deltastore.kernels import mma
from deltastore.kernels.linear import apply_deltas

from .kernel_testlib import DEVICE, capture, packed_delta, rel

pytestmark = pytest.mark.skipif(DEVICE != "cuda" or not mma.HAVE_GLUON, reason="the Gluon kernels need a GPU (and Triton with Gluon)")

DELTA_TOL = {torch.bfloat16: 1e-2, torch.float16: 1e-2}
TIERS = [[8, 1], [3, 3], [2, None]]


def make_set(n: int, ms: list[int], slots: int, *, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
             group_size: int = 128, alpha: float = 0.25) -> DeltaSet:
    ds = DeltaSet(n, ms, DEVICE)
    for s in range(slots):
        ds.add([packed_delta(m, n, seed=seed + 10 * s + i, dtype=dtype, group_size=group_size, schedule=TIERS, alpha=alpha)[1]
                for i, m in enumerate(ms)])
    return ds


def reference(x: torch.Tensor, ds: DeltaSet, plan) -> torch.Tensor:  # noqa: ANN001
    return ref_ops.expand(ref_ops.shrink(x, ds, plan), torch.zeros(x.shape[0], sum(ds.out_features), device=DEVICE), ds, plan)


@pytest.mark.parametrize("loads", ["planes", "compact", "per-element"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 3, 8, 13, 16])
def test_every_width_odd_shapes_one_fine_tune(M: int, dtype: torch.dtype, loads: str, monkeypatch) -> None:
    """Every load of the tiers: the default ("planes": the 3- and 8-bit tiers as 2-bit planes, every
    tier through the wide loads of the 2-bit path), the 3- and 8-bit tiers as stored ("compact", their
    per-element loads beside the 2-bit tiers' wide ones) and the per-element loads of every tier;
    odd shapes take their masked paths (a short last group of inputs and of outputs, rows of words
    not 16-byte aligned in the expand)."""
    monkeypatch.setattr(mma, "COMPACT", loads != "per-element")
    n, ms = 300, [200]  # inputs: 2 groups and a short third, rows padded to 320; outputs likewise
    ds = make_set(n, ms, 1, dtype=dtype, seed=M)
    ds.planes = loads == "planes"
    ds.build()
    assert ds.bit_widths == {8, 3, 2} and mma.usable(torch.empty(1, n, dtype=dtype, device=DEVICE), ds)
    assert ds.mma_bit_widths == ({2} if loads == "planes" else {8, 3, 2})
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(M)).to(dtype).to(DEVICE)
    plan = plan_rows(torch.zeros(M, dtype=torch.int64, device=DEVICE), 1)
    assert mma.use_mma(x, ds, plan, "mma") and mma.use_mma(x, ds, plan) == (2 <= M <= 32)  # one fine-tune: 2..32 rows
    got = mma.apply(x, torch.zeros(M, sum(ms), device=DEVICE), ds, plan)
    want = reference(x, ds, plan)
    assert rel(got, want) < DELTA_TOL[dtype]
    # into the activations' dtype, as a layer's output: y + delta rounded once
    y0 = torch.randn(M, sum(ms), generator=torch.Generator().manual_seed(1)).to(dtype).to(DEVICE)
    y = mma.apply(x, y0.clone(), ds, plan)
    bound = 2 * torch.finfo(dtype).eps * (y0.float() + want).abs() + DELTA_TOL[dtype] * want.abs().amax(dim=1, keepdim=True)
    assert bool(((y.float() - (y0.float() + want)).abs() <= bound + 1e-6).all())


def test_whole_groups_and_aligned_rows_take_the_vector_loads(monkeypatch) -> None:
    """Shapes where every group is whole and every row of words 16-byte aligned (as a real model's):
    the compact kernels' unmasked vector loads, several fine-tunes at 4 rows each (the default
    choice of these kernels); the same numbers as the per-element loads within the bound."""
    n, ms = 1024, [512, 256]
    ds = make_set(n, ms, 3, seed=7).build()
    M = 12
    ids = (torch.arange(M, device=DEVICE) % 3).to(torch.int64)
    plan = plan_rows(ids, 3)
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16).to(DEVICE)
    assert mma.use_mma(x, ds, plan)
    want = reference(x, ds, plan)
    got = {}
    for compact in (True, False):
        monkeypatch.setattr(mma, "COMPACT", compact)
        got[compact] = mma.apply(x, torch.zeros(M, sum(ms), device=DEVICE), ds, plan)
        assert rel(got[compact], want) < DELTA_TOL[torch.bfloat16], compact
    assert rel(got[True], got[False]) < DELTA_TOL[torch.bfloat16]


def test_many_fine_tunes_in_one_batch_each_row_its_own() -> None:
    n, ms = 256, [384, 128, 128]  # q/k/v-like slices of other sizes
    ds = make_set(n, ms, 3, seed=7)
    ids = torch.tensor([2, 0, -1, 2, 0, 0, 2, -1, 0, 2, 2, 0], device=DEVICE)  # slot 1 serves no row
    M = ids.numel()
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16).to(DEVICE)
    plan = plan_rows(ids, 3)
    assert ds.build().mma_bit_widths == {8, 3, 2}  # no planes until these kernels serve the set
    got = apply_deltas(x, torch.zeros(M, sum(ms), device=DEVICE), ds, plan, path="mma")
    assert ds.mma_bit_widths == {2}  # (DeltaSet.use_planes: the set rebuilt with them once)
    want = reference(x, ds, plan)
    for r in range(M):
        if ids[r] < 0:
            assert bool((got[r] == 0).all()), "a base-only row must get +0"
        else:
            alone = reference(x[r : r + 1], ds, plan_rows(ids[r : r + 1], 3))
            assert rel(got[r : r + 1], alone) < DELTA_TOL[torch.bfloat16]
    assert rel(got, want) < DELTA_TOL[torch.bfloat16]


def test_a_row_block_spread_over_blocks_of_8() -> None:
    """20 rows of one fine-tune among 2 in a set: the blocks hold 16 rows at most (two blocks)."""
    n, ms = 128, [256]
    ds = make_set(n, ms, 2, seed=11)
    ids = torch.tensor([1] * 20 + [0] * 2, device=DEVICE)
    x = torch.randn(ids.numel(), n, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16).to(DEVICE)
    plan = plan_rows(ids, 2)
    got = mma.apply(x, torch.zeros(ids.numel(), sum(ms), device=DEVICE), ds, plan)
    assert rel(got, reference(x, ds, plan)) < DELTA_TOL[torch.bfloat16]


@pytest.mark.parametrize("block_rows", [32, 64])
def test_row_blocks_of_32_and_64_rows(block_rows: int, monkeypatch) -> None:
    """Blocks of 32 and 64 rows (the MMA's N side four and eight n8 tiles): one fine-tune's 24, 40 and
    64 rows (a block part full, one full block and a second part full at 32), and a batch of three
    fine-tunes of 37, 21 and 6 rows with base rows among them, every tier as planes and as stored,
    within the bound of the rest; each row of the mixed batch its own fine-tune's delta."""
    monkeypatch.setattr(mma, "BLOCK_ROWS", block_rows)
    n, ms = 300, [200, 72]  # odd shapes: short last groups, rows of words not 16-byte aligned
    for planes in (True, False):
        one = make_set(n, ms, 1, seed=21)
        one.planes = planes
        one.build()
        for M in (24, 40, 64):
            x = torch.randn(M, n, generator=torch.Generator().manual_seed(M)).to(torch.bfloat16).to(DEVICE)
            plan = plan_rows(torch.zeros(M, dtype=torch.int64, device=DEVICE), 1)
            assert mma.block_m(plan, one) == min(block_rows, 32 if M <= 32 else 64)
            got = mma.apply(x, torch.zeros(M, sum(ms), device=DEVICE), one, plan)
            assert rel(got, reference(x, one, plan)) < DELTA_TOL[torch.bfloat16], (planes, M)
    ds = make_set(n, ms, 3, seed=23)
    ids = torch.tensor([0] * 37 + [1] * 21 + [2] * 6 + [-1] * 3, device=DEVICE)[torch.randperm(67, generator=torch.Generator().manual_seed(2))]
    M = ids.numel()
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16).to(DEVICE)
    plan = plan_rows(ids, 3)
    assert mma.block_m(plan, ds) == 32  # 67 rows over 3: 23 a slot, a block of 32 (blocks hold any spread)
    got = mma.apply(x, torch.zeros(M, sum(ms), device=DEVICE), ds, plan)
    for r in range(M):
        if ids[r] < 0:
            assert bool((got[r] == 0).all()), "a base-only row must get +0"
        else:
            alone = reference(x[r : r + 1], ds, plan_rows(ids[r : r + 1], 3))
            assert rel(got[r : r + 1], alone) < DELTA_TOL[torch.bfloat16], r


def test_the_expand_operand_made_once_or_per_step_gives_the_reference(monkeypatch) -> None:
    """mma.STAGE_Z: the compact expand's B operand (z S sc in bf16) and its zero-point correction made once
    a program into shared memory (the default) or per step from global z: both within the bound of the
    reference and of each other, one fine-tune (items of ONE_CHUNK) and three (items of CHUNK), planes
    (virtual components reading z column r >> dsh) and odd shapes."""
    n, ms = 300, [200, 136]
    for slots, M in ((1, 16), (3, 30)):
        ds = make_set(n, ms, slots, seed=31 + slots)
        ids = (torch.arange(M, device=DEVICE) % slots).to(torch.int64)
        plan = plan_rows(ids, slots)
        x = torch.randn(M, n, generator=torch.Generator().manual_seed(slots)).to(torch.bfloat16).to(DEVICE)
        got = {}
        for stage in (True, False):
            monkeypatch.setattr(mma, "STAGE_Z", stage)
            got[stage] = mma.apply(x, torch.zeros(M, sum(ms), device=DEVICE), ds, plan)
        assert ds.mma_bit_widths == {2}
        want = reference(x, ds, plan)
        for stage in (True, False):
            assert rel(got[stage], want) < DELTA_TOL[torch.bfloat16], (slots, stage)
        assert rel(got[True], got[False]) < 1e-3, slots  # the same operand; only the correction's sum order differs


@pytest.mark.parametrize("knob", [("PDL", True), ("HOIST", True), ("SHRINK_MAXNREG", 80)])
@pytest.mark.parametrize("stage", [True, False])
def test_the_launch_options_not_on_by_default_give_the_reference(knob: tuple, stage: bool, monkeypatch) -> None:
    """mma.PDL: the expand launched while its shrink runs (Hopper and newer; elsewhere the flag changes
    nothing), its words loaded before it waits for z; mma.HOIST: a program's table entries read beside its
    row block where the host knows the slot (here the set of one; not the set of three) and its fields
    before its branch; mma.SHRINK_MAXNREG: the shrink's registers capped (spills at 16 rows a block): each within
    the bound of the reference eagerly and replayed in a CUDA graph with new inputs (PDL's dependency
    captured as a programmatic edge), one fine-tune and three, a float32 output (the atomics into it) and
    a bf16 one (through the scratch)."""
    monkeypatch.setattr(mma, knob[0], knob[1])
    monkeypatch.setattr(mma, "STAGE_Z", stage)
    n, ms = 300, [200, 136]
    for slots, M, ydt in ((1, 16, torch.float32), (3, 30, torch.bfloat16)):
        ds = make_set(n, ms, slots, seed=41 + slots)
        ids = (torch.arange(M, device=DEVICE) % slots).to(torch.int64)
        plan = plan_rows(ids, slots)
        x = torch.randn(M, n, generator=torch.Generator().manual_seed(slots)).to(torch.bfloat16).to(DEVICE)
        y = torch.zeros(M, sum(ms), device=DEVICE, dtype=ydt)
        assert rel(mma.apply(x, y.clone(), ds, plan).float(), reference(x, ds, plan)) < DELTA_TOL[torch.bfloat16], slots

        def step() -> torch.Tensor:
            y.zero_()
            return mma.apply(x, y, ds, plan)

        g, out = capture(step)
        x.copy_(torch.randn(M, n, device=DEVICE).to(torch.bfloat16))
        g.replay()
        torch.cuda.synchronize()
        assert rel(out.float(), reference(x, ds, plan)) < DELTA_TOL[torch.bfloat16], (slots, "graph")
    if knob[0] == "HOIST":  # the host knows every row names slot 1 of three: its entries beside the block, rows in order
        from deltastore.kernels.deltaset import host_hint

        ds = make_set(n, ms, 3, seed=47)
        ids = torch.full((20,), 1, dtype=torch.int64)
        plan = plan_rows(ids.to(DEVICE), 3)
        plan.only_slot, plan.base_rows = host_hint(ids)
        assert (plan.only_slot, plan.base_rows) == (1, False)
        x = torch.randn(20, n, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16).to(DEVICE)
        got = mma.apply(x, torch.zeros(20, sum(ms), device=DEVICE), ds, plan)
        assert rel(got, reference(x, ds, plan)) < DELTA_TOL[torch.bfloat16], "known slot"


def test_32_rows_each_of_several_fine_tunes_take_these_kernels_by_default() -> None:
    """The default choice serves 2..32 rows a fine-tune here (one row block of 32 each): 64 rows over
    2 fine-tunes through apply_deltas as the modules call it, within the bound of the rest."""
    n, ms = 256, [384, 128]
    ds = make_set(n, ms, 2, seed=13)
    ids = torch.arange(64, device=DEVICE) % 2
    x = torch.randn(64, n, generator=torch.Generator().manual_seed(8)).to(torch.bfloat16).to(DEVICE)
    plan = plan_rows(ids, 2)
    assert mma.use_mma(x, ds, plan)
    got = apply_deltas(x, torch.zeros(64, sum(ms), device=DEVICE), ds, plan)
    assert ds.mma_bit_widths == {2}  # (served by these kernels: the planes were made)
    assert rel(got, reference(x, ds, plan)) < DELTA_TOL[torch.bfloat16]


def test_replays_in_a_cuda_graph_with_new_inputs() -> None:
    n, ms = 256, [256]
    ds = make_set(n, ms, 2, seed=5)
    ids = torch.tensor([0, 1, 1, 0], device=DEVICE)
    plan = plan_rows(ids, 2)
    x = torch.randn(4, n, device=DEVICE).to(torch.bfloat16)
    y = torch.zeros(4, sum(ms), device=DEVICE)

    def step() -> torch.Tensor:
        y.zero_()
        return mma.apply(x, y, ds, plan)

    g, out = capture(step)
    x.copy_(torch.randn(4, n, device=DEVICE).to(torch.bfloat16))
    g.replay()
    torch.cuda.synchronize()
    assert rel(out, reference(x, ds, plan)) < DELTA_TOL[torch.bfloat16]


def test_sets_the_kernels_do_not_serve_go_elsewhere() -> None:
    n, ms = 128, [128]
    ds = make_set(n, ms, 1, group_size=64)  # groups of 64: not these kernels'
    x = torch.randn(2, n, device=DEVICE).to(torch.bfloat16)
    plan = plan_rows(torch.zeros(2, dtype=torch.int64, device=DEVICE), 1)
    assert not mma.usable(x, ds) and not mma.use_mma(x, ds, plan)
    with pytest.raises(KernelError, match="groups of 128"):
        mma.apply(x, torch.zeros(2, 128, device=DEVICE), ds, plan)
    got = apply_deltas(x, torch.zeros(2, 128, device=DEVICE), ds, plan)  # another path serves it
    assert rel(got, reference(x, ds, plan)) < DELTA_TOL[torch.bfloat16]
