"""Plain-torch twins of the Triton ops in ``triton_ops.py``: same arguments, same results up to
rounding. They run on the CPU (users without a GPU, CI) and are the oracle in the kernel tests.

They read the same flat buffers as the kernels, through the tier records of a :class:`DeltaSet`,
and unpack with the codec's own ``quant.unpack``/``quant.dequantize`` (not with the kernels'
bit tricks), so a kernel test checks the kernel's unpacking against the codec's.
"""

from __future__ import annotations

from typing import Callable

import torch

from deltastore.codec import quant

from .deltaset import F, DeltaSet, RowPlan
from .errors import KernelError
from .packed import PackedDeltaCoMe


def tier_factor(dset: DeltaSet, rec: list[int], side: str, length: int) -> torch.Tensor:
    """float32 (count, length) vectors of one tier record, read from the flat buffers."""
    bits, cnt, gs = rec[F["bits"]], rec[F["count"]], rec[F["gs"]]
    w, g = quant.packed_words(length, bits), quant.n_groups(length, gs)
    q0, s0 = rec[F[f"{side}_q"]], rec[F[f"{side}_sz"]]
    q = dset.words[q0 : q0 + cnt * w].reshape(cnt, w)
    s = dset.scales[s0 : s0 + cnt * g].reshape(cnt, g)
    z = dset.zeros[s0 : s0 + cnt * g].reshape(cnt, g)
    return quant.dequantize(quant.unpack(q, bits, length), s, z, gs)


#: ``stacks(slot, key, make)``: the tensor ``make()`` gives for that slot and key, e.g. kept
#: between calls by :mod:`.factor_cache` (the CPU serving path); None: ``make()`` every call
Stacks = Callable[[int, object, Callable[[], torch.Tensor]], torch.Tensor]


def _stack(stacks: Stacks | None, slot: int, key: object, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    return make() if stacks is None else stacks(slot, key, make)


def _slot_rows(plan: RowPlan) -> list[tuple[int, torch.Tensor | slice, torch.Tensor | slice]]:
    """(slot, sorted positions, rows) for every slot that serves at least one row (kept on the
    plan, which every linear of a forward shares); a slot that serves every row in order (one
    fine-tune's batch) gets plain slices, so its rows are views, not gathers and scatters."""
    if plan.slot_rows is not None:
        return plan.slot_rows
    counts, starts = plan.counts.tolist(), plan.starts.tolist()
    out: list = []
    for s, (c, st) in enumerate(zip(counts, starts)):
        if c:
            rows = plan.rows[st : st + c].to(torch.int64)
            if c == plan.n_rows and torch.equal(rows, torch.arange(c, device=rows.device)):
                out.append((s, slice(None), slice(None)))
            else:
                out.append((s, torch.arange(st, st + c, device=plan.rows.device), rows))
    plan.slot_rows = out
    return out


def _stacked(dset: DeltaSet, recs: list[list[int]], side: str, length: int) -> torch.Tensor:
    """float32 (sum of counts, length): the records' V^ or U^ one under the other, once their
    components are checked to be consecutive z columns (as DeltaSet.build lays a slot out: slice
    after slice, tier after tier), so one GEMM serves them all."""
    at = recs[0][F["zcol"]]
    for rec in recs:
        if rec[F["zcol"]] != at:
            raise KernelError("the tiers are not laid out in z-column order")
        at += rec[F["count"]]
    return torch.cat([tier_factor(dset, rec, side, length) for rec in recs])


def shrink(x: torch.Tensor, dset: DeltaSet, plan: RowPlan, split_k: int = 1, *, stacks: Stacks | None = None) -> torch.Tensor:
    """z (split_k, M, dset.zcols) float32: z[:, p, zcol + j] summed over the split is
    (x[row] @ V^[:, j]) * S[j] for the row at sorted position p and component j of its slot.
    One GEMM a slot: every tier of every slice's V^ stacked in z-column order (what DeltaSet.build
    lays out), so a call costs a few large ops, not one small GEMM a tier (the CPU path's time).
    ``stacks``: where the stacked V^ and S are kept (default: dequantized and stacked on every call)."""
    dset.build()
    M = x.shape[0]
    z = torch.zeros(split_k, M, dset.zcols, dtype=torch.float32, device=x.device)
    for slot, pos, rows in _slot_rows(plan):
        recs = [rec for per in dset.records[slot] for rec in per]
        if not recs:
            continue
        V = _stack(stacks, slot, "v", lambda: _stacked(dset, recs, "v", dset.in_features))
        sv = _stack(stacks, slot, "s", lambda: torch.cat([dset.svals[rec[F["s_off"]] : rec[F["s_off"]] + rec[F["count"]]] for rec in recs]))
        z0 = recs[0][F["zcol"]]
        z[0, pos, z0 : z0 + V.shape[0]] = (x[rows].to(torch.float32) @ V.T) * sv
    return z


def expand(z: torch.Tensor, y: torch.Tensor, dset: DeltaSet, plan: RowPlan, *, stacks: Stacks | None = None) -> torch.Tensor:
    """y[row, slice cols] += z[p] @ U^^T for every row a slot serves, in place; returns y.
    ``y`` is (M, sum(out_features)): the linears' outputs side by side. One GEMM a slot and
    slice (its tiers' U^ stacked). ``stacks``: as :func:`shrink`."""
    dset.build()
    zs = z[0] if z.shape[0] == 1 else z.sum(dim=0)
    for slot, pos, rows in _slot_rows(plan):
        for b, recs in enumerate(dset.records[slot]):
            if not recs:
                continue
            m, c, z0 = dset.out_features[b], dset.col_offsets[b], recs[0][F["zcol"]]
            U = _stack(stacks, slot, ("u", b), lambda: _stacked(dset, recs, "u", m))
            acc = zs[pos, z0 : z0 + U.shape[0]] @ U
            y[rows, c : c + m] = (y[rows, c : c + m].to(torch.float32) + acc).to(y.dtype)
    return y


def dequant_rows(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, length: int, group_size: int) -> torch.Tensor:
    """float32 (rows, length) from packed rows (quant.py layout) and their fp16 scales/zeros."""
    return quant.dequantize(quant.unpack(q, bits, length), s, z, group_size)


def decode_dense(d: PackedDeltaCoMe) -> torch.Tensor:
    """The float32 delta (m, n) = U^ diag(S) V^^T."""
    return d.dense()


def fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, z: torch.Tensor, dset: DeltaSet, plan: RowPlan,
                 slice_index: int | None = 0) -> torch.Tensor:
    """Twin of :func:`fused_gemv.fused_linear`: x W^T (+ bias) + this slice's z U^^T (every
    slice's, side by side, for None), summed in float32 and rounded to x's dtype once (the
    two-launch path rounds the base first)."""
    dset.build()
    d = expand(z, torch.zeros(x.shape[0], sum(dset.out_features), dtype=torch.float32, device=x.device), dset, plan)
    if slice_index is not None:
        c, m = dset.col_offsets[slice_index], dset.out_features[slice_index]
        d = d[:, c : c + m]
    y = x.to(torch.float32) @ weight.to(torch.float32).T + d
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)
