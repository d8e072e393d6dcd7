"""The dense path for many rows of one fine-tune: dequantize, then two cuBLAS GEMMs.

``y += ((x @ V^T) * S) @ U^T`` where the packed factors of one slot of a :class:`DeltaSet` are
first dequantized on the GPU into a scratch buffer in the activations' dtype (one Triton launch
for every tier record of every slice of the set: a table of (record, row block) items, each
writing its rows at its component's place), then ``z = x @ (S V^)^T`` (one GEMM; S is folded into
the V^ rows as they are written) and ``y[:, slice cols] += z[:, slice comps] @ U^`` (one in-place
``addmm_`` a slice: bf16/fp16 in, float32 accumulation by cuBLAS, y rounded once). At many rows a
fine-tune the tl.dot kernels unpack every packed word once per row block; here each is unpacked
once per call and the GEMMs run at cuBLAS speed (issue 9: on the H200, at M=256 one Llama-2-7B
layer took x9.07 of base with the tl.dot kernels, x3.87 with the same factors as dense bf16 GEMMs).

Scratch layout (:class:`DenseLayout`, built once per slot and set build): V rows first, a block
of ``ceil(rank / PAD) * PAD`` rows of ``in_features`` per slice (the slot's components of that
slice, then zero rows), then per slice a block of as many rows of ``out_features[slice]``: the U^
rows (component-major, as the codec packs them), zero rows after. Padding each slice's rank to a
multiple of :data:`PAD` keeps the GEMMs' leading dimensions and slice offsets aligned (a rank of
1305, as Llama-2-7B's MLP has, is not a multiple of 8: cuBLAS then leaves its fast kernels). The
pad rows are written (zeros) by every dequant launch, so nothing is stale whatever used the
buffer before.

One scratch buffer per (device, dtype), shared by every layer (each group's dequant overwrites
it; the path runs on the current stream only): as large as the largest group needs. For a
Llama-2-7B layer that is gate/up: 2 x 1344 padded components x (4096 + 11008) x 2 bytes = 81 MB
in bf16 (q/k/v: 3 x 896 x 8192 x 2 = 44 MB; down 41 MB; o 15 MB). It grows when a larger group
comes; the smaller buffer is kept (a CUDA graph captured before may point into it), so an eager
forward before capture (as ``generate`` does) sizes it once.

Chosen (:func:`use_dense`) where one slot serves every row that names one, known without a device
read: a set of one slot, or a plan whose ids the host knew (:attr:`RowPlan.only_slot`), and at
least :data:`DENSE_MIN_ROWS` rows; rows of the base alone (-1) get their z rows zeroed (a mask
built on the device from the plan, once per plan), so y's base-only rows get exactly +0.
Graph-safe: fixed shapes (fixed by the set and M), no host sync; a few launches a group.

The dequant (thirty-third session) stores 16 bytes at a time where the shapes allow it
(:data:`ALIGN_STORES`) and each program walks :data:`DENSE_SPAN` column blocks of its rows in a loop
software-pipelined :data:`DENSE_STAGES` deep (cp.async brings the next blocks' words while one is
unpacked and stored): on the H200, one Llama-2-7B layer at 64 rows of one fine-tune 380.9 -> 317.1 us
(x3.20 -> x2.70 of the base), at 256 rows 449.3 -> 394.5 (x2.83 -> x2.41), the same factors bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from deltastore.codec import quant

from . import triton_ops
from .deltaset import F, DeltaSet, RowPlan, known_slot
from .errors import KernelError

if triton_ops.HAVE_TRITON:
    import triton
    import triton.language as tl

    from .triton_ops import _unpack
else:  # pragma: no cover - depends on the environment
    triton = None

#: rows (of one fine-tune) from which the dense path serves a batch (0: never unless forced), where the
#: tensor-core kernels do not serve it first (they take 2..32 rows of one: mma.use_mma is asked before). The H200
#: A/B (benchmarks/dense_ab_device.sh, a 7B layer) had it faster than the tl.dot kernels at every M
#: measured, 5 to 256 rows.
DENSE_MIN_ROWS = int(os.environ.get("DELTASTORE_DENSE_MIN_ROWS", "5"))
#: each slice's components are padded to a multiple of this in the scratch (aligned GEMM operands)
PAD = 64
#: the dequant kernel's block: rows of one record (components) x values along a row, and its warps
#: (H200, 7B layer, raw_h200/dense_ab_*: 32 x 128 on one warp 143 us; 16 x 128 on four 217-222;
#: fewer warps faster at every block tried, 256 columns or a gather unpack slower). With the aligned
#: stores (thirty-third session, raw_h200/s33/e: ab_mma.py --cases 64,256 --delta-alone) 16 rows on one
#: warp: 64 rows of one fine-tune 350.5 us a layer against 355.5 at 32 rows (2 warps 351.0, 64 rows on 4
#: warps 353.1), 256 rows 416.2 against 427.4 (145 registers against 207 at 32 rows)
DENSE_BLOCK_R = 16
DENSE_BLOCK_C = 128
DENSE_WARPS = 1
#: column blocks a dequant program walks (a loop software-pipelined DENSE_STAGES deep: the next blocks'
#: words in flight by cp.async while one is unpacked and stored; 1, 1: a program a block, no pipeline).
#: H200, one Llama-2-7B layer through the modules (raw_h200/s33/g, ab_mma.py --cases 64,256 --delta-alone):
#: 64 rows of one fine-tune 317.1 us (x2.70 of the base) against 328.7 a program a block, 256 rows 394.5
#: (x2.41) against 409.0; the deltas alone 231.6 / 294.3 against 245.8 / 311.7; 8 blocks unpipelined
#: 328.6 / 404.7, 4 blocks 2 stages 320.2 / 398.0, 8 blocks 3 stages on 2 warps 322.2 / 400.8
DENSE_SPAN = int(os.environ.get("DELTASTORE_DENSE_SPAN", "8"))
DENSE_STAGES = int(os.environ.get("DELTASTORE_DENSE_STAGES", "3"))
#: the dequant kernel's unpack: False = each word loaded once and split in registers; True = per value
DENSE_GATHER = False
#: the dequant's stores as 16-byte vectors where the shapes allow it (:func:`aligned`; DELTASTORE_DENSE_ALIGN=0: off).
#: H200, one Llama-2-7B layer through the modules (raw_h200/s33/e): 64 rows of one fine-tune 355.5 us against
#: 380.9 without (x2.99 against x3.20 of the base), 256 rows 427.4 against 449.3 (x2.69 against x2.83); the
#: sm_90 compile of the 2-bit dequant: 16 stores a thread and program instead of 128, 1,576 instructions
#: instead of 2,256 (the 3-tier one: no spill instead of 72 bytes of stack)
ALIGN_STORES = os.environ.get("DELTASTORE_DENSE_ALIGN", "1") != "0"
#: fields of a dequant item (one row block of one tier record's V^ or U^ half, or of pad rows)
ITEM_FIELDS = ("q", "sz", "s_off", "bits", "rows", "length", "gs", "dst")
NFD = len(ITEM_FIELDS)


@dataclass
class DenseLayout:
    """Where one slot's dequantized factors lie in the scratch (element offsets, host ints)."""

    slot: int
    ranks: list[int]  # components per slice (0: no delta there)
    padded: list[int]  # ranks rounded up to PAD
    v_rows: list[int]  # first V row of each slice's block
    u_off: list[int]  # element offset of each slice's U block
    total_v_rows: int
    numel: int  # elements of scratch the slot needs
    items: torch.Tensor  # int64 (n_items, NFD) on the set's device
    max_length: int

    @property
    def empty(self) -> bool:
        return self.total_v_rows == 0


