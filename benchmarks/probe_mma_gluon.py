"""Probe (issue 9): delta-come shrink and expand on the tensor cores, the 2-bit factors unpacked
straight into the MMA's registers (Gluon, Triton's explicit-layout dialect), against today's kernels.

    python benchmarks/probe_mma_gluon.py [--cases 1,16,32x8] [--copies 4] [--cfgs JSON] [--out FILE]   # on the GPU
    PYTHONPATH=/tmp/tr36 python benchmarks/probe_mma_gluon.py --sass                   # SASS, no GPU

Why: today's GEMV kernels issue ~10-15 instructions a packed value (unpack to float32 and one FMA
per row, index and mask arithmetic; kernels_h200.md) and the tl.dot ones go through shared memory
to reach the MMA layout; both are latency- and issue-bound at 2-7% of DRAM bandwidth. Here each
thread loads the words its own MMA fragment needs and turns them into bf16 operands in registers:
for a 2-bit field q, ``lop3(w >> s, 0x00030003, 0x43004300)`` is the bf16 pair (128 + q_a,
128 + q_b), exact, two values a shift and a LOP3; the zero points and the 128 come out once per
group through sums (of x in the shrink, of z S in the expand), the scales multiply the float32
group sums (shrink) or the other operand (expand). mma.sync m16n8k16 with the packed factor on
the M side ("swap AB": components or outputs on M, up to 16 batch rows on N), so M = 1 wastes
tensor-core work, not bytes or instructions.

  shrink: z[m, r] = S[r] sum_k x[m, k] (q[r, k] - zp[r, g]) sc[r, g]; A (components x 16 k) from
          V^T rows packed along k: mma slots (2t, 2t+1) take fields (a, a + 8) of one word, and x
          is read at the same permuted k (B side), so each pair is one shift and one LOP3.
  expand: y[m, n] += sum_r zs[m, r] (q[r, n] - zp[r, g(n)]) sc[r, g(n)]; A (outputs x 16 r) from
          U columns packed along n: a thread's two rows r, r + 1 are two words, paired by a byte
          permute; a program covers one group of 128 outputs, so sc and zp depend on r alone.

This probe serves one 2-bit tier of rank 1024 per linear (96% of a 1/16 delta's values are 2-bit),
one tenant, and accumulates by float32 atomics (not deterministic in the last bits; the product
would reduce in a fixed order as today's kernels do). It checks every kernel against a float32
torch reference, then times a Llama-2-7B-shaped layer's shrinks and expands (the memsets the
atomics need included) in a CUDA graph over copies of the packed factors.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

RANK = 1024
#: (group, output sizes of its slices, input size): the Llama-2-7B layer of bench_kernels.GROUPS
GROUPS = [("qkv", [4096, 4096, 4096], 4096), ("o", [4096], 4096), ("gate_up", [11008, 11008], 4096), ("down", [4096], 11008)]


@gluon.jit
def _v_quad(w, sh):
    # one thread's A registers (pack 4: (r, s), (r, s+1), (r+8, s), (r+8, s+1)); slots s, s+1 hold
    # fields a and a + 8 of row r's word: a shift and a LOP3 give both as bf16 128 + q
    return gl.inline_asm_elementwise(
        "{ .reg .b32 t, u; shr.b32 t, $2, $6; shr.b32 u, $4, $6;"
        " lop3.b32 $0, t, 0x00030003, 0x43004300, 0xea; lop3.b32 $1, u, 0x00030003, 0x43004300, 0xea; }",
        "=r,=r,r,r,r,r,r,r,r,r", [w, sh], dtype=gl.bfloat16, is_pure=True, pack=4)


@gluon.jit
def _u_quad(w, sh):
    # A registers (pack 4: (n, r), (n, r+1), (n+8, r), (n+8, r+1)); rows r, r+1 are two words, n's
    # field is f = n % 16 < 8 and n + 8's is f + 8: two byte permutes pair the words' low and high
    # halves, then a shift and a LOP3 each give a bf16 pair 128 + q
    return gl.inline_asm_elementwise(
        "{ .reg .b32 lo, hi; prmt.b32 lo, $2, $3, 0x5410; prmt.b32 hi, $2, $3, 0x7632;"
        " shr.b32 lo, lo, $6; shr.b32 hi, hi, $6;"
        " lop3.b32 $0, lo, 0x00030003, 0x43004300, 0xea; lop3.b32 $1, hi, 0x00030003, 0x43004300, 0xea; }",
        "=r,=r,r,r,r,r,r,r,r,r", [w, sh], dtype=gl.bfloat16, is_pure=True, pack=4)


@gluon.jit
def shrink_mma(x_ptr, w_ptr, s_ptr, zp_ptr, sv_ptr, z_ptr, MT, R, stride_xm,
               K: gl.constexpr, BM: gl.constexpr, GPS: gl.constexpr, TILES: gl.constexpr, PF: gl.constexpr, num_warps: gl.constexpr):
    """z[t MT + m, r] += S_t[r] sum over this program's groups of x[t MT + m, k] V^_t[r, k] for
    tenant t = program_id(2) and its MT rows. Program: 16 TILES num_warps components, GPS groups
    of 128 inputs (float32 atomic adds into z)."""
    BLOCK_R: gl.constexpr = 16 * TILES * num_warps
    G: gl.constexpr = K // 128
    ROW_WORDS: gl.constexpr = 2 * (K // 32)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
    aL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    bL: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    xL: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [1, num_warps], [1, 0])
    pid_r = gl.program_id(0)
    pid_k = gl.program_id(1)
    t = gl.program_id(2)
    r0 = pid_r * BLOCK_R
    w_t = w_ptr + t.to(gl.int64) * R * ROW_WORDS
    sz_t = t * R * G
    x_t = x_ptr + (t * MT).to(gl.int64) * stride_xm
    # A: (BLOCK_R, 128) words of one group (8 k16 tiles), slot s of each tile holding field fa(s)
    ra = r0 + gl.arange(0, BLOCK_R, layout=gl.SliceLayout(1, aL))
    sa = gl.arange(0, 128, layout=gl.SliceLayout(0, aL))
    fa = ((sa % 16) // 2) + (sa % 2) * 8
    wptr = w_t + ra.to(gl.int64)[:, None] * ROW_WORDS + (sa // 16)[None, :]
    sh = gl.full([BLOCK_R, 128], 0, gl.int32, aL) + (2 * fa)[None, :]
    # B: (128, BM) x^T at the same permuted k
    sb = gl.arange(0, 128, layout=gl.SliceLayout(1, bL))
    kb = (sb // 16) * 16 + ((sb % 16) // 2) + (sb % 2) * 8
    mb = gl.arange(0, BM, layout=gl.SliceLayout(0, bL))
    xptr = x_t + mb[None, :] * stride_xm + kb[:, None]
    xmask = (mb[None, :] < MT) & (sb[:, None] < 128)
    mx = gl.arange(0, BM, layout=gl.SliceLayout(1, xL))
    kx = gl.arange(0, 128, layout=gl.SliceLayout(0, xL))
    xsptr = x_t + mx[:, None] * stride_xm + kx[None, :]
    xsmask = (mx[:, None] < MT) & (kx[None, :] < 128)
    rc = r0 + gl.arange(0, BLOCK_R, layout=gl.SliceLayout(1, mma))
    acc = gl.zeros([BLOCK_R, BM], gl.float32, mma)
    g0 = pid_k * GPS
    g1 = gl.minimum(g0 + GPS, G)
    w_n = gl.load(wptr + g0 * 8)
    b_n = gl.load(xptr + g0 * 128, mask=xmask, other=0.0)
    x_n = gl.load(xsptr + g0 * 128, mask=xsmask, other=0.0)
    w_n2 = gl.load(wptr + gl.minimum(g0 + 1, g1 - 1) * 8)
    for g in range(g0, g1):
        if PF == 2:  # words two groups ahead (packed: 4 registers a group), x one
            w, b, xt = w_n, b_n, x_n
            nx = gl.minimum(g + 1, g1 - 1)
            w_n = w_n2
            w_n2 = gl.load(wptr + gl.minimum(g + 2, g1 - 1) * 8)
            b_n = gl.load(xptr + nx * 128, mask=xmask, other=0.0)
            x_n = gl.load(xsptr + nx * 128, mask=xsmask, other=0.0)
        elif PF:  # the next group's loads issued before this group's MMAs
            w, b, xt = w_n, b_n, x_n
            nx = gl.minimum(g + 1, g1 - 1)
            w_n = gl.load(wptr + nx * 8)
            b_n = gl.load(xptr + nx * 128, mask=xmask, other=0.0)
            x_n = gl.load(xsptr + nx * 128, mask=xsmask, other=0.0)
        else:
            w = gl.load(wptr + g * 8)
            b = gl.load(xptr + g * 128, mask=xmask, other=0.0)
            xt = gl.load(xsptr + g * 128, mask=xsmask, other=0.0)
        xs = gl.convert_layout(gl.sum(xt.to(gl.float32), axis=1), gl.SliceLayout(0, mma))
        part = mma_v2(_v_quad(w, sh), b, gl.zeros([BLOCK_R, BM], gl.float32, mma))
        sc = gl.load(s_ptr + sz_t + rc * G + g).to(gl.float32)
        zq = gl.load(zp_ptr + sz_t + rc * G + g).to(gl.float32) + 128.0
        acc += sc[:, None] * (part - zq[:, None] * xs[None, :])
    acc = acc * gl.load(sv_ptr + t * R + rc)[:, None]
    mo = gl.arange(0, BM, layout=gl.SliceLayout(0, mma))
    gl.atomic_add(z_ptr + (t * MT + mo[None, :]) * R + rc[:, None], acc, mask=(mo[None, :] < MT) & (rc[:, None] < R), sem="relaxed")


@gluon.jit
def shrink_mma_c(x_ptr, w_ptr, s_ptr, zp_ptr, sv_ptr, z_ptr, MT, R, stride_xm,
                 K: gl.constexpr, BM: gl.constexpr, GPS: gl.constexpr, TILES: gl.constexpr,
                 LW: gl.constexpr, L3: gl.constexpr, XL: gl.constexpr, num_warps: gl.constexpr):
    """shrink_mma with fewer, wider loads (ncu: the shrink is bound by L1 throughput at 86-92%,
    DRAM 8%: 32 scattered 4-byte word loads and 40 2-byte x loads a thread and group). Words: each
    lane loads the 8 words of a group of each of its rows with two 128-bit loads (layout LW: the
    four lanes of a quad the same rows), and the A operand is made from them in registers through
    a [rows, 8 words, 16 fields] view (L3) whose reshape is the MMA's A layout (checked trivial at
    compile time). x: one 128-bit load a thread of the group's natural-order tile, permuted to the
    k order the unpack implies by a register relabeling (reshape, permute), through shared memory
    into the B layout."""
    BLOCK_R: gl.constexpr = 16 * TILES * num_warps
    G: gl.constexpr = K // 128
    ROW_WORDS: gl.constexpr = 2 * (K // 32)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
    aL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    bL: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    SH: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0, 1])
    pid_r = gl.program_id(0)
    pid_k = gl.program_id(1)
    t = gl.program_id(2)
    r0 = pid_r * BLOCK_R
    w_t = w_ptr + t.to(gl.int64) * R * ROW_WORDS
    sz_t = t * R * G
    x_t = x_ptr + (t * MT).to(gl.int64) * stride_xm
    rw = r0 + gl.arange(0, BLOCK_R, layout=gl.SliceLayout(1, LW))
    jw = gl.arange(0, 8, layout=gl.SliceLayout(0, LW))
    wptr = w_t + rw.to(gl.int64)[:, None] * ROW_WORDS + jw[None, :]
    u = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(0, L3)))
    sh3 = gl.expand_dims(gl.expand_dims(2 * ((u // 2) + (u % 2) * 8), 0), 0)
    zero3 = gl.zeros([BLOCK_R, 8, 16], gl.int32, L3)
    mx = gl.arange(0, BM, layout=gl.SliceLayout(1, XL))
    kx = gl.arange(0, 128, layout=gl.SliceLayout(0, XL))
    xptr = x_t + mx[:, None] * stride_xm + kx[None, :]
    xmask = (mx[:, None] < MT) & (kx[None, :] < 128)
    bsm = gl.allocate_shared_memory(gl.bfloat16, [128, BM], SH)
    rc = r0 + gl.arange(0, BLOCK_R, layout=gl.SliceLayout(1, mma))
    acc = gl.zeros([BLOCK_R, BM], gl.float32, mma)
    g0 = pid_k * GPS
    g1 = gl.minimum(g0 + GPS, G)
    for g in range(g0, g1):
        w = gl.load(wptr + g * 8)
        xn = gl.load(xptr + g * 128, mask=xmask, other=0.0)
        xs = gl.convert_layout(gl.sum(xn.to(gl.float32), axis=1), gl.SliceLayout(0, mma))
        # x'[m, 16j + 2a + b] = x[m, 16j + 8b + a]: the k the unpack pairs in each MMA slot pair
        xp = gl.permute(gl.reshape(gl.permute(gl.reshape(xn, [BM, 8, 2, 8]), (0, 1, 3, 2)), [BM, 128]), (1, 0))
        gl.thread_barrier()  # the previous group's B read by every warp
        bsm.store(xp)
        gl.thread_barrier()
        b = bsm.load(bL)
        w3 = gl.expand_dims(gl.convert_layout(w, gl.SliceLayout(2, L3)), 2) + zero3
        a3 = _v_quad(w3, sh3 + zero3)
        a = gl.convert_layout(gl.reshape(a3, [BLOCK_R, 128]), aL, assert_trivial=True)
        part = mma_v2(a, b, gl.zeros([BLOCK_R, BM], gl.float32, mma))
        sc = gl.load(s_ptr + sz_t + rc * G + g).to(gl.float32)
        zq = gl.load(zp_ptr + sz_t + rc * G + g).to(gl.float32) + 128.0
        acc += sc[:, None] * (part - zq[:, None] * xs[None, :])
    acc = acc * gl.load(sv_ptr + t * R + rc)[:, None]
    mo = gl.arange(0, BM, layout=gl.SliceLayout(0, mma))
    gl.atomic_add(z_ptr + (t * MT + mo[None, :]) * R + rc[:, None], acc, mask=(mo[None, :] < MT) & (rc[:, None] < R), sem="relaxed")


@gluon.jit
def expand_mma_c(z_ptr, w_ptr, s_ptr, zp_ptr, y_ptr, MT, R, ZC, YC, NSL,
                 N: gl.constexpr, RANK_S: gl.constexpr, BM: gl.constexpr, RPS: gl.constexpr, STEP: gl.constexpr,
                 WL: gl.constexpr, L3: gl.constexpr, num_warps: gl.constexpr):
    """expand_mma with its words read once: the program's (RPS components x 8 words) tile of U (its
    128 outputs are one group, 8 words a component) loaded with two 128-bit loads a thread (a
    component's 8 words are contiguous), kept transposed in shared memory, and each step's A
    operand made from an (8 words x STEP components) slice of it through an [8, 16, STEP] view (L3)
    whose reshape is the MMA's A layout; the program's scales and zero points read once too.
    (ncu: the expand is L1-bound, 92%, DRAM 7%: 8 scattered word loads a step and lane, each word
    loaded by the 8 lanes that share it.)"""
    BLOCK_N: gl.constexpr = 128
    G: gl.constexpr = N // 128
    ROW_WORDS: gl.constexpr = 2 * (N // 32)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
    aL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    bL: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    SH: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
    SH1: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0])
    pid_n = gl.program_id(0)
    pid_r = gl.program_id(1)
    ts = gl.program_id(2)
    t = ts // NSL
    sl = ts % NSL
    n0 = pid_n * BLOCK_N
    g = n0 // 128
    lo = pid_r * RPS
    wsl = w_ptr + (t * R + sl * RANK_S + lo).to(gl.int64) * ROW_WORDS
    ssl = (t * R + sl * RANK_S + lo) * G + g
    # the program's words: component rows lo .. lo + RPS, words 8 g .. 8 g + 8
    rw = gl.arange(0, RPS, layout=gl.SliceLayout(1, WL))
    jw = gl.arange(0, 8, layout=gl.SliceLayout(0, WL))
    wt = gl.load(wsl + rw.to(gl.int64)[:, None] * ROW_WORDS + (8 * g + jw)[None, :])
    wsm = gl.allocate_shared_memory(gl.int32, [8, RPS], SH)
    wsm.store(gl.permute(wt, (1, 0)))
    r1 = gl.arange(0, RPS, layout=gl.BlockedLayout([1], [32], [num_warps], [0]))
    ssm = gl.allocate_shared_memory(gl.float16, [RPS], SH1)
    qsm = gl.allocate_shared_memory(gl.float16, [RPS], SH1)
    ssm.store(gl.load(s_ptr + ssl + r1 * G))
    qsm.store(gl.load(zp_ptr + ssl + r1 * G))
    gl.thread_barrier()
    n_in = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(2, L3)))
    sh3 = gl.expand_dims(gl.expand_dims(2 * (n_in % 8), 0), 2)
    zero3 = gl.zeros([8, 16, STEP], gl.int32, L3)
    rb = gl.arange(0, STEP, layout=gl.SliceLayout(1, bL))
    mb = gl.arange(0, BM, layout=gl.SliceLayout(0, bL))
    bmask = (mb[None, :] < MT) & (rb[:, None] < STEP)
    zrow = z_ptr + (t * MT + mb[None, :]) * ZC + sl * RANK_S + lo + rb[:, None]
    acc = gl.zeros([BLOCK_N, BM], gl.float32, mma)
    corr = gl.zeros([STEP, BM], gl.float32, bL)
    for i in gl.static_range(RPS // STEP):
        w = wsm.slice(i * STEP, STEP, dim=1).load(gl.SliceLayout(1, L3))
        w3 = gl.expand_dims(w, 1) + zero3
        a = gl.convert_layout(gl.reshape(_u_quad(w3, sh3 + zero3), [BLOCK_N, STEP]), aL, assert_trivial=True)
        zt = gl.load(zrow + i * STEP, mask=bmask, other=0.0)
        sc = ssm.slice(i * STEP, STEP).load(gl.SliceLayout(1, bL)).to(gl.float32)
        zq = qsm.slice(i * STEP, STEP).load(gl.SliceLayout(1, bL)).to(gl.float32)
        zb = (zt * sc[:, None]).to(gl.bfloat16)
        corr += zb.to(gl.float32) * (zq + 128.0)[:, None]
        acc = mma_v2(a, zb, acc)
    c = gl.convert_layout(gl.sum(corr, axis=0), gl.SliceLayout(0, mma))
    acc = acc - c[None, :]
    no = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma))
    mo = gl.arange(0, BM, layout=gl.SliceLayout(0, mma))
    gl.atomic_add(y_ptr + (t * MT + mo[None, :]) * YC + sl * N + no[:, None], acc, mask=(mo[None, :] < MT) & (no[:, None] < N), sem="relaxed")


def expand_layouts(rps: int, num_warps: int) -> dict:
    """The layouts expand_mma_c takes: WL a thread a component's 8 words (RPS = 32 x warps), L3 the
    [8 words, 16 outputs of a word, 16 components] view of a step's A operand."""
    assert num_warps == 4 and rps == 32 * num_warps
    wl = gl.BlockedLayout([1, 8], [32, 1], [num_warps, 1], [1, 0])
    l3 = gl.DistributedLinearLayout(reg_bases=[[0, 0, 1], [0, 8, 0], [0, 0, 8], [4, 0, 0]],
                                    lane_bases=[[0, 0, 2], [0, 0, 4], [0, 1, 0], [0, 2, 0], [0, 4, 0]],
                                    warp_bases=[[1, 0, 0], [2, 0, 0]], block_bases=[], shape=[8, 16, 16])
    return dict(WL=wl, L3=l3)


def compact_layouts(tiles: int, num_warps: int, bm: int) -> dict:
    """The layouts shrink_mma_c takes (4 warps along the components, as the MMA layout has them)."""
    assert num_warps == 4
    rows = [[64, 0]] if tiles == 2 else []
    lw = gl.DistributedLinearLayout(reg_bases=[[0, 1], [0, 2], [0, 4], [8, 0]] + rows, lane_bases=[[0, 0], [0, 0], [1, 0], [2, 0], [4, 0]],
                                    warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[16 * tiles * num_warps, 8])
    l3 = gl.DistributedLinearLayout(reg_bases=[[0, 0, 1], [8, 0, 0], [0, 0, 8], [0, 1, 0], [0, 2, 0], [0, 4, 0]] + [[64, 0, 0]] * (tiles == 2),
                                    lane_bases=[[0, 0, 2], [0, 0, 4], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
                                    warp_bases=[[16, 0, 0], [32, 0, 0]], block_bases=[], shape=[16 * tiles * num_warps, 8, 16])
    xl = gl.BlockedLayout([1, 8], [2, 16], [num_warps, 1], [1, 0])
    return dict(LW=lw, L3=l3, XL=xl)


@gluon.jit
def expand_mma(z_ptr, w_ptr, s_ptr, zp_ptr, y_ptr, MT, R, ZC, YC, NSL,
               N: gl.constexpr, RANK_S: gl.constexpr, BM: gl.constexpr, RPS: gl.constexpr, TILES: gl.constexpr,
               STEP: gl.constexpr, PF: gl.constexpr, num_warps: gl.constexpr):
    """y[t MT + m, sl N + n] += sum over this program's components r of zs[t MT + m, sl RANK_S + r]
    U^_{t,sl}[n, r] (zs = z S, from the shrink), program_id(2) = t NSL + sl. Program: one group of
    128 outputs (16 TILES num_warps = 128), RPS components in steps of STEP, the next step's loads
    issued before this step's MMAs (float32 atomic adds into y)."""
    BLOCK_N: gl.constexpr = 16 * TILES * num_warps
    G: gl.constexpr = N // 128
    ROW_WORDS: gl.constexpr = 2 * (N // 32)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
    aL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    bL: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    pid_n = gl.program_id(0)
    pid_r = gl.program_id(1)
    ts = gl.program_id(2)
    t = ts // NSL
    sl = ts % NSL
    n0 = pid_n * BLOCK_N
    g = n0 // 128
    wsl = w_ptr + (t * R + sl * RANK_S).to(gl.int64) * ROW_WORDS
    ssl = (t * R + sl * RANK_S) * G + g
    na = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, aL))
    ra = gl.arange(0, STEP, layout=gl.SliceLayout(0, aL))
    wptr = wsl + ra[None, :] * ROW_WORDS + (na // 16)[:, None]
    sh = gl.full([BLOCK_N, STEP], 0, gl.int32, aL) + (2 * (na % 8))[:, None]
    rb = gl.arange(0, STEP, layout=gl.SliceLayout(1, bL))
    mb = gl.arange(0, BM, layout=gl.SliceLayout(0, bL))
    bmask = (mb[None, :] < MT) & (rb[:, None] < STEP)
    zrow = z_ptr + (t * MT + mb[None, :]) * ZC + sl * RANK_S + rb[:, None]
    srow = s_ptr + ssl + rb * G
    zprow = zp_ptr + ssl + rb * G
    acc = gl.zeros([BLOCK_N, BM], gl.float32, mma)
    corr = gl.zeros([STEP, BM], gl.float32, bL)
    lo = pid_r * RPS
    last = lo + RPS - STEP
    if PF >= 2:  # the words PF steps ahead (2 registers a step and thread at 2 bits), z, scales, zeros one
        w_a = gl.load(wptr + lo * ROW_WORDS)
        w_b = gl.load(wptr + gl.minimum(lo + STEP, last) * ROW_WORDS)
        w_c = gl.load(wptr + gl.minimum(lo + 2 * STEP, last) * ROW_WORDS)
        z_n = gl.load(zrow + lo, mask=bmask, other=0.0)
        s_n = gl.load(srow + lo * G)
        q_n = gl.load(zprow + lo * G)
        for r0 in range(lo, lo + RPS, STEP):
            w, zt, sc, zq = w_a, z_n, s_n, q_n
            if PF == 2:
                w_a = w_b
                w_b = gl.load(wptr + gl.minimum(r0 + 2 * STEP, last) * ROW_WORDS)
            else:
                w_a = w_b
                w_b = w_c
                w_c = gl.load(wptr + gl.minimum(r0 + 3 * STEP, last) * ROW_WORDS)
            nx = gl.minimum(r0 + STEP, last)
            z_n = gl.load(zrow + nx, mask=bmask, other=0.0)
            s_n = gl.load(srow + nx * G)
            q_n = gl.load(zprow + nx * G)
            a = _u_quad(w, sh)
            zb = (zt * sc.to(gl.float32)[:, None]).to(gl.bfloat16)
            corr += zb.to(gl.float32) * (zq.to(gl.float32) + 128.0)[:, None]
            acc = mma_v2(a, zb, acc)
    elif PF:
        w_n = gl.load(wptr + lo * ROW_WORDS)
        z_n = gl.load(zrow + lo, mask=bmask, other=0.0)
        s_n = gl.load(srow + lo * G)
        q_n = gl.load(zprow + lo * G)
        for r0 in range(lo, lo + RPS, STEP):
            w, zt, sc, zq = w_n, z_n, s_n, q_n
            nx = gl.minimum(r0 + STEP, lo + RPS - STEP)
            w_n = gl.load(wptr + nx * ROW_WORDS)
            z_n = gl.load(zrow + nx, mask=bmask, other=0.0)
            s_n = gl.load(srow + nx * G)
            q_n = gl.load(zprow + nx * G)
            a = _u_quad(w, sh)
            zb = (zt * sc.to(gl.float32)[:, None]).to(gl.bfloat16)
            # the correction sums the operand as rounded, so 128 + q and 128 + zp cancel exactly
            corr += zb.to(gl.float32) * (zq.to(gl.float32) + 128.0)[:, None]
            acc = mma_v2(a, zb, acc)
    else:
        for r0 in range(lo, lo + RPS, STEP):
            w = gl.load(wptr + r0 * ROW_WORDS)
            zt = gl.load(zrow + r0, mask=bmask, other=0.0)
            sc = gl.load(srow + r0 * G)
            zq = gl.load(zprow + r0 * G)
            a = _u_quad(w, sh)
            zb = (zt * sc.to(gl.float32)[:, None]).to(gl.bfloat16)
            corr += zb.to(gl.float32) * (zq.to(gl.float32) + 128.0)[:, None]
            acc = mma_v2(a, zb, acc)
    c = gl.convert_layout(gl.sum(corr, axis=0), gl.SliceLayout(0, mma))
    acc = acc - c[None, :]
    no = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma))
    mo = gl.arange(0, BM, layout=gl.SliceLayout(0, mma))
    gl.atomic_add(y_ptr + (t * MT + mo[None, :]) * YC + sl * N + no[:, None], acc, mask=(mo[None, :] < MT) & (no[:, None] < N), sem="relaxed")


