"""The one-row shrink by table lookup: x enters through a table, not through every thread.

At one row the GEMV shrink (:func:`.triton_ops.shrink`) spends ~5 instructions a 2-bit value on
sm_90, most of them routing the activations into each thread's registers (loads, a shared-memory
hand-off with barriers, conversions, per-word sums), and ~123 registers a thread; beside the base
GEMV on the side stream that SM time slows the base. This shrink takes the lookup of LUT-GEMM and
T-MAC instead: for every pair of inputs p the 16 sums

    T[p, e] = (e & 3) x[2p] + (e >> 2) x[2p + 1]

cover every value two 2-bit fields can take, and a 2-bit word's nibble k *is* the index e of its
pair (fields 2k, 2k + 1: :mod:`deltastore.codec.quant`'s layout). So a component row's dot product
with x is one table read and one add per two values; the group's scale and zero point come in once
per group as s (sum_p T[p, e_p] - zero * sum of x over the group). A thread takes one row, and its
tier's V^ words are read from a word-major copy (:meth:`.deltaset.DeltaSet.lut_tiles`: word j of 32
consecutive rows is one line), so a warp's 32 lanes read one line of words and then the same pair's 16
entries (one 64-byte line of L1). The table (K / 2 x 16 float32, 128 KB at K = 4096) and the sums of
x a 16-input word are made by one small launch before the shrink (:func:`table`), which also zeroes
the side stream's buffer (d and the summed z) that a ``zero_()`` launch cleared before: no launch more
on the side stream's chain. Plain Triton cannot place the table in shared memory (``tl.gather``
stores its source again for every read), so L1 serves the reads. Registers: 56 a thread at 2 warps,
515 sm_90 instructions a 128-value pass against the GEMV shrink's ~645 (Triton 3.6).

Every tier must be 2-bit: the set's 3- and 8-bit tiers are read as their 2-bit planes
(:meth:`.deltaset.DeltaSet.use_planes`, the tensor-core kernels' rows: a plane's scale carries its
4^i), and one group size (32, 64 or 128) serves the set. A 4- or 1-bit tier, planes that would
overflow float16, mixed group sizes, several rows, a slot the host does not know, or a fused join
(:mod:`.join`: its arrivals count the GEMV shrink's programs): the GEMV shrink serves instead
(:func:`serves`). The splits of the inputs and the planes of a component add into the summed z by
float32 atomics (:data:`.triton_ops.GEMV_Z_ATOMIC`'s buffer), which the GEMV expand reads as before.

Measured (H200, raw_h200/s32; kernels_h200.md): as a probe (benchmarks/probe_lut_shrink.py, h), with
the words word-major, beside the Triton base GEMV on the side stream, one Llama-2-7B layer's four
shrinks added 6.9 us over the base against 12.2 for the GEMV shrink. Its first build here read the
words as the set stores them (row-major: a warp's load touched 32 rows' sectors) and made the table
by a launch of its own; through the modules (`bash benchmarks/lut_ab_device.sh OUT`, k) one row took
181.4 us with it against 150.5 without (x1.56 / x1.30 of cuBLAS's 116.0; the deltas alone 106.7 /
68.4 us), a row's words consecutive in a thread 161.7. So it is **off** (:data:`ENABLED`). The
word-major copy and the zeroing table launch came after that run and are not measured on the GPU
yet. The copy costs memory: as many words again as the V^ halves (~half of a delta's words), made
only for sets the lookup serves.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from . import triton_ops
from .deltaset import NF, DeltaSet, RowPlan, known_slot, plan_blocks
from .errors import KernelError

if TYPE_CHECKING:
    from .join import Join

#: whether the one-row shrink takes the table lookup where it serves: off (``DELTASTORE_LUT_SHRINK=1`` on):
#: through the modules it made a one-row layer slower (module docstring)
ENABLED = os.environ.get("DELTASTORE_LUT_SHRINK", "0") not in ("", "0")
#: components a program (2-bit rows of a tile: a component's planes stay in one tile), warps a program,
#: and the most splits of the inputs (a split takes whole groups; the probe's best: 64 rows, 2 warps, 32)
TILE_R = 64
WARPS = 2
MAX_SPLIT = 32
#: pairs of inputs a table program makes (one 128-input block)
TABLE_PAIRS = 64

if triton_ops.HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _table_kernel(x_ptr, t_ptr, xw_ptr, o_ptr, K, o_n, PAIRS: tl.constexpr, ZERO: tl.constexpr):
        """T[p, e] for this program's PAIRS pairs (inputs past K read as 0) and xw[c], the sum of x over
        inputs 16c .. 16c + 15, for its 2 * PAIRS / 16 words; ZERO > 0: first zero its ZERO floats of o
        (o_n of them: the side stream's delta buffer, which the expand then adds into)."""
        pid = tl.program_id(0)
        if ZERO > 0:
            zo = pid.to(tl.int64) * ZERO + tl.arange(0, ZERO)
            tl.store(o_ptr + zo, tl.zeros((ZERO,), dtype=tl.float32), mask=zo < o_n)
        p = pid * PAIRS + tl.arange(0, PAIRS)
        e = tl.arange(0, 16)
        x0 = tl.load(x_ptr + 2 * p, mask=2 * p < K, other=0.0).to(tl.float32)
        x1 = tl.load(x_ptr + 2 * p + 1, mask=2 * p + 1 < K, other=0.0).to(tl.float32)
        t = (e & 3).to(tl.float32)[None, :] * x0[:, None] + (e >> 2).to(tl.float32)[None, :] * x1[:, None]
        tl.store(t_ptr + p.to(tl.int64)[:, None] * 16 + e[None, :], t)
        xw = tl.sum(tl.reshape(x0 + x1, (PAIRS // 8, 8)), axis=1)
        tl.store(xw_ptr + pid * (PAIRS // 8) + tl.arange(0, PAIRS // 8), xw)

    @triton.jit(do_not_specialize=["s_known"])
    def _lut_shrink_kernel(t_ptr, xw_ptr, z_ptr, vt_ptr, scales_ptr, zeros_ptr, svals_ptr, tiles_ptr, ntiles_ptr,
                           blocks_ptr, K, n_slices, T_max, s_known,
                           SPLIT: tl.constexpr, BLOCK_R: tl.constexpr, GS: tl.constexpr, USE_GDC: tl.constexpr):
        """z[0, zcol + (r >> dsh)] += S * (x . V^ row r over this split's groups) for the rows of one lookup
        tile (:meth:`.deltaset.DeltaSet.lut_tiles`) of slot s_known (the row's own slot checked: -1 exits).
        Every tensor is 1-D over (word of the group, row): a thread takes a row, and a warp's 32 lanes read
        word j of 32 consecutive rows (one line of the word-major copy) and then the same pair's table."""
        if USE_GDC:  # the expand launched after it (PDL) may start as this grid's last programs start
            tl.extra.cuda.gdc_launch_dependents()
        WPG: tl.constexpr = GS // 16  # 2-bit words a group
        F: tl.constexpr = BLOCK_R * WPG
        pid = tl.program_id(0)
        ks = pid % SPLIT
        tt = pid // SPLIT
        sl = tt // T_max
        t = tt % T_max
        slot = tl.load(blocks_ptr)
        nt = tl.load(ntiles_ptr + s_known * n_slices + sl)
        tb = tiles_ptr + ((s_known * n_slices + sl) * T_max + t) * 8
        vt_off, stride, v_sz, s_off = tl.load(tb), tl.load(tb + 1), tl.load(tb + 2), tl.load(tb + 3)
        count, zcol, dsh = tl.load(tb + 4), tl.load(tb + 5), tl.load(tb + 6)
        if (slot < 0) | (t >= nt) | ((vt_off | stride | v_sz | s_off | count | zcol | dsh) < 0):
            return
        row_words = 2 * ((K + 31) // 32)
        G = (K + GS - 1) // GS
        per = tl.cdiv(G, SPLIT)
        g0 = ks * per
        g1 = tl.minimum(g0 + per, G)
        f = tl.arange(0, F)
        j = f // BLOCK_R
        r = f % BLOCK_R
        ok = r < count
        stride = stride.to(tl.int32)
        wq = vt_ptr + vt_off + r  # word w of row r: wq + w * stride
        sq = scales_ptr + v_sz + r * G
        zq = zeros_ptr + v_sz + r * G
        acc = tl.zeros((F,), dtype=tl.float32)
        w1 = tl.load(wq + (g0 * WPG + j) * stride, mask=ok & (g0 * WPG + j < row_words) & (f * 0 + g0 < g1), other=0)
        for g in range(g0, g1):
            w = w1
            w1 = tl.load(wq + ((g + 1) * WPG + j) * stride, mask=ok & ((g + 1) * WPG + j < row_words) & (f * 0 + g + 1 < g1), other=0)
            sc = tl.load(sq + g, mask=ok, other=0.0).to(tl.float32)
            zp = tl.load(zq + g, mask=ok, other=0.0).to(tl.float32)
            xs = tl.sum(tl.load(xw_ptr + g * WPG + tl.arange(0, WPG)), axis=0)
            tg = t_ptr + g * (GS * 8) + j * 128  # word j's 8 pairs (16 entries each)
            a = tl.zeros((F,), dtype=tl.float32)
            for k in tl.static_range(8):  # nibble k: pair j * 8 + k of the group
                a += tl.load(tg + (k * 16 + ((w >> (4 * k)) & 15)))
            acc += sc * (a - tl.where(j == 0, zp * xs, 0.0))
        rr = tl.arange(0, BLOCK_R)
        rok = rr < count
        comp = rr >> dsh
        out = tl.sum(tl.reshape(acc, (WPG, BLOCK_R)), axis=0) * tl.load(svals_ptr + s_off + comp, mask=rok, other=0.0)
        tl.atomic_add(z_ptr + zcol + comp, out, mask=rok, sem="relaxed")


def _one_gs(dset: DeltaSet) -> int | None:
    """The set's group size where every tier shares one the lookup serves (32, 64 or 128), else None."""
    gss = {rec[NF - 1] for per in dset.mma_records for recs in per for rec in recs}
    return next(iter(gss)) if len(gss) == 1 and next(iter(gss)) in (32, 64, 128) else None


def serves(x: torch.Tensor, dset: DeltaSet, plan: RowPlan, zsum: torch.Tensor | None, fused: "Join | None" = None) -> bool:
    """Whether :func:`shrink` takes this call: switched on, one row on a GPU (or Triton's interpreter on
    the CPU), the GEMV path with its summed z (``zsum``), no fused join (``fused``, a :class:`.join.Join`:
    its arrivals count the GEMV shrink's programs), a slot the host knows, and every tier 2-bit as stored
    or as planes with one group size. Asks the set for its planes the first time (a rebuild, as the
    tensor-core kernels do: eager steps come before a graph is captured)."""
    if not (ENABLED and triton_ops.HAVE_TRITON and x.shape[0] == 1 and zsum is not None and fused is None and dset.n_slots):
        return False
    if not (x.is_cuda or triton_ops.interpreting()):
        return False
    if not triton_ops.zsum_ok(zsum, 1, dset) or known_slot(dset, plan) is None:
        return False
    dset.use_planes()
    return dset.mma_bit_widths == frozenset({2}) and _one_gs(dset) is not None


def table(x: torch.Tensor, zero: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(T (pairs, 16) float32, xw (words,) float32) of x's one row (see the module), covering the inputs
    rounded up to 128: one launch, which also zeroes ``zero`` (a contiguous float32 buffer) where given."""
    K = x.shape[1]
    n = triton.cdiv(K, 2 * TABLE_PAIRS)
    t = torch.empty(n * TABLE_PAIRS, 16, dtype=torch.float32, device=x.device)
    xw = torch.empty(n * TABLE_PAIRS // 8, dtype=torch.float32, device=x.device)
    zb = 0
    if zero is not None:
        if zero.dtype != torch.float32 or not zero.is_contiguous():
            raise KernelError("the lookup's table launch zeroes a contiguous float32 buffer only")
        zb = triton.next_power_of_2(max(1, triton.cdiv(zero.numel(), n)))
        if zb > triton_ops.ZERO_MAX_BLOCK:  # (few table programs for a large buffer: a launch of its own)
            zero.zero_()
            zb = 0
    _table_kernel[(n,)](x, t, xw, zero if zb else t, K, zero.numel() if zb else 0, PAIRS=TABLE_PAIRS, ZERO=zb, num_warps=4)
    return t, xw


def shrink(x: torch.Tensor, dset: DeltaSet, plan: RowPlan, zsum: torch.Tensor, pdl: bool | None = None,
           zero: torch.Tensor | None = None) -> torch.Tensor:
    """z (1, 1, zcols) = zsum += the set's shrink of x's one row by table lookup (the caller checked
    :func:`serves`): the table, then one launch over the 2-bit rows' lookup tiles and splits. zsum must be
    zero when the shrink runs: zeroed by the caller, or part of ``zero`` (a contiguous float32 buffer the
    table's launch zeroes first, as :func:`.linear.beside`'s buffer of d and the summed z).
    ``pdl``: as :func:`.triton_ops.shrink`'s (the expand launched after it may start early)."""
    K = x.shape[1]
    if K != dset.in_features:
        raise KernelError(f"input has {K} features; the deltas expect {dset.in_features}")
    if x.stride(1) != 1:
        x = x.contiguous()
    gs = _one_gs(dset)
    s = known_slot(dset, plan)
    tiles, ntiles, T, vt = dset.lut_tiles(TILE_R)
    split = max(1, min(MAX_SPLIT, triton.cdiv(K, gs)))
    t, xw = table(x, zero)
    blocks = plan_blocks(plan, 1)
    triton_ops.LAST["shrink"] = _lut_shrink_kernel[(dset.n_slices * T * split,)](
        t, xw, zsum, vt, dset.scales, dset.zeros, dset.svals, tiles, ntiles, blocks, K, dset.n_slices, T, s,
        SPLIT=split, BLOCK_R=TILE_R, GS=gs, USE_GDC=triton_ops.pdl_on(x, True if pdl is None else pdl), num_warps=WARPS)
    return zsum.view(1, 1, dset.zcols)
