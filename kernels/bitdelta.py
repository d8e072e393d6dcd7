"""BitDelta (``bitdelta`` codec) deltas served lazily: ``y += a_t (x S_t^T)`` for the rows of fine-tune ``t``.

A bitdelta payload is one sign bit a weight and one scale a matrix (``codec/bitdelta.py``: D^ = a S,
S = +-1; ``signs`` int32 (m, ceil(n/32)), bit j of word w of row i is column 32 w + j, 1 for +a).
Kept on the device as stored: 1 bit a weight, 1/16 of a bf16 fine-tune.

On a GPU (or under ``TRITON_INTERPRET=1``) one Triton launch a loaded fine-tune applies it straight
from the packed words: each program reads a block of sign words, splits them into +-1 in registers
(a (rows, words, 32) tensor reshaped to (rows, values), as the delta-come kernels unpack) and runs
``tl.dot`` of the activations against them (x * +-1 is exact in bf16/fp16; fp32 accumulation), then
adds ``a`` times the sum into the float32 output for the rows whose id is the launch's slot (rows
of other fine-tunes read the words too but add nothing: a batch's launches and grids depend only on
its size and the loaded slots, so a CUDA graph captures them; no host sync). Elsewhere the torch
reference: the signs unpacked per call (a (m, n) float32 temporary) and one matmul, masked by rows.
Both are exact in the product x S^T up to float32 summation order, so they agree to rounding.

Not yet done here: grouping a batch's rows by fine-tune (the delta-come kernels' row plan) so a
launch reads only its own rows; a GEMV path for one row; timing on the GPU (not measured yet).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deltastore.codec import Encoded, quant
from deltastore.codec.bitdelta import BitDelta

from .errors import KernelError
from .packed import checked_matrix
from .slots import SlotDeltas
from .triton_ops import HAVE_TRITON, usable

if HAVE_TRITON:
    import triton
    import triton.language as tl


@dataclass
class BitDeltaSigns:
    """A checked bitdelta payload for an (m, n) weight: D^ = a S, S = +-1 from packed sign bits."""

    shape: tuple[int, int]
    signs: torch.Tensor  # int32 (m, ceil(n / 32))
    a: float

    def to(self, device: torch.device | str) -> "BitDeltaSigns":
        return BitDeltaSigns(self.shape, self.signs.to(device), self.a)

    def dense(self) -> torch.Tensor:
        """The float32 delta (m, n), as the codec decodes it (tests, the reference path)."""
        return (quant.unpack(self.signs, 1, self.shape[1]).to(torch.float32) * 2 - 1) * self.a


def bitdelta_from_encoded(enc: Encoded, expect_shape: tuple[int, int] | None = None, what: str = "delta") -> BitDeltaSigns:
    """Check a bitdelta payload with the codec's own checks (names, dtypes, shapes, a finite scale)
    and against the base weight's shape; a clear error at load time on anything else."""
    m, n = checked_matrix(enc, BitDelta, expect_shape, what)
    return BitDeltaSigns((m, n), enc.arrays["signs"].contiguous(), float(enc.arrays["scale"][0]))


def apply_ref(x2: torch.Tensor, f: BitDeltaSigns, ids: torch.Tensor, slot: int, y: torch.Tensor) -> torch.Tensor:
    """The torch reference: y (rows, m) float32 += a (x2 S^T) on the rows whose id is ``slot``."""
    rows = (ids.reshape(-1, 1) == slot).to(torch.float32)
    return y.add_(rows * (x2.float() @ f.dense().T))


if HAVE_TRITON:

    @triton.jit
    def _signs_apply(x_ptr, w_ptr, ids_ptr, y_ptr, slot, a, M, N, K, KW, stride_xm, stride_ym,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """y[r, c] += a * sum_k x[r, k] * s[c, k] for rows r whose id is ``slot``, s = +-1 from bit
        k % 32 of word k // 32 of packed row c. One program: BLOCK_M rows x BLOCK_N output columns."""
        pid_n, pid_m = tl.program_id(0), tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < M
        col_ok = cols < N
        mine = (tl.load(ids_ptr + rows, mask=row_ok, other=-1) == slot) & row_ok
        WB: tl.constexpr = BLOCK_K // 32
        shifts = tl.arange(0, 32)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            xb = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=mine[:, None] & (ks[None, :] < K), other=0.0)
            wi = k0 // 32 + tl.arange(0, WB)
            words = tl.load(w_ptr + cols[:, None] * KW + wi[None, :], mask=col_ok[:, None] & (wi[None, :] < KW), other=0)
            bits = (words[:, :, None] >> shifts[None, None, :]) & 1  # (BLOCK_N, WB, 32): column 32 w + j
            s = tl.reshape(bits, (BLOCK_N, BLOCK_K)).to(tl.float32) * 2 - 1  # +-1
            # float32 operands (tf32 on tensor cores: exact for bf16/fp16 activations and +-1)
            acc += tl.dot(xb.to(tl.float32), tl.trans(s))
        out = y_ptr + rows[:, None] * stride_ym + cols[None, :]
        ok = mine[:, None] & col_ok[None, :]
        tl.store(out, tl.load(out, mask=ok, other=0.0) + a * acc, mask=ok)


def apply_triton(x2: torch.Tensor, f: BitDeltaSigns, ids: torch.Tensor, slot: int, y: torch.Tensor) -> torch.Tensor:
    """:func:`apply_ref` by the Triton kernel (a GPU, or TRITON_INTERPRET=1): one launch."""
    if not usable(x2):
        raise KernelError("the bitdelta kernel needs triton and a CUDA tensor (or TRITON_INTERPRET=1)")
    M, K = x2.shape
    N = f.shape[0]
    if K != f.shape[1] or tuple(y.shape) != (M, N) or y.dtype != torch.float32:
        raise KernelError(f"bitdelta: x {tuple(x2.shape)}, delta {f.shape}, y {tuple(y.shape)} {y.dtype} do not fit")
    if M == 0 or N == 0:
        return y
    x2 = x2.contiguous() if x2.stride(-1) != 1 else x2
    if x2.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise KernelError(f"bitdelta: activations of dtype {x2.dtype} (bf16, fp16 or fp32 only)")
    block_m = 16 if M <= 16 else 32
    grid = (triton.cdiv(N, 64), triton.cdiv(M, block_m))
    _signs_apply[grid](x2, f.signs, ids, y, int(slot), float(f.a), M, N, K, f.signs.shape[1], x2.stride(0), y.stride(0),
                       BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=128)
    return y


class BitDeltaSet(SlotDeltas):
    """One linear's bitdelta deltas by slot (the fine-tune ids every delta set of a model shares)."""

    kind = "bitdelta"

    def delta(self, x2: torch.Tensor, ids: torch.Tensor, y: torch.Tensor | None = None, *, triton_ok: bool = True) -> torch.Tensor:
        """float32 (rows, out_features): each row's delta (zero for a row whose id holds none),
        added into ``y`` where given. The Triton kernel where it can run, else the reference."""
        if y is None:
            y = torch.zeros(x2.shape[0], self.out_features, dtype=torch.float32, device=x2.device)
        apply = apply_triton if triton_ok and usable(x2) else apply_ref
        for slot, f in sorted(self._slots.items()):
            apply(x2, f, ids, slot, y)
        return y
