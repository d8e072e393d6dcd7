"""The tl.dot expand split over runs of components (kernels/triton_ops.py, ``_expand_kernel``).

Above GEMV_MAX_ROWS rows a fine-tune, the expand cuts each slot-slice's rank into runs of
``chunk`` components counted across its tiers (a run may cross from one bit width into the
next); each run's program stores a float32 partial and the last of a group adds them, in run
order, into y. Checked here against the torch reference (``ref_ops``) on odd shapes (not
multiples of 32, the column block or the group), several tenants with different tiers, a
missing slice delta and a base-only row, in bf16 and fp16; and the split the defaults choose at
Llama-2-7B shapes (host arithmetic only: no launch).

Bounds: as tests/kernels/test_ops.py (the delta part within 1e-2 relative in bf16, 3e-3 in fp16:
the expand feeds tl.dot z * scale rounded to the activation dtype; the split changes only the
order of float32 sums). Under TRITON_INTERPRET=1 each launch takes seconds.
"""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaSet, PackedDeltaCoMe, plan_rows, ref_ops, triton_ops
from deltastore.kernels.packed import PackedFactor

from .kernel_testlib import DEVICE, packed_delta, rel

pytestmark = pytest.mark.skipif(not triton_ops.HAVE_TRITON, reason="triton is not installed")

DELTA_TOL = {torch.bfloat16: 1e-2, torch.float16: 3e-3}


def _tenants(dtype: torch.dtype, n: int, ms: list[int]) -> list[list]:
    """Three fine-tunes of linears (ms[i] x n), groups of 32: every layout (ranks ~21), 8/3/2 bits
    (~26), and one whose second linear is unchanged (None)."""
    out = []
    for t, sched in enumerate(([[8, 1], [4, 2], [3, 3], [2, 4], [1, None]], [[8, 1], [3, 2], [2, None]], [[8, 2], [2, None]])):
        pks = [packed_delta(m, n, seed=40 + 3 * t + i, dtype=dtype, group_size=32, schedule=sched)[1] for i, m in enumerate(ms)]
        if t == 2:
            pks[1] = None
        out.append(pks)
    return out


