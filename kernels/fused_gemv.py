"""One launch per linear for decoding (M <= 4 rows): y = x W^T (+ b) + z U^^T, written once.

Today a linear with a delta costs cuBLAS's GEMV over the bf16 base, then the GEMV expand
(``triton_ops._gemv_expand_kernel``) adding z U^^T into y: on the H200 both are latency-bound
(benchmarks/results/kernels_h200.md: ~5-10 us fixed cost a launch from chains of dependent
loads), so base + a 1/16 delta is x1.95 of the base alone at M = 1. Here the expand rides on the
base GEMV: a program owns a block of ``BLOCK_N`` output columns of one linear (one slice of a
:class:`DeltaSet`), streams W's rows for them (the memory-bound part: ~97% of the bytes), then,
for the same columns, the packed U^ columns of every tier of each row's fine-tune, and writes
y once, in float32 until the single rounding (today's path rounds the base to bf16 first).

The shrink (z = (x V^) S, ``triton_ops.shrink``) stays a separate launch: it reads x whole and
is shared by the linears of a group (q/k/v, gate/up). Where the group's weights are one tensor
(as servers lay them out; ``slice_index=None``) a column block looks up its linear in the set's
(slice, first column) table, so the group costs 2 launches (shrink + fused) instead of 3 (cuBLAS,
shrink, expand); with a weight per linear (an HF model's DeltaLinear) it costs n + 1.

Rows: the accumulator is indexed by the batch's *sorted* position (``RowPlan.rows``), so the
row blocks of :func:`deltaset.plan_blocks` (one fine-tune each, built on the device) add their
deltas at their positions; positions with no block (id -1) get the base alone. Multi-tenant rows
therefore cost no extra launch; a block's U^ columns are read once for all of its rows.

Split-K (``SPLIT_K`` > 1, for too few column blocks to fill the GPU): program ks takes the
ks-th slice of the input dimension for the base and every SPLIT_K-th step of components for the
delta, stores its float32 partial, and the last of the column block's programs to finish (a
counter per column block, reset by that program) adds the partials in ks order into y: one
launch, deterministic, graph-safe (the handshake of the GEMV expand).

Dequantization reuses ``triton_ops._unpack`` (whole words split in registers); a block of columns
lies inside one quantization group (BLOCK_N divides the set's block width, which divides the
group size), so each component has one scale and zero per program.

Off by default: :func:`enabled` reads ``DELTASTORE_FUSED_GEMV`` (or a set's ``fused_gemv``
attribute). Checked on the H200 (tests/kernels/test_fused_gemv.py passes there) and measured with
``bench_kernels.py --fused``: 1.36x slower than cuBLAS + shrink + expand at M = 1 (287.9 against
212.2 us a layer): its base GEMV alone is x1.25 of cuBLAS's, and the delta inside it adds ~144 us
where the separate GEMV expand takes ~57 (benchmarks/results/raw_h200/fused_gemv_h200_m1_acc2d.md,
fused_gemv_h200_fadde0c.md), so DeltaLinear does not call it.
"""

from __future__ import annotations

import os

import torch

from . import triton_ops
from .deltaset import NF, DeltaSet, RowPlan, plan_blocks
from .errors import KernelError

#: the most rows of a batch the fused kernel serves (one register row each; above: the two-launch path)
MAX_ROWS = 4
#: defaults: output columns a program, inputs a base step, components a delta step
BLOCK_N = 32
BLOCK_K = 128  # 256 holds the W tile in ~128 registers a thread (bench_kernels --regs); 128 leaves room
BLOCK_R = 16


def enabled(dset: DeltaSet | None = None) -> bool:
    """Whether the fused GEMV is switched on: a set's own ``fused_gemv`` (True/False) if given,
    else the environment's ``DELTASTORE_FUSED_GEMV=1``. Off by default: slower than the two-launch
    path on the H200 (module docstring)."""
    own = getattr(dset, "fused_gemv", None) if dset is not None else None
    if own is not None:
        return bool(own)
    return os.environ.get("DELTASTORE_FUSED_GEMV", "0") not in ("", "0")


