"""Triton kernels that apply delta-come deltas straight from the packed tiers.

``y += ((x @ V^) * S) @ U^^T`` in two launches per set of linears that share an input, shaped
as vLLM's LoRA ops are: a *shrink* (x -> z, one program per block of components of one tier
of one slice of one slot, optionally split along the input dimension) and an *expand* (z -> y,
one program per block of output columns and run of components, looping over the tiers the run
crosses; a slot-slice cut into several runs has its float32 partials added into y by the last of
its programs to finish, as the GEMV expand does). The split of either is fixed by the shapes
(:func:`pick_split_k`: ~1024 shrink programs; :func:`dot_chunk`: ~256 expand programs, where
one per 128 output columns left most of an H200 idle; more runs cost more in partial sums than
they gain: measured in benchmarks/results/kernels_h200.md). Rows of the batch are grouped by slot through a :class:`RowPlan` (sorted rows,
counts, starts); a program whose slot serves fewer rows than its row block exits at once, so the
grid depends only on the batch size and the number of slots (a CUDA graph captures it; no host
sync, no per-token Python).

Dequantization happens in registers. A block of ``BLOCK_K`` (shrink) or ``BLOCK_N`` (expand)
packed values lies inside one quantization group (the block width divides the group size), so
the integer weights ``q - zero`` (exact in bf16/fp16: |q - zero| <= 255) go through ``tl.dot``
and the group's scale multiplies the fp32 result (shrink) or the other operand (expand).

Packed rows are read as whole words and split in registers (a (rows, words, fields) tensor
reshaped to (rows, values)), so every load is a run of consecutive words: b words per 32 values
for b in {1, 2, 4, 8}; for b = 3 the two low-bit words and the high-bit word of each chunk.

Two kernel pairs, chosen per batch by rows per fine-tune (:func:`use_gemv`, the same z between
them): the tl.dot pair above, and for up to ``GEMV_MAX_ROWS`` rows a fine-tune (decoding) a GEMV
pair without tl.dot. GEMV: every program serves one bit width (a shrink tile of one tier, an
expand work item of one tier, :meth:`DeltaSet.items`); the expand is split over components and
its partial sums are added in item order by the last program of each group to finish (a counter
per group, left at zero: one launch, deterministic, graph-safe); values are dequantized to
float32 by or-ing each field, shifted near the top of the mantissa, into the exponent of a power of
two c_f <= 256 (one LOP3 a value: no int->float conversion, no subtract; the offsets c_f and the
zero points come out once per word position or per row, :func:`_unpack_c`) and multiplied in float32; each
step reads ~2 KB of packed words a program and the next two steps' loads are issued before it is
computed (Triton pipelines no loop without tl.dot); the fields of a word are a leading, in-thread
axis (with them last, Triton's default layout gave each word to 16 threads: 255 registers).

What bounds both pairs on the H200 (Nsight Compute, benchmarks/results/kernels_h200.md) is memory
latency at low occupancy, not bandwidth (2-7% of DRAM peak) nor launches (1 us each in a graph):
so the code keeps chains of dependent loads short. A program's prologue loads (row count, tile
count, tile fields, first row: :func:`_slot_tile`) are issued together before any exit test, the
GEMV shrink reads its rows' activation offsets once, the GEMV expand loads z a step ahead with
the words, and its tail asks for y first and for the partials four items at a time. The GEMV grids
run over the batch's row blocks (:func:`deltaset.plan_blocks`: blocks of one slot's rows, a table
built on the device) instead of every (slot, row block) pair, so a batch over many fine-tunes
launches no program for rows a slot does not have (at 32 rows over 8 fine-tunes, 7 in 8 did).
"""

from __future__ import annotations

import functools
import os

import torch

from . import join
from .deltaset import ITEM_FIELDS, NF, DeltaSet, RowPlan, known_slot, plan_blocks
from .errors import KernelError

try:  # triton is optional: without it the torch reference ops serve (CPU users, CI without it)
    import triton
    import triton.language as tl

    HAVE_TRITON = True
    HAVE_GDC = hasattr(getattr(getattr(tl, "extra", None), "cuda", None), "gdc_wait")
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_TRITON = False
    HAVE_GDC = False


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def usable(t: torch.Tensor) -> bool:
    """Whether the Triton ops can run on tensors on this device (a GPU, or any under the interpreter)."""
    return HAVE_TRITON and (t.is_cuda or interpreting())


