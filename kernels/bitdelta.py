"""BitDelta (``bitdelta`` codec) deltas served lazily: ``y += a_t (x S_t^T)`` for the rows of fine-tune ``t``.

A bitdelta payload is one sign bit a weight and one scale a matrix (``codec/bitdelta.py``: D^ = a S,
S = +-1; ``signs`` int32 (m, ceil(n/32)), bit j of word w of row i is column 32 w + j, 1 for +a).
Kept on the device as stored: 1 bit a weight, 1/16 of a bf16 fine-tune.

On a GPU (or under ``TRITON_INTERPRET=1``) one Triton launch a loaded fine-tune applies it straight
from the packed words, cut by :func:`pick_config` from the shapes alone (M, N, K, the slot's rows;
no host sync: a CUDA graph captures it). Two kernels:

- one row (decoding): ``_signs_gemv``, no tensor cores. x * +-1 is x with its sign bit flipped, so
  a value costs a shift and a mask (its word's bit moved to bit 31), an xor and a float32 add;
  exact products in any activation dtype.
- more rows: ``_signs_dot``. A word's bits become +-1 by their bit pattern in the activations'
  dtype (+-1 and x * +-1 are exact in bf16/fp16: bf16/fp16 tensor cores, float32 accumulation;
  fp32 activations as tf32), even and odd bits joined so a column's adjacent inputs sit side by
  side in registers; row blocks of 16 to 128 rows, so at many rows a word is unpacked for 128 rows.

Both split K (``split_k`` programs a column block, over disjoint whole steps) until the grid has
several programs a multiprocessor: at one row the unsplit grid was 64-344 programs on 132
multiprocessors, each walking all of K, bound by one program's load latency. The splits' float32
sums meet in y by atomic adds (not a deterministic handshake: one launch, no partial buffer or
counters to keep per shape; y's last float32 bits may then vary between runs, far below the bf16
rounding of the layer's output); unsplit launches read-add-write y, deterministic. Each program
first reads its rows' ids: a block without a row of the slot returns before reading a word; with
``compact`` (the caller says the slot has fewer rows than the batch, as BitDeltaSet.delta does for
several slots) a row block takes the next rows *of the slot* (a running count over the ids in the
program), so a slot's few rows fill one block. Rows of other fine-tunes are never written.
Elsewhere the torch reference: the signs unpacked per call (a (m, n) float32 temporary) and one
matmul, masked by rows. Both are exact in the product x S^T up to float32 summation order (tf32 for
fp32 activations on tensor cores), so they agree to rounding.

Timed on the H200 (``benchmarks/bench_bitdelta.py [--sweep]``, benchmarks/results/bitdelta_h200.md):
one 7B-shaped layer x1.50 of base alone at one row, x1.72 at 16, x4.09 at 256, x6.20 for 32 rows
over 8 fine-tunes (the first kernel: x2.90 / x2.88 / x9.07 / x18.73). Not yet done here:
one launch for all of a batch's fine-tunes (each loaded fine-tune is still its own launch, each
reading the batch's ids); a deterministic split-K; a register-level unpack cheaper than ~3.6
(GEMV) / ~4.4 (dot) sm_90 instructions a sign value; wgmma (the +-1 operand is made in registers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deltastore.codec import Encoded, quant
from deltastore.codec.bitdelta import BitDelta

from . import factor_cache
from .errors import KernelError
from .packed import checked_matrix
from .slots import SlotDeltas
from .triton_ops import HAVE_TRITON, interpreting, sm_count, usable

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


def apply_ref(x2: torch.Tensor, f: BitDeltaSigns, ids: torch.Tensor, slot: int, y: torch.Tensor,
              dense: torch.Tensor | None = None) -> torch.Tensor:
    """The torch reference: y (rows, m) float32 += a (x2 S^T) on the rows whose id is ``slot``
    (``dense``: ``f.dense()`` made earlier, e.g. kept by :mod:`.factor_cache`)."""
    rows = (ids.reshape(-1, 1) == slot).to(torch.float32)
    return y.add_(rows * (x2.float() @ (f.dense() if dense is None else dense).T))


@dataclass(frozen=True)
class LaunchConfig:
    """How one :func:`apply_triton` launch is cut: ``path`` "gemv" (ALU, no tensor cores: a few rows)
    or "dot" (``tl.dot``); ``block_m`` rows, ``block_n`` output columns and ``block_k`` inputs (a
    multiple of 32: whole sign words) a program and step; ``split_k`` programs a column block over
    disjoint ranges of whole ``block_k`` steps (their float32 sums added into y by atomic adds);
    ``num_warps`` / ``num_stages`` as Triton takes them; ``compact``: each row block takes the next
    ``block_m`` rows *of the slot* (for a slot with fewer rows than the batch: its rows fill the
    first blocks, the other blocks exit before reading a word) instead of the next rows of the batch."""

    path: str
    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 1
    compact: bool = False

    def label(self) -> str:
        return (f"{self.path} m{self.block_m} n{self.block_n} k{self.block_k} split{self.split_k} "
                f"w{self.num_warps} s{self.num_stages}" + (" compact" if self.compact else ""))


#: rows of the slot up to which the GEMV kernel serves (above: tl.dot). Static counts of the inner
#: loops' sm_90 instructions a sign value (Triton 3.9's compile): GEMV 3.6 at one row, 6.8 at two,
#: 11.2 at four (an xor and an add a row and value); tl.dot 4.4 at any rows up to its 16 (the MMA is
#: the tensor cores'). The H200 sweep agrees: at one row the GEMV 174-182 us a layer against the
#: dot's 199-207; at 4 rows a fine-tune (32 over 8) the GEMV 1381 against the dot's 847.
GEMV_MAX_ROWS = 1
#: programs a launch aims for through split-K, by path: the GEMV's programs are light (a few warps,
#: ~100 registers: many resident a multiprocessor), the dot's heavier (a staged tile pipeline)
TARGET_PROGRAMS = {"gemv": 8, "dot": 4}  # a streaming multiprocessor
MAX_SPLIT_K = 8
#: entries of a compacting program's (rows, ids) match at a time (its registers: 32 a thread at 4 warps)
COMPACT_TILE = 4096


def _sms(t: torch.Tensor | None) -> int:
    """Streaming multiprocessors of t's GPU (132 on an H200; that figure off a GPU)."""
    return sm_count(t.get_device()) if t is not None and t.is_cuda else 132