def applies(x: torch.Tensor, dset: DeltaSet, weight: torch.Tensor | None = None) -> bool:
    """Whether this call can take the fused kernel: switched on, Triton usable for x (2-D), M <= 4
    rows, and (given) a weight in x's dtype with unit stride along its inputs; else the caller
    takes the two-launch path."""
    if not (enabled(dset) and triton_ops.usable(x) and x.dim() == 2 and 0 < x.shape[0] <= MAX_ROWS):
        return False
    return weight is None or (weight.dtype == x.dtype and weight.stride(1) == 1)


if triton_ops.HAVE_TRITON:
    import triton
    import triton.language as tl

    from .triton_ops import _pick, _row_block, _row_base, _tile_header, _unpack

    @triton.jit
    def _fused_tier(acc, acc_r, z_ptr, MZC, pos0, nrows, ZC, words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, cnt_t, zcol, gs, m_s, n0, ks,
                    BITS: tl.constexpr, SPLIT_Z: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
                    BLOCK_N: tl.constexpr):
        """acc (BLOCK_M, BLOCK_N) at sorted positions pos0 .. pos0 + nrows += z U^^T over this
        program's share of one tier's components (every SPLIT_K-th step of BLOCK_R from ks)."""
        row_words = BITS * ((m_s + 31) // 32)
        G = (m_s + gs - 1) // gs
        g = n0 // gs
        offs_r0 = tl.arange(0, BLOCK_R)
        offs_m = tl.arange(0, BLOCK_M)
        for c0 in range(ks * BLOCK_R, cnt_t, SPLIT_K * BLOCK_R):
            offs_r = c0 + offs_r0
            r_ok = offs_r < cnt_t
            r64 = offs_r.to(tl.int64)
            # words, scales and zeros of the step asked for together, before any is used
            q = _unpack(words_ptr, u_q + r64 * row_words, r_ok, n0, row_words, BITS, BLOCK_R, BLOCK_N, False)
            sc = tl.load(scales_ptr + u_sz + r64 * G + g, mask=r_ok, other=0.0).to(tl.float32)
            zp = tl.load(zeros_ptr + u_sz + r64 * G + g, mask=r_ok, other=0.0).to(tl.float32)
            w = q.to(tl.float32) - zp[:, None]  # (R, N): exact integers
            if BLOCK_M == 1:  # one row: products kept per component, summed across them once (the caller)
                zj = tl.zeros((BLOCK_R,), dtype=tl.float32)
                zrow = z_ptr + pos0.to(tl.int64) * ZC + zcol
                for s in tl.static_range(SPLIT_Z):
                    zj += tl.load(zrow + s * MZC + offs_r, mask=r_ok & ((offs_r0 * 0 + nrows) > 0), other=0.0)
                acc_r += w * (zj * sc)[:, None]
            for j in tl.static_range(BLOCK_M if BLOCK_M > 1 else 0):
                zj = tl.zeros((BLOCK_R,), dtype=tl.float32)
                zrow = z_ptr + (pos0 + j).to(tl.int64) * ZC + zcol
                for s in tl.static_range(SPLIT_Z):
                    zj += tl.load(zrow + s * MZC + offs_r, mask=r_ok & ((offs_r0 * 0 + j) < nrows), other=0.0)
                p = tl.sum(w * (zj * sc)[:, None], axis=0)  # (N,)
                acc = tl.where(((offs_m == pos0 + j) & ((offs_m * 0 + j) < nrows))[:, None], acc + p[None, :], acc)
        return acc, acc_r

    @triton.jit
    def _fused_gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, z_ptr, part_ptr, sem_ptr, words_ptr, scales_ptr, zeros_ptr,
                           tiers_ptr, ntiers_ptr, rows_ptr, blocks_ptr, nblk_ptr, mout_ptr, coloff_ptr,
                           M, K, N_arg, NTOT, ZC, NB, sl_arg, n_slices, R_max, stride_xm, stride_wn, stride_ym,
                           NFIELD: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, SPLIT_Z: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
                           HAS1: tl.constexpr, HAS2: tl.constexpr, HAS3: tl.constexpr, HAS4: tl.constexpr, HAS8: tl.constexpr):
        """Program (column block, ks): y[rows, n0 .. n0 + BLOCK_N] of slice ``sl`` (see the module)."""
        WIDTHS: tl.constexpr = (HAS1 * 2) | (HAS2 * 4) | (HAS3 * 8) | (HAS4 * 16) | (HAS8 * 256)  # bit b set: width b present
        pid_n = tl.program_id(0)
        ks = tl.program_id(1)
        if GROUP:  # every linear of the set: W and y are the set's linears side by side (NTOT columns)
            sl = tl.load(nblk_ptr + 2 * pid_n)
            n0 = tl.load(nblk_ptr + 2 * pid_n + 1)
            N = tl.load(mout_ptr + sl)
            coff = tl.load(coloff_ptr + sl)
        else:  # linear sl_arg alone: its own W and y
            sl = sl_arg
            n0 = pid_n * BLOCK_N
            N = N_arg
            coff = 0
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        cols = coff + offs_n  # row of W, column of y (and of the bias and the partials)
        offs_m = tl.arange(0, BLOCK_M)
        # activation offsets of sorted positions 0..3 (the last real row for padding positions)
        xb0 = _row_base(rows_ptr, 0, M, stride_xm, 0, BLOCK_M)
        xb1 = _row_base(rows_ptr, 0, M, stride_xm, 1, BLOCK_M)
        xb2 = _row_base(rows_ptr, 0, M, stride_xm, 2, BLOCK_M)
        xb3 = _row_base(rows_ptr, 0, M, stride_xm, 3, BLOCK_M)
        # the base: this program's share of the input dimension, one step's W rows loaded ahead
        nkb = tl.cdiv(K, BLOCK_K)
        per = tl.cdiv(nkb, SPLIT_K)
        k_lo = ks * per * BLOCK_K
        k_hi = tl.minimum(k_lo + per * BLOCK_K, K)
        offs_k0 = tl.arange(0, BLOCK_K)
        wrow = w_ptr + cols.to(tl.int64)[:, None] * stride_wn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        # W is read once by the whole launch ("evict_first"); x is read by every program ("evict_last")
        wn = tl.load(wrow + (k_lo + offs_k0)[None, :], mask=n_ok[:, None] & ((k_lo + offs_k0) < k_hi)[None, :], other=0.0,
                     eviction_policy="evict_first")
        if BLOCK_M == 1:
            # one row: products summed elementwise in a (N, K) tile, reduced across K once at the
            # end (a reduction a step costs shuffles and a shared-memory round trip per step)
            acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            for k0 in range(k_lo, k_hi, BLOCK_K):
                wt = wn.to(tl.float32)
                offs_k = k0 + offs_k0
                kn = offs_k + BLOCK_K
                wn = tl.load(wrow + kn[None, :], mask=n_ok[:, None] & (kn < k_hi)[None, :], other=0.0, eviction_policy="evict_first")
                x0 = tl.load(x_ptr + xb0 + offs_k, mask=offs_k < k_hi, other=0.0, eviction_policy="evict_last").to(tl.float32)
                acc2 += wt * x0[None, :]
            acc += tl.sum(acc2, axis=1)[None, :]
        else:
            for k0 in range(k_lo, k_hi, BLOCK_K):
                wt = wn.to(tl.float32)
                offs_k = k0 + offs_k0
                k_ok = offs_k < k_hi
                kn = offs_k + BLOCK_K
                wn = tl.load(wrow + kn[None, :], mask=n_ok[:, None] & (kn < k_hi)[None, :], other=0.0, eviction_policy="evict_first")
                for m in tl.static_range(BLOCK_M):
                    xm = tl.load(x_ptr + _pick(m, xb0, xb1, xb2, xb3) + offs_k, mask=k_ok & ((offs_k * 0 + m) < M), other=0.0,
                                 eviction_policy="evict_last").to(tl.float32)
                    p = tl.sum(wt * xm[None, :], axis=1)  # (N,)
                    acc = tl.where((offs_m == m)[:, None], acc + p[None, :], acc)
        # the delta: each row block (one fine-tune's rows) adds its tiers' z U^^T at its positions
        acc_r = tl.zeros((BLOCK_R if BLOCK_M == 1 else 1, BLOCK_N), dtype=tl.float32)
        for b in range(0, NB):
            slot, pos0, nrows = _row_block(blocks_ptr, b)
            if slot >= 0:
                nt = tl.load(ntiers_ptr + slot * n_slices + sl)
                for t in range(0, nt):
                    _v_q, _v_sz, u_q, u_sz, _s_off, bits, cnt_t, zcol, gs = _tile_header(
                        tiers_ptr + ((slot * n_slices + sl) * R_max + t) * NFIELD)
                    for B in tl.static_range(1, 9):  # one compiled branch per bit width the set holds
                        if (WIDTHS >> B) & 1:
                            if bits == B:
                                acc, acc_r = _fused_tier(acc, acc_r, z_ptr, M * ZC, pos0, nrows, ZC, words_ptr, scales_ptr, zeros_ptr, u_q, u_sz, cnt_t,
                                                  zcol, gs, N, n0, ks, B, SPLIT_Z, SPLIT_K, BLOCK_M, BLOCK_R, BLOCK_N)
        if BLOCK_M == 1:
            acc += tl.sum(acc_r, axis=0)[None, :]
        m_ok = offs_m < M
        mk = m_ok[:, None] & n_ok[None, :]
        if SPLIT_K == 1:
            res = acc
        else:
            # store this share; the last program of the column block adds the shares in ks order
            pptr = part_ptr + ((ks * M + offs_m).to(tl.int64) * NTOT)[:, None] + cols[None, :]
            tl.store(pptr, acc, mask=mk)
            tl.debug_barrier()
            done = tl.atomic_add(sem_ptr + pid_n, 1, sem="acq_rel")
            res = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            if done == SPLIT_K - 1:
                for s in tl.static_range(SPLIT_K):
                    sp = part_ptr + ((s * M + offs_m).to(tl.int64) * NTOT)[:, None] + cols[None, :]
                    res += tl.load(sp, mask=mk, other=0.0, cache_modifier=".cg")
                tl.atomic_xchg(sem_ptr + pid_n, 0)
            mk = mk & ((offs_m * 0 + done) == SPLIT_K - 1)[:, None]
        if HAS_BIAS:
            res += tl.load(b_ptr + cols, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        rows = tl.load(rows_ptr + offs_m, mask=m_ok, other=0).to(tl.int64)
        tl.store(y_ptr + (rows * stride_ym)[:, None] + cols[None, :], res.to(y_ptr.dtype.element_ty), mask=mk)


def fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, z: torch.Tensor, dset: DeltaSet, plan: RowPlan,
                 slice_index: int | None = 0, *, split_k: int = 1, block_n: int | None = None, block_k: int | None = None,
                 block_r: int | None = None, num_warps: int = 4, num_stages: int = 1, out: torch.Tensor | None = None) -> torch.Tensor:
    """y = x W^T (+ bias) + the delta of each row's fine-tune, in one launch (see the module).

    ``slice_index`` i: linear i of ``dset`` alone, W (out_features[i], in), y (M, out_features[i]).
    None: every linear of the set at once (q/k/v or gate/up stored as one weight, as servers lay
    them out), W (sum(out_features), in), y (M, sum(out_features)): one launch for the group.
    ``z`` is the set's shrink output for x (``triton_ops.shrink``, any split); x (M <= 4, in)
    bf16/fp16; W in x's dtype with unit stride along its inputs. Twin: :func:`ref_ops.fused_linear`."""
    triton_ops._need_triton()
    dset.build()
    M, K = x.shape
    group = slice_index is None
    N = sum(dset.out_features) if group else dset.out_features[slice_index]
    if not 0 < M <= MAX_ROWS:
        raise KernelError(f"the fused GEMV serves 1..{MAX_ROWS} rows; got {M} (use shrink + expand)")
    if tuple(weight.shape) != (N, K) or K != dset.in_features:
        raise KernelError(f"weight {tuple(weight.shape)} and input {tuple(x.shape)} do not match the deltas' {N}x{dset.in_features}")
    if weight.dtype != x.dtype or weight.stride(1) != 1:
        raise KernelError("the fused GEMV needs the weight in the input's dtype, with unit stride along its inputs")
    if plan.n_rows != M or (dset.n_slots and plan.n_slots != dset.n_slots):
        raise KernelError(f"the row plan covers {plan.n_rows} rows and {plan.n_slots} fine-tunes; the call has {M} and {dset.n_slots}")
    if x.stride(1) != 1:
        x = x.contiguous()
    bn = block_n or min(BLOCK_N, dset.block_k)
    if dset.block_k % bn or bn % 32:
        raise KernelError(f"block_n {bn} must be a multiple of 32 dividing the set's block width {dset.block_k}")
    bk = block_k or BLOCK_K
    br = block_r or BLOCK_R
    bm = 1 << (M - 1).bit_length()
    y = out if out is not None else torch.empty(M, N, dtype=x.dtype, device=x.device)
    if y.shape != (M, N) or y.stride(1) != 1:
        raise KernelError(f"out must be ({M}, {N}) with unit stride along its columns")
    blocks = plan_blocks(plan, bm)
    nblk = dset.nblocks(bn)  # (slice, first column) of every column block of every linear
    nbn = nblk.shape[0] if group else -(-N // bn)
    part = torch.empty(split_k, M, N, dtype=torch.float32, device=x.device) if split_k > 1 else y
    sems = dset.semaphores(nbn, 1) if split_k > 1 else blocks  # zero, left at zero by each launch
    has = {f"HAS{b}": b in dset.bit_widths for b in (1, 2, 3, 4, 8)}
    triton_ops.LAST["fused_gemv"] = _fused_gemv_kernel[(nbn, split_k)](
        x, weight, bias if bias is not None else weight, y, z, part, sems, dset.words, dset.scales, dset.zeros,
        dset.tiers, dset.ntiers, plan.rows, blocks, nblk, dset.m_out, dset.col_off,
        M, K, N, N, dset.zcols, blocks.shape[0], 0 if group else slice_index, dset.n_slices, dset.max_tiers,
        x.stride(0), weight.stride(0), y.stride(0),
        NFIELD=NF, GROUP=group, HAS_BIAS=bias is not None, SPLIT_K=split_k, SPLIT_Z=z.shape[0], BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        BLOCK_R=br, **has, num_warps=num_warps, num_stages=num_stages)
    return y


def linear_forward(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dset: DeltaSet, plan: RowPlan,
                   slice_index: int = 0, cache: dict | None = None) -> torch.Tensor:
    """What a ``DeltaLinear`` runs when :func:`applies`: the set's shrink (once per input for the
    linears of a group: ``cache``, a dict the group keeps, holds z for the same tensor, unmodified
    since, under the same row plan), then one fused launch for this linear. x2 (M <= 4, in)."""
    dset.build()
    key = (x2.data_ptr(), tuple(x2.shape), x2._version, x2.dtype)
    z = None
    if cache is not None and cache.get("key") == key and cache.get("plan") is plan:
        z = cache["z"]
    if z is None:
        z = triton_ops.shrink(x2, dset, plan, triton_ops.pick_split_k(x2.shape[0], dset, plan=plan))
        if cache is not None:
            cache.update(key=key, plan=plan, z=z)
    return fused_linear(x2, weight, bias, z, dset, plan, slice_index)
