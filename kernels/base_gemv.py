"""The base GEMV for decoding (a few rows), written so the packed deltas can run beside it.

At one row a layer's base linears are memory-bound GEMVs: cuBLAS reads the bf16 weight at ~82% of
the H200's bandwidth (116 us a Llama-2-7B layer against a 95 us floor), but its kernels fill
every SM (large shared-memory pipelines, one CTA an SM), so the delta kernels launched beside it
on the side stream (:func:`.linear.beside`) mostly wait for it to finish: a layer with one 1/16
delta-come fine-tune costs x1.64 of the base alone, its kernels summing 222 us against 190 of
wall time (benchmarks/results/kernels_h200.md). This GEMV takes no shared memory and few
registers, so the SMs keep room for the delta programs while it streams the weight. Measured there
(`python benchmarks/ab_mma.py --cases 1,2,4 --mma-cfgs '[{"base_gemv.ENABLED": true, ...}]'`,
benchmarks/results/raw_h200/s22/): the base alone 113.4-114.9 us against cuBLAS's 116.1-117.9 (x0.97-0.98),
and **the layer with its delta 165.7-166.9 us against 191.2-193.5 (x1.42 of the base against x1.64)**:
the delta kernels now overlap the base by ~45 us instead of ~20. For 2..32 rows a second kernel
(:func:`_dot_kernel`: tl.dot over a 16- or 32-row block, W read once, a 64 x 128 tile in 5 stages)
does the same beside the tensor-core delta kernels: alone (first tile, 32 x 128 in 2 stages) it took
x1.6-x2.3 of cuBLAS's time, yet with this tile the layer with its delta goes 202.2 -> 178.1 us at 5 rows of one fine-tune, 209.1 -> 179.0 at 8,
243.0 -> 207.8 at 16 (x2.04 -> x1.74 of the base), 531.8 -> 522.5 at 32 rows over 8 fine-tunes;
at 2 and 4 rows 0.98x and 0.95x, at 8 rows over 8 and 32 over 32 (one row a fine-tune) level
(1.01x). The one-row GEMV kernel keeps a float32 partial a row in registers: x1.24-x2.16 of cuBLAS
at 2-4 rows, so it serves one row (:data:`GEMV_ROWS`). Above :data:`SERVE_ROWS` rows, cuBLAS. Alone
these kernels were a little slower than cuBLAS (x1.04 at one row, x1.09 at 5, x1.31 at 32 rows over 8;
at one row level since the loop is pipelined, :data:`STAGES`),
so :func:`.linear.base_linear` takes them only for a base the deltas run beside on the side stream
(graph decoding's steps by default: :func:`.linear.side_stream`).

``y[m, n] = sum_k x[m, k] W[n, k] (+ b[n])``, float32 sums rounded once to x's dtype: a program
owns ``BLOCK_N`` output columns and reads their rows of W in ``BLOCK_K`` steps of 16-byte loads,
keeping a (rows, BLOCK_N, BLOCK_K) float32 partial and reducing it once at the end (no shuffles
in the loop). Deterministic (no atomics, one order), graph-safe (the grid depends on the shapes).
"""

from __future__ import annotations

import os

import torch

from . import join, triton_ops
from .errors import KernelError

try:  # triton is optional: without it cuBLAS serves (CPU users, CI without it)
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised where triton is absent
    HAVE_TRITON = False