if HAVE_TRITON:

    @triton.jit
    def _unpack(ptr, row_off, row_ok, c0, row_words, BITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                GATHER: tl.constexpr):
        """int32 (BLOCK_R, BLOCK_C): values c0 .. c0 + BLOCK_C (c0 % 32 == 0) of packed rows whose
        first words are at ``ptr + row_off`` (BLOCK_R,); words past ``row_words`` read as 0.

        GATHER: each value loads its own word (neighbours share it: one transaction per warp) and
        shifts; otherwise each word is loaded once and split by a (rows, words, fields) reshape."""
        if GATHER:
            return _unpack_gather(ptr, row_off, row_ok, c0, row_words, BITS, BLOCK_C)
        else:
            return _unpack_reshape(ptr, row_off, row_ok, c0, row_words, BITS, BLOCK_R, BLOCK_C)

    @triton.jit
    def _unpack_gather(ptr, row_off, row_ok, c0, row_words, BITS: tl.constexpr, BLOCK_C: tl.constexpr):
        c = c0 + tl.arange(0, BLOCK_C)
        if BITS == 3:
            j = c % 32
            lo_idx = (c // 32) * 3 + j // 16
            hi_idx = (c // 32) * 3 + 2
            lo = tl.load(ptr + row_off[:, None] + lo_idx[None, :], mask=row_ok[:, None] & (lo_idx[None, :] < row_words), other=0)
            hi = tl.load(ptr + row_off[:, None] + hi_idx[None, :], mask=row_ok[:, None] & (hi_idx[None, :] < row_words), other=0)
            return ((lo >> (2 * (j % 16))[None, :]) & 3) | (((hi >> j[None, :]) & 1) << 2)
        else:
            FLD: tl.constexpr = 32 // BITS
            idx = c // FLD  # = (c // 32) * BITS + (c % 32) // FLD
            w = tl.load(ptr + row_off[:, None] + idx[None, :], mask=row_ok[:, None] & (idx[None, :] < row_words), other=0)
            return (w >> ((c % FLD) * BITS)[None, :]) & ((1 << BITS) - 1)

    @triton.jit
    def _unpack_reshape(ptr, row_off, row_ok, c0, row_words, BITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        w0 = (c0 // 32) * BITS
        if BITS == 3:
            NC: tl.constexpr = BLOCK_C // 32
            li = tl.arange(0, 2 * NC)
            lo_idx = w0 + (li // 2) * 3 + (li % 2)
            lo = tl.load(ptr + row_off[:, None] + lo_idx[None, :], mask=row_ok[:, None] & (lo_idx[None, :] < row_words), other=0)
            lo = (lo[:, :, None] >> (tl.arange(0, 16) * 2)[None, None, :]) & 3
            lo = tl.reshape(lo, (BLOCK_R, BLOCK_C))
            ci = tl.arange(0, NC)
            hi_idx = w0 + ci * 3 + 2
            hi = tl.load(ptr + row_off[:, None] + hi_idx[None, :], mask=row_ok[:, None] & (hi_idx[None, :] < row_words), other=0)
            hi = (hi[:, :, None] >> tl.arange(0, 32)[None, None, :]) & 1
            hi = tl.reshape(hi, (BLOCK_R, BLOCK_C))
            return lo | (hi << 2)
        else:
            FLD: tl.constexpr = 32 // BITS
            NW: tl.constexpr = BLOCK_C // FLD
            idx = w0 + tl.arange(0, NW)
            w = tl.load(ptr + row_off[:, None] + idx[None, :], mask=row_ok[:, None] & (idx[None, :] < row_words), other=0)
            v = (w[:, :, None] >> (tl.arange(0, FLD) * BITS)[None, None, :]) & ((1 << BITS) - 1)
            return tl.reshape(v, (BLOCK_R, BLOCK_C))

    @triton.jit
    def _tile_header(tb):
        """The nine fields of one tier/tile row at ``tb`` (deltaset.FIELDS order), or of a GEMV
        work item from its third field on (deltaset.ITEM_FIELDS[2:]): all loads issued together."""
        return (tl.load(tb + 0), tl.load(tb + 1), tl.load(tb + 2), tl.load(tb + 3), tl.load(tb + 4),
                tl.load(tb + 5), tl.load(tb + 6), tl.load(tb + 7), tl.load(tb + 8))

    @triton.jit
    def _gemv_entries(count_ptr, table_ptr, s, sl, t, n_slices, T_max, NF: tl.constexpr, F0: tl.constexpr):
        """A GEMV program's table entries for slot s: how many rows slot-slice (s, sl) has in
        ``table_ptr`` (tiles or items), and the nine fields of its row t from field F0 on."""
        return (tl.load(count_ptr + s * n_slices + sl),) + _tile_header(table_ptr + ((s * n_slices + sl) * T_max + t) * NF + F0)

    @triton.jit
    def _row_block(blocks_ptr, blk):
        """(slot or -1, first sorted position, rows) of row block ``blk`` (deltaset.plan_blocks)."""
        return tl.load(blocks_ptr + 3 * blk), tl.load(blocks_ptr + 3 * blk + 1), tl.load(blocks_ptr + 3 * blk + 2)

    @triton.jit
    def _slot_tile(counts_ptr, ntiles_ptr, starts_ptr, tiles_ptr, slot, sl, t, n_slices, T_max, NFIELD: tl.constexpr):
        """Rows of the slot, tiles of its slice, its first sorted row, then the tile's nine fields:
        every load of a shrink program's prologue issued at once, before any of them is waited on
        (the tile table is padded, so row t is readable whether or not the slot has that tile):
        one memory round trip instead of three before the packed words can be asked for."""
        cnt = tl.load(counts_ptr + slot)
        nt = tl.load(ntiles_ptr + slot * n_slices + sl)
        start = tl.load(starts_ptr + slot)
        v_q, v_sz, u_q, u_sz, s_off, bits, count, zcol, gs = _tile_header(tiles_ptr + ((slot * n_slices + sl) * T_max + t) * NFIELD)
        return cnt, nt, start, v_q, v_sz, u_q, u_sz, s_off, bits, count, zcol, gs

    @triton.jit
    def _dot(a, b, UPCAST: tl.constexpr):
        """tl.dot; UPCAST feeds it float32 copies of the (already rounded) operands, for Triton's
        CPU interpreter, whose bf16 dot gives garbage (Triton 3.9, seen 2026-11-30)."""
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32))
        else:
            return tl.dot(a, b)

    @triton.jit
    def _shrink_tile(x_ptr, rows, m_ok, K, stride_xm, words_ptr, scales_ptr, zeros_ptr, v_q, v_sz, r_ok, gs, kb0, kb1,
                     BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
                     GATHER: tl.constexpr):
        offs_r = tl.arange(0, BLOCK_R).to(tl.int64)
        row_words = BITS * ((K + 31) // 32)
        G = (K + gs - 1) // gs
        row_off = v_q + offs_r * row_words
        sz_row = v_sz + offs_r * G
        acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for kb in range(kb0, kb1):
            k0 = kb * BLOCK_K
            offs_k = k0 + tl.arange(0, BLOCK_K)
            xt = tl.load(x_ptr + rows[:, None] * stride_xm + offs_k[None, :], mask=m_ok[:, None] & (offs_k[None, :] < K), other=0.0)
            q = _unpack(words_ptr, row_off, r_ok, k0, row_words, BITS, BLOCK_R, BLOCK_K, GATHER)
            g = k0 // gs
            sc = tl.load(scales_ptr + sz_row + g, mask=r_ok, other=0.0).to(tl.float32)
            zp = tl.load(zeros_ptr + sz_row + g, mask=r_ok, other=0.0).to(tl.float32)
            w = (q.to(tl.float32) - zp[:, None]).to(xt.dtype)
            acc += _dot(xt, tl.trans(w), UPCAST) * sc[None, :]
        return acc

    @triton.jit
    def _shrink_kernel(x_ptr, z_ptr, words_ptr, scales_ptr, zeros_ptr, svals_ptr, tiles_ptr, ntiles_ptr,
                       rows_ptr, counts_ptr, starts_ptr,
                       M, K, ZC, n_slices, T_max, stride_xm,
                       NFIELD: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                       UPCAST: tl.constexpr, GATHER: tl.constexpr, HAS1: tl.constexpr, HAS2: tl.constexpr, HAS3: tl.constexpr, HAS4: tl.constexpr, HAS8: tl.constexpr):
        pid0 = tl.program_id(0)
        pid_m = tl.program_id(1)
        slot = tl.program_id(2)
        ks = pid0 % SPLIT_K
        tt = pid0 // SPLIT_K
        sl = tt // T_max
        t = tt % T_max
        cnt, nt, start, v_q, v_sz, _u_q, _u_sz, s_off, bits, nvalid, zcol, gs = _slot_tile(
            counts_ptr, ntiles_ptr, starts_ptr, tiles_ptr, slot, sl, t, n_slices, T_max, NFIELD)
        if (pid_m * BLOCK_M >= cnt) | (t >= nt):
            return
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = offs_m < cnt
        pos = start + offs_m
        rows = tl.load(rows_ptr + pos, mask=m_ok, other=0).to(tl.int64)
        offs_r = tl.arange(0, BLOCK_R)
        r_ok = offs_r < nvalid
        nkb = tl.cdiv(K, BLOCK_K)
        per = tl.cdiv(nkb, SPLIT_K)
        kb0 = ks * per
        kb1 = tl.minimum(kb0 + per, nkb)
        acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        if HAS2:
            if bits == 2:
                acc = _shrink_tile(x_ptr, rows, m_ok, K, stride_xm, words_ptr, scales_ptr, zeros_ptr, v_q, v_sz, r_ok, gs, kb0, kb1, 2, BLOCK_M, BLOCK_R, BLOCK_K, UPCAST, GATHER)
        if HAS3:
            if bits == 3:
                acc = _shrink_tile(x_ptr, rows, m_ok, K, stride_xm, words_ptr, scales_ptr, zeros_ptr, v_q, v_sz, r_ok, gs, kb0, kb1, 3, BLOCK_M, BLOCK_R, BLOCK_K, UPCAST, GATHER)
        if HAS8:
            if bits == 8:
                acc = _shrink_tile(x_ptr, rows, m_ok, K, stride_xm, words_ptr, scales_ptr, zeros_ptr, v_q, v_sz, r_ok, gs, kb0, kb1, 8, BLOCK_M, BLOCK_R, BLOCK_K, UPCAST, GATHER)
        if HAS4:
            if bits == 4:
                acc = _shrink_tile(x_ptr, rows, m_ok, K, stride_xm, words_ptr, scales_ptr, zeros_ptr, v_q, v_sz, r_ok, gs, kb0, kb1, 4, BLOCK_M, BLOCK_R, BLOCK_K, UPCAST, GATHER)
        if HAS1:
            if bits == 1:
                acc = _shrink_tile(x_ptr, rows, m_ok, K, stride_xm, words_ptr, scales_ptr, zeros_ptr, v_q, v_sz, r_ok, gs, kb0, kb1, 1, BLOCK_M, BLOCK_R, BLOCK_K, UPCAST, GATHER)
        sv = tl.load(svals_ptr + s_off + offs_r, mask=r_ok, other=0.0)
        acc = acc * sv[None, :]
        zptr = z_ptr + (ks * M + pos.to(tl.int64))[:, None] * ZC + zcol + offs_r[None, :]
        tl.store(zptr, acc, mask=m_ok[:, None] & r_ok[None, :])

    @triton.jit
    def _expand_tier(acc, z_ptr, pos, m_ok, M, ZC, words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, c_lo, c_hi, zcol, gs, m_s, n0,
                     dtype: tl.constexpr, BITS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                     UPCAST: tl.constexpr, GATHER: tl.constexpr):
        """acc + z[:, c_lo:c_hi] U^^T[c_lo:c_hi] for components c_lo .. c_hi of one tier (its U rows
        at u_q, its scales and zeros at u_sz, its z columns from zcol), output columns n0 .. n0 + BLOCK_N."""
        row_words = BITS * ((m_s + 31) // 32)
        G = (m_s + gs - 1) // gs
        g = n0 // gs
        offs_r0 = tl.arange(0, BLOCK_R)
        for c0 in range(c_lo, c_hi, BLOCK_R):
            offs_r = c0 + offs_r0
            r_ok = offs_r < c_hi
            zt = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
            for ks in tl.static_range(SPLIT_K):
                zt += tl.load(z_ptr + (ks * M + pos)[:, None] * ZC + zcol + offs_r[None, :], mask=m_ok[:, None] & r_ok[None, :], other=0.0)
            r64 = offs_r.to(tl.int64)
            sc = tl.load(scales_ptr + u_sz + r64 * G + g, mask=r_ok, other=0.0).to(tl.float32)
            zp = tl.load(zeros_ptr + u_sz + r64 * G + g, mask=r_ok, other=0.0).to(tl.float32)
            q = _unpack(words_ptr, u_q + r64 * row_words, r_ok, n0, row_words, BITS, BLOCK_R, BLOCK_N, GATHER)
            w = (q.to(tl.float32) - zp[:, None]).to(dtype)
            a = (zt * sc[None, :]).to(dtype)
            acc += _dot(a, w, UPCAST)
        return acc

    @triton.jit
    def _block_rows(rows_ptr, pos0, nrows, offs_mm):
        """int64 batch rows of a row block's positions pos0 + offs_mm (0 past its nrows rows)."""
        return tl.load(rows_ptr + pos0 + offs_mm, mask=offs_mm < nrows, other=0).to(tl.int64)

    @triton.jit
    def _y_add(y_ptr, rows_ptr, pos0, nrows, cols, c_ok, stride_ym, acc, BLOCK_M: tl.constexpr):
        """y[rows of the block, cols] += acc (float32), rounded once to y's dtype."""
        offs_mm = tl.arange(0, BLOCK_M)
        mk = (offs_mm < nrows)[:, None] & c_ok[None, :]
        rows = _block_rows(rows_ptr, pos0, nrows, offs_mm)
        yptr = y_ptr + (rows * stride_ym)[:, None] + cols[None, :]
        yv = tl.load(yptr, mask=mk, other=0.0).to(tl.float32)
        tl.store(yptr, (yv + acc).to(y_ptr.dtype.element_ty), mask=mk)

    @triton.jit
    def _parts_into_y(y_ptr, part_ptr, sem, rows_ptr, pos0, nrows, nj, M, Ntot, stride_ym, col0, n0, m_s,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, AT_ONCE: tl.constexpr = 4):
        """The split expands' handshake, after a program stored its partial sum (rows pos0 .. of the
        block, Ntot columns, one (M, Ntot) plane per run j of components): it counts itself on its
        group's counter ``sem``, and the last of the group's ``nj`` programs to finish adds the
        partials, in run order, into y and resets the counter: one launch, the same numbers whatever
        the order the programs ran in, the counters left at zero (a CUDA graph replays it)."""
        # every thread's partial is stored before one thread releases the counter
        tl.debug_barrier()
        done = tl.atomic_add(sem, 1, sem="acq_rel")
        if done == nj - 1:
            # y is asked for first, and the partials AT_ONCE runs at a time (not one wait per run;
            # AT_ONCE x BLOCK_M x BLOCK_N float32 values held at once: 4 x 64 x 128 spilled)
            offs_mm = tl.arange(0, BLOCK_M)
            cols = col0 + n0 + tl.arange(0, BLOCK_N)
            mk = (offs_mm < nrows)[:, None] & (cols < col0 + m_s)[None, :]
            rows = _block_rows(rows_ptr, pos0, nrows, offs_mm)
            yptr = y_ptr + (rows * stride_ym)[:, None] + cols[None, :]
            yv = tl.load(yptr, mask=mk, other=0.0).to(tl.float32)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            j4 = tl.arange(0, AT_ONCE)
            for j0 in range(0, nj, AT_ONCE):
                jj = j0 + j4
                pp = part_ptr + ((jj[:, None] * M + pos0 + offs_mm[None, :]).to(tl.int64) * Ntot)[:, :, None] + cols[None, None, :]
                pj = tl.load(pp, mask=(jj < nj)[:, None, None] & mk[None, :, :], other=0.0, cache_modifier=".cg")
                acc += tl.sum(pj, axis=0)
            tl.store(yptr, (yv + acc).to(y_ptr.dtype.element_ty), mask=mk)
            tl.atomic_xchg(sem, 0)

    @triton.jit
    def _expand_kernel(z_ptr, y_ptr, part_ptr, sem_ptr, words_ptr, scales_ptr, zeros_ptr, tiers_ptr, ntiers_ptr, ranks_ptr,
                       rows_ptr, blocks_ptr, mout_ptr, coloff_ptr,
                       M, ZC, Ntot, NB_max, n_slices, R_max, J_max, chunk, stride_ym,
                       NFIELD: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                       UPCAST: tl.constexpr, GATHER: tl.constexpr, HAS1: tl.constexpr, HAS2: tl.constexpr, HAS3: tl.constexpr, HAS4: tl.constexpr, HAS8: tl.constexpr):
        """y[rows, cols] += z U^^T with tl.dot. Program (column block, (slice, run j), row block of the
        batch): a row block holds rows of one slot (deltaset.plan_blocks); run j is the slot-slice's
        components j * chunk .. (j + 1) * chunk, counted across its tiers in order (a run may
        cross tiers: each part is computed at its own width). A slot-slice of one run adds into y
        at once; otherwise each run stores its partial and the last adds them (_parts_into_y)."""
        pid_n = tl.program_id(0)
        pj = tl.program_id(1)
        blk = tl.program_id(2)
        sl = pj // J_max
        j = pj % J_max
        slot, pos0, nrows = _row_block(blocks_ptr, blk)
        s = tl.maximum(slot, 0)
        nt = tl.load(ntiers_ptr + s * n_slices + sl)
        rank = tl.load(ranks_ptr + s * n_slices + sl)
        m_s = tl.load(mout_ptr + sl)
        col0 = tl.load(coloff_ptr + sl)
        n0 = pid_n * BLOCK_N
        nj = tl.cdiv(rank, chunk)
        if (slot < 0) | (j >= nj) | (n0 >= m_s):
            return
        lo = j * chunk
        hi = tl.minimum(lo + chunk, rank)
        offs_m = tl.arange(0, BLOCK_M)
        m_ok = offs_m < nrows
        pos = (pos0 + offs_m).to(tl.int64)
        dtype = y_ptr.dtype.element_ty
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        t0 = tl.zeros((), dtype=tl.int32)  # the tier's first component in the slot-slice
        for t in range(0, nt):
            _v_q, _v_sz, u_q, u_sz, _s_off, bits, cnt_t, zcol, gs = _tile_header(tiers_ptr + ((s * n_slices + sl) * R_max + t) * NFIELD)
            a = tl.maximum(lo - t0, 0)
            b = tl.minimum(hi - t0, cnt_t.to(tl.int32))
            if a < b:
                if HAS2:
                    if bits == 2:
                        acc = _expand_tier(acc, z_ptr, pos, m_ok, M, ZC, words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, a, b, zcol, gs, m_s, n0, dtype, 2, SPLIT_K, BLOCK_M, BLOCK_R, BLOCK_N, UPCAST, GATHER)
                if HAS3:
                    if bits == 3:
                        acc = _expand_tier(acc, z_ptr, pos, m_ok, M, ZC, words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, a, b, zcol, gs, m_s, n0, dtype, 3, SPLIT_K, BLOCK_M, BLOCK_R, BLOCK_N, UPCAST, GATHER)
                if HAS8:
                    if bits == 8:
                        acc = _expand_tier(acc, z_ptr, pos, m_ok, M, ZC, words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, a, b, zcol, gs, m_s, n0, dtype, 8, SPLIT_K, BLOCK_M, BLOCK_R, BLOCK_N, UPCAST, GATHER)
                if HAS4:
                    if bits == 4:
                        acc = _expand_tier(acc, z_ptr, pos, m_ok, M, ZC, words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, a, b, zcol, gs, m_s, n0, dtype, 4, SPLIT_K, BLOCK_M, BLOCK_R, BLOCK_N, UPCAST, GATHER)
                if HAS1:
                    if bits == 1:
                        acc = _expand_tier(acc, z_ptr, pos, m_ok, M, ZC, words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, a, b, zcol, gs, m_s, n0, dtype, 1, SPLIT_K, BLOCK_M, BLOCK_R, BLOCK_N, UPCAST, GATHER)
            t0 += cnt_t.to(tl.int32)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < m_s
        if nj == 1:
            _y_add(y_ptr, rows_ptr, pos0, nrows, col0 + offs_n, n_ok, stride_ym, acc, BLOCK_M)
        else:
            pptr = part_ptr + ((j * M + pos) * Ntot)[:, None] + (col0 + offs_n)[None, :]
            tl.store(pptr, acc, mask=m_ok[:, None] & n_ok[None, :])
            sem = sem_ptr + (blk * n_slices + sl) * NB_max + pid_n
            _parts_into_y(y_ptr, part_ptr, sem, rows_ptr, pos0, nrows, nj, M, Ntot, stride_ym, col0, n0, m_s, BLOCK_M, BLOCK_N,
                          4 if BLOCK_M <= 16 else 1)

    @triton.jit
    def _dequant_kernel(q_ptr, s_ptr, z_ptr, out_ptr, R, L, gs, BITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        pid_r = tl.program_id(0)
        pid_c = tl.program_id(1)
        offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        r_ok = offs_r < R
        r64 = offs_r.to(tl.int64)
        c0 = pid_c * BLOCK_C
        row_words = BITS * ((L + 31) // 32)
        G = (L + gs - 1) // gs
        q = _unpack(q_ptr, r64 * row_words, r_ok, c0, row_words, BITS, BLOCK_R, BLOCK_C, True)
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < L
        g = offs_c // gs
        m2 = r_ok[:, None] & c_ok[None, :]
        sc = tl.load(s_ptr + r64[:, None] * G + g[None, :], mask=m2, other=0.0).to(tl.float32)
        zp = tl.load(z_ptr + r64[:, None] * G + g[None, :], mask=m2, other=0.0).to(tl.float32)
        tl.store(out_ptr + r64[:, None] * L + offs_c[None, :], (q.to(tl.float32) - zp) * sc, mask=m2)

    @triton.jit
    def _add_f32_kernel(y_ptr, d_ptr, n, BLOCK: tl.constexpr):
        """y += d (float32) over n contiguous values, rounded once to y's dtype."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n
        d = tl.load(d_ptr + offs, mask=ok, other=0.0)
        yv = tl.load(y_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, (yv + d).to(y_ptr.dtype.element_ty), mask=ok)

    # ---------------------------------------------------------------------------------------------
    # GEMV path (few rows per fine-tune): no tl.dot, one bit width per program, split work
    #
    # Per value of a packed row the GEMV does one LOP3 (mask and or: a field placed at bit p and
    # or-ed into the exponent of 2^(23 - p) is the float32 2^(23 - p) + q; one shift serves a run of
    # fields) and one FMA per row of the batch (_unpack_c, FAST). The earlier unpack (_unpack_f:
    # shift, mask-or with 2^23, subtract 2^23 + zero point) stays as FAST=False for A/B runs and
    # for GEMV_FAST_EXPAND_MAX_M.
    # Words are split in registers along a third axis (rows, words, fields) and the activations are
    # loaded in the same (words, fields) shape, so no reshape or shared-memory shuffle is needed.
    # ---------------------------------------------------------------------------------------------

    @triton.jit
    def _unpack_f(w, sh, BITS: tl.constexpr, AXIS: tl.constexpr):
        """float32: 2^23 + each BITS-bit field of the int32 words w, the fields along a new axis AXIS
        (0 or 1) of length len(sh) (sh: the fields' shifts). The fields' axis comes before the words'
        axes, so a thread keeps every field of the words it loaded: no word is held by two threads."""
        if AXIS == 0:
            q = (w[None, :, :, :] >> sh[:, None, None, None]) & ((1 << BITS) - 1)
        else:
            q = (w[:, None, :, :] >> sh[None, :, None, None]) & ((1 << BITS) - 1)
        return (q | 0x4B000000).to(tl.float32, bitcast=True)

    @triton.jit
    def _field_pos(f, BITS: tl.constexpr):
        """Bit position p at which field f of a word is placed before it becomes a float (see
        _unpack_c): fields go in runs of PER (one shift a run) to p = 23 - BITS - (PER - 1 - i) * BITS."""
        PER: tl.constexpr = 4 if BITS == 2 else (8 if BITS == 1 else (2 if BITS == 4 else 1))
        return (23 - BITS) - (PER - 1 - f % PER) * BITS

    @triton.jit
    def _field_c(f, BITS: tl.constexpr):
        """float32 offset c_f = 2^(23 - p_f) that _unpack_c adds to field f (a power of two <= 256)."""
        return ((150 - _field_pos(f, BITS)) << 23).to(tl.float32, bitcast=True)

    @triton.jit
    def _unpack_c(w, f, one, BITS: tl.constexpr, AXIS: tl.constexpr):
        """float32 c_f + q_f for each BITS-bit field f of the int32 words w, fields along a new axis
        AXIS (0 or 1) as in _unpack_f. Field f is shifted to bit p_f (one shift serves a run of
        fields) and or-ed into the exponent of 2^(23 - p_f): one LOP3 a value, no int->float and no
        subtract (the offsets c_f <= 256 are taken out once per word position by the caller, from
        sums that do not depend on the component). The exponents are multiplied by ``one`` (a runtime
        1): a constant held in a register lets ptxas fuse the mask and the or into one LOP3 (with both
        as immediates it emits two)."""
        p = _field_pos(f, BITS)
        r = f * BITS - p  # right shift (negative: left)
        rr = tl.maximum(r, 0)
        ll = tl.maximum(-r, 0)
        mk = ((1 << BITS) - 1) << p
        u = w.to(tl.uint32, bitcast=True)
        if AXIS == 0:
            t = tl.where((r >= 0)[:, None, None, None], u[None, :, :, :] >> rr.to(tl.uint32)[:, None, None, None],
                         u[None, :, :, :] << ll.to(tl.uint32)[:, None, None, None])
            v = (t & mk.to(tl.uint32)[:, None, None, None]) | (((150 - p) << 23) * one).to(tl.uint32)[:, None, None, None]
        else:
            t = tl.where((r >= 0)[None, :, None, None], u[:, None, :, :] >> rr.to(tl.uint32)[None, :, None, None],
                         u[:, None, :, :] << ll.to(tl.uint32)[None, :, None, None])
            v = (t & mk.to(tl.uint32)[None, :, None, None]) | (((150 - p) << 23) * one).to(tl.uint32)[None, :, None, None]
        return v.to(tl.float32, bitcast=True)

    @triton.jit
    def _step_words(words_ptr, wrow, r_ok, k0, k_hi, row_words, BITS: tl.constexpr, NG: tl.constexpr, BLOCK_G: tl.constexpr,
                    IDX: tl.constexpr, NIDX: tl.constexpr, FLAT: tl.constexpr = False):
        """int32 (R, NG, NIDX): the words of one step (NG sub-blocks of BLOCK_G values from k0) of
        the component rows at ``wrow``; IDX picks the plane: 0 all words of b in {1,2,4,8}, 1 the
        two low-bit words of each 3-bit chunk, 2 its high-bit word. Words past k_hi read as 0.
        FLAT (IDX 0, NIDX the words of a sub-block): loaded as (R, NG * NIDX), whose second axis the
        compiler sees as contiguous, then reshaped: the load's layout is then the unpack's (a warp's
        32 lanes over one row's 32 consecutive words), where the (R, NG, NIDX) load was laid out
        otherwise and converted through shared memory every step (a store, a barrier, a load)."""
        if FLAT:
            f = tl.arange(0, NG * NIDX)
            widx_f = (k0 // 32) * BITS + f
            mf = r_ok[:, None] & ((k0 + (f // NIDX) * BLOCK_G) < k_hi)[None, :] & (widx_f < row_words)[None, :]
            wf = tl.load(words_ptr + wrow[:, None] + widx_f[None, :], mask=mf, other=0)
            return tl.reshape(wf, (wrow.shape[0], NG, NIDX))
        kg = k0 + tl.arange(0, NG) * BLOCK_G
        j = tl.arange(0, NIDX)
        if IDX == 0:
            within = j
        elif IDX == 1:
            within = (j // 2) * 3 + (j % 2)
        else:
            within = j * 3 + 2
        widx = ((kg // 32) * BITS)[:, None] + within[None, :]
        m = r_ok[:, None, None] & (kg < k_hi)[None, :, None] & (widx < row_words)[None, :, :]
        return tl.load(words_ptr + wrow[:, None, None] + widx[None, :, :], mask=m, other=0)

    @triton.jit
    def _step_sz(ptr, szrow, r_ok, k0, k_hi, inv_gs, NG: tl.constexpr, BLOCK_G: tl.constexpr):
        """fp16 (R, NG): the scale (or zero) of each sub-block of one step, per component row.
        The group kg // gs is floor((kg + 0.5) * (1 / gs)) in float32 (exact for kg < 2^22, which
        shrink() checks): a multiply and a convert instead of a ~25-instruction integer division."""
        kg = k0 + tl.arange(0, NG) * BLOCK_G
        g = ((kg.to(tl.float32) + 0.5) * inv_gs).to(tl.int32)
        return tl.load(ptr + szrow[:, None] + g[None, :], mask=r_ok[:, None] & (kg < k_hi)[None, :], other=0.0)

    @triton.jit
    def _row_base(rows_ptr, pos0, nrows, stride_xm, m: tl.constexpr, BLOCK_M: tl.constexpr):
        """Offset of the activations of the block's row m (the last real row for padding rows), or 0
        where the block has no row m (BLOCK_M is small: 1, 2 or 4)."""
        if m < BLOCK_M:
            return tl.load(rows_ptr + pos0 + tl.minimum(nrows - 1, m)).to(tl.int64) * stride_xm
        else:
            return tl.zeros((), dtype=tl.int64)

    @triton.jit
    def _pick(m: tl.constexpr, a, b, c, d):
        """a, b, c or d by the compile-time index m."""
        if m == 0:
            return a
        elif m == 1:
            return b
        elif m == 2:
            return c
        else:
            return d

    @triton.jit
    def _gemv_shrink_tile(x_ptr, rows_ptr, pos0, nrows, K, stride_xm, words_ptr, scales_ptr, zeros_ptr, v_q, v_sz, r_ok, gs, k_lo, k_hi, one,
                          BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr, FAST: tl.constexpr,
                          ONE_ROW: tl.constexpr = False, FLAT: tl.constexpr = False):
        """(BLOCK_M, BLOCK_R) float32: rows . V^ components over inputs k_lo .. k_hi (multiples of
        BLOCK_G, which divides the group size). A step reads NG sub-blocks of BLOCK_G values of
        every component row (~2 KB of words a tile), and the words, scales and zeros of the next
        two steps are loaded before this one is computed: Triton pipelines no loop without tl.dot,
        so this keeps bytes in flight while the registers hold one step unpacked. Products are
        summed over the fields in-thread each step and over words and sub-blocks once, at the end.
        ONE_ROW: the batch is one row, x's row 0 (its offset is not read from the rows table). FLAT:
        the 1/2/4/8-bit words loaded as one contiguous run a row (see _step_words)."""
        NG: tl.constexpr = 2 if BITS == 3 else (8 // BITS if BITS < 8 else 1)
        BK: tl.constexpr = NG * BLOCK_G
        offs_r = tl.arange(0, BLOCK_R)
        offs_mm = tl.arange(0, BLOCK_M)
        sub = tl.arange(0, NG)
        row_words = BITS * ((K + 31) // 32)
        G = (K + gs - 1) // gs
        wrow = v_q + offs_r * row_words
        szrow = v_sz + offs_r * G
        inv_gs = 1.0 / gs.to(tl.float32)
        # the rows' activation offsets once, not per step (a load waited on before every x load)
        if ONE_ROW:
            xb0 = tl.zeros((), dtype=tl.int64)
        else:
            xb0 = _row_base(rows_ptr, pos0, nrows, stride_xm, 0, BLOCK_M)
        xb1 = _row_base(rows_ptr, pos0, nrows, stride_xm, 1, BLOCK_M)
        xb2 = _row_base(rows_ptr, pos0, nrows, stride_xm, 2, BLOCK_M)
        xb3 = _row_base(rows_ptr, pos0, nrows, stride_xm, 3, BLOCK_M)
        s1 = _step_sz(scales_ptr, szrow, r_ok, k_lo, k_hi, inv_gs, NG, BLOCK_G)
        z1 = _step_sz(zeros_ptr, szrow, r_ok, k_lo, k_hi, inv_gs, NG, BLOCK_G)
        s2 = _step_sz(scales_ptr, szrow, r_ok, k_lo + BK, k_hi, inv_gs, NG, BLOCK_G)
        z2 = _step_sz(zeros_ptr, szrow, r_ok, k_lo + BK, k_hi, inv_gs, NG, BLOCK_G)
        if BITS == 3:
            NC: tl.constexpr = BLOCK_G // 32
            li = tl.arange(0, 2 * NC)
            ci = tl.arange(0, NC)
            f16 = tl.arange(0, 16)
            f32 = tl.arange(0, 32)
            acc3 = tl.zeros((BLOCK_M, BLOCK_R, NG), dtype=tl.float32)
            a1 = _step_words(words_ptr, wrow, r_ok, k_lo, k_hi, row_words, 3, NG, BLOCK_G, 1, 2 * NC)
            b1 = _step_words(words_ptr, wrow, r_ok, k_lo, k_hi, row_words, 3, NG, BLOCK_G, 2, NC)
            a2 = _step_words(words_ptr, wrow, r_ok, k_lo + BK, k_hi, row_words, 3, NG, BLOCK_G, 1, 2 * NC)
            b2 = _step_words(words_ptr, wrow, r_ok, k_lo + BK, k_hi, row_words, 3, NG, BLOCK_G, 2, NC)
            for k0 in range(k_lo, k_hi, BK):
                wl, wh, sc, zp = a1, b1, s1.to(tl.float32), z1.to(tl.float32) + 8388608.0
                a1, b1, s1, z1 = a2, b2, s2, z2
                a2 = _step_words(words_ptr, wrow, r_ok, k0 + 2 * BK, k_hi, row_words, 3, NG, BLOCK_G, 1, 2 * NC)
                b2 = _step_words(words_ptr, wrow, r_ok, k0 + 2 * BK, k_hi, row_words, 3, NG, BLOCK_G, 2, NC)
                s2 = _step_sz(scales_ptr, szrow, r_ok, k0 + 2 * BK, k_hi, inv_gs, NG, BLOCK_G)
                z2 = _step_sz(zeros_ptr, szrow, r_ok, k0 + 2 * BK, k_hi, inv_gs, NG, BLOCK_G)
                kg = k0 + sub * BLOCK_G
                ql = _unpack_f(wl, f16 * 2, 2, 0) - zp[None, :, :, None]  # (16, R, NG, 2NC): low planes minus the zero point
                qh = (_unpack_f(wh, f32, 1, 0) - 8388608.0) * 4.0  # (32, R, NG, NC): the high plane, weight 4
                xl_idx = kg[None, :, None] + li[None, None, :] * 16 + (f16 * one)[:, None, None]  # (16, NG, 2NC)
                xh_idx = kg[None, :, None] + ci[None, None, :] * 32 + (f32 * one)[:, None, None]  # (32, NG, NC)
                for m in tl.static_range(BLOCK_M):
                    xb = _pick(m, xb0, xb1, xb2, xb3)
                    xl = tl.load(x_ptr + xb + xl_idx, mask=(xl_idx < k_hi) & (xl_idx * 0 + m < nrows), other=0.0).to(tl.float32)
                    xh = tl.load(x_ptr + xb + xh_idx, mask=(xh_idx < k_hi) & (xh_idx * 0 + m < nrows), other=0.0).to(tl.float32)
                    p = tl.sum(tl.sum(ql * xl[:, None, :, :], axis=0), axis=2) + tl.sum(tl.sum(qh * xh[:, None, :, :], axis=0), axis=2)
                    acc3 = tl.where(offs_mm[:, None, None] == m, acc3 + (p * sc)[None, :, :], acc3)
            return tl.sum(acc3, axis=2)
        else:
            FLD: tl.constexpr = 32 // BITS
            NW: tl.constexpr = BLOCK_G // FLD
            wi = tl.arange(0, NW)
            fi = tl.arange(0, FLD)
            acc4 = tl.zeros((BLOCK_M, BLOCK_R, NG, NW), dtype=tl.float32)
            w1 = _step_words(words_ptr, wrow, r_ok, k_lo, k_hi, row_words, BITS, NG, BLOCK_G, 0, NW, FLAT)
            w2 = _step_words(words_ptr, wrow, r_ok, k_lo + BK, k_hi, row_words, BITS, NG, BLOCK_G, 0, NW, FLAT)
            cf = _field_c(fi, BITS)[:, None, None]  # (FLD, 1, 1): the offsets _unpack_c adds
            for k0 in range(k_lo, k_hi, BK):
                if FAST:
                    w, sc, zp = w1, s1.to(tl.float32), z1.to(tl.float32)
                else:
                    w, sc, zp = w1, s1.to(tl.float32), z1.to(tl.float32) + 8388608.0
                w1, s1, z1 = w2, s2, z2
                w2 = _step_words(words_ptr, wrow, r_ok, k0 + 2 * BK, k_hi, row_words, BITS, NG, BLOCK_G, 0, NW, FLAT)
                s2 = _step_sz(scales_ptr, szrow, r_ok, k0 + 2 * BK, k_hi, inv_gs, NG, BLOCK_G)
                z2 = _step_sz(zeros_ptr, szrow, r_ok, k0 + 2 * BK, k_hi, inv_gs, NG, BLOCK_G)
                kg = k0 + sub * BLOCK_G
                if FAST:
                    q = _unpack_c(w, fi, one, BITS, 0)  # (FLD, R, NG, NW): c_f + q
                else:
                    q = _unpack_f(w, fi * BITS, BITS, 0) - zp[None, :, :, None]  # (FLD, R, NG, NW)
                x_idx = kg[None, :, None] + wi[None, None, :] * FLD + (fi * one)[:, None, None]  # (FLD, NG, NW)
                xf_idx = k0 + tl.arange(0, NG * NW * FLD)  # FLAT: the same inputs as one run, (NG, NW, FLD) in order
                for m in tl.static_range(BLOCK_M):
                    xb = _pick(m, xb0, xb1, xb2, xb3)
                    if FLAT:
                        xv = tl.load(x_ptr + xb + xf_idx, mask=(xf_idx < k_hi) & (xf_idx * 0 + m < nrows), other=0.0)
                        xv = tl.permute(tl.reshape(xv, (NG, NW, FLD)), (2, 0, 1)).to(tl.float32)
                    else:
                        xv = tl.load(x_ptr + xb + x_idx, mask=(x_idx < k_hi) & (x_idx * 0 + m < nrows), other=0.0).to(tl.float32)
                    if FAST:
                        # sum_f x_f (q_f - zp) = sum_f x_f (c_f + q_f) - (sum_f x_f c_f + zp sum_f x_f): the two x
                        # sums are per word position, shared by the thread's components
                        # (taken from x as broadcast for the product, so no second layout conversion)
                        xe = xv[:, None, :, :]  # (FLD, 1, NG, NW)
                        xs = tl.sum(xe, axis=0)  # (1, NG, NW)
                        xc = tl.sum(xe * cf[:, None, :, :], axis=0)
                        a = tl.sum(q * xe, axis=0)  # (R, NG, NW)
                        p = (a - xc - zp[:, :, None] * xs) * sc[:, :, None]
                    else:
                        p = tl.sum(q * xv[:, None, :, :], axis=0) * sc[:, :, None]  # (R, NG, NW)
                    acc4 = tl.where(offs_mm[:, None, None, None] == m, acc4 + p[None, :, :, :], acc4)
            return tl.sum(tl.sum(acc4, axis=3), axis=2)

    @triton.jit(do_not_specialize=["one", "s_known"])
    def _gemv_shrink_kernel(x_ptr, z_ptr, words_ptr, scales_ptr, zeros_ptr, svals_ptr, tiles_ptr, ntiles_ptr,
                            rows_ptr, blocks_ptr, o_ptr,
                            M, K, ZC, n_slices, T_max, stride_xm, one, o_n, s_known,
                            NFIELD: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                            HAS1: tl.constexpr, HAS2: tl.constexpr, HAS3: tl.constexpr, HAS4: tl.constexpr, HAS8: tl.constexpr,
                            FAST: tl.constexpr = True, USE_GDC: tl.constexpr = False, ZERO: tl.constexpr = 0,
                            KNOWN: tl.constexpr = False, ONE_ROW: tl.constexpr = False, FIELDS_FIRST: tl.constexpr = False,
                            Z_ATOMIC: tl.constexpr = False, FLAT: tl.constexpr = False):
        """z[ks, p, zcol + j] = S_j * sum over split ks of x[row p] . V^_j: one tile of BLOCK_R
        components of one tier (one bit width), one split of the inputs and one block of rows of
        one slot (deltaset.plan_blocks: no program for rows a slot does not have) per program.
        ZERO > 0: each program first zeroes its ZERO floats of o (o_n of them, the float32 output
        the expand then adds into: see :func:`shrink`'s ``zero``), exits or not.
        KNOWN: every block's slot is s_known or -1 (the host knows: deltaset.known_slot), so the tile's
        entries are asked for beside the row block, not after it; ONE_ROW: the batch is one row (x's row
        0); FIELDS_FIRST: the tile's fields are read before the exit test, not sunk below it. Each
        takes memory round trips off the chain before the first packed word (see GEMV_KNOWN_SLOT).
        Z_ATOMIC: every split adds its sums into z[0] (zeroed before the launch) by relaxed float32
        atomics, so the expand reads one z a component instead of SPLIT_K (see GEMV_Z_ATOMIC)."""
        if USE_GDC:  # the expand launched after it (PDL) may start as this grid's last programs start
            tl.extra.cuda.gdc_launch_dependents()
        if ZERO > 0:  # (the expand reads o only after this grid is done: stream order, or its PDL wait)
            zo = (tl.program_id(0) + tl.program_id(1) * tl.num_programs(0)).to(tl.int64) * ZERO + tl.arange(0, ZERO)
            tl.store(o_ptr + zo, tl.zeros((ZERO,), dtype=tl.float32), mask=zo < o_n)
        pid0 = tl.program_id(0)
        blk = tl.program_id(1)
        ks = pid0 % SPLIT_K
        tt = pid0 // SPLIT_K
        sl = tt // T_max
        t = tt % T_max
        slot, pos0, nrows = _row_block(blocks_ptr, blk)
        if KNOWN:  # not waiting on the block's slot: the known one's entries
            s = s_known
        else:
            s = tl.maximum(slot, 0)  # every table read below is in bounds; the exit test comes after them
        nt, v_q, v_sz, _u_q, _u_sz, s_off, bits, nvalid, zcol, gs = _gemv_entries(ntiles_ptr, tiles_ptr, s, sl, t, n_slices, T_max, NFIELD, 0)
        offs_r = tl.arange(0, BLOCK_R)
        r_ok = offs_r < nvalid
        # a split's share of the inputs is whole 2-bit steps (4 blocks), so no step is partly masked
        per = tl.cdiv(tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K), 4) * 4 * BLOCK_K
        kb0 = ks * per
        kb1 = tl.minimum(kb0 + per, K)
        dead = (slot < 0) | (t >= nt)
        if FIELDS_FIRST:
            # the compiler sinks loads whose values are used only below an exit branch (a round trip
            # after the test's own); with every field in the test (the tables hold offsets and counts
            # >= 0, so this term is never true) they are asked for beside the row block
            dead = dead | ((v_q | v_sz | s_off | bits | nvalid | zcol | gs) < 0)
        if dead:
            return
        sv = tl.load(svals_ptr + s_off + offs_r, mask=r_ok, other=0.0)  # asked for now, used after the loop
        # the tier's arrays as base pointers (the one 64-bit add), everything inside a tier in int32
        wq, sq, zq = words_ptr + v_q, scales_ptr + v_sz, zeros_ptr + v_sz
        gs = gs.to(tl.int32)
        acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        if HAS2:
            if bits == 2:
                acc = _gemv_shrink_tile(x_ptr, rows_ptr, pos0, nrows, K, stride_xm, wq, sq, zq, 0, 0, r_ok, gs, kb0, kb1, one, 2, BLOCK_M, BLOCK_R, BLOCK_K, FAST, ONE_ROW, FLAT)
        if HAS3:
            if bits == 3:
                acc = _gemv_shrink_tile(x_ptr, rows_ptr, pos0, nrows, K, stride_xm, wq, sq, zq, 0, 0, r_ok, gs, kb0, kb1, one, 3, BLOCK_M, BLOCK_R, BLOCK_K, FAST, ONE_ROW, FLAT)
        if HAS8:
            if bits == 8:
                acc = _gemv_shrink_tile(x_ptr, rows_ptr, pos0, nrows, K, stride_xm, wq, sq, zq, 0, 0, r_ok, gs, kb0, kb1, one, 8, BLOCK_M, BLOCK_R, BLOCK_K, FAST, ONE_ROW, FLAT)
        if HAS4:
            if bits == 4:
                acc = _gemv_shrink_tile(x_ptr, rows_ptr, pos0, nrows, K, stride_xm, wq, sq, zq, 0, 0, r_ok, gs, kb0, kb1, one, 4, BLOCK_M, BLOCK_R, BLOCK_K, FAST, ONE_ROW, FLAT)
        if HAS1:
            if bits == 1:
                acc = _gemv_shrink_tile(x_ptr, rows_ptr, pos0, nrows, K, stride_xm, wq, sq, zq, 0, 0, r_ok, gs, kb0, kb1, one, 1, BLOCK_M, BLOCK_R, BLOCK_K, FAST, ONE_ROW, FLAT)
        acc = acc * sv[None, :]
        offs_m = tl.arange(0, BLOCK_M)
        m_ok = offs_m < nrows
        if Z_ATOMIC:
            zptr = z_ptr + (pos0 + offs_m).to(tl.int64)[:, None] * ZC + zcol + offs_r[None, :]
            tl.atomic_add(zptr, acc, mask=m_ok[:, None] & r_ok[None, :], sem="relaxed")
        else:
            zptr = z_ptr + (ks * M + pos0 + offs_m).to(tl.int64)[:, None] * ZC + zcol + offs_r[None, :]
            tl.store(zptr, acc, mask=m_ok[:, None] & r_ok[None, :])

    @triton.jit
    def _estep(words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, c0, comp, cnt_t, row_words, G, g, widx, FLAT: tl.constexpr = False):
        """One expand step's loads: words (R_IN, R_OUT, len(widx)) of components c0 + comp (rows
        past cnt_t read as 0) at word offsets widx, and their scales and zeros (fp16) for group g.
        FLAT: the words loaded as (R_OUT, R_IN, len(widx)) and permuted (see below)."""
        r = c0 + comp
        r_ok = r < cnt_t
        if FLAT:
            # so laid out, the load's layout is the unpack's (R_IN in a thread's registers, R_OUT over
            # lanes and warps); loaded as (R_IN, R_OUT, ..) the compiler put R_IN over lanes and
            # converted through shared memory every step (sm_90, Triton 3.6)
            rT = c0 + tl.trans(comp)
            w = tl.load(words_ptr + (u_q + rT * row_words)[:, :, None] + widx[None, None, :],
                        mask=(rT < cnt_t)[:, :, None] & (widx < row_words)[None, None, :], other=0)
            w = tl.permute(w, (1, 0, 2))
        else:
            w = tl.load(words_ptr + (u_q + r * row_words)[:, :, None] + widx[None, None, :],
                        mask=r_ok[:, :, None] & (widx < row_words)[None, None, :], other=0)
        sc = tl.load(scales_ptr + u_sz + r * G + g, mask=r_ok, other=0.0)
        zp = tl.load(zeros_ptr + u_sz + r * G + g, mask=r_ok, other=0.0)
        return w, sc, zp

    @triton.jit
    def _ezrow(z_ptr, ks_stride, pos0, nrows, ZC, zc0, c0, comp, cnt_t, m: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr):
        """float32 (R_IN, R_OUT): z of the block's row m at columns zc0 + c0 + comp, summed over
        the shrink's splits; 0 for components past cnt_t and rows past nrows (or BLOCK_M)."""
        zr = tl.zeros(comp.shape, dtype=tl.float32)
        if m < BLOCK_M:
            ok = (c0 + comp < cnt_t) & (comp * 0 + m < nrows)  # (a tensor on both sides: the interpreter wants it)
            p = (pos0 + m) * ZC + zc0 + c0  # int32: z holds split x rows x ZC floats
            for ks in tl.static_range(SPLIT_K):
                zr += tl.load(z_ptr + ks * ks_stride + p + comp, mask=ok, other=0.0)
        return zr

    @triton.jit
    def _ezrows(z_ptr, ks_stride, pos0, nrows, ZC, zc0, c0, comp, cnt_t, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr):
        """z of the block's rows 0..3 for the step at component c0 (see _ezrow): loaded a step
        ahead with the words, instead of waited on inside the step, row after row."""
        return (_ezrow(z_ptr, ks_stride, pos0, nrows, ZC, zc0, c0, comp, cnt_t, 0, SPLIT_K, BLOCK_M),
                _ezrow(z_ptr, ks_stride, pos0, nrows, ZC, zc0, c0, comp, cnt_t, 1, SPLIT_K, BLOCK_M),
                _ezrow(z_ptr, ks_stride, pos0, nrows, ZC, zc0, c0, comp, cnt_t, 2, SPLIT_K, BLOCK_M),
                _ezrow(z_ptr, ks_stride, pos0, nrows, ZC, zc0, c0, comp, cnt_t, 3, SPLIT_K, BLOCK_M))

    @triton.jit
    def _rowsum_add(m: tl.constexpr, a0, a1, a2, a3, v):
        """a_m += v for the compile-time row m of a block (the GEMV expand's per-row sums of z *
        scale and z * scale * zero, kept apart by row with no tl.where over the rows)."""
        if m == 0:
            a0 += v
        elif m == 1:
            a1 += v
        elif m == 2:
            a2 += v
        else:
            a3 += v
        return a0, a1, a2, a3

    @triton.jit
    def _rowsum_total(offs_mm, a0, a1, a2, a3):
        """(BLOCK_M,) float32: the whole sum of a_m at row m."""
        return tl.where(offs_mm == 0, tl.sum(tl.sum(a0, axis=1), axis=0),
                        tl.where(offs_mm == 1, tl.sum(tl.sum(a1, axis=1), axis=0),
                                 tl.where(offs_mm == 2, tl.sum(tl.sum(a2, axis=1), axis=0), tl.sum(tl.sum(a3, axis=1), axis=0))))

    @triton.jit
    def _gemv_expand_part(part_ptr, row_off, z_ptr, pos0, nrows, M, ZC, words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, cnt_t, zcol, gs, m_s, n0, col0, one,
                          BITS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                          FAST: tl.constexpr, USE_GDC: tl.constexpr, ATOMIC: tl.constexpr, FLAT: tl.constexpr = False):
        """Store to part_ptr (row m of the block at row_off[m]) the partial y of components [0, cnt_t) of
        one tier for output columns n0 .. n0 + BLOCK_N of this slice (global column col0 + n); ATOMIC:
        add it there instead (float32 atomics, relaxed: part_ptr is a float32 y).
        Steps of RB components (~BLOCK_R * 32 bytes of words for any width) held as R_IN x R_OUT
        (R_IN in-thread, summed each step; R_OUT across threads, summed once at the end); the
        loads of the next two steps are issued before this one is computed (see _gemv_shrink_tile)."""
        RB: tl.constexpr = BLOCK_R if (BITS <= 2 or BLOCK_R < 32) else (BLOCK_R // 2 if BITS == 4 else BLOCK_R // 4)
        R_OUT: tl.constexpr = 16 if RB >= 16 else RB
        R_IN: tl.constexpr = RB // R_OUT
        comp = tl.arange(0, R_IN)[:, None] * R_OUT + tl.arange(0, R_OUT)[None, :]
        row_words = BITS * ((m_s + 31) // 32)
        G = (m_s + gs - 1) // gs
        g = n0 // gs
        w0 = (n0 // 32) * BITS
        offs_mm = tl.arange(0, BLOCK_M)
        if BITS == 3:
            NC: tl.constexpr = BLOCK_N // 32
            li = tl.arange(0, 2 * NC)
            ci = tl.arange(0, NC)
            f16 = tl.arange(0, 16)
            f32 = tl.arange(0, 32)
            lo_idx = w0 + (li // 2) * 3 + (li % 2)
            hi_idx = w0 + ci * 3 + 2
            acc_l = tl.zeros((BLOCK_M, 16, R_OUT, 2 * NC), dtype=tl.float32)
            acc_h = tl.zeros((BLOCK_M, 32, R_OUT, NC), dtype=tl.float32)
            a1, s1, z1 = _estep(words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, 0, comp, cnt_t, row_words, G, g, lo_idx, FLAT)
            b1, _, _ = _estep(words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, 0, comp, cnt_t, row_words, G, g, hi_idx, FLAT)
            a2, s2, z2 = _estep(words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, RB, comp, cnt_t, row_words, G, g, lo_idx, FLAT)
            b2, _, _ = _estep(words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, RB, comp, cnt_t, row_words, G, g, hi_idx, FLAT)
            if USE_GDC:  # launched beside the shrink's tail (PDL): its z is complete and visible after this
                tl.extra.cuda.gdc_wait()
            e0, e1, e2, e3 = _ezrows(z_ptr, M * ZC, pos0, nrows, ZC, zcol, 0, comp, cnt_t, SPLIT_K, BLOCK_M)
            for c0 in range(0, cnt_t, RB):
                wl, wh, sc, zp = a1, b1, s1.to(tl.float32), z1.to(tl.float32) + 8388608.0
                a1, b1, s1, z1 = a2, b2, s2, z2
                a2, s2, z2 = _estep(words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, c0 + 2 * RB, comp, cnt_t, row_words, G, g, lo_idx, FLAT)
                b2, _, _ = _estep(words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, c0 + 2 * RB, comp, cnt_t, row_words, G, g, hi_idx, FLAT)
                y0, y1, y2, y3 = e0, e1, e2, e3
                e0, e1, e2, e3 = _ezrows(z_ptr, M * ZC, pos0, nrows, ZC, zcol, c0 + RB, comp, cnt_t, SPLIT_K, BLOCK_M)
                ql = _unpack_f(wl, f16 * 2, 2, 1) - zp[:, None, :, None]  # (R_IN, 16, R_OUT, 2NC)
                qh = (_unpack_f(wh, f32, 1, 1) - 8388608.0) * 4.0  # (R_IN, 32, R_OUT, NC)
                for m in tl.static_range(BLOCK_M):
                    cf = _pick(m, y0, y1, y2, y3) * sc
                    pl = tl.sum(ql * cf[:, None, :, None], axis=0)
                    ph = tl.sum(qh * cf[:, None, :, None], axis=0)
                    hit = (offs_mm == m)[:, None, None, None]
                    acc_l = tl.where(hit, acc_l + pl[None, :, :, :], acc_l)
                    acc_h = tl.where(hit, acc_h + ph[None, :, :, :], acc_h)
            rl = tl.sum(acc_l, axis=2)  # (BM, 16, 2NC): column li * 16 + f
            rh = tl.sum(acc_h, axis=2)  # (BM, 32, NC): column ci * 32 + f
            cl = col0 + n0 + li[None, :] * 16 + f16[:, None]
            ch = col0 + n0 + ci[None, :] * 32 + f32[:, None]
            mrow = (offs_mm < nrows)[:, None, None]
            pl_ptr = part_ptr + row_off[:, None, None] + cl[None, :, :]
            ph_ptr = part_ptr + row_off[:, None, None] + ch[None, :, :]
            lm = mrow & (cl < col0 + m_s)[None, :, :]
            hm = mrow & (ch < col0 + m_s)[None, :, :]
            if ATOMIC:
                tl.atomic_add(pl_ptr, rl, mask=lm, sem="relaxed")
                tl.atomic_add(ph_ptr, rh, mask=hm, sem="relaxed")
            else:
                tl.store(pl_ptr, rl, mask=lm)
                tl.debug_barrier()  # the low planes' sums are in memory before the high plane's are added
                tl.store(ph_ptr, tl.load(ph_ptr, mask=hm, other=0.0) + rh, mask=hm)
        else:
            FLD: tl.constexpr = 32 // BITS
            NW: tl.constexpr = BLOCK_N // FLD
            wi = tl.arange(0, NW)
            fi = tl.arange(0, FLD)
            widx = w0 + wi
            acc = tl.zeros((BLOCK_M, FLD, R_OUT, NW), dtype=tl.float32)
            w1, s1, z1 = _estep(words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, 0, comp, cnt_t, row_words, G, g, widx, FLAT)
            w2, s2, z2 = _estep(words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, RB, comp, cnt_t, row_words, G, g, widx, FLAT)
            if USE_GDC:  # launched beside the shrink's tail (PDL): its z is complete and visible after this
                tl.extra.cuda.gdc_wait()
            e0, e1, e2, e3 = _ezrows(z_ptr, M * ZC, pos0, nrows, ZC, zcol, 0, comp, cnt_t, SPLIT_K, BLOCK_M)
            # FAST: the field offsets c_f and the zero points come out once, at the end: sum_r cf_r (q - zp_r)
            # = sum_r cf_r (c_f + q) - c_f sum_r cf_r - sum_r cf_r zp_r, the two sums kept per row and R_OUT lane
            c10 = tl.zeros((R_IN, R_OUT), dtype=tl.float32)
            c11 = tl.zeros((R_IN, R_OUT), dtype=tl.float32)
            c12 = tl.zeros((R_IN, R_OUT), dtype=tl.float32)
            c13 = tl.zeros((R_IN, R_OUT), dtype=tl.float32)
            c20 = tl.zeros((R_IN, R_OUT), dtype=tl.float32)
            c21 = tl.zeros((R_IN, R_OUT), dtype=tl.float32)
            c22 = tl.zeros((R_IN, R_OUT), dtype=tl.float32)
            c23 = tl.zeros((R_IN, R_OUT), dtype=tl.float32)
            for c0 in range(0, cnt_t, RB):
                if FAST:
                    w, sc, zp = w1, s1.to(tl.float32), z1.to(tl.float32)
                else:
                    w, sc, zp = w1, s1.to(tl.float32), z1.to(tl.float32) + 8388608.0
                w1, s1, z1 = w2, s2, z2
                w2, s2, z2 = _estep(words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, c0 + 2 * RB, comp, cnt_t, row_words, G, g, widx, FLAT)
                y0, y1, y2, y3 = e0, e1, e2, e3
                e0, e1, e2, e3 = _ezrows(z_ptr, M * ZC, pos0, nrows, ZC, zcol, c0 + RB, comp, cnt_t, SPLIT_K, BLOCK_M)
                if FAST:
                    q = _unpack_c(w, fi, one, BITS, 1)  # (R_IN, FLD, R_OUT, NW): c_f + q
                else:
                    q = _unpack_f(w, fi * BITS, BITS, 1) - zp[:, None, :, None]  # (R_IN, FLD, R_OUT, NW)
                for m in tl.static_range(BLOCK_M):
                    cf = _pick(m, y0, y1, y2, y3) * sc
                    p = tl.sum(q * cf[:, None, :, None], axis=0)  # (FLD, R_OUT, NW)
                    acc = tl.where((offs_mm == m)[:, None, None, None], acc + p[None, :, :, :], acc)
                    if FAST:
                        c10, c11, c12, c13 = _rowsum_add(m, c10, c11, c12, c13, cf)
                        c20, c21, c22, c23 = _rowsum_add(m, c20, c21, c22, c23, cf * zp)
            res = tl.sum(acc, axis=2)  # (BM, FLD, NW)
            if FAST:
                t1 = _rowsum_total(offs_mm, c10, c11, c12, c13)
                t2 = _rowsum_total(offs_mm, c20, c21, c22, c23)
                res = res - (t1[:, None, None] * _field_c(fi, BITS)[None, :, None] + t2[:, None, None])
            cols = col0 + n0 + wi[None, :] * FLD + fi[:, None]  # (FLD, NW)
            pptr = part_ptr + row_off[:, None, None] + cols[None, :, :]
            pm = (offs_mm < nrows)[:, None, None] & (cols < col0 + m_s)[None, :, :]
            if ATOMIC:
                tl.atomic_add(pptr, res, mask=pm, sem="relaxed")
            else:
                tl.store(pptr, res, mask=pm)

    @triton.jit(do_not_specialize=["one", "s_known"])
    def _gemv_expand_kernel(z_ptr, y_ptr, part_ptr, sem_ptr, words_ptr, scales_ptr, zeros_ptr, items_ptr, nitems_ptr,
                            rows_ptr, blocks_ptr, mout_ptr, coloff_ptr,
                            M, ZC, Ntot, NB_max, n_slices, I_max, stride_ym, one,
                            jy_ptr, cnt_ptr, join_total, stride_jy, s_known,
                            NFI: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                            HAS1: tl.constexpr, HAS2: tl.constexpr, HAS3: tl.constexpr, HAS4: tl.constexpr, HAS8: tl.constexpr,
                            FAST: tl.constexpr = True, USE_GDC: tl.constexpr = False, ATOMIC: tl.constexpr = False,
                            JOIN: tl.constexpr = False, KNOWN: tl.constexpr = False, FLAT: tl.constexpr = False):
        """y[rows, cols] += z U^^T. Program (column block, (slice, work item i), row block of the
        batch): a row block holds rows of one slot (deltaset.plan_blocks), and i indexes that slot's
        work items of the slice, each a run of components of one tier (one bit width). Each writes
        its partial sum; the last of a (row block, slice, column block) group to finish (a counter
        per group, reset by that last one) adds the partials in item order into y: one launch, the
        same numbers whatever the order the programs ran in. ATOMIC (a float32 y): each program adds
        its partial into y with relaxed atomics instead (no partials, no counter, no fence; the
        float32 sums' order then varies from run to run). JOIN (with ATOMIC): every program over a
        block of columns, with work or not, then counts itself on that block's counter, the last
        of the block's (the base GEMV's programs too) adding y into the base output jy (:mod:`.join`).
        KNOWN: every block's slot is s_known or -1, its item asked for beside the row block (as the shrink's).
        FLAT: the words loaded in the unpack's layout (see _estep; GEMV_FLAT_WORDS)."""
        pid_n = tl.program_id(0)
        pi = tl.program_id(1)
        blk = tl.program_id(2)
        sl = pi // I_max
        i = pi % I_max
        # the block, then the slot's item and the slice's entries (two round trips; one where the slot is
        # KNOWN), then the exits
        slot, pos0, nrows = _row_block(blocks_ptr, blk)
        if KNOWN:
            s = s_known
        else:
            s = tl.maximum(slot, 0)
        ni, u_q, u_sz, bits, cnt_t, zcol, gs, j, nj, grp = _gemv_entries(nitems_ptr, items_ptr, s, sl, i, n_slices, I_max, NFI, 2)
        m_s = tl.load(mout_ptr + sl)
        col0 = tl.load(coloff_ptr + sl)
        n0 = pid_n * BLOCK_N
        if n0 >= m_s:
            return
        if (slot < 0) | (i >= ni):
            if JOIN:
                join.arrive(jy_ptr, y_ptr, cnt_ptr, (col0 + n0) // join.COLS, join_total, M, stride_jy, stride_ym, join.COLS)
            return
        offs_mm = tl.arange(0, BLOCK_M)
        if ATOMIC:
            part = y_ptr
            row_off = _block_rows(rows_ptr, pos0, nrows, offs_mm) * stride_ym
        else:
            part = part_ptr + (j * M + pos0).to(tl.int64) * Ntot
            row_off = offs_mm.to(tl.int64) * Ntot
        # the tier's arrays as base pointers (the one 64-bit add), everything inside a tier in int32
        wq, sq, zq = words_ptr + u_q, scales_ptr + u_sz, zeros_ptr + u_sz
        cnt_t, zcol, gs = cnt_t.to(tl.int32), zcol.to(tl.int32), gs.to(tl.int32)
        if HAS2:
            if bits == 2:
                _gemv_expand_part(part, row_off, z_ptr, pos0, nrows, M, ZC, wq, sq, zq, 0, 0, cnt_t, zcol, gs, m_s, n0, col0, one, 2, SPLIT_K, BLOCK_M, BLOCK_R, BLOCK_N, FAST, USE_GDC, ATOMIC, FLAT)
        if HAS3:
            if bits == 3:
                _gemv_expand_part(part, row_off, z_ptr, pos0, nrows, M, ZC, wq, sq, zq, 0, 0, cnt_t, zcol, gs, m_s, n0, col0, one, 3, SPLIT_K, BLOCK_M, BLOCK_R, BLOCK_N, FAST, USE_GDC, ATOMIC, FLAT)
        if HAS8:
            if bits == 8:
                _gemv_expand_part(part, row_off, z_ptr, pos0, nrows, M, ZC, wq, sq, zq, 0, 0, cnt_t, zcol, gs, m_s, n0, col0, one, 8, SPLIT_K, BLOCK_M, BLOCK_R, BLOCK_N, FAST, USE_GDC, ATOMIC, FLAT)
        if HAS4:
            if bits == 4:
                _gemv_expand_part(part, row_off, z_ptr, pos0, nrows, M, ZC, wq, sq, zq, 0, 0, cnt_t, zcol, gs, m_s, n0, col0, one, 4, SPLIT_K, BLOCK_M, BLOCK_R, BLOCK_N, FAST, USE_GDC, ATOMIC, FLAT)
        if HAS1:
            if bits == 1:
                _gemv_expand_part(part, row_off, z_ptr, pos0, nrows, M, ZC, wq, sq, zq, 0, 0, cnt_t, zcol, gs, m_s, n0, col0, one, 1, SPLIT_K, BLOCK_M, BLOCK_R, BLOCK_N, FAST, USE_GDC, ATOMIC, FLAT)
        if not ATOMIC:
            sem = sem_ptr + (blk * n_slices + sl) * NB_max + pid_n
            _parts_into_y(y_ptr, part_ptr, sem, rows_ptr, pos0, nrows, nj, M, Ntot, stride_ym, col0, n0, m_s, BLOCK_M, BLOCK_N)
        if JOIN:
            join.arrive(jy_ptr, y_ptr, cnt_ptr, (col0 + n0) // join.COLS, join_total, M, stride_jy, stride_ym, join.COLS)


    @triton.jit
    def _prefetch_kernel(w_ptr, n, sink_ptr, flag, BLOCK: tl.constexpr):
        """Read BLOCK int32 words a program into the L2 (evict_last) and keep nothing: the sum is
        stored only where ``flag`` (a runtime 0) says, so the loads are not optimized away."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(w_ptr + offs, mask=offs < n, other=0, eviction_policy="evict_last")
        tl.store(sink_ptr + tl.program_id(0), tl.sum(v), mask=flag != 0)


#: the compiled kernels of the latest launches (registers, spills, shared memory: benchmarks read them)
LAST: dict[str, object] = {}


def _need_triton() -> None:
    if not HAVE_TRITON:
        raise KernelError("triton is not installed; use the torch path (KernelPreference.TORCH) or `pip install triton`")


def _not_dense(path: str | None) -> None:
    if path == "dense":
        raise KernelError("the dense path has no shrink/expand kernels of its own: kernels.dense.apply (or apply_deltas(path='dense'))")


def pdl_on(t: torch.Tensor, want: bool) -> bool:
    """Whether a kernel on t's device takes part in programmatic dependent launch: asked, on
    (:data:`GEMV_PDL`, ``DELTASTORE_PDL``), a Triton that has it, compiled (not interpreted), a
    Hopper or newer GPU. Public: the LUT and tensor-core kernels (``lut``, ``mma``) ask it too."""
    return bool(want and GEMV_PDL and HAVE_GDC and not interpreting() and t.is_cuda and _sm_major(t.get_device()) >= 9)


@functools.lru_cache(maxsize=None)
def _sm_major(index: int) -> int:
    """The compute capability's major number of CUDA device ``index`` (asked once: every GEMV launch asks)."""
    return torch.cuda.get_device_capability(index)[0]


@functools.lru_cache(maxsize=None)
def sm_count(index: int) -> int:
    """Streaming multiprocessors of CUDA device ``index`` (asked once: grids are sized by it)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def pdl_launch(t: torch.Tensor, want: bool) -> dict[str, bool]:
    """Launch options of an expand launched as a dependent of the shrink before it (see :func:`pdl_on`;
    the GEMV and the tensor-core expand)."""
    return {"USE_GDC": True, "launch_pdl": True} if pdl_on(t, want) else {}


def _gemv_warps(n_blocks: int) -> int:
    """Warps of a GEMV program whose grid holds ``n_blocks`` row blocks (see :data:`GEMV_WARPS`)."""
    return GEMV_WARPS if n_blocks <= 1 else GEMV_WARPS_MANY


def maxnreg_option(maxnreg: int | None) -> dict[str, int]:
    """The launch option capping registers a thread, only when asked (and never under the
    interpreter, which has no registers)."""
    if maxnreg is not None and maxnreg < 16:
        raise KernelError(f"maxnreg must be at least 16 registers, got {maxnreg}")
    return {"maxnreg": maxnreg} if maxnreg and not interpreting() else {}


def _has(dset: DeltaSet) -> dict[str, bool]:
    """Which bit widths the set holds: the kernels compile a branch for each of those only."""
    return {f"HAS{b}": b in dset.bit_widths for b in (1, 2, 3, 4, 8)}


def _block_m(rows_per_slot: int) -> int:
    return 16 if rows_per_slot <= 16 else 32 if rows_per_slot <= 32 else 64


def _dot_warps(block_m: int, per_slot: int, expand: bool) -> int:
    """Warps of a tl.dot program, as measured on the H200 (results/raw_h200/dot_*): 4, except the
    expand of one 64-row block a fine-tune (65-128 rows), where 8 ran faster (M=64: 378 vs 410 us a
    layer's expands) though with 4 Triton 3.6 spills it on sm_90 (176+ B of stack). With several
    64-row blocks (M=256) 4 warps ran faster in both kernels (expands 989 vs 1125 us, shrinks 381
    vs 473), spills and all."""
    return 8 if (expand and block_m >= 64 and per_slot <= 128) else 4


def rows_per_slot(M: int, dset: DeltaSet) -> int:
    """Rows each fine-tune serves if the batch is spread evenly: what block shapes are chosen
    for (the grid still covers any spread, so skewed batches stay correct)."""
    return -(-M // max(dset.n_slots, 1))


#: rows per fine-tune up to which the GEMV kernels run (above: the tl.dot kernels)
GEMV_MAX_ROWS = 4
#: the GEMV shrink's tile of components, the expand's step over components, its run of components per program
GEMV_TILE_R = 16
GEMV_STEP_R = 64
GEMV_CHUNK = 256
#: the GEMV kernels' unpack: True = fields shifted to high mantissa bits and or-ed into a float's
#: exponent, offsets and zero points taken out once per word position (_unpack_c); False = the
#: earlier shift / mask / subtract per value (_unpack_f). DELTASTORE_GEMV_FAST=0 selects the old one
#: (an A/B of both in one process: set this attribute between launches).
GEMV_FAST = os.environ.get("DELTASTORE_GEMV_FAST", "1") not in ("", "0")
#: the GEMV expand takes the fast unpack up to this many rows a block (an A/B knob: with 64-bit
#: in-tier index arithmetic its 4-row block spilled; in int32 it fits, benchmarks/kernel_sass.py)
GEMV_FAST_EXPAND_MAX_M = int(os.environ.get("DELTASTORE_GEMV_FAST_EXPAND_MAX_M", "4"))
#: programmatic dependent launch (Hopper+): the GEMV expand is launched while the shrink before it
#: finishes, loads its packed words and tables, and waits (griddepcontrol.wait) only before it reads
#: z, so a group's second launch and its prologue overlap the first one's tail. DELTASTORE_PDL=0: off.
GEMV_PDL = os.environ.get("DELTASTORE_PDL", "1") not in ("", "0")
#: the GEMV expand into a float32 y (the side stream's delta buffer, a float32 model): each program
#: adds its partial sum into y with relaxed float32 atomics, instead of storing it for the last
#: program of its column block to add (the counter handshake: an acq_rel atomic, a fence and the
#: partials read back, 14-28% of the expands' stall samples on the H200, raw_h200/s25/src). One
#: Llama-2-7B layer through the modules (H200, benchmarks/atomic_device.sh, raw_h200/s25/atomic):
#: one row 157.7 us against 166.0 (deltas alone 81.3 / 91.2), 4 rows 286.3 / 297.3, 8 rows over 8
#: fine-tunes 500.1 / 528.4, errors against the reference unchanged. The float32 sums' order then
#: varies between runs (as the tensor-core kernels' atomics do); a y of another dtype keeps the
#: ordered handshake. DELTASTORE_GEMV_ATOMIC=0: the handshake everywhere.
GEMV_ATOMIC = os.environ.get("DELTASTORE_GEMV_ATOMIC", "1") not in ("", "0")
#: warps and register cap (0: none) of a GEMV shrink / expand program where the caller names none:
#: GEMV_WARPS where the batch makes one row block (one fine-tune's rows), GEMV_WARPS_MANY where it
#: makes several (a grid that many times larger). At 4 warps and 123-128 registers a resident
#: program holds a quarter of an SM's register file. Beside the base GEMV on the side stream, one
#: Llama-2-7B layer through the modules (H200, benchmarks/beside_device.sh, raw_h200/s28): 8 rows
#: over 8 fine-tunes at 2 warps 425.4-427.5 us against 499.0-503.2 at 4 (x0.85; deltas alone 300 /
#: 361), one row 159.7-159.9 against 157.2-157.3 (x1.02, though its deltas alone take 74 / 82): so
#: 2 warps for several blocks, 4 for one. A cap of 96 registers: level at one row, x0.94 at 8 over
#: 8, nothing with 2 warps (x1.00-1.07); 80: slower. DELTASTORE_GEMV_WARPS(_MANY),
#: DELTASTORE_GEMV_MAXNREG set them for an A/B.
GEMV_WARPS = int(os.environ.get("DELTASTORE_GEMV_WARPS", "4"))
GEMV_WARPS_MANY = int(os.environ.get("DELTASTORE_GEMV_WARPS_MANY", "2"))
GEMV_MAXNREG = int(os.environ.get("DELTASTORE_GEMV_MAXNREG", "0"))
#: the GEMV shrink's prologue in fewer memory round trips. Before, a program's first packed word
#: waited for four dependent loads in the sm_90 code (the row block; the slot's tile count; past the
#: exit test, which the compiler sinks the tile's fields below, the fields; then the words), and x for
#: the block's rows table. Now (1) where the host knows the one slot of the batch's rows
#: (deltaset.known_slot: a set of one fine-tune, or ids held on the host) that slot's entries are asked
#: for beside the row block, (2) a one-row batch's x offset is 0, not read from the rows table, and (3)
#: the exit test reads the tile's fields too, so the compiler keeps their loads above it: block, count
#: and fields in one round trip, words and x in the next (the sm_90 code's prologue, Triton 3.6). The expand asks for
#: the known slot's item beside the row block too (its exits stay: the ordered handshake counts its
#: programs). The twenty-sixth session's slot-0 guess kept the exit and a branch on the block's slot
#: before the words' loads, so it took no round trip off (measured level). One Llama-2-7B layer through
#: the modules (H200, known_device.sh, raw_h200/s30/call3, with the split z's): one row 157.6 us against
#: 157.7 with it off (deltas alone 77.5 / 81.3), one fine-tune's row beside 7 base rows 163.3 / 168.3,
#: 8 rows over 8 fine-tunes level (424.3 / 423.9). DELTASTORE_GEMV_KNOWN_SLOT=0: off.
GEMV_KNOWN_SLOT = os.environ.get("DELTASTORE_GEMV_KNOWN_SLOT", "1") not in ("", "0")


#: the GEMV shrink's splits of the inputs added into one z by relaxed float32 atomics where the caller
#: gives a zeroed buffer for it (:func:`shrink`'s ``zsum``: :func:`.linear.beside` zeroes it with the
#: side stream's delta buffer, in the same launch), instead of SPLIT_K partial z's the expand sums:
#: the expand then loads one z a component a step, not 4-8 (at one row, 4 + 4 x (2 + SPLIT_K) loads a
#: thread per 64 packed values; its 2-bit loop 304 sm_90 instructions per 64 values against 473 at 8
#: splits, 360 at 4, Triton 3.6, and the 8/3/2-bit kernel 128 registers against 157 at 8 splits:
#: `benchmarks/kernel_sass.py --fast 1 --bits 2 --rows 1 --split 8 --launch [--expand-split 8|4]`,
#: raw_devvm/s30). z's float32 sums' order then varies from run to run, as the expand's
#: atomics already make y's. One Llama-2-7B layer through the modules (H200, known_device.sh,
#: raw_h200/s30/call3): one row 153.3 us against 157.6 (x1.31 / x1.35 of base; deltas alone 71.3 /
#: 77.5), one fine-tune's row beside 7 base rows 159.8 / 163.3, 8 rows over 8 fine-tunes level
#: (424.2 / 424.3). DELTASTORE_GEMV_Z_ATOMIC=0: off.
GEMV_Z_ATOMIC = os.environ.get("DELTASTORE_GEMV_Z_ATOMIC", "1") not in ("", "0")


#: the GEMV shrink loads a step's 1/2/4/8-bit words of a component as one contiguous run, and the
#: step's activations as one run (see _step_words' FLAT): in the sm_90 code (Triton 3.6) both loads
#: were laid out otherwise than the unpack and converted through shared memory every step. Static
#: count of the one-row loop (`benchmarks/kernel_sass.py --fast 1 --bits 2,3,8,1,4 --rows 1 --split 8
#: --launch [--flat]`, raw_devvm/s30/kernel_sass_launch*.md): 2-bit 387 -> 323 instructions per 64
#: values (shared-memory loads 16 -> 2; the activations' broadcast to the warps stays), 1-bit 548 ->
#: 495 (but 12 barriers in its loop), 4-bit 253 -> 230, 8-bit 177 -> 192; registers of the 8/3/2-bit
#: kernel 124 either way. The
#: GEMV expand at one row a block likewise loads its words as (R_OUT, R_IN, words) and permutes them
#: (_estep's FLAT), which its unpack's layout is, where it converted them through shared memory every
#: step: 2-bit 304 -> 292 instructions per 64 values, no barrier left in the loop (3-, 8-bit level;
#: at 4 rows a block the expand already spills, a little more with it: not there). On
#: (DELTASTORE_GEMV_FLAT_WORDS=0: off). H200, one Llama-2-7B layer through the modules, A/B in one process
#: (next_device.sh and flat_device.sh, raw_h200/s31/a, b): one row 152.5 us against 154.2 (deltas alone
#: 68.6 / 71.4), 1 row + 7 base rows 160.2 / 160.7 (84.5 / 87.2), 8 rows over 8 fine-tunes 410.9 / 426.0
#: (285.5 / 297.8). Same numbers as the default loads with the shrink's splits kept apart (bit for bit on
#: the GPU, probe_flat_diff.py, raw_h200/s31/c); with them summed by atomics, within that sum's order.
GEMV_FLAT_WORDS = os.environ.get("DELTASTORE_GEMV_FLAT_WORDS", "1") not in ("", "0")


def zsum_ok(zsum: torch.Tensor | None, M: int, dset: DeltaSet) -> bool:
    """Whether ``zsum`` can take the GEMV shrink's atomically summed z (see :data:`GEMV_Z_ATOMIC`):
    float32, contiguous, (M, dset.zcols)."""
    return (zsum is not None and GEMV_Z_ATOMIC and zsum.dtype == torch.float32 and zsum.is_contiguous()
            and tuple(zsum.shape) == (M, dset.zcols))


def known_args(dset: DeltaSet, plan: RowPlan) -> dict[str, object]:
    """The KNOWN / s_known launch arguments of the kernels that take a host-known slot (see
    :data:`GEMV_KNOWN_SLOT`; the GEMV kernels and the tensor-core ones' ``HOIST``)."""
    s = known_slot(dset, plan) if GEMV_KNOWN_SLOT else None
    return {"KNOWN": s is not None, "s_known": s if s is not None else 0}


def gemv_rows(M: int, dset: DeltaSet, plan: RowPlan | None = None) -> int:
    """Rows a fine-tune for the GEMV choice and its row block: :func:`rows_per_slot`, or with a plan
    that counts served rows (:attr:`RowPlan.counts_served`) its :meth:`RowPlan.rows_a_slot`: one
    fine-tune's row beside seven base rows is one row, not eight spread over the set."""
    if plan is not None and plan.counts_served:
        return max(1, plan.rows_a_slot(dset.n_slots))
    return rows_per_slot(M, dset)


def use_gemv(M: int, dset: DeltaSet, path: str | None = None, plan: RowPlan | None = None) -> bool:
    """Whether the GEMV kernels serve this batch: ``path`` "gemv"/"dot"/"dense" forces it (only
    "gemv" is the GEMV path; "dense" is kernels/dense.py), else by rows per fine-tune
    (:func:`gemv_rows`: counted from ``plan`` where it can be). The shrink and the expand of one
    batch must be asked with the same plan."""
    if path is not None:
        if path not in ("gemv", "dot", "dense", "mma"):
            raise KernelError(f"path must be 'mma', 'gemv', 'dot' or 'dense', got {path!r}")
        return path == "gemv"
    return gemv_rows(M, dset, plan) <= GEMV_MAX_ROWS


#: the tl.dot kernels' work split (fixed by the shapes, so a CUDA graph captures it): programs the
#: shrink's split of the input dimension and the expand's runs of components aim for (~8 a
#: streaming multiprocessor of an H100/H200, where 96-400 programs left most of them idle), the
#: shrink's largest split, the expand's shortest run of components
DOT_SHRINK_PROGRAMS = int(os.environ.get("DELTASTORE_DOT_SHRINK_PROGRAMS", "1024"))
DOT_EXPAND_PROGRAMS = int(os.environ.get("DELTASTORE_DOT_EXPAND_PROGRAMS", "256"))
DOT_MAX_SPLIT_K = 8
DOT_MIN_CHUNK = 128


def _gemv_block_m(M: int, dset: DeltaSet, plan: RowPlan | None = None) -> int:
    r = min(gemv_rows(M, dset, plan), GEMV_MAX_ROWS)
    return 1 << (max(r, 1) - 1).bit_length()


def pick_split_k(M: int, dset: DeltaSet, path: str | None = None, plan: RowPlan | None = None) -> int:
    """Split the input dimension of the shrink when few rows leave the GPU short of programs
    (``plan``: as :func:`use_gemv` is asked)."""
    kblocks = -(-dset.in_features // dset.block_k)
    if use_gemv(M, dset, path, plan):
        n = max(dset.n_tiles(GEMV_TILE_R), 1)
        split = max(1, min(8, kblocks, -(-1024 // n)))
        per = -(-(-(-kblocks // split)) // 4) * 4  # the kernel's share: whole 2-bit steps of 4 blocks
        return -(-kblocks // per)  # no split left without inputs
    per_slot = rows_per_slot(M, dset)
    bm = _block_m(per_slot)
    work = max(dset.n_tiles(dset.tile_r), 1) * -(-per_slot // bm)  # programs with rows at split 1
    # the expand adds the splits' z in registers: past 128 // BLOCK_M splits (4 at 64 rows) it spills
    split = max(1, min(DOT_MAX_SPLIT_K, max(4, 128 // bm), kblocks, -(-DOT_SHRINK_PROGRAMS // work)))
    return -(-kblocks // -(-kblocks // split))  # no split left without inputs


def dot_chunk(M: int, dset: DeltaSet, block_m: int, block_n: int, block_r: int) -> int:
    """Components per program of the tl.dot expand: the rank is cut into runs until (column blocks
    x runs x row blocks with rows) reaches DOT_EXPAND_PROGRAMS (256: on the H200 a Llama-2-7B layer's
    expands at M=64 took 378 us with it, 424 with 1024; at M=256, 1125 against 1262), runs of at least DOT_MIN_CHUNK
    components (fewer and the partial sums cost more than the loop they shorten), whole steps of
    block_r; the whole rank (one run: no partial sums) where the grid is full without a split."""
    dset.build()
    per_slot = rows_per_slot(M, dset)
    cols = sum(-(-m // block_n) for m in dset.out_features)
    work = cols * max(1, min(dset.n_slots, M)) * -(-per_slot // block_m)
    runs = -(-DOT_EXPAND_PROGRAMS // work)
    rank = max(dset.max_rank, 1)
    if runs <= 1:
        return rank
    c = -(-rank // runs)
    c = max(DOT_MIN_CHUNK, -(-c // block_r) * block_r)
    return min(c, rank)


#: the most floats one GEMV shrink program zeroes for :func:`shrink`'s ``zero`` (more: ``zero_()``)
ZERO_MAX_BLOCK = 4096


def _zero_block(t: torch.Tensor | None, programs: int) -> int:
    """Floats each of ``programs`` shrink programs zeroes so that together they cover ``t`` (a power
    of two, at least 128: few compiled variants), or 0 where the shrink cannot (not float32 and
    contiguous, or more than :data:`ZERO_MAX_BLOCK` a program)."""
    if t is None or t.dtype != torch.float32 or not t.is_contiguous() or t.numel() == 0 or t.numel() >= 1 << 31:
        return 0
    zb = max(128, triton.next_power_of_2(-(-t.numel() // max(programs, 1))))
    return zb if zb <= ZERO_MAX_BLOCK else 0


def shrink(x: torch.Tensor, dset: DeltaSet, plan: RowPlan, split_k: int = 1, *, block_m: int | None = None,
           block_r: int | None = None, num_warps: int | None = None, num_stages: int | None = None, gather: bool = False,
           path: str | None = None, maxnreg: int | None = None, pdl: bool | None = None,
           zero: torch.Tensor | None = None, zsum: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of :func:`ref_ops.shrink`. x (M, in_features) bf16/fp16, contiguous rows.
    ``path``: "gemv" (few rows per fine-tune) or "dot"; by default chosen by :func:`use_gemv`.
    ``maxnreg``: a cap on registers a thread (ptxas spills above it; benchmarks probe occupancy with it).
    ``pdl``: on the GEMV path, each program signals at its start that an expand launched as
    its dependent may begin (a no-op for any other next launch); None: on (see :data:`GEMV_PDL`).
    ``zero``: a tensor zeroed in stream order before the next launch (the float32 output the expand
    will add into): on the GEMV path by the shrink's own programs where it is float32 and contiguous
    (one launch fewer), else by ``zero_()``. ``zsum``: a float32 (M, zcols) buffer the caller zeroed: on
    the GEMV path (with :data:`GEMV_Z_ATOMIC`) the splits are added into it and it is returned as
    z (1, M, zcols); elsewhere unused."""
    _need_triton()
    _not_dense(path)
    dset.build()
    M, K = x.shape
    if K != dset.in_features:
        raise KernelError(f"input has {K} features; the deltas expect {dset.in_features}")
    if K >= 1 << 22:
        raise KernelError(f"input has {K} features; the kernels take fewer than 2^22 (their group index is float32)")
    if x.stride(1) != 1:
        x = x.contiguous()
    gemv = use_gemv(M, dset, path, plan)
    za = gemv and zsum_ok(zsum, M, dset)
    z = zsum.view(1, M, dset.zcols) if za else torch.empty(split_k, M, dset.zcols, dtype=torch.float32, device=x.device)
    if gemv:
        bm = block_m or _gemv_block_m(M, dset, plan)
        br = block_r or GEMV_TILE_R
        tiles, ntiles, T = dset.tiles(br)
        blocks = plan_blocks(plan, bm)
        grid = (dset.n_slices * T * split_k, blocks.shape[0])
        zb = _zero_block(zero, grid[0] * grid[1])
        if zero is not None and not zb:
            zero.zero_()
        LAST["shrink"] = _gemv_shrink_kernel[grid](x, z, dset.words, dset.scales, dset.zeros, dset.svals, tiles, ntiles,
                             plan.rows, blocks, zero if zb else z, M, K, dset.zcols, dset.n_slices, T, x.stride(0), 1,
                             zero.numel() if zb else 0, **known_args(dset, plan),
                             NFIELD=NF, SPLIT_K=split_k, BLOCK_M=bm, BLOCK_R=br, BLOCK_K=dset.block_k, FAST=GEMV_FAST, **_has(dset),
                             USE_GDC=pdl_on(x, True if pdl is None else pdl), ZERO=zb, ONE_ROW=GEMV_KNOWN_SLOT and M == 1,
                             FIELDS_FIRST=GEMV_KNOWN_SLOT, Z_ATOMIC=za, FLAT=GEMV_FLAT_WORDS,
                             num_warps=num_warps or _gemv_warps(blocks.shape[0]), num_stages=num_stages or 3, **maxnreg_option(maxnreg or GEMV_MAXNREG or None))
        return z
    if zero is not None:
        zero.zero_()
    bm = block_m or _block_m(rows_per_slot(M, dset))
    num_warps, num_stages = num_warps or _dot_warps(bm, rows_per_slot(M, dset), expand=False), num_stages or 2
    br = block_r or dset.tile_r
    tiles, ntiles, T = dset.tiles(br)
    grid = (dset.n_slices * T * split_k, triton.cdiv(M, bm), max(dset.n_slots, 1))
    LAST["shrink"] = _shrink_kernel[grid](x, z, dset.words, dset.scales, dset.zeros, dset.svals, tiles, ntiles,
                         plan.rows, plan.counts, plan.starts,
                         M, K, dset.zcols, dset.n_slices, T, x.stride(0),
                         NFIELD=NF, SPLIT_K=split_k, BLOCK_M=bm, BLOCK_R=br, BLOCK_K=dset.block_k, UPCAST=interpreting(), GATHER=gather, **_has(dset),
                         num_warps=num_warps, num_stages=num_stages, **maxnreg_option(maxnreg))
    return z


def expand(z: torch.Tensor, y: torch.Tensor, dset: DeltaSet, plan: RowPlan, *, block_m: int | None = None,
           block_n: int | None = None, block_r: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
           gather: bool = False, path: str | None = None, chunk: int | None = None, maxnreg: int | None = None,
           pdl: bool | None = None, fused: "join.Join | None" = None) -> torch.Tensor:
    """Triton twin of :func:`ref_ops.expand`: y (M, sum(out_features)) += z @ U^^T in place.
    ``path`` as for :func:`shrink`; ``chunk``: components per program (GEMV: a multiple of its step;
    tl.dot: a run across the tiers, by default :func:`dot_chunk`). ``pdl=True``: the launch just
    before this one on the stream is the shrink that wrote z, with this set and plan; on the GEMV
    path the expand is then launched as its programmatic dependent: it reads its tables and packed
    words beside the shrink's tail and waits for the shrink (griddepcontrol.wait) before it reads z
    or writes anything. Not for any other predecessor: what a dependent reads before its wait must
    have been written before the kernel before it started (the plan's blocks: the shrink used them).
    ``fused`` (the GEMV path, y float32: fused.d): the expand's programs then count themselves on
    the join's counters, the last of a block (theirs and the base GEMV's) adding y into fused.y
    (:mod:`.join`; :func:`join_arrivals` is their share of its total)."""
    _need_triton()
    _not_dense(path)
    dset.build()
    M = y.shape[0]
    if y.stride(1) != 1:
        raise KernelError("expand writes y in place and needs unit stride along its columns")
    if use_gemv(M, dset, path, plan):
        bm = block_m or _gemv_block_m(M, dset, plan)
        br = block_r or GEMV_STEP_R
        bn = min(block_n or dset.block_k, dset.block_k)
        nb = -(-max(dset.out_features) // bn)
        ck = int(chunk or GEMV_CHUNK)
        # a dependent launch reads the row blocks and items before its wait: only when none of them is
        # built now (by work queued right before it), i.e. the shrink's call left them cached
        cached = bm in plan.blocks
        blocks = plan_blocks(plan, bm)
        cached = cached and dset.gemv_tables_built(ck, nb, blocks.shape[0])
        items, nitems, most = dset.items(ck)
        sems = dset.semaphores(nb, blocks.shape[0])
        atomic = GEMV_ATOMIC and y.dtype == torch.float32
        if fused is not None:
            fused.check()
            if fused.d is not y or not atomic or bn != join.COLS or any(o % join.COLS for o in dset.col_offsets):
                raise KernelError(f"a fused join needs the float32 atomics into its d, blocks of {join.COLS} columns and slices at multiples of them")
        jy, jc = (fused.y, fused.counters) if fused is not None else (y, y)
        part = y if atomic else torch.empty(most, M, sum(dset.out_features), dtype=torch.float32, device=y.device)
        grid = (nb, dset.n_slices * most, blocks.shape[0])
        LAST["expand"] = _gemv_expand_kernel[grid](z, y, part, sems, dset.words, dset.scales, dset.zeros, items, nitems,
                             plan.rows, blocks, dset.m_out, dset.col_off,
                             M, dset.zcols, sum(dset.out_features), nb, dset.n_slices, most, y.stride(0), 1,
                             jy, jc, fused.total if fused is not None else 0, jy.stride(0), **known_args(dset, plan),
                             NFI=len(ITEM_FIELDS), SPLIT_K=z.shape[0], BLOCK_M=bm, BLOCK_R=br, BLOCK_N=bn, FAST=GEMV_FAST and bm <= GEMV_FAST_EXPAND_MAX_M, **_has(dset),
                             ATOMIC=atomic, JOIN=fused is not None, FLAT=GEMV_FLAT_WORDS and bm == 1, num_warps=num_warps or _gemv_warps(blocks.shape[0]), num_stages=num_stages or 3, **maxnreg_option(maxnreg or GEMV_MAXNREG or None), **pdl_launch(y, bool(pdl) and cached))
        return y
    if fused is not None:
        raise KernelError("a fused join is on the GEMV path only")
    bm = block_m or _block_m(rows_per_slot(M, dset))
    block_r, num_warps, num_stages = block_r or 32, num_warps or _dot_warps(bm, rows_per_slot(M, dset), expand=True), num_stages or 2
    bn = min(block_n or dset.block_k, dset.block_k)  # a block of columns lies inside one group
    nb = -(-max(dset.out_features) // bn)
    blocks = plan_blocks(plan, bm)
    run = chunk or dot_chunk(M, dset, bm, bn, block_r)
    if run < 1:
        raise KernelError(f"chunk must be a positive number of components, got {chunk}")
    J = max(1, -(-dset.max_rank // run))
    sems = dset.semaphores(nb, blocks.shape[0])
    part = torch.empty(J, M, sum(dset.out_features), dtype=torch.float32, device=y.device) if J > 1 else z  # (unread when J is 1)
    grid = (nb, dset.n_slices * J, blocks.shape[0])
    LAST["expand"] = _expand_kernel[grid](z, y, part, sems, dset.words, dset.scales, dset.zeros, dset.tiers, dset.ntiers, dset.ranks,
                         plan.rows, blocks, dset.m_out, dset.col_off,
                         M, dset.zcols, sum(dset.out_features), nb, dset.n_slices, dset.max_tiers, J, run, y.stride(0),
                         NFIELD=NF, SPLIT_K=z.shape[0], BLOCK_M=bm, BLOCK_R=block_r, BLOCK_N=bn, UPCAST=interpreting(), GATHER=gather, **_has(dset),
                         num_warps=num_warps, num_stages=num_stages, **maxnreg_option(maxnreg))
    return y


def join_arrivals(M: int, dset: DeltaSet, plan: RowPlan, chunk: int | None = None) -> int:
    """The GEMV expand's programs over one block of :data:`.join.COLS` output columns (every work
    item of a slice, for every row block: those with no work count themselves too), as
    :func:`expand` launches it for this batch: its share of a fused join's total (:mod:`.join`)."""
    dset.build()
    blocks = plan_blocks(plan, _gemv_block_m(M, dset, plan))
    _, _, most = dset.items(int(chunk or GEMV_CHUNK))
    return most * int(blocks.shape[0])


#: values an add program takes (4 warps: 16 float32 a thread, four 128-bit loads)
ADD_BLOCK = 2048
#: whether the join of a side-stream delta (linear.with_delta) takes :func:`add_f32_` on a GPU (False:
#: torch's add, for A/B runs: benchmarks/ab_mma.py --mma-cfgs '[{"triton_ops.JOIN_ADD": false}]')
JOIN_ADD = True


def add_f32_(y: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Triton twin of ``y.add_(d)`` for a bf16/fp16 ``y`` and a float32 ``d`` of its shape, both
    contiguous: float(y) + d rounded once (to nearest even), in place. Why not torch's: for mixed
    dtypes it takes its unrolled, unvectorized kernel, 3.6 us a launch at one row on the H200 and
    47 us a layer at 256 rows (raw_h200/s21/ab_max_rows_32.log) for what is a join of two streams."""
    _need_triton()
    if y.shape != d.shape or d.dtype != torch.float32 or not (y.is_contiguous() and d.is_contiguous()):
        raise KernelError("add_f32_ needs y and a float32 d of the same shape, both contiguous")
    n = y.numel()
    if n:
        _add_f32_kernel[(triton.cdiv(n, ADD_BLOCK),)](y, d, n, BLOCK=ADD_BLOCK, num_warps=4)
    return y


#: :func:`.linear.beside` first reads a lone fine-tune's packed words into the L2 on the side stream
#: (:func:`prefetch_`), so the shrink and expand after it, latency-bound, wait on the L2 rather than on
#: DRAM loaded by the base GEMV beside them. Off (DELTASTORE_DELTA_PREFETCH): slower. H200, one row through
#: the modules (l2_device.sh, raw_h200/s29/l2): 164.4 us a layer against 157.4 (163.1 with the base GEMV
#: reading evict_first too); the shrinks and expands after it ran 10-20% faster (down's shrink 15.1 us
#: against 18.4), but the prefetch launch (3-6 us a group) sits on the deltas' chain.
PREFETCH = os.environ.get("DELTASTORE_DELTA_PREFETCH", "0") not in ("", "0")
PREFETCH_BLOCK = 4096


def prefetch_(dset: DeltaSet) -> None:
    """One launch reading every packed word of ``dset`` (evict_last) and keeping nothing: see
    :data:`PREFETCH`."""
    _need_triton()
    n = dset.words.numel()
    if not n:
        return
    grid = triton.cdiv(n, PREFETCH_BLOCK)
    sink = dset.prefetch_sink(grid)
    _prefetch_kernel[(grid,)](dset.words, n, sink, 0, BLOCK=PREFETCH_BLOCK, num_warps=4)


def dequant_rows(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, length: int, group_size: int) -> torch.Tensor:
    """Triton twin of :func:`ref_ops.dequant_rows`: float32 (rows, length)."""
    _need_triton()
    R = q.shape[0]
    out = torch.empty(R, length, dtype=torch.float32, device=q.device)
    if R == 0 or length == 0:
        return out
    bc = 128  # any multiple of 32: the group of each value is looked up per value here
    grid = (triton.cdiv(R, 16), triton.cdiv(length, bc))
    _dequant_kernel[grid](q.contiguous(), s.contiguous(), z.contiguous(), out, R, length, group_size,
                          BITS=bits, BLOCK_R=16, BLOCK_C=bc)
    return out