@pytest.mark.parametrize("dtype,chunks", [(torch.bfloat16, (5, 5, 12)), (torch.float16, (6,))])
def test_dot_expand_split_over_components_matches_the_reference(dtype: torch.dtype, chunks: tuple[int, ...]) -> None:
    n, ms = 100, [75, 40]
    ds = DeltaSet(n, ms, DEVICE)
    for pks in _tenants(dtype, n, ms):
        ds.add(pks)
    ds.build()
    ranks = [[sum(v.count for v, _ in d.tiers) if d is not None else 0 for d in ds.slot(s)] for s in range(3)]
    assert ds.ranks.cpu().tolist() == ranks and ds.max_rank == max(map(max, ranks))
    # 20 rows: 7, 5 and 6 a fine-tune (the tl.dot path) and 2 base-only rows, interleaved
    ids = torch.tensor([0, 2, 1, 0, -1, 2, 0, 1, 2, 0, 1, 2, 0, -1, 1, 2, 0, 1, 2, 0], device=DEVICE)
    M = len(ids)
    assert not triton_ops.use_gemv(M, ds)
    plan = plan_rows(ids, 3)
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(11)).to(dtype).to(DEVICE)
    y0 = torch.randn(M, sum(ms), generator=torch.Generator().manual_seed(12)).to(dtype).to(DEVICE)
    zr = ref_ops.shrink(x, ds, plan)
    d_r = ref_ops.expand(zr, torch.zeros_like(y0), ds, plan)
    yr = ref_ops.expand(zr, y0.clone(), ds, plan)
    z = triton_ops.shrink(x, ds, plan, triton_ops.pick_split_k(M, ds))
    whole = triton_ops.expand(z, torch.zeros_like(y0), ds, plan, chunk=ds.max_rank)  # one run: no partial sums
    assert rel(whole.float(), d_r.float()) < DELTA_TOL[dtype]
    base_rows = (ids == -1).nonzero().flatten()
    outs = []
    for chunk in chunks:
        assert -(-ds.max_rank // chunk) > (4 if chunk < 7 else 1)  # (at 5 and 6: more runs than the last program reads at once)
        d_t = triton_ops.expand(z, torch.zeros_like(y0), ds, plan, chunk=chunk)
        assert rel(d_t.float(), d_r.float()) < DELTA_TOL[dtype], chunk
        assert rel(d_t.float(), whole.float()) < DELTA_TOL[dtype] / 4, chunk  # the split moves only float32 sums
        outs.append((chunk, d_t))
        # y += in place: other rows' and other columns' values kept, base-only rows bit for bit
        yt = triton_ops.expand(z, y0.clone(), ds, plan, chunk=chunk)
        bound = 2 * torch.finfo(dtype).eps * yr.float().abs() + DELTA_TOL[dtype] * d_r.float().abs().amax(dim=1, keepdim=True)
        assert bool(((yt.float() - yr.float()).abs() <= bound + 1e-6).all()), chunk
        assert torch.equal(yt[base_rows], y0[base_rows])
        # tenant 2 holds no delta for the second linear: its rows' columns there are y0's
        rows2 = (ids == 2).nonzero().flatten()
        assert torch.equal(yt[rows2][:, ms[0]:], y0[rows2][:, ms[0]:])
    same = [d for c, d in outs if c == chunks[0]]
    assert all(torch.equal(same[0], d) for d in same)  # the same launch twice: the same numbers
    assert bool((torch.cat([t.reshape(-1) for t in ds._sems.values()]) == 0).all())  # counters back at zero


def _random_packed(m: int, n: int, tiers: list[tuple[int, int]], gs: int = 128) -> PackedDeltaCoMe:
    """A payload of the real codec's tier counts and array shapes for an m x n weight (contents
    random: the split chosen depends on shapes only)."""
    halves = []
    for bits, c in tiers:
        for L in (n, m):
            w, G = bits * -(-L // 32), -(-L // gs)
            halves.append(PackedFactor(bits, c, L, torch.zeros(c, w, dtype=torch.int32), torch.ones(c, G, dtype=torch.float16),
                                       torch.zeros(c, G, dtype=torch.float16)))
    r = sum(c for _, c in tiers)
    return PackedDeltaCoMe((m, n), gs, torch.ones(r), [(halves[2 * i], halves[2 * i + 1]) for i in range(len(tiers))])


def test_the_default_split_fills_the_gpu_at_llama_shapes() -> None:
    """Llama-2-7B q/k/v (4096 -> 3 x 4096, the codec's tiers at 1/16: 2 + 32 + 854 components):
    from 16 to 256 rows the shrink splits its input; the expand cuts its rank into runs of >= 128
    components until ~DOT_EXPAND_PROGRAMS programs have work, and only where the grid falls short
    without runs (96 programs, one per 128 output columns, at 16 and 64 rows; 384 at 256 rows)."""
    tiers = [(8, 2), (3, 32), (2, 854)]
    ds = DeltaSet(4096, [4096] * 3, "cpu")
    ds.add([_random_packed(4096, 4096, tiers) for _ in range(3)])
    ds.build()
    for M in (16, 64, 256):
        bm = triton_ops._block_m(triton_ops.rows_per_slot(M, ds))
        sk = triton_ops.pick_split_k(M, ds, "dot")
        chunk = triton_ops.dot_chunk(M, ds, bm, ds.block_k, 32)
        runs = -(-ds.max_rank // chunk)
        unsplit = 3 * (4096 // ds.block_k) * -(-M // bm)
        assert sk > 1 and (chunk == ds.max_rank or (chunk % 32 == 0 and chunk >= triton_ops.DOT_MIN_CHUNK))
        if unsplit >= triton_ops.DOT_EXPAND_PROGRAMS:
            assert runs == 1, (M, runs)  # no partial sums where the grid is full already
        else:
            assert runs > 1 and unsplit * runs >= triton_ops.DOT_EXPAND_PROGRAMS // 2, (M, runs)


def test_runs_of_several_row_blocks_of_one_fine_tune_add_into_their_own_rows() -> None:
    """Blocks of 16 rows over 21 + 19 rows of two fine-tunes (two row blocks each, the second
    partly empty): each (row block, slice, column block) group has its own counter and its own rows
    of the partials, so runs of one row block never add into another's rows."""
    dtype = torch.bfloat16
    n, ms = 100, [75, 40]
    ds = DeltaSet(n, ms, DEVICE)
    for pks in _tenants(dtype, n, ms)[:2]:
        ds.add(pks)
    ds.build()
    # the first linear cut into 4 or more runs of 6 for both; the second (ranks 3 and 7): one run and two
    assert int(ds.ranks[:, 0].min()) > 3 * 6 and sorted(ds.ranks[:, 1].tolist()) == [3, 7]
    ids = torch.tensor([0, 1] * 19 + [0, 0], device=DEVICE)
    M = len(ids)
    plan = plan_rows(ids, 2)
    x = torch.randn(M, n, generator=torch.Generator().manual_seed(13)).to(dtype).to(DEVICE)
    zr = ref_ops.shrink(x, ds, plan)
    d_r = ref_ops.expand(zr, torch.zeros(M, sum(ms), dtype=dtype, device=DEVICE), ds, plan)
    z = triton_ops.shrink(x, ds, plan, 2, block_m=16)
    d_t = triton_ops.expand(z, torch.zeros_like(d_r), ds, plan, block_m=16, chunk=6)
    assert rel(d_t.float(), d_r.float()) < DELTA_TOL[dtype]
    for r in range(M):  # every row on its own (a row added twice, or left out, stands out)
        assert rel(d_t[r].float(), d_r[r].float()) < 3 * DELTA_TOL[dtype], r