#: the most rows the GEMV kernel computes (one register partial each); the tl.dot kernel takes
#: up to MAX_ROWS (a block of 16 or 32 rows); by default the base takes these kernels for up to
#: SERVE_ROWS rows, the GEMV kernel for up to GEMV_ROWS
GEMV_MAX_ROWS = 4
MAX_ROWS = 32
SERVE_ROWS = 32
GEMV_ROWS = 1
#: output columns a program (halved where that leaves fewer than MIN_PROGRAMS: the GEMV keeps
#: bytes in flight by having many programs, as Triton pipelines no loop without tl.dot) and inputs
#: a step (8 x 256 bf16: four 16-byte loads a thread at 4 warps; 8 rows measured 1.5% faster
#: than 16 and 8% faster than 4 through the layer, raw_h200/s22/ab_gemv_sweep*.md)
BLOCK_N = 8
MIN_PROGRAMS = 512
BLOCK_K = 256
NUM_WARPS = 4
#: programs a streaming multiprocessor at most for the one-row GEMV (0: one a block of columns, all
#: launched at once). A Llama-2-7B layer's q/k/v (1,536 programs) and gate/up (2,752) fill every SM
#: (register-bound at ~8 resident a SM), so the delta shrink on the side stream waits ~18 us for the
#: first wave to retire (traced graph replay, H200: raw_h200/s29/ab_groups.md); a capped grid whose
#: programs take the blocks in turn lets the deltas start at once. Measured there, one row through the
#: modules (raw_h200/s29/cap/): 4 / 6 / 8 an SM 161.8 / 156.7 / 161.1 us a layer against 158.2
#: uncapped: level. Started at once, the q/k/v shrink takes 27 us beside the base at full speed (10
#: when it waited) and the base is faster by as much, so the exposed time moves, it does not shrink.
#: Off (``DELTASTORE_BASE_GEMV_PER_SM``); on a CPU (Triton's interpreter) the cap counts one SM.
PROGRAMS_PER_SM = int(os.environ.get("DELTASTORE_BASE_GEMV_PER_SM", "0"))
#: the one-row GEMV reads W with the evict_first policy, so its stream (read once a step) does not push
#: out of the L2 what the deltas beside it read (:data:`.triton_ops.PREFETCH`). Off
#: (DELTASTORE_BASE_EVICT_FIRST): level, one row through the modules on the H200 156.7 us a layer
#: against 157.4 (l2_device.sh, raw_h200/s29/l2), 163.1 with the prefetch.
EVICT_FIRST = os.environ.get("DELTASTORE_BASE_EVICT_FIRST", "0") not in ("", "0")
#: the GEMV's loop software-pipelined this deep where W has at least STAGES_MIN_K inputs (``tl.range(...,
#: num_stages=STAGES)``: the loads of STAGES - 1 steps ahead go to shared memory by cp.async, holding no
#: registers; 1: no pipeline, a program's one step of W in flight in registers). The same sums in the same
#: order (the same bits). H200, one Llama-2-7B layer (benchmarks/results/raw_h200/s33/): alone, 3 stages
#: sum the layer's GEMVs to 117.2 us against 126.0 unpipelined and cuBLAS's 119.7; beside the deltas
#: (probe_base_stream.py) level at q/k/v and gate/up, -3.6 us at down (11008 inputs) and +1.9 at o (4096:
#: 16 steps a program, the pipeline's fill not paid back). Through the modules, one row with its delta
#: (ab_mma.py, raw_h200/s33/d): 146.1 us (x1.26 of cuBLAS's base) against 151.2 unpipelined, 148.4 with 3
#: stages at every K (148.2-149.7 in two more calls against 151.2-152.0) and 148.4 with 4 stages.
STAGES = int(os.environ.get("DELTASTORE_BASE_GEMV_STAGES", "3"))
STAGES_MIN_K = int(os.environ.get("DELTASTORE_BASE_GEMV_STAGES_MIN_K", "8192"))


def _programs_cap(device: torch.device) -> int:
    """The GEMV's most programs on ``device`` (:data:`PROGRAMS_PER_SM` of each SM), 0 for no cap."""
    if PROGRAMS_PER_SM <= 0:
        return 0
    if device.type != "cuda":
        return PROGRAMS_PER_SM
    return PROGRAMS_PER_SM * triton_ops.sm_count(device.index if device.index is not None else torch.cuda.current_device())


#: the tl.dot kernel's tile: output columns a program, inputs a step, pipeline stages, warps
#: (64 x 128, 5 stages: 40 KB of shared memory; the best of 9 tiles through the layer at 5-16
#: rows, raw_h200/s22/ab_dot*.md; 32 columns or 2 stages were 10-30% slower there)
DOT_BLOCK_N = 64
DOT_BLOCK_K = 128
DOT_STAGES = 5
DOT_WARPS = 4
#: whether DeltaLinear's and DeltaGroup's base GEMM takes these kernels on CUDA for up to
#: SERVE_ROWS rows of bf16/fp16 (``DELTASTORE_BASE_GEMV=0``: cuBLAS always)
ENABLED = os.environ.get("DELTASTORE_BASE_GEMV", "").strip() != "0"