@dataclass
class DenseFactors:
    """Views of the scratch after a dequant: v (rows, in) = S V^ rows, u[slice] (rows, out)."""

    layout: DenseLayout
    v: torch.Tensor
    u: list[torch.Tensor | None]


def use_dense(dset: DeltaSet, plan: RowPlan, path: str | None = None) -> bool:
    """Whether :func:`apply` serves this batch: ``path`` "dense" forces it (any other path: no);
    else one slot serves the batch (:func:`.deltaset.known_slot`) with at least :data:`DENSE_MIN_ROWS` rows:
    those that name it where the host knew the ids (:attr:`RowPlan.served_rows`), else the batch's
    (one row beside many base rows is not worth dequantizing the whole delta)."""
    if path is not None:
        return path == "dense"
    return 0 < DENSE_MIN_ROWS <= plan.served_rows and known_slot(dset, plan) is not None


def layout(dset: DeltaSet, slot: int, block_r: int | None = None) -> DenseLayout:
    """The scratch layout and dequant items of ``slot`` (built once per slot, block and set build)."""
    dset.build()
    br = int(block_r or DENSE_BLOCK_R)
    cache = dset.dense_cache
    got = cache.get((slot, br))
    if got is not None:
        return got
    if not 0 <= slot < dset.n_slots:
        raise KernelError(f"no slot {slot} in a set of {dset.n_slots}")
    recs_of = dset.records[slot]
    K, ms = dset.in_features, dset.out_features
    ranks = [sum(r[F["count"]] for r in recs) for recs in recs_of]
    padded = [-(-r // PAD) * PAD for r in ranks]
    v_rows = [sum(padded[:b]) for b in range(len(ms))]
    R = sum(padded)
    u_off = [R * K + sum(p * m for p, m in zip(padded[:b], ms[:b])) for b in range(len(ms))]
    numel = R * K + sum(p * m for p, m in zip(padded, ms))
    vi: list[list[int]] = []
    ui: list[list[int]] = []

    def cut(out: list[list[int]], q: int, qw: int, sz: int, g: int, s_off: int, bits: int, n: int, length: int, gs: int, dst: int) -> None:
        for r0 in range(0, n, br):
            out.append([q + r0 * qw, sz + r0 * g, s_off + r0 if s_off >= 0 else -1, bits, min(br, n - r0), length, gs, dst + r0 * length])

    for b, recs in enumerate(recs_of):
        j = 0
        for rec in recs:
            bits, cnt, gs = rec[F["bits"]], rec[F["count"]], rec[F["gs"]]
            cut(vi, rec[F["v_q"]], quant.packed_words(K, bits), rec[F["v_sz"]], quant.n_groups(K, gs), rec[F["s_off"]], bits, cnt, K, gs,
                (v_rows[b] + j) * K)
            cut(ui, rec[F["u_q"]], quant.packed_words(ms[b], bits), rec[F["u_sz"]], quant.n_groups(ms[b], gs), -1, bits, cnt, ms[b], gs,
                u_off[b] + j * ms[b])
            j += cnt
        if padded[b] > ranks[b]:  # zero rows up to the padded rank (bits 0)
            cut(vi, 0, 0, 0, 0, -1, 0, padded[b] - ranks[b], K, 1, (v_rows[b] + ranks[b]) * K)
            cut(ui, 0, 0, 0, 0, -1, 0, padded[b] - ranks[b], ms[b], 1, u_off[b] + ranks[b] * ms[b])
    rows = vi + ui
    items = torch.tensor(rows or [[0, 0, -1, 0, 0, 1, 1, 0]], dtype=torch.int64).to(dset.device)
    got = cache[(slot, br)] = DenseLayout(slot, ranks, padded, v_rows, u_off, R, numel, items, max([K, *ms]))
    return got


def aligned(dset: DeltaSet) -> bool:
    """Whether every dequant item's row length and destination are multiples of 8 elements: the
    inputs and every slice's outputs are (the padded ranks are multiples of :data:`PAD`, so every
    block of the scratch then starts at one; the scratch itself is a fresh allocation, 16-byte aligned)."""
    return dset.in_features % 8 == 0 and all(m % 8 == 0 for m in dset.out_features) and PAD % 8 == 0


_SCRATCH: dict[tuple[str, torch.dtype], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []


def scratch(device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
    """The (device, dtype) scratch buffer, at least ``numel`` elements (made once, grown rarely;
    a replaced buffer is kept alive: a captured CUDA graph may still write into it)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # ("cuda" and "cuda:0" share one buffer)
        device = torch.device("cuda", torch.cuda.current_device())
    key = (str(device), dtype)
    t = _SCRATCH.get(key)
    if t is None or t.numel() < numel:
        if t is not None:
            _RETIRED.append(t)
        t = _SCRATCH[key] = torch.empty(max(int(numel), 1), dtype=dtype, device=device)
    return t


def scratch_bytes() -> int:
    """Device bytes the dense path's scratch buffers hold (current and retired)."""
    return sum(t.numel() * t.element_size() for t in [*_SCRATCH.values(), *_RETIRED])


if triton is not None:

    @triton.jit
    def _dense_span(words_ptr, scales_ptr, zeros_ptr, out_ptr, q0, sz0, dst, sv, r64, r_ok, cb0, nb, L, gs,
                    BITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, SPAN: tl.constexpr, STAGES: tl.constexpr,
                    GATHER: tl.constexpr, ONE_GROUP: tl.constexpr):
        """Column blocks cb0 .. cb0 + nb (nb <= SPAN) of rows r64 of one packed record (BITS 0: zero rows):
        (q - zero) * scale * S, written in out's dtype. The loop is software-pipelined STAGES deep (the next
        blocks' words come by cp.async while this one is unpacked and stored); ONE_GROUP (a block inside
        one quantization group: a scale and zero a row) loads the span's scales and zeros before the loop,
        so no 2-byte load, which cp.async cannot take, waits inside it."""
        offs = tl.arange(0, BLOCK_C)
        if BITS > 0:
            row_words = BITS * ((L + 31) // 32)
            G = (L + gs - 1) // gs
            if ONE_GROUP:
                jj = tl.arange(0, SPAN)
                szt = sz0 + r64[:, None] * G + ((cb0 + jj) * BLOCK_C // gs)[None, :]
                mt = r_ok[:, None] & (jj < nb)[None, :]
                sct = tl.load(scales_ptr + szt, mask=mt, other=0.0).to(tl.float32)
                zpt = tl.load(zeros_ptr + szt, mask=mt, other=0.0).to(tl.float32)
        for j in tl.range(0, nb, num_stages=STAGES):
            c0 = (cb0 + j) * BLOCK_C
            offs_c = c0 + offs
            m2 = r_ok[:, None] & (offs_c < L)[None, :]
            if BITS == 0:
                val = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
            else:
                q = _unpack(words_ptr, q0 + r64 * row_words, r_ok, c0, row_words, BITS, BLOCK_R, BLOCK_C, GATHER).to(tl.float32)
                if ONE_GROUP:
                    pick = (jj == j)[None, :]
                    sc = tl.sum(tl.where(pick, sct, 0.0), axis=1)
                    zp = tl.sum(tl.where(pick, zpt, 0.0), axis=1)
                    val = (q - zp[:, None]) * sc[:, None]
                else:
                    sz = sz0 + r64[:, None] * G + (offs_c // gs)[None, :]
                    sc = tl.load(scales_ptr + sz, mask=m2, other=0.0).to(tl.float32)
                    zp = tl.load(zeros_ptr + sz, mask=m2, other=0.0).to(tl.float32)
                    val = (q - zp) * sc
            val = val * sv[:, None]
            tl.store(out_ptr + dst + r64[:, None] * L + offs_c[None, :], val.to(out_ptr.dtype.element_ty), mask=m2)

    @triton.jit
    def _dense_pick(bits, words_ptr, scales_ptr, zeros_ptr, out_ptr, q0, sz0, dst, sv, r64, r_ok, cb0, nb, L, gs,
                    BITS: tl.constexpr, HAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, SPAN: tl.constexpr,
                    STAGES: tl.constexpr, GATHER: tl.constexpr, ONE_GROUP: tl.constexpr):
        """:func:`_dense_span` at BITS where the record has that width (compiled only where the set has it)."""
        if HAS:
            if bits == BITS:
                _dense_span(words_ptr, scales_ptr, zeros_ptr, out_ptr, q0, sz0, dst, sv, r64, r_ok, cb0, nb, L, gs,
                            BITS, BLOCK_R, BLOCK_C, SPAN, STAGES, GATHER, ONE_GROUP)

    @triton.jit
    def _dense_dequant_kernel(words_ptr, scales_ptr, zeros_ptr, svals_ptr, items_ptr, out_ptr,
                              NFIELD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, GATHER: tl.constexpr, ONE_GROUP: tl.constexpr,
                              HAS1: tl.constexpr, HAS2: tl.constexpr, HAS3: tl.constexpr, HAS4: tl.constexpr, HAS8: tl.constexpr,
                              ALIGNED: tl.constexpr = False, SPAN: tl.constexpr = 1, STAGES: tl.constexpr = 1):
        """Program (span of SPAN column blocks, item): BLOCK_R rows x SPAN BLOCK_C values of one item's
        record, dequantized (times S for V^ rows: s_off >= 0), written in out's dtype at dst (rows of
        ``length``); bits 0: zeros. ALIGNED: every item's length and dst are multiples of 8 (the
        host knows it from the shapes: :func:`aligned`), so a thread's 8 consecutive values are one
        16-byte store; without the hint the compiler cannot prove it from the loaded fields and
        stores every value apart (2 bytes a store: a 32-byte sector written 16 times)."""
        pc = tl.program_id(0)
        it = tl.program_id(1)
        ib = items_ptr + it * NFIELD
        q0, sz0, s_off, bits = tl.load(ib + 0), tl.load(ib + 1), tl.load(ib + 2), tl.load(ib + 3)
        nrows, L, gs, dst = tl.load(ib + 4), tl.load(ib + 5), tl.load(ib + 6), tl.load(ib + 7)
        if ALIGNED:
            L = tl.multiple_of(L, 8)
            dst = tl.multiple_of(dst, 8)
        cb0 = pc * SPAN
        nb = tl.minimum(tl.cdiv(L, BLOCK_C) - cb0, SPAN)
        if nb <= 0:
            return
        offs_r = tl.arange(0, BLOCK_R)
        r_ok = offs_r < nrows
        r64 = offs_r.to(tl.int64)
        sv = tl.load(svals_ptr + s_off + offs_r, mask=r_ok & (s_off + 0 * offs_r >= 0), other=1.0)  # (a vector mask: the interpreter's)
        if bits == 0:
            _dense_span(words_ptr, scales_ptr, zeros_ptr, out_ptr, q0, sz0, dst, sv, r64, r_ok, cb0, nb, L, gs,
                        0, BLOCK_R, BLOCK_C, SPAN, STAGES, GATHER, ONE_GROUP)
        _dense_pick(bits, words_ptr, scales_ptr, zeros_ptr, out_ptr, q0, sz0, dst, sv, r64, r_ok, cb0, nb, L, gs, 8, HAS8, BLOCK_R, BLOCK_C, SPAN, STAGES, GATHER, ONE_GROUP)
        _dense_pick(bits, words_ptr, scales_ptr, zeros_ptr, out_ptr, q0, sz0, dst, sv, r64, r_ok, cb0, nb, L, gs, 4, HAS4, BLOCK_R, BLOCK_C, SPAN, STAGES, GATHER, ONE_GROUP)
        _dense_pick(bits, words_ptr, scales_ptr, zeros_ptr, out_ptr, q0, sz0, dst, sv, r64, r_ok, cb0, nb, L, gs, 3, HAS3, BLOCK_R, BLOCK_C, SPAN, STAGES, GATHER, ONE_GROUP)
        _dense_pick(bits, words_ptr, scales_ptr, zeros_ptr, out_ptr, q0, sz0, dst, sv, r64, r_ok, cb0, nb, L, gs, 2, HAS2, BLOCK_R, BLOCK_C, SPAN, STAGES, GATHER, ONE_GROUP)
        _dense_pick(bits, words_ptr, scales_ptr, zeros_ptr, out_ptr, q0, sz0, dst, sv, r64, r_ok, cb0, nb, L, gs, 1, HAS1, BLOCK_R, BLOCK_C, SPAN, STAGES, GATHER, ONE_GROUP)


#: the compiled dequant kernel of the latest launch (registers, spills: benchmarks read it)
LAST: dict[str, object] = {}


def dequantize(dset: DeltaSet, slot: int, dtype: torch.dtype, *, block_r: int | None = None, block_c: int | None = None,
               gather: bool | None = None, num_warps: int | None = None, span: int | None = None,
               stages: int | None = None) -> DenseFactors:
    """One launch: slot ``slot``'s factors of every slice, dequantized into the scratch in
    ``dtype`` (V^ rows times S); returns views of them (valid until the next dequant on the device).
    ``span``, ``stages``: column blocks a program and its loop's pipeline depth (:data:`DENSE_SPAN`)."""
    triton_ops._need_triton()
    lay = layout(dset, slot, block_r)
    br, bc = int(block_r or DENSE_BLOCK_R), int(block_c or DENSE_BLOCK_C)
    if bc % 32:
        raise KernelError(f"block_c must be a multiple of 32, got {bc}")
    buf = scratch(dset.device, dtype, lay.numel)
    K, ms = dset.in_features, dset.out_features
    if not lay.empty:
        sp = int(span or DENSE_SPAN)
        one = dset.block_k % bc == 0
        # (groups smaller than a block: a scale a value, loaded in the loop; pipelined, those loads spill on sm_90)
        st = int(stages or (DENSE_STAGES if one else 1))
        grid = (triton.cdiv(triton.cdiv(lay.max_length, bc), sp), lay.items.shape[0])
        LAST["dequant"] = _dense_dequant_kernel[grid](dset.words, dset.scales, dset.zeros, dset.svals, lay.items, buf,
                                                      NFIELD=NFD, BLOCK_R=br, BLOCK_C=bc, GATHER=DENSE_GATHER if gather is None else gather,
                                                      ONE_GROUP=one,
                                                      **triton_ops._has(dset), ALIGNED=ALIGN_STORES and aligned(dset),
                                                      SPAN=sp, STAGES=st, num_warps=int(num_warps or DENSE_WARPS))
    v = buf[: lay.total_v_rows * K].view(lay.total_v_rows, K)
    u = [buf[o : o + p * m].view(p, m) if p else None for o, p, m in zip(lay.u_off, lay.padded, ms)]
    return DenseFactors(lay, v, u)


def served_mask(plan: RowPlan, slot: int) -> torch.Tensor:
    """bool (M,): rows that name ``slot``, built on the device from the plan (no host sync), once per plan."""
    got = plan.masks.get(slot)
    if got is None:
        rows = plan.rows.to(torch.int64)
        pos = torch.arange(plan.n_rows, device=rows.device)
        lo, n = plan.starts[slot].to(torch.int64), plan.counts[slot].to(torch.int64)
        got = plan.masks[slot] = torch.empty(plan.n_rows, dtype=torch.bool, device=rows.device).scatter_(0, rows, (pos >= lo) & (pos < lo + n))
    return got


def shrink(x: torch.Tensor, f: DenseFactors, plan: RowPlan | None = None) -> torch.Tensor:
    """z (M, padded components) in x's dtype = x @ (S V^)^T (one GEMM); with ``plan``, rows
    that do not name the factors' slot zeroed (unless the plan says every row names it)."""
    z = torch.mm(x, f.v.T)
    if plan is not None and not (plan.only_slot == f.layout.slot and not plan.base_rows):
        z.masked_fill_(~served_mask(plan, f.layout.slot)[:, None], 0)
    return z


def expand(z: torch.Tensor, y: torch.Tensor, dset: DeltaSet, f: DenseFactors) -> torch.Tensor:
    """y[:, slice cols] += z[:, slice comps] @ U^ per slice, in place (cuBLAS, float32 accumulation;
    y rounded once where it has z's dtype; a float32 y gets the product rounded to z's dtype)."""
    if y.stride(1) != 1:
        raise KernelError("the dense expand writes y in place and needs unit stride along its columns")
    lay = f.layout
    for b, (c, m) in enumerate(zip(dset.col_offsets, dset.out_features)):
        u = f.u[b]
        if u is None:
            continue
        zb = z[:, lay.v_rows[b] : lay.v_rows[b] + lay.padded[b]]
        yb = y[:, c : c + m]
        if y.dtype == z.dtype:
            yb.addmm_(zb, u)
        else:
            yb.add_(torch.mm(zb, u))
    return y


def apply(x: torch.Tensor, y: torch.Tensor, dset: DeltaSet, plan: RowPlan, slot: int | None = None, **kw) -> torch.Tensor:
    """y (M, sum out) += the delta of x (M, in) for the rows that name ``slot`` (by default
    :func:`.deltaset.known_slot`), in place: dequant (1 launch), a GEMM, a mask where needed, an addmm a slice.
    ``kw``: :func:`dequantize`'s block options."""
    dset.build()
    if x.shape[1] != dset.in_features:
        raise KernelError(f"input has {x.shape[1]} features; the deltas expect {dset.in_features}")
    s = known_slot(dset, plan) if slot is None else slot
    if s is None:
        raise KernelError("the dense path serves a batch of one fine-tune: a set of one slot, or a plan whose ids the host knew")
    if dset.slot(s) is None:
        return y  # a dropped slot: the base alone
    f = dequantize(dset, s, x.dtype, **kw)
    if f.layout.empty:
        return y
    return expand(shrink(x, f, plan), y, dset, f)