# ------------------------------------------------------------------------------------------------
# host side


def unpack2(words: torch.Tensor, length: int) -> torch.Tensor:
    """int64 (rows, length): the 2-bit fields of packed rows (value c: word c // 16, bits 2 (c % 16))."""
    sh = (torch.arange(16, device=words.device) * 2).to(torch.int64)
    v = (words.to(torch.int64).unsqueeze(-1) >> sh) & 3
    return v.reshape(words.shape[0], -1)[:, :length]


def dequant(words: torch.Tensor, sc: torch.Tensor, zp: torch.Tensor, length: int) -> torch.Tensor:
    q = unpack2(words, length).to(torch.float32)
    g = torch.arange(length, device=words.device) // 128
    return (q - zp.float()[:, g]) * sc.float()[:, g]


class Group:
    """One group's packed 2-bit factors for T tenants: V^T rows (T R, K) for the shrink, U columns
    (T R, N) for the expand (slice sl of tenant t: rows t R + sl RANK ..), fp16 scales and zero
    points a group of 128, and S; R = RANK x slices."""

    def __init__(self, outs: list[int], K: int, T: int, dev: torch.device, gen: torch.Generator):
        self.outs, self.K, self.N, self.R, self.T = outs, K, outs[0], RANK * len(outs), T
        assert len(set(outs)) == 1, "the probe's expand takes slices of one size"
        rows = T * self.R

        def words(length: int) -> torch.Tensor:
            return torch.randint(-2**31, 2**31 - 1, (rows, 2 * length // 32), generator=gen, dtype=torch.int64).to(torch.int32).to(dev)

        def sz(length: int) -> tuple[torch.Tensor, torch.Tensor]:
            g = length // 128
            s = (torch.rand(rows, g, generator=gen) * 0.01 + 0.002).to(torch.float16).to(dev)
            z = torch.randint(0, 4, (rows, g), generator=gen).to(torch.float16).to(dev)
            return s, z

        self.vw = words(K)
        self.vs, self.vz = sz(K)
        self.S = (torch.rand(rows, generator=gen) * 2 + 0.5).to(dev)
        self.uw = words(self.N)
        self.us, self.uz = sz(self.N)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.vw, self.vs, self.vz, self.S, self.uw, self.us, self.uz))

    def reference(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (z, y) of x (T MT, K): tenant t's rows t MT .. (t + 1) MT."""
        MT = x.shape[0] // self.T
        zs, ys = [], []
        for t in range(self.T):
            tr = slice(t * self.R, (t + 1) * self.R)
            V = dequant(self.vw[tr], self.vs[tr], self.vz[tr], self.K)
            z = (x[t * MT:(t + 1) * MT].float() @ V.T) * self.S[tr]
            yt = []
            for sl in range(len(self.outs)):
                rows = slice(t * self.R + sl * RANK, t * self.R + (sl + 1) * RANK)
                U = dequant(self.uw[rows], self.us[rows], self.uz[rows], self.N)  # (RANK, N)
                yt.append(z[:, sl * RANK:(sl + 1) * RANK] @ U)
            zs.append(z)
            ys.append(torch.cat(yt, dim=1))
        return torch.cat(zs), torch.cat(ys)


def pick_gps(g: Group, cfg: dict) -> int:
    """Groups of K a shrink program takes: the fewest that keep at most ~``target`` programs."""
    blocks = -(-g.R // (16 * cfg["st"] * cfg["sw"])) * g.T
    G = g.K // 128
    for gps in (1, 2, 4, 8, 16, 32):
        if blocks * -(-G // gps) <= cfg["target"]:
            return gps
    return G


def pick_rps(g: Group, cfg: dict) -> int:
    blocks = (g.N // 128) * len(g.outs) * g.T
    for rps in (128, 256, 512, 1024):
        if blocks * (RANK // rps) <= cfg["target"]:
            return rps
    return RANK


def run_group(g: Group, MT: int, x: torch.Tensor | None, z: torch.Tensor, y: torch.Tensor | None, cfg: dict, part: str = "both") -> None:
    bm = 8 if MT <= 8 else 16 if MT <= 16 else 32 if MT <= 32 else 64
    if part in ("both", "shrink"):
        gps = pick_gps(g, cfg)
        grid = (-(-g.R // (16 * cfg["st"] * cfg["sw"])), -(-(g.K // 128) // gps), g.T)
        if cfg.get("spf", 1) == 3:  # the compact loads
            shrink_mma_c[grid](x, g.vw, g.vs, g.vz, g.S, z, MT, g.R, x.stride(0), K=g.K, BM=bm, GPS=gps, TILES=cfg["st"],
                               **compact_layouts(cfg["st"], cfg["sw"], bm), num_warps=cfg["sw"])
        else:
            shrink_mma[grid](x, g.vw, g.vs, g.vz, g.S, z, MT, g.R, x.stride(0), K=g.K, BM=bm, GPS=gps, TILES=cfg["st"], PF=cfg.get("spf", 1), num_warps=cfg["sw"])
    if part in ("both", "expand"):
        rps = pick_rps(g, cfg)
        grid = (g.N // 128, RANK // rps, g.T * len(g.outs))
        if cfg.get("pf", 1) == 9:  # the compact expand: 128 components a program, steps of 16
            grid = (g.N // 128, RANK // 128, g.T * len(g.outs))
            expand_mma_c[grid](z, g.uw, g.us, g.uz, y, MT, g.R, z.stride(0), y.stride(0), len(g.outs), N=g.N, RANK_S=RANK, BM=bm,
                               RPS=128, STEP=16, **expand_layouts(128, cfg["ew"]), num_warps=cfg["ew"])
        else:
            expand_mma[grid](z, g.uw, g.us, g.uz, y, MT, g.R, z.stride(0), y.stride(0), len(g.outs), N=g.N, RANK_S=RANK, BM=bm,
                             RPS=rps, TILES=128 // (16 * cfg["ew"]), STEP=cfg.get("step", 64), PF=cfg.get("pf", 1), num_warps=cfg["ew"])


def time_graph(fn, reps: int = 30) -> float:
    """Median seconds of one replay of a CUDA graph of ``fn`` (captured after a warm-up)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        fn()
    for _ in range(3):
        gr.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        gr.replay()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return statistics.median(ts)


def main() -> None:
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="1,8,16,32x8", help="batch rows of one tenant (M), or MxT: M rows over T tenants")
    ap.add_argument("--copies", type=int, default=4, help="copies of a one-tenant layer the graph rotates over (L2); fewer for more tenants")
    ap.add_argument("--cfgs", default='[{"st": 2, "sw": 4, "ew": 4, "target": 512}]',
                    help="JSON list: shrink tiles/warps (st, sw), expand warps (ew), expand step (step), programs aimed at (target)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--sass", action="store_true", help="compile for sm_90 and count each kernel's loop instructions (no GPU)")
    args = ap.parse_args()
    cfgs = json.loads(args.cfgs)
    if args.sass:
        return sass_report(cfgs)
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    lines = [f"# {__doc__.splitlines()[0]}", "",
             f"`python benchmarks/probe_mma_gluon.py --cases {args.cases} --copies {args.copies} --cfgs '{args.cfgs}'` on "
             f"{torch.cuda.get_device_name()} (torch {torch.__version__}, triton {triton.__version__}); rank {RANK} 2-bit per linear.", ""]

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    a = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    bw = 2 * a.numel() / time_graph(lambda: a.clone())  # read + write
    del a
    say(f"copy bandwidth {bw / 1e12:.2f} TB/s")
    say()
    say("| case | config | group | shrink alone (us) | expand alone (us) | rel err z | rel err y |")
    say("|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        M, T = (int(v) for v in case.split("x")) if "x" in case else (int(case), 1)
        MT = M // T
        ncopy = max(1, args.copies // T)
        copies = [[Group(outs, K, T, dev, gen) for _, outs, K in GROUPS] for _ in range(ncopy)]
        layer_bytes = sum(g.nbytes() for g in copies[0])
        for cfg in cfgs:
            x = torch.randn(M, 11008, device=dev).to(torch.bfloat16)
            xs = [x[:, :K].contiguous() for _, _, K in GROUPS]
            zs = [[torch.zeros(M, g.R, device=dev) for g in c] for c in copies]
            ys = [[torch.zeros(M, g.N * len(g.outs), device=dev) for g in c] for c in copies]
            tot = [0.0, 0.0]
            for gi, (name, outs, K) in enumerate(GROUPS):
                g = copies[0][gi]
                z, y = zs[0][gi].zero_(), ys[0][gi].zero_()
                run_group(g, MT, xs[gi], z, y, cfg)
                z_ref, y_ref = g.reference(xs[gi])
                ez = ((z - z_ref).abs().max() / z_ref.abs().max()).item()
                ey = ((y - y_ref).abs().max() / y_ref.abs().max()).item()

                def sh(gi=gi) -> None:
                    for c, zc in zip(copies, zs):
                        zc[gi].zero_()
                        run_group(c[gi], MT, xs[gi], zc[gi], None, cfg, "shrink")

                def ex(gi=gi) -> None:
                    for c, zc, yc in zip(copies, zs, ys):
                        yc[gi].zero_()
                        run_group(c[gi], MT, None, zc[gi], yc[gi], cfg, "expand")

                ts = time_graph(sh) * 1e6 / ncopy
                te = time_graph(ex) * 1e6 / ncopy
                tot[0] += ts
                tot[1] += te
                say(f"| {case} | {json.dumps(cfg)} | {name} | {ts:.1f} | {te:.1f} | {ez:.1e} | {ey:.1e} |")

            def layer() -> None:
                for c, zc, yc in zip(copies, zs, ys):
                    for gi in range(len(GROUPS)):
                        zc[gi].zero_()
                        yc[gi].zero_()
                        run_group(c[gi], MT, xs[gi], zc[gi], yc[gi], cfg)

            tl_ = time_graph(layer) * 1e6 / ncopy
            say(f"| {case} | {json.dumps(cfg)} | **layer** ({layer_bytes / 1e6:.0f} MB, floor {layer_bytes / bw * 1e6:.1f} us) | "
                f"{tot[0]:.1f} | {tot[1]:.1f} | whole layer in one graph: **{tl_:.1f} us** | |")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


def sass_report(cfgs: list[dict]) -> None:
    """Loop instructions per packed value of each kernel as compiled for sm_90 (no GPU)."""
    import collections
    import re
    import subprocess

    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    def compile_g(fn, sig: dict, ce: dict, nw: int):
        sig = {n: sig.get(n, "constexpr") for n in fn.arg_names}
        names = list(sig)
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items() if t.startswith("*") or n in ("R", "ZC", "YC", "stride_xm")}
        consts = {(names.index(n),): v for n, v in dict(ce, num_warps=nw).items() if n in names}
        k = triton.compile(GluonASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=nw, num_stages=1))
        bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
        path = f"/tmp/probe_mma_{os.getpid()}.cubin"
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        sass = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", path], capture_output=True, text=True).stdout
        res = subprocess.run([os.path.join(bindir, "cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
        os.unlink(path)
        return sass, next((p for p in res.split() if p.startswith("REG:")), "?")

    ins = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")

    def biggest_loop(sass: str) -> collections.Counter:
        rows = [(int(m.group(1), 16), m.group(3), m.group(4)) for m in ins.finditer(sass)]
        best = collections.Counter()
        for addr, op, rest in rows:
            t = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
            if t and int(t.group(1), 16) <= addr:
                body = collections.Counter(o.split(".")[0] for a, o, _ in rows if int(t.group(1), 16) <= a <= addr)
                if body["HMMA"] > best["HMMA"]:
                    best = body
        return best

    s_sig = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*fp16", "zp_ptr": "*fp16", "sv_ptr": "*fp32", "z_ptr": "*fp32",
             "MT": "i32", "R": "i32", "stride_xm": "i32"}
    e_sig = {"z_ptr": "*fp32", "w_ptr": "*i32", "s_ptr": "*fp16", "zp_ptr": "*fp16", "y_ptr": "*fp32", "MT": "i32", "R": "i32",
             "ZC": "i32", "YC": "i32", "NSL": "i32"}
    print("| kernel | config | BM | regs | loop instructions | packed values a thread a pass | per value | top opcodes |")
    print("|---|---|---|---|---|---|---|---|")
    for cfg in cfgs:
        for bm in (8, 16):
            if cfg.get("spf", 1) == 3:
                sass, regs = compile_g(shrink_mma_c, s_sig, dict(K=4096, BM=bm, GPS=2, TILES=cfg["st"], **compact_layouts(cfg["st"], cfg["sw"], bm)), cfg["sw"])
            else:
                sass, regs = compile_g(shrink_mma, s_sig, dict(K=4096, BM=bm, GPS=2, TILES=cfg["st"], PF=cfg.get("spf", 1)), cfg["sw"])
            body = biggest_loop(sass)
            n, per = sum(body.values()), 16 * cfg["st"] * cfg["sw"] * 128 / (cfg["sw"] * 32)
            print(f"| shrink | {cfg} | {bm} | {regs} | {n} | {per:g} | {n / per:.2f} | {', '.join(f'{o} {c}' for o, c in body.most_common(8))} |")
            if cfg.get("pf", 1) == 9:
                sass, regs = compile_g(expand_mma_c, e_sig, dict(N=4096, RANK_S=RANK, BM=bm, RPS=128, STEP=16, **expand_layouts(128, cfg["ew"])), cfg["ew"])
            else:
                sass, regs = compile_g(expand_mma, e_sig, dict(N=4096, RANK_S=RANK, BM=bm, RPS=256, TILES=128 // (16 * cfg["ew"]),
                                                                      STEP=cfg.get("step", 64), PF=cfg.get("pf", 1)), cfg["ew"])
            body = biggest_loop(sass)
            n, per = sum(body.values()), 128 * cfg.get("step", 64) / (cfg["ew"] * 32)
            print(f"| expand | {cfg} | {bm} | {regs} | {n} | {per:g} | {n / per:.2f} | {', '.join(f'{o} {c}' for o, c in body.most_common(8))} |")


if __name__ == "__main__":
    sys.exit(main())