if HAVE_TRITON:

    @triton.jit
    def _x_row(x_ptr, off, k0, k, K, EVEN_K: tl.constexpr):
        """One row of x's step at k0 as float32 (zeros past K)."""
        if EVEN_K:
            return tl.load(x_ptr + off + k0 + k).to(tl.float32)
        else:
            return tl.load(x_ptr + off + k0 + k, mask=(k0 + k) < K, other=0.0).to(tl.float32)

    @triton.jit
    def _gemv_cols(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_ym, n0,
                   d_ptr, cnt_ptr, join_total, stride_dm,
                   M: tl.constexpr, HAS_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   EVEN_K: tl.constexpr, JOIN: tl.constexpr, EVICT: tl.constexpr, STAGES: tl.constexpr):
        """y[:M, n0 .. n0 + BLOCK_N] (one program's block of output columns); JOIN: then counted on
        its block's counter, the last program of the block adding the delta d in (:mod:`.join`);
        STAGES > 1: the loop software-pipelined (:data:`STAGES`)."""
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < N
        nc = tl.where(n_ok, n, 0)  # rows past N read row 0 (always there): no mask along n in the loop
        k = tl.arange(0, BLOCK_K)
        wp = w_ptr + nc.to(tl.int64)[:, None] * stride_wn + k[None, :]
        acc0 = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        acc1 = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        acc2 = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        acc3 = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            if EVEN_K:
                w = tl.load(wp + k0, eviction_policy=EVICT).to(tl.float32)
            else:
                w = tl.load(wp + k0, mask=((k0 + k) < K)[None, :], other=0.0, eviction_policy=EVICT).to(tl.float32)
            acc0 += w * _x_row(x_ptr, 0, k0, k, K, EVEN_K)[None, :]
            if M > 1:
                acc1 += w * _x_row(x_ptr, stride_xm, k0, k, K, EVEN_K)[None, :]
            if M > 2:
                acc2 += w * _x_row(x_ptr, 2 * stride_xm, k0, k, K, EVEN_K)[None, :]
            if M > 3:
                acc3 += w * _x_row(x_ptr, 3 * stride_xm, k0, k, K, EVEN_K)[None, :]
        bias = tl.zeros([BLOCK_N], tl.float32)
        if HAS_B:
            bias = tl.load(b_ptr + nc).to(tl.float32)
        ty = y_ptr.dtype.element_ty
        tl.store(y_ptr + n, (tl.sum(acc0, axis=1) + bias).to(ty), mask=n_ok)
        if M > 1:
            tl.store(y_ptr + stride_ym + n, (tl.sum(acc1, axis=1) + bias).to(ty), mask=n_ok)
        if M > 2:
            tl.store(y_ptr + 2 * stride_ym + n, (tl.sum(acc2, axis=1) + bias).to(ty), mask=n_ok)
        if M > 3:
            tl.store(y_ptr + 3 * stride_ym + n, (tl.sum(acc3, axis=1) + bias).to(ty), mask=n_ok)
        if JOIN:
            join.arrive(y_ptr, d_ptr, cnt_ptr, n0 // join.COLS, join_total, M, stride_ym, stride_dm, join.COLS)

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_ym,
                     d_ptr, cnt_ptr, join_total, stride_dm,
                     M: tl.constexpr, HAS_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     EVEN_K: tl.constexpr, PERSIST: tl.constexpr = False, JOIN: tl.constexpr = False, EVICT: tl.constexpr = "",
                     STAGES: tl.constexpr = 1):
        """A block of BLOCK_N output columns a program; PERSIST: a capped grid whose programs take
        the blocks in turn (pid, pid + programs, ...; see :data:`PROGRAMS_PER_SM`)."""
        pid = tl.program_id(0)
        if PERSIST:
            for blk in range(pid, tl.cdiv(N, BLOCK_N), tl.num_programs(0)):
                _gemv_cols(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_ym, blk * BLOCK_N,
                           d_ptr, cnt_ptr, join_total, stride_dm, M, HAS_B, BLOCK_N, BLOCK_K, EVEN_K, JOIN, EVICT, STAGES)
        else:
            _gemv_cols(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_ym, pid * BLOCK_N,
                       d_ptr, cnt_ptr, join_total, stride_dm, M, HAS_B, BLOCK_N, BLOCK_K, EVEN_K, JOIN, EVICT, STAGES)

    @triton.jit
    def _dot_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                    HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    EVEN_K: tl.constexpr, UPCAST: tl.constexpr):
        """The same product for up to BLOCK_M rows by tl.dot (the tensor cores), W read once
        (UPCAST: float32 operands, for the CPU interpreter: see triton_ops._dot)."""
        pid = tl.program_id(0)
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < N
        nc = tl.where(n_ok, n, 0)
        m = tl.arange(0, BLOCK_M)
        m_ok = m < M
        mc = tl.where(m_ok, m, 0)  # rows past M read row 0 and are not stored
        k = tl.arange(0, BLOCK_K)
        xp = x_ptr + mc[:, None] * stride_xm + k[None, :]
        wp = w_ptr + nc.to(tl.int64)[:, None] * stride_wn + k[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                xt = tl.load(xp + k0)
                wt = tl.load(wp + k0)
            else:
                k_ok = (k0 + k) < K
                xt = tl.load(xp + k0, mask=k_ok[None, :], other=0.0)
                wt = tl.load(wp + k0, mask=k_ok[None, :], other=0.0)
            if UPCAST:
                acc = tl.dot(xt.to(tl.float32), tl.trans(wt.to(tl.float32)), acc)
            else:
                acc = tl.dot(xt, tl.trans(wt), acc)
        if HAS_B:
            acc += tl.load(b_ptr + nc).to(tl.float32)[None, :]
        tl.store(y_ptr + m[:, None] * stride_ym + n[None, :], acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def serves(x: torch.Tensor, W: torch.Tensor) -> bool:
    """Whether :func:`gemv` serves ``x @ W.T`` here: switched on (:data:`ENABLED`), Triton on a CUDA
    device, 1..SERVE_ROWS rows, bf16/fp16 of one dtype, W's rows contiguous and 16-byte aligned."""
    return (ENABLED and HAVE_TRITON and x.is_cuda and x.dim() == 2 and 0 < x.shape[0] <= SERVE_ROWS
            and x.dtype in (torch.bfloat16, torch.float16) and W.dtype == x.dtype and W.dim() == 2
            and W.stride(1) == 1 and W.stride(0) % 8 == 0 and W.data_ptr() % 16 == 0)


def _gemv_bn(N: int) -> int:
    """Output columns a GEMV program: BLOCK_N, halved (to 4 at least) while that leaves fewer than
    MIN_PROGRAMS programs."""
    bn = BLOCK_N
    while bn > 4 and triton.cdiv(N, bn) < MIN_PROGRAMS:
        bn //= 2
    return bn


def join_arrivals(N: int) -> int:
    """The GEMV's programs over one block of :data:`.join.COLS` of its N output columns: what it adds
    to a fused join's total (:mod:`.join`)."""
    return join.COLS // _gemv_bn(N)


def gemv(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None, out: torch.Tensor | None = None,
         path: str | None = None, fused: "join.Join | None" = None) -> torch.Tensor:
    """``x @ W.T + b`` for a few rows (x: (M <= MAX_ROWS, K), W: (N, K) with contiguous rows),
    float32 sums rounded once to x's dtype; into ``out`` (M, N) with contiguous rows where given.
    ``path``: "gemv" (up to GEMV_MAX_ROWS rows) or "dot"; by default the GEMV up to GEMV_ROWS.
    ``fused`` (the GEMV path, out=fused.y): each program then counts itself on its block's counter,
    the last of a block (its programs and the delta expand's) adding fused.d into y (:mod:`.join`)."""
    if not HAVE_TRITON:
        raise KernelError("the base GEMV needs triton")
    M, K = x.shape
    N = W.shape[0]
    if not 0 < M <= MAX_ROWS or W.shape[1] != K or W.stride(1) != 1 or (b is not None and b.shape != (N,)):
        raise KernelError(f"base GEMV: x {tuple(x.shape)}, W {tuple(W.shape)}: needs 1..{MAX_ROWS} rows of W's inputs")
    x = x.contiguous()
    if out is not None and (out.shape != (M, N) or out.dtype != x.dtype or out.stride(1) != 1):
        raise KernelError(f"base GEMV: out must be ({M}, {N}) {x.dtype} with contiguous rows")
    y = torch.empty(M, N, dtype=x.dtype, device=x.device) if out is None else out
    if N == 0:
        return y
    bb = b.contiguous() if b is not None else x
    path = path or ("gemv" if M <= GEMV_ROWS else "dot")
    if fused is not None and path != "gemv":
        raise KernelError("base GEMV: a fused join is on the GEMV path only")
    if path == "dot":
        bm = 16 if M <= 16 else 32
        _dot_kernel[(triton.cdiv(N, DOT_BLOCK_N),)](x, W, bb, y, M, N, K, x.stride(0), W.stride(0), y.stride(0),
                                                    HAS_B=b is not None, BLOCK_M=bm, BLOCK_N=DOT_BLOCK_N, BLOCK_K=DOT_BLOCK_K,
                                                    EVEN_K=K % DOT_BLOCK_K == 0, UPCAST=not x.is_cuda,
                                                    num_warps=DOT_WARPS, num_stages=DOT_STAGES)
        return y
    if path != "gemv" or M > GEMV_MAX_ROWS:
        raise KernelError(f"base GEMV: no path {path!r} for {M} rows")
    bn = _gemv_bn(N)
    if fused is not None:
        fused.check()
        if fused.y is not y:  # (its rows: the GEMV path's, checked above)
            raise KernelError("base GEMV: a fused join writes its own y (out=fused.y)")
    blocks = triton.cdiv(N, bn)
    cap = _programs_cap(x.device)
    grid = min(blocks, cap) if cap else blocks
    jd, jc = (fused.d, fused.counters) if fused is not None else (y, y)
    _gemv_kernel[(grid,)](x, W, bb, y, N, K, x.stride(0), W.stride(0), y.stride(0),
                          jd, jc, fused.total if fused is not None else 0, jd.stride(0),
                          M=M, HAS_B=b is not None, BLOCK_N=bn, BLOCK_K=BLOCK_K,
                          EVEN_K=K % BLOCK_K == 0, PERSIST=grid < blocks, JOIN=fused is not None,
                          EVICT="evict_first" if EVICT_FIRST else "", STAGES=STAGES if K >= STAGES_MIN_K else 1,
                          num_warps=NUM_WARPS)
    return y
