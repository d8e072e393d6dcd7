"""The join of a side-stream delta into its base output, done by whichever program finishes last.

At one row a lazy linear group computes its base (the Triton GEMV, :mod:`.base_gemv`) on the current
stream and its packed delta (GEMV shrink, then expand adding by float32 atomics into a buffer d) on
the side stream beside it; then a third kernel on the current stream adds d into y, rounding once
(:func:`.triton_ops.add_f32_`). In a traced graph replay of a Llama-2-7B layer on the H200 that add
and the launch gaps around it take ~2 us a group, four groups a layer, on the layer's critical path
(benchmarks/results/raw_h200/s29/ab_groups.md). Here the base GEMV's programs and the expand's
programs instead count themselves, after their own writes, on a counter per block of
:data:`COLS` output columns; the program that brings a counter to the total (every base program and
every expand program that covers the block) adds that block of d into y and resets the counter. No
program waits for another (so no order of scheduling can deadlock), y gets the same bits as the add
kernel gives it (float(y) + d rounded once), and a CUDA graph replays it (counters left at zero).

Used by :class:`.linear.DeltaGroup` and a lone :class:`.linear.DeltaLinear` on the side stream
where both kernels serve (:func:`.linear.fused_join`: one row, the GEMV delta path with atomics,
every slice a multiple of :data:`COLS` columns, no lowrank or bitdelta member adding into y after
the base). **Off by default: it measured slower.** H200, one Llama-2-7B layer at one row through the
modules (`bash benchmarks/join_device.sh OUT`, raw_h200/s29/join/: 48 GPU tests pass with it, among
them both orders and a lone linear on the side stream): 160.7 us a layer with it against 158.5
without (5 rounds, one process). The add kernels are gone from the traced replay, but each program's
count (a barrier, then an acquire-release atomic whose answer it waits for) lengthens every base and
expand program: the q/k/v base GEMV 38.0 us against 35.8, its expand 18.0 against 13.8.
Measured again with the shrink's splits summed into one z (which a fused join now keeps: its d and z in
one buffer, :func:`.linear.fused_join`) and the flat loads, thirty-first session (`bash
benchmarks/join_zsum_device.sh OUT`, raw_h200/s31/d): 154.1 us a layer with it against 151.8 without; off.
``DELTASTORE_FUSED_JOIN=1`` turns it on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import KernelError

try:  # triton is optional (CPU users, CI without it)
    import triton.language as tl
    from triton import jit

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised where triton is absent
    HAVE_TRITON = False

#: output columns a counter covers: the GEMV expand's block of columns (its BLOCK_N, the packed
#: layout's group), which a base GEMV program's 4 or 8 columns tile
COLS = 128
#: whether the lazy linears join by the last program (see the module docstring: off, slower)
ENABLED = os.environ.get("DELTASTORE_FUSED_JOIN", "0") not in ("", "0")


@dataclass
class Join:
    """What both kernels of one group's step are told: y (M, N) the base output in its dtype, d (M,
    N) float32 the delta (zeroed before the expand adds into it), ``counters`` int32 (N // COLS,)
    at zero, and ``total``: the arrivals a block takes (the base's programs over it plus the
    expand's, :func:`.base_gemv.join_arrivals` + :func:`.triton_ops.join_arrivals`)."""

    y: torch.Tensor
    d: torch.Tensor
    counters: torch.Tensor
    total: int
    #: the GEMV shrink's summed z (M, zcols) where its splits add into one (else None), and the one
    #: allocation holding d and it, which one launch zeroes (d itself where there is no zsum)
    zsum: torch.Tensor | None = None
    whole: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.whole is None:
            self.whole = self.d

    def check(self) -> None:
        """The shapes both kernels rely on (they index y, d and the counters with no masks)."""
        M, N = self.y.shape
        if (self.d.shape != (M, N) or self.d.dtype != torch.float32 or N % COLS or self.counters.numel() != N // COLS
                or self.counters.dtype != torch.int32 or self.y.stride(1) != 1 or self.d.stride(1) != 1 or self.total < 2):
            raise KernelError(f"a fused join needs y and d of one (M, N) with N a multiple of {COLS} and a counter a block")


if HAVE_TRITON:

    @jit
    def arrive(y_ptr, d_ptr, cnt_ptr, blk, total, M, stride_ym, stride_dm, COLS_: tl.constexpr):
        """Count this program on block ``blk``'s counter once its writes are done; the one that
        brings it to ``total`` adds d's block into y (rows 0..M, float32, rounded once to y's
        dtype) and resets the counter. Every thread's stores come before the counter's release
        (the barrier), and the last program reads y and d from L2 (``.cg``), after its acquire."""
        tl.debug_barrier()
        done = tl.atomic_add(cnt_ptr + blk, 1, sem="acq_rel")
        if done == total - 1:
            cols = (blk * COLS_ + tl.arange(0, COLS_)).to(tl.int64)
            for m in range(0, M):
                yp = y_ptr + m * stride_ym + cols
                dv = tl.load(d_ptr + m * stride_dm + cols, cache_modifier=".cg")
                yv = tl.load(yp, cache_modifier=".cg").to(tl.float32)
                tl.store(yp, (yv + dv).to(y_ptr.dtype.element_ty))
            tl.atomic_xchg(cnt_ptr + blk, 0)