def _pow2(v: int) -> int:
    return 1 << (max(int(v), 1) - 1).bit_length()


def compact_chunk(M: int, block_m: int) -> int:
    """Ids a compacting program matches at a time (see ``_slot_rows``)."""
    return max(16, min(_pow2(M), COMPACT_TILE // _pow2(block_m)))


def fit_split(K: int, block_k: int, split_k: int) -> int:
    """The split actually launched: at most one per ``block_k`` step, none left without steps."""
    steps = max(-(-K // block_k), 1)
    split_k = max(1, min(int(split_k), steps))
    return -(-steps // -(-steps // split_k))


def pick_config(M: int, N: int, K: int, dtype: torch.dtype, rows: int | None = None, sms: int = 132) -> LaunchConfig:
    """The default launch for M batch rows, of which about ``rows`` (default M) are the slot's, an
    (N, K) delta and activations of ``dtype``. Only shapes decide it (a CUDA graph captures it).

    - up to GEMV_MAX_ROWS rows: the GEMV kernel, 64 columns and 256 inputs (8 words a column) a
      step.
    - more: tl.dot, rows a program 16/32/64/128 (a tile of signs is unpacked once for a block's rows:
      at 256 rows two 128-row blocks unpack each word where 16-row blocks unpacked it 16 times),
      64 columns up to 32 rows, 128 beyond; 256 inputs a step up to 32 rows, 64 beyond; 4 warps, 3
      stages (a loop with tl.dot is pipelined: later steps' words and activations load while one is
      computed).
    - the block sizes and warps are the H200 sweep's best single changes from the first defaults
      (`bench_bitdelta.py --sweep`, benchmarks/results/bitdelta_h200.md): 256 inputs a step at one
      row (182 -> 174 us a layer) and in small row blocks (4 rows a fine-tune over 8: 847 -> 737;
      16 rows level), 4 warps at 128 rows (718 -> 626, though ptxas spills there on sm_90; 8 warps
      do not).
    - ``compact`` where the slot has fewer rows than the batch (``rows`` < M, a hint: any spread is
      still served): row blocks take the slot's rows, so the block shape follows the slot's rows.
    - split-K until the grid has ``TARGET_PROGRAMS`` a multiprocessor (at one row the unsplit grid
      was 64 programs for a 4096-column matrix on 132 multiprocessors, each walking all of K: bound
      by one program's load latency), at most MAX_SPLIT_K and one per step.
    """
    rows = max(1, min(int(rows or M), M))
    if rows <= GEMV_MAX_ROWS:
        path, bm, bn, bk, warps, stages = "gemv", _pow2(rows), 64, 256, 4, 1
    else:
        bm = 16 if rows <= 16 else 32 if rows <= 32 else 64 if rows <= 64 else 128
        path, bn, bk = "dot", 64 if bm <= 32 else 128, 256 if bm <= 32 else 64
        warps, stages = 4, 3
    return LaunchConfig(path, bm, bn, bk, auto_split(path, bm, bn, bk, rows, N, K, sms), warps, stages, compact=rows < M)


def auto_split(path: str, block_m: int, block_n: int, block_k: int, rows: int, N: int, K: int, sms: int = 132) -> int:
    """Split-K that brings the programs with rows to TARGET_PROGRAMS[path] a multiprocessor (at
    most MAX_SPLIT_K, at most one a step)."""
    work = -(-N // block_n) * -(-max(rows, 1) // block_m)
    return fit_split(K, block_k, max(1, min(MAX_SPLIT_K, -(-TARGET_PROGRAMS[path] * sms // work))))


if HAVE_TRITON:

    @triton.jit
    def _slot_rows(ids_ptr, slot, M, pid_m, BLOCK_M: tl.constexpr, CH: tl.constexpr):
        """(rows, ok) of row block pid_m. CH > 0 (compacted): the block's rows are the slot's rows
        number pid_m * BLOCK_M ... in batch order, found by a running count of the slot's rows over
        the ids, CH at a time (no sort, no host sync; a (BLOCK_M, CH) match at a time, so its
        registers stay few); ok is False past the slot's last row. CH == 0: rows
        pid_m * BLOCK_M ... of the batch, ok where their id is the slot."""
        if CH > 0:
            want = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            rows = tl.zeros((BLOCK_M,), dtype=tl.int32)
            found = tl.zeros((BLOCK_M,), dtype=tl.int32)
            before = 0
            for c0 in range(0, M, CH):
                r = c0 + tl.arange(0, CH)
                mine = tl.load(ids_ptr + r, mask=r < M, other=-1) == slot
                pos = before + tl.cumsum(mine.to(tl.int32), axis=0) - 1
                hit = mine[None, :] & (pos[None, :] == want[:, None])  # at most one a block row
                rows += tl.sum(tl.where(hit, r[None, :], 0), axis=1)
                found += tl.sum(hit.to(tl.int32), axis=1)
                before += tl.sum(mine.to(tl.int32), axis=0)
            ok = found > 0
        else:
            rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            ok = (tl.load(ids_ptr + rows, mask=rows < M, other=-1) == slot) & (rows < M)
        return rows, ok

    @triton.jit
    def _k_range(K, pid_k, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
        """Split pid_k's inputs [lo, hi): whole BLOCK_K steps, the splits in order."""
        per = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
        lo = pid_k * per
        return lo, tl.minimum(K, lo + per)

    @triton.jit
    def _add_out(y_ptr, rows, ok, cols, col_ok, stride_ym, val, SPLIT_K: tl.constexpr):
        """y[rows, cols] += val where the row is the slot's and the column exists. One program a
        (row, column) without split: a plain read-add-write (deterministic); with split-K the
        splits' sums meet in y by float32 atomic adds (their order, so y's last bits, may vary
        between runs)."""
        out = y_ptr + rows[:, None] * stride_ym + cols[None, :]
        m = ok[:, None] & col_ok[None, :]
        if SPLIT_K == 1:
            tl.store(out, tl.load(out, mask=m, other=0.0) + val, mask=m)
        else:
            tl.atomic_add(out, val, mask=m, sem="relaxed")

    @triton.jit
    def _signs_gemv(x_ptr, w_ptr, ids_ptr, y_ptr, slot, a, M, N, K, KW, stride_xm, stride_ym,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                    CH: tl.constexpr):
        """A few rows, no tensor cores: x * +-1 is x with its sign bit flipped where the sign bit is
        0, so each value costs a shift and a mask (shared by the block's rows: the word's bit moved
        to bit 31), an xor and a float32 add a row; the 32 bits of a word are the leading axis, in
        one thread (a word's bits never cross threads). Activations of any dtype are summed in
        float32, exactly as the reference multiplies (fp32 ones too: no tf32)."""
        pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows, ok = _slot_rows(ids_ptr, slot, M, pid_m, BLOCK_M, CH)
        if tl.max(ok.to(tl.int32), axis=0) == 0:
            return  # no row of the slot here: no word read
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        WB: tl.constexpr = BLOCK_K // 32
        j = tl.arange(0, 32)
        up = (31 - j).to(tl.uint32)  # bit j of a word to bit 31
        wv = tl.arange(0, WB)
        k_lo, k_hi = _k_range(K, pid_k, BLOCK_K, SPLIT_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N, WB), dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            wi = k0 // 32 + wv
            words = tl.load(w_ptr + cols[:, None] * KW + wi[None, :], mask=col_ok[:, None] & (wi[None, :] < KW), other=0)
            flip = ((~words).to(tl.uint32, bitcast=True)[None, :, :] << up[:, None, None]) & 0x80000000  # (32, N, W)
            ks = k0 + 32 * wv[None, :] + j[:, None]  # (32, W): input 32 w + j
            xv = tl.load(x_ptr + rows[:, None, None] * stride_xm + ks[None, :, :],
                         mask=ok[:, None, None] & (ks < K)[None, :, :], other=0.0).to(tl.float32)
            xs = xv.to(tl.uint32, bitcast=True)[:, :, None, :] ^ flip[None, :, :, :]  # (rows, 32, N, W)
            acc += tl.sum(xs.to(tl.float32, bitcast=True), axis=1)
        _add_out(y_ptr, rows, ok, cols, col_ok, stride_ym, a * tl.sum(acc, axis=2), SPLIT_K)

    @triton.jit
    def _pm1(w, dtype: tl.constexpr):
        """+1 where bit 0 of w is set, else -1, in ``dtype``, by its bit pattern (-1 with the sign
        bit cleared by the bit moved to the sign's place: a shift and an xor, no int->float)."""
        if dtype == tl.float32:
            return (((w & 1).to(tl.uint32, bitcast=True) << 31) ^ 0xBF800000).to(tl.float32, bitcast=True)
        elif dtype == tl.bfloat16:
            return (((w & 1) << 15) ^ 0xBF80).to(tl.int16).to(tl.bfloat16, bitcast=True)
        else:
            return (((w & 1) << 15) ^ 0xBC00).to(tl.int16).to(tl.float16, bitcast=True)

    @triton.jit
    def _signs_dot(x_ptr, w_ptr, ids_ptr, y_ptr, slot, a, M, N, K, KW, stride_xm, stride_ym,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                   CH: tl.constexpr, UPCAST: tl.constexpr):
        """y[r, c] += a * sum_k x[r, k] * s[c, k] by tl.dot: s = +-1 from bit k % 32 of word k // 32
        of packed row c, made in the activations' dtype (+-1 is exact in bf16 and fp16, x * +-1 too,
        so bf16/fp16 tensor cores with float32 accumulation give the reference's products; fp32
        activations go as fp32: tf32 on tensor cores). UPCAST: float32 operands, for Triton's CPU
        interpreter (its bf16 dot gives garbage, seen with Triton 3.9)."""
        pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows, ok = _slot_rows(ids_ptr, slot, M, pid_m, BLOCK_M, CH)
        if tl.max(ok.to(tl.int32), axis=0) == 0:
            return  # no row of the slot here: no word read
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        WB: tl.constexpr = BLOCK_K // 32
        even = 2 * tl.arange(0, 16)
        k_lo, k_hi = _k_range(K, pid_k, BLOCK_K, SPLIT_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            xb = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=ok[:, None] & (ks[None, :] < K), other=0.0)
            wi = k0 // 32 + tl.arange(0, WB)
            words = tl.load(w_ptr + cols[:, None] * KW + wi[None, :], mask=col_ok[:, None] & (wi[None, :] < KW), other=0)
            w3 = words[:, :, None]
            # the bits of a word in (even, odd) pairs joined in one thread: adjacent inputs of a
            # column land side by side in registers and go into the dot operand without passing
            # through shared memory (one value a (column, input) unpacked bit by bit reached ~10
            # instructions a value on sm_90, ~4.4 so)
            s = tl.reshape(tl.join(_pm1(w3 >> even[None, None, :], xb.dtype), _pm1(w3 >> (even + 1)[None, None, :], xb.dtype)),
                           (BLOCK_N, BLOCK_K))  # column c, input 32 w + j: +-1 in the activations' dtype
            if UPCAST:
                acc += tl.dot(xb.to(tl.float32), tl.trans(s).to(tl.float32))
            else:
                acc += tl.dot(xb, tl.trans(s))
        _add_out(y_ptr, rows, ok, cols, col_ok, stride_ym, a * acc, SPLIT_K)


def apply_triton(x2: torch.Tensor, f: BitDeltaSigns, ids: torch.Tensor, slot: int, y: torch.Tensor, *,
                 rows: int | None = None, config: LaunchConfig | None = None) -> torch.Tensor:
    """:func:`apply_ref` by a Triton kernel (a GPU, or TRITON_INTERPRET=1): one launch, cut as
    ``config`` says (default :func:`pick_config` from the shapes, ``rows``: about how many of the
    batch's rows are the slot's, when the caller knows; any spread is served whatever the guess).
    The grid depends only on the shapes and the config: no host sync, capturable by a CUDA graph."""
    if not usable(x2):
        raise KernelError("the bitdelta kernel needs triton and a CUDA tensor (or TRITON_INTERPRET=1)")
    M, K = x2.shape
    N = f.shape[0]
    if K != f.shape[1] or tuple(y.shape) != (M, N) or y.dtype != torch.float32:
        raise KernelError(f"bitdelta: x {tuple(x2.shape)}, delta {f.shape}, y {tuple(y.shape)} {y.dtype} do not fit")
    if x2.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise KernelError(f"bitdelta: activations of dtype {x2.dtype} (bf16, fp16 or fp32 only)")
    if y.stride(1) != 1:
        raise KernelError("bitdelta: y is written in place and needs unit stride along its columns")
    if M == 0 or N == 0:
        return y
    x2 = x2.contiguous() if x2.stride(-1) != 1 else x2
    cfg = config or pick_config(M, N, K, x2.dtype, rows, _sms(x2))
    if cfg.path not in ("gemv", "dot") or cfg.block_k % 32 or min(cfg.block_m, cfg.block_n, cfg.block_k) < 1:
        raise KernelError(f"bitdelta: bad launch config {cfg}")
    split = fit_split(K, cfg.block_k, cfg.split_k)
    ch = compact_chunk(M, cfg.block_m) if cfg.compact else 0
    grid = (triton.cdiv(N, cfg.block_n), triton.cdiv(M, cfg.block_m), split)
    args = (x2, f.signs, ids, y, int(slot), float(f.a), M, N, K, f.signs.shape[1], x2.stride(0), y.stride(0))
    if cfg.path == "gemv":
        _signs_gemv[grid](*args, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=split, CH=ch,
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    else:
        _signs_dot[grid](*args, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=split, CH=ch,
                         UPCAST=interpreting(), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return y


class BitDeltaSet(SlotDeltas):
    """One linear's bitdelta deltas by slot (the fine-tune ids every delta set of a model shares)."""

    kind = "bitdelta"

    def __init__(self, in_features: int, out_features: int, device: torch.device | str):
        super().__init__(in_features, out_features, device)
        self._generation = 0  # adds, drops and moves so far: the CPU path's kept signs are per generation
        self._cache_id = factor_cache.new_owner(self)

    def _changed(self) -> None:
        self._generation += 1
        factor_cache.forget(self._cache_id, self._generation)

    def delta(self, x2: torch.Tensor, ids: torch.Tensor, y: torch.Tensor | None = None, *, triton_ok: bool = True) -> torch.Tensor:
        """float32 (rows, out_features): each row's delta (zero for a row whose id holds none),
        added into ``y`` where given. The Triton kernel where it can run, else the reference."""
        if y is None:
            y = torch.zeros(x2.shape[0], self.out_features, dtype=torch.float32, device=x2.device)
        if not (triton_ok and usable(x2)):
            for slot, f in sorted(self._slots.items()):
                # on the CPU the unpacked signs are kept between calls (as delta-come's factors)
                dense = (factor_cache.keep(self._cache_id, self._generation, slot, "signs", f.dense)
                         if x2.device.type == "cpu" else None)
                apply_ref(x2, f, ids, slot, y, dense)
            return y
        rows = -(-x2.shape[0] // len(self._slots)) if self._slots else None  # the rows a slot serves if spread evenly
        for slot, f in sorted(self._slots.items()):
            apply_triton(x2, f, ids, slot, y, rows=rows)
        return y
