"""Delta-come deltas on the tensor cores: the packed factors unpacked straight into mma.sync registers.

``y += ((x @ V^) * S) @ U^^T`` in two launches per set of linears sharing an input (a shrink and
an expand, as :mod:`.triton_ops`), where each thread loads the packed words its own MMA fragment
needs and turns them into bf16 operands in registers. Written in Gluon (Triton's dialect with
explicit layouts), because the operand layout is the point: with plain Triton the unpacked values
reach the MMA layout through shared memory, or (the GEMV kernels) go to float32 and one FMA per
value and row. Measured on the H200 (benchmarks/results/kernels_h200.md, twentieth session): one
Llama-2-7B layer through the modules users get, 32 rows over 8 fine-tunes 540 us, x4.66 of the base
alone (the GEMV kernels x11.28); 16 rows of one fine-tune x2.13 (the dense path x3.21); 2 rows each
over 32 fine-tunes 0.66x the GEMV kernels' time; one row of a fine-tune level with them or slower
(its deltas 98.5 us against 92), so :func:`use_mma` takes these kernels for several fine-tunes at
1..32 rows each (1 since the thirty-fifth session) and one fine-tune's batches of 2..32 rows, beside the base
GEMM on the side stream.
The 3- and 8-bit tiers are read as 2-bit planes (below).

**Loads** (:data:`COMPACT`, the default). Nsight Compute on the probe's kernels: L1 at 79-92% of its
throughput, DRAM at 5-8%, a third of the stalls on L1 data: each thread loaded the words of its own
fragment one 4-byte load at a time (the four lanes of an MMA quad the same word; in the expand
eight lanes), and x at the permuted k two bytes at a time. So for the 2-bit tiers (96% of a 1/16
delta's values) the words come in wide loads and go into the MMA layout without data movement:
the shrink loads a row's 8 words of a group (two 128-bit loads), the expand an item's [components,
8 words] tile of one output group (a component's 8 words are contiguous) into shared memory; the
A operand is made from them through a [rows, words, fields] view (linear layouts whose reshape is
the MMA's A layout, checked trivial when the kernel compiles); the shrink's x is a natural-order
[rows, 128] tile relabeled in registers to the permuted k and read into the B layout through shared
memory. Vector loads where a factor's words start 16-byte aligned (the DeltaSet aligns them) and
its rows are a multiple of 4 words; scalar loads of the same layouts elsewhere (odd shapes). The x tile
(and the expand's staged z tile) sits in shared memory swizzled (:func:`x_smem`: Nsight Compute, thirty-fifth
session, found the shrink's ldmatrix of it at a 22-way bank conflict unswizzled).

**Planes** (twentieth session). The 3- and 8-bit tiers (4% of the values) kept per-element loads and
their code doubled the kernels' registers: a quarter of the time at 32 rows over 8. The DeltaSet now
gives these kernels such a tier as 2-bit planes (deltaset.planes_of: bits 2i, 2i+1 of a value as a
virtual row with scale 4^i s, exact), made once these kernels serve it (DeltaSet.use_planes); the
tables carry ``dsh``, virtual rows a component as a shift: the shrink sums a component's planes into
its z column by its atomics, the expand reads that column for each plane.

The unpack, per bit width (``q`` a field, all exact in bf16):

- 2 bits: ``lop3(w >> s, 0x00030003, 0x43004300)`` is the bf16 pair (128 + q_a, 128 + q_b) of
  fields a and a + 8 of a word: one shift and one LOP3 for two values. The shrink's A fragment
  holds a thread's two adjacent k slots in one register, so slot pairs (2i, 2i + 1) of each 16-k
  tile take fields (i, i + 8) and x is read at the same permuted k (``_perm2``); the expand's
  register pair is two components (two words: their halves paired by a byte permute).
- 3 bits: the same for the low two bits (the layout keeps them as 2-bit words), the high bit
  moved to bit 2 of each half from the chunk's third word.
- 8 bits: 128 + q does not fit bf16's 8 significant bits, so each byte is split into nibbles
  (128 + h, 128 + l) and run as two MMAs, the high one weighted by 16 (2176 = 16 * 128 + 128).

The 128 offsets and the zero points come out once per quantization group through sums: the
shrink subtracts (128 + zp) * sum(x) of the group (x as the MMA saw it, so the two cancel
exactly), the expand (128 + zp) * sum(z S sc) over the components (the bf16-rounded operand
itself). Scales multiply the float32 group sums (shrink) or the other operand (expand: a program
covers one group of 128 outputs, so a component's scale is one number there). MMA shape m16n8k16
with the packed factor on the M side ("swap AB": 16 components or outputs a tile, up to
:data:`BLOCK_ROWS` (32) batch rows of one fine-tune on N), so one row wastes tensor-core work, not
bytes or instructions.

Work: shrink programs over (tier tile of 128 components of one slot-slice, groups of the input,
row block of one slot: :func:`deltaset.plan_blocks`), adding their float32 part of z with atomic
adds; expand programs over (128 outputs of a slice, run of one tier's components
(:meth:`DeltaSet.items`), row block), adding into a float32 delta with atomic adds. Atomic adds
make the last bits of a result depend on the order programs finish (vLLM's split-K LoRA shrink
does the same); every result is within the tests' bounds of the torch reference. Served where
every tier's group size is 128 and widths are 2, 3 or 8 bits (what the codec writes), on CUDA
devices of compute capability 8.0 or later, with Triton's Gluon; :func:`usable` says.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Mapping
from types import MappingProxyType

import torch

from .deltaset import F, DeltaSet, RowPlan, plan_blocks
from .errors import KernelError
from .triton_ops import known_args, maxnreg_option, pdl_launch, pdl_on

try:  # Gluon ships with Triton 3.5+; the kernels need a GPU (the interpreter does not run Gluon)
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import mma_v2

    HAVE_GLUON = True
except Exception:  # pragma: no cover - no Triton, or one whose Gluon lacks these names: the other paths serve
    HAVE_GLUON = False

#: the 3- and 8-bit tiers read as 2-bit planes (deltaset.planes_of: the 2-bit tiers' wide loads for every
#: tier, at +6% of a 1/16 delta's device memory, 26.9 against 25.3 MB a Llama-2-7B layer, in the sets these
#: kernels serve: DeltaSet.use_planes). H200, one layer's deltas alone: 32 rows over 8 fine-tunes 523 ->
#: 429 us, 16 rows of one 169 -> 142 (kernels_h200.md). ``DELTASTORE_MMA_PLANES=0``: read as stored
PLANES = os.environ.get("DELTASTORE_MMA_PLANES", "1") not in ("", "0")

#: widths the unpack handles (the codec's delta-come tiers: 8, 3 and 2 bits)
WIDTHS = frozenset({2, 3, 8})
#: the quantization group the kernels are written for (a program's unit along k / n)
GROUP = 128
#: a shrink tile / an expand block: 128 components or outputs (16 x TILES x warps)
BLOCK = 128
#: components an expand program takes at most (one item of DeltaSet.items), for a batch of several
#: fine-tunes (CHUNK) and of one (ONE_CHUNK: its launch has a few hundred programs a group, so smaller
#: items keep more SMs busy). H200, a 7B layer through the modules (thirty-fourth session, raw_h200/s34/c-e,
#: shrink tiles of 128): one fine-tune's 2 / 16 rows 172.0 / 201.7 us at 256 against 166.8 / 195.6 at 128,
#: 512 slower (229.7 at 16 rows); several: 32 rows over 8 470.3 / 458.3, 64 over 32 1384.5 / 1406.9,
#: 256 over 8 1152.8 / 1212.2 (256 / 128)
CHUNK = int(os.environ.get("DELTASTORE_MMA_CHUNK", "256"))
ONE_CHUNK = int(os.environ.get("DELTASTORE_MMA_ONE_CHUNK", "128"))
#: programs a shrink launch aims at (its split of the input dimension follows)
SHRINK_PROGRAMS = int(os.environ.get("DELTASTORE_MMA_PROGRAMS", "1536"))
#: groups of the input a shrink program takes at most, one after the other
MAX_GPS = int(os.environ.get("DELTASTORE_MMA_MAX_GPS", "4"))
#: k a shrink step unpacks (a group), and its tile of components: 16 x SHRINK_TILES a warp, 4 warps
#: (before the wide loads and planes: 64 components 132 registers a thread at 8 rows, 128 took 201; with them,
#: sm_90, Triton 3.6: 64 components 56 / 64 / 96 registers at 8 / 16 / 32 rows a block, 128 components 96 / 96 /
#: 162, no spills). 128 components a tile since the thirty-fourth session (x read once for twice the words):
#: H200, a 7B layer through the modules (raw_h200/s34/c-e), 16 rows of one fine-tune 205.0 -> 201.7 us (its
#: shrink 64.7 -> 54.2), 32 rows over 8 523.3 -> 470.3, 64 over 32 1573.6 -> 1384.5, 256 over 8 1358.6 -> 1152.8
SHRINK_KS = int(os.environ.get("DELTASTORE_MMA_KS", "128"))
SHRINK_TILES = int(os.environ.get("DELTASTORE_MMA_TILES", "2"))
#: components an expand step takes (its loads issued together; 32: 126 registers a thread at 8 rows, 64: 206)
EXPAND_STEP = int(os.environ.get("DELTASTORE_MMA_STEP", "32"))
#: rows a fine-tune these kernels serve at most by default (more: the dense path for one fine-tune, the
#: tl.dot kernels for several). A row block holds up to BLOCK_ROWS rows (block_m), so more rows are more
#: blocks, each reading the fine-tune's words again (plan_blocks). H200, 256 rows over 8 fine-tunes (32 each), one
#: Llama-2-7B layer through the modules: 1511 us against the tl.dot kernels' 2153 (0.70x;
#: raw_h200/s21/ab_max_rows_32.md); 64 rows each not measured
MAX_ROWS = int(os.environ.get("DELTASTORE_MMA_MAX_ROWS", "32"))
#: rows a fine-tune (the batch spread over the set's fine-tunes) from which these kernels serve a
#: batch of several fine-tunes by default, a batch of at least 2 rows (below: the GEMV kernels). 1 since
#: the thirty-fifth session: H200, a 7B layer through the modules (raw_h200/s35/ab4), 8 rows over 8 fine-tunes
#: 376.4 us against the GEMV kernels' 409.1, 4 over 4 253.7 / 258.6 (before the swizzle and the paired x tile
#: 443.9 / 410.1 and 291.8 / 261.2, raw_h200/s35/ab1)
MIN_ROWS = int(os.environ.get("DELTASTORE_MMA_MIN_ROWS", "1"))
#: rows a row block holds at most (the MMA's N side; 8, 16, 32 or 64): each block of a fine-tune reads
#: and unpacks its words again, so a fine-tune's rows past one block cost a second pass over them. sm_90
#: compile (Triton 3.6, 2-bit tiers): shrink / expand 64 / 86 registers at 16 rows a block, 96 / 128 at 32,
#: 168 / 240 at 64, no spills. H200, one Llama-2-7B layer through the modules (thirty-fourth session,
#: raw_h200/s34/b: ab_mma.py --cases 24,32,64,256x8 --mma-cfgs with mma.BLOCK_ROWS 16 / 32 / 64): 256 rows over 8
#: fine-tunes (32 each) 1497.2 -> 1351.7 us at 32 (64: 1352.4), one fine-tune's 24 rows 315.9 -> 300.8; 64 rows of
#: one in a block of 64 slower than two of 32 (510.4 / 456.4 us: 240 registers a thread)
BLOCK_ROWS = int(os.environ.get("DELTASTORE_MMA_BLOCK_ROWS", "32"))
#: rows of a batch of ONE fine-tune these kernels serve (ONE_MIN_ROWS .. ONE_MAX_ROWS; fewer: the GEMV
#: kernels, more: the dense path). H200, one Llama-2-7B layer's deltas alone: 16 rows 175 us against
#: the dense path's 313, one row 108 against the GEMV kernels' 92 (kernels_h200.md, twentieth session);
#: 2 / 3 / 4 rows 97.8 / 100.6 / 100.3 us against the GEMV kernels' 115.1 / 197.1 / 200.3 (the layer
#: x1.80 -> x1.50, x2.43 -> x1.50, x2.43 -> x1.49 of base; benchmarks/rows_path_device.sh, raw_h200/s26/rows).
#: Past 16 rows, the layer through the modules (beside_device.sh, raw_h200/s28/ab_rows.md): 24 rows
#: 314.5 us against the dense path's 376.3 (x2.73 / x3.27 of base), 32 rows 324.8 / 377.5; 64 rows
#: (MAX_ROWS 64) 481.2 against 379.9: so up to 32 then. With the dense dequant's aligned stores and pipelined
#: spans (thirty-third session, raw_h200/s33/h: ab_mma.py --cases 24,32 --mma-cfgs '[{}, {"mma.ONE_MAX_ROWS": 16}]')
#: 24 rows 316.2 us here against 315.6 on the dense path (level; rel err 1.7e-3 against 3.5e-3), 32 rows 326.3
#: against 316.2: so up to 24 (past 16 rows these kernels took a second row block, reading every word again).
#: With blocks of 32 rows (:data:`BLOCK_ROWS`, thirty-fourth session, raw_h200/s34/b): 24 rows 300.8 us against
#: 315.9 (the two 16-row blocks), 32 rows 313.1 against the dense path's 319.0; 64 rows in one block of 64
#: 510.4, in two of 32 456.4, against the dense path's 319.0: so up to 32
ONE_MIN_ROWS = int(os.environ.get("DELTASTORE_MMA_ONE_MIN_ROWS", "2"))
ONE_MAX_ROWS = int(os.environ.get("DELTASTORE_MMA_ONE_MAX_ROWS", "32"))
#: run them on the side stream beside the base GEMM whatever the rows (kernels.linear.side_for;
#: the GEMV path always does): they are bound by L1 and latency, the GEMM by DRAM
SIDE = os.environ.get("DELTASTORE_MMA_SIDE", "1") not in ("", "0")
MAGIC = 0x43004300  # bf16 pair (128, 128)
#: the 2-bit tiers' shrink with fewer, wider loads (:func:`_shrink_group2`; ``DELTASTORE_MMA_COMPACT=0``: the
#: per-element loads of before)
COMPACT = os.environ.get("DELTASTORE_MMA_COMPACT", "1") not in ("", "0")
#: which of the two takes them where COMPACT ("shrink", "expand" or both)
COMPACT_PARTS = os.environ.get("DELTASTORE_MMA_COMPACT_PARTS", "shrink,expand")
#: the compact expand makes its item's B operand once a program (z S sc rounded to bf16 for every component and
#: row, and the zero points' correction summed from it) into shared memory, where each step loaded its [16, rows]
#: float32 z from global memory, in every warp, right before its MMA (a round trip a step), and scaled and rounded
#: it again. sm_90 compile (16 rows, items of 128): 1,680 instructions a program against 1,840, global loads 104 /
#: 134, 80 registers both. On by default since the thirty-fifth session, once its tile was swizzled
#: (:data:`SWIZZLE`; unswizzled, each ldmatrix of it was an 8-way bank conflict): H200, a 7B layer through the
#: modules (raw_h200/s35/ab2, both swizzled): 16 rows of one fine-tune 181.7 us against 191.7 per step, 32 rows
#: over 8 425.1 / 445.0, 64 over 32 1202.6 / 1274.9, 256 over 8 834.8 / 994.3 (unswizzled it was 194.4 / 196.6
#: at 16 rows and slower for several: 483.8 / 471.1 at 32 over 8, raw_h200/s35/ab1). ``DELTASTORE_MMA_STAGE_Z=0``:
#: per step
STAGE_Z = os.environ.get("DELTASTORE_MMA_STAGE_Z", "1") not in ("", "0")
#: the shrink's x tile (and the staged expand's z tile) in shared memory swizzled (:func:`x_smem`). Nsight Compute
#: on one fine-tune's 16 rows (raw_h200/s35/ncu16): the shrink's shared loads at a 22-way bank conflict on
#: average (85% of their wavefronts), est. 31-49% of its time. H200, a 7B layer through the modules (raw_h200/s35/ab2):
#: 16 rows 196.2 -> 191.7 us, 32 rows over 8 473.2 -> 445.0, 64 over 32 1383.8 -> 1274.9, 256 over 8 1158.0 -> 994.3
SWIZZLE = os.environ.get("DELTASTORE_MMA_SWIZZLE", "1") not in ("", "0")
#: the shrink's x tile loaded so a thread stores 8 contiguous slots, one 16-byte store (:func:`x_pairs`), where a row
#: block is not of 16 rows: sm_90 compile (Triton 3.6), shrink registers at 8 / 16 / 32 rows a block 96 / 120 / 153
#: against 96 / 95 / 162 (at 16, 5 -> 4 programs an SM). H200, a 7B layer through the modules (raw_h200/s35/ab3, ab4):
#: 32 rows over 8 fine-tunes 425.0 -> 415.1 us, 64 over 32 1209.4 -> 1153.8, 256 over 8 836.6 -> 811.7, 32 rows of
#: one 265.5 -> 263.6; at 16 rows of one (blocks of 16) 181.7 -> 182.9, so not there
X_PAIRS = os.environ.get("DELTASTORE_MMA_X_PAIRS", "1") not in ("", "0")
#: programmatic dependent launch (Hopper+; where :func:`.triton_ops.pdl_on` allows it, so DELTASTORE_PDL=0 turns it off
#: too), as the GEMV kernels' (:data:`.triton_ops.GEMV_PDL`): the expand
#: launched while its shrink's last programs run, its words, scales and zero points loaded (into shared
#: memory) before it waits (griddepcontrol.wait) for the shrink's z. Nsight Compute (raw_h200/s35/ncu16b): each
#: of a 16-row layer's eight launches spends most of its 7-20 us in latency, a program's chain of dependent
#: loads. Written in the thirty-fifth session and compiled for sm_90 (the waits in the SASS), not yet timed on
#: the GPU: off (``DELTASTORE_MMA_PDL=1``: on)
PDL = os.environ.get("DELTASTORE_MMA_PDL", "0") not in ("", "0")
#: a register cap for the shrink (0: the compiler's choice): Nsight Compute puts its occupancy at 12-25%, bound by
#: registers (95-96 a thread at 8 and 16 rows a block: 5 programs an SM). sm_90 compile (dev VM, Triton 3.6): at 80,
#: blocks of 8 rows fit without spills (6 programs an SM), blocks of 16 spill 7 registers; at 72 both spill. Not yet
#: timed on the GPU: off (``DELTASTORE_MMA_SHRINK_MAXNREG=80``, or ``{"mma.SHRINK_MAXNREG": 80}`` in ab_mma.py)
SHRINK_MAXNREG = int(os.environ.get("DELTASTORE_MMA_SHRINK_MAXNREG", "0"))
#: a program's prologue in fewer memory round trips, as the GEMV kernels' (:data:`.triton_ops.GEMV_KNOWN_SLOT`, which
#: gates it too), where the host knows the batch's one slot (deltaset.known_slot): its tables' entries read beside the row block, and the
#: fields tested beside the count so the compiler keeps their loads above the branch that skips an empty program
#: (sm_90 SASS before: the block's slot, then the count, the exit, then the fields and the block's first position,
#: then the words and rows, then x: four round trips before the words, five before x; with this, two and three,
#: and two for x where no row is the base's alone, as its rows are then in order: no rows table read).
#: sm_90 compile (16 rows): shrink 95 -> 96 registers (108 with x's rows in order: 5 -> 4 programs an SM), the staged
#: expand 80 -> 96 (6 -> 5). Not yet timed on the GPU: off (``DELTASTORE_MMA_HOIST=1``)
HOIST = os.environ.get("DELTASTORE_MMA_HOIST", "0") not in ("", "0")

# the inline PTX, kept as module strings so the CPU tests can run them through an emulator
# (tests/kernels/test_mma_unpack.py): operands are one thread's registers, pack 4 = A elements
# (i, k), (i, k + 1), (i + 8, k), (i + 8, k + 1) (row i of the tile, k the 16-k tile's slot)
ASM_V2 = ("{ .reg .b32 t, u; shr.b32 t, $2, $6; shr.b32 u, $4, $6;"
          " lop3.b32 $0, t, 0x00030003, 0x43004300, 0xea; lop3.b32 $1, u, 0x00030003, 0x43004300, 0xea; }")
ASM_V3 = ("{ .reg .b32 t, u, h, m; shr.b32 t, $2, $10; shr.b32 h, $6, $14; prmt.b32 h, h, h, 0x0100; shl.b32 h, h, 2;"
          " lop3.b32 m, h, 0x00040004, 0x43004300, 0xea; lop3.b32 $0, t, 0x00030003, m, 0xea;"
          " shr.b32 u, $4, $10; shr.b32 h, $8, $14; prmt.b32 h, h, h, 0x0100; shl.b32 h, h, 2;"
          " lop3.b32 m, h, 0x00040004, 0x43004300, 0xea; lop3.b32 $1, u, 0x00030003, m, 0xea; }")
_V8 = ("{{ .reg .b32 t, u; shr.b32 t, $2, $6; prmt.b32 t, t, t, 0x0110; shr.b32 t, t, {nib};"
       " shr.b32 u, $4, $6; prmt.b32 u, u, u, 0x0110; shr.b32 u, u, {nib};"
       " lop3.b32 $0, t, 0x000F000F, 0x43004300, 0xea; lop3.b32 $1, u, 0x000F000F, 0x43004300, 0xea; }}")
ASM_V8_HI, ASM_V8_LO = _V8.format(nib=4), _V8.format(nib=0)
ASM_U2 = ("{ .reg .b32 lo, hi; prmt.b32 lo, $2, $3, 0x5410; prmt.b32 hi, $2, $3, 0x7632;"
          " shr.b32 lo, lo, $6; shr.b32 hi, hi, $6;"
          " lop3.b32 $0, lo, 0x00030003, 0x43004300, 0xea; lop3.b32 $1, hi, 0x00030003, 0x43004300, 0xea; }")
ASM_U3 = ("{ .reg .b32 lo, hi, a, c, u, v, m; prmt.b32 lo, $2, $3, 0x5410; prmt.b32 hi, $2, $3, 0x7632;"
          " shr.b32 lo, lo, $10; shr.b32 hi, hi, $10;"
          " shr.b32 a, $6, $14; shr.b32 c, $7, $14; prmt.b32 u, a, c, 0x5410;"
          " shl.b32 v, u, 2; lop3.b32 m, v, 0x00040004, 0x43004300, 0xea; lop3.b32 $0, lo, 0x00030003, m, 0xea;"
          " shr.b32 v, u, 6; lop3.b32 m, v, 0x00040004, 0x43004300, 0xea; lop3.b32 $1, hi, 0x00030003, m, 0xea; }")
_U8 = ("{{ .reg .b32 t, u; prmt.b32 t, $2, $3, $6; prmt.b32 u, $4, $5, $6; shr.b32 t, t, {nib}; shr.b32 u, u, {nib};"
       " lop3.b32 $0, t, 0x000F000F, 0x43004300, 0xea; lop3.b32 $1, u, 0x000F000F, 0x43004300, 0xea; }}")
ASM_U8_HI, ASM_U8_LO = _U8.format(nib=4), _U8.format(nib=0)


def perm(bits: int, s: int) -> int:
    """The k (within its 16-k tile) that the shrink's MMA slot ``s`` (0..15) holds for a tier of
    ``bits``: what the A operand's unpack produces there, so x is read at the same k."""
    if bits == 8:
        return 4 * ((s % 8) // 2) + (s % 2) + 2 * (s // 8)
    return s // 2 + 8 * (s % 2)


if HAVE_GLUON:
    _AV2, _AV3, _AV8H, _AV8L = gl.constexpr(ASM_V2), gl.constexpr(ASM_V3), gl.constexpr(ASM_V8_HI), gl.constexpr(ASM_V8_LO)
    _AU2, _AU3, _AU8H, _AU8L = gl.constexpr(ASM_U2), gl.constexpr(ASM_U3), gl.constexpr(ASM_U8_HI), gl.constexpr(ASM_U8_LO)

    @gluon.jit
    def _asm1(asm: gl.constexpr, w, sh):
        return gl.inline_asm_elementwise(asm, "=r,=r,r,r,r,r,r,r,r,r", [w, sh], dtype=gl.bfloat16, is_pure=True, pack=4)

    @gluon.jit
    def _asm2(asm: gl.constexpr, w, h, sh, hb):
        return gl.inline_asm_elementwise(asm, "=r,=r" + ",r" * 16, [w, h, sh, hb], dtype=gl.bfloat16, is_pure=True, pack=4)

    @gluon.jit
    def _gdc_wait():
        """Wait until the grid this launch depends on (PDL) is done and its writes visible (a no-op
        when launched without PDL): griddepcontrol.wait, as triton.language.extra.cuda.gdc_wait."""
        gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _gdc_launch():
        """Let the launch that depends on this grid (PDL) start once every program of it has started."""
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False,
                                  pack=1)

    @gluon.jit
    def _perm_k(s, BITS: gl.constexpr):
        """k of MMA slot s (any shape; the tile's 16-k block kept): :func:`perm` in the kernel."""
        u = s % 16
        if BITS == 8:
            p = 4 * ((u % 8) // 2) + (u % 2) + 2 * (u // 8)
        else:
            p = u // 2 + 8 * (u % 2)
        return (s - u) + p

    @gluon.jit
    def _shrink_group(words_ptr, wrow, r_ok, x_ptr, xoff, m_ok, k0, K, RW, part, xs,
                      BITS: gl.constexpr, BLOCK_R: gl.constexpr, BM: gl.constexpr, KS: gl.constexpr, num_warps: gl.constexpr):
        """(part, xs) plus KS more k from k0: the float32 MMA sums of the tile's components against
        the block's rows (with 128 + q, or 16 (128 + h) + 128 + l at 8 bits) and the float32 sums of
        the bf16 x the MMA saw, per row (KS: :data:`SHRINK_KS`, a group or half of one a step)."""
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
        aL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        bL: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        xL: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [1, num_warps], [1, 0])
        # B: x^T (KS, BM) at the permuted k
        sb = gl.arange(0, KS, layout=gl.SliceLayout(1, bL))
        kb = k0 + _perm_k(sb, BITS)
        b = gl.load(x_ptr + gl.convert_layout(xoff, gl.SliceLayout(0, bL))[None, :] + kb[:, None],
                    mask=gl.convert_layout(m_ok, gl.SliceLayout(0, bL))[None, :] & (kb < K)[:, None], other=0.0).to(gl.bfloat16)
        kx = k0 + gl.arange(0, KS, layout=gl.SliceLayout(0, xL))
        xt = gl.load(x_ptr + gl.convert_layout(xoff, gl.SliceLayout(1, xL))[:, None] + kx[None, :],
                     mask=gl.convert_layout(m_ok, gl.SliceLayout(1, xL))[:, None] & (kx < K)[None, :], other=0.0)
        xs += gl.convert_layout(gl.sum(xt.to(gl.bfloat16).to(gl.float32), axis=1), gl.SliceLayout(0, mma))
        # A: (BLOCK_R, KS) words and shifts per element
        sa = gl.arange(0, KS, layout=gl.SliceLayout(0, aL))
        u = sa % 16
        ok = gl.convert_layout(r_ok, gl.SliceLayout(1, aL))[:, None]
        wr = gl.convert_layout(wrow, gl.SliceLayout(1, aL))[:, None]
        if BITS == 2:
            wi = (k0 // 16) + sa // 16
            w = gl.load(words_ptr + wr + wi[None, :], mask=ok & (wi < RW)[None, :], other=0)
            sh = gl.full([BLOCK_R, KS], 0, gl.int32, aL) + (2 * (u // 2))[None, :]
            part = mma_v2(_asm1(_AV2, w, sh), b, part)
        elif BITS == 3:
            c32 = (k0 + 16 * (sa // 16)) // 32
            wl = 3 * c32 + (sa // 16) % 2
            wh = 3 * c32 + 2
            w = gl.load(words_ptr + wr + wl[None, :], mask=ok & (wl < RW)[None, :], other=0)
            h = gl.load(words_ptr + wr + wh[None, :], mask=ok & (wh < RW)[None, :], other=0)
            sh = gl.full([BLOCK_R, KS], 0, gl.int32, aL) + (2 * (u // 2))[None, :]
            hb = gl.full([BLOCK_R, KS], 0, gl.int32, aL) + (16 * ((sa // 16) % 2) + u // 2)[None, :]
            part = mma_v2(_asm2(_AV3, w, h, sh, hb), b, part)
        else:
            wi = (k0 // 4) + 4 * (sa // 16) + (u % 8) // 2
            w = gl.load(words_ptr + wr + wi[None, :], mask=ok & (wi < RW)[None, :], other=0)
            sh = gl.full([BLOCK_R, KS], 0, gl.int32, aL) + (16 * (u // 8))[None, :]
            hi = mma_v2(_asm1(_AV8H, w, sh), b, gl.zeros([BLOCK_R, BM], gl.float32, mma))
            part = mma_v2(_asm1(_AV8L, w, sh), b, hi * 16.0 + part)
        return part, xs

    @gluon.jit
    def _shrink_group2(words_ptr, wrow, r_ok, x_ptr, xoff, m_ok, k0, K, RW, part, xs, bsm,
                       BLOCK_R: gl.constexpr, BM: gl.constexpr, LW: gl.constexpr, L3: gl.constexpr, XL: gl.constexpr,
                       num_warps: gl.constexpr):
        """:func:`_shrink_group` of a 2-bit tier and one group of 128 k with fewer, wider loads (ncu on
        the H200: the per-element loads kept L1 at 86-92% of its throughput with DRAM at 8%). Words: a
        row's 8 words of the group in one [BLOCK_R, 8] load (LW: each lane its rows' words, the quad's
        lanes the same), turned into the A operand through an [BLOCK_R, 8, 16] view (L3) whose reshape
        is the MMA's A layout (no data movement: checked when it compiles). x: the group's [BM, 128]
        tile in natural order (XL: 8 contiguous a thread), relabeled in registers to the k order the
        unpack pairs (slot 2a + b of each 16 holds k = a + 8b), then through shared memory ``bsm``
        into the B layout. Vector loads where the caller's ``wrow`` and ``xoff`` allow them."""
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
        aL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        bL: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        wi = k0 // 16 + gl.arange(0, 8, layout=gl.SliceLayout(0, LW))
        wp = words_ptr + gl.convert_layout(wrow, gl.SliceLayout(1, LW))[:, None] + wi[None, :]
        okw = gl.convert_layout(r_ok, gl.SliceLayout(1, LW))[:, None]
        kx = k0 + gl.arange(0, 128, layout=gl.SliceLayout(0, XL))
        xp = x_ptr + gl.convert_layout(xoff, gl.SliceLayout(1, XL))[:, None] + kx[None, :]
        okx = gl.convert_layout(m_ok, gl.SliceLayout(1, XL))[:, None]
        if k0 + 128 <= K:  # a whole group: masks constant along k (vector loads)
            w = gl.load(wp, mask=okw, other=0)
            xn = gl.load(xp, mask=okx, other=0.0).to(gl.bfloat16)
        else:
            w = gl.load(wp, mask=okw & (wi < RW)[None, :], other=0)
            xn = gl.load(xp, mask=okx & (kx < K)[None, :], other=0.0).to(gl.bfloat16)
        xs += gl.convert_layout(gl.sum(xn.to(gl.float32), axis=1), gl.SliceLayout(0, mma))
        xq = gl.permute(gl.reshape(gl.permute(gl.reshape(xn, [BM, 8, 2, 8]), (0, 1, 3, 2)), [BM, 128]), (1, 0))
        gl.thread_barrier()  # every warp has read the previous group's B
        bsm.store(xq)
        gl.thread_barrier()
        b = bsm.load(bL)
        u = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(0, L3)))
        zero3 = gl.zeros([BLOCK_R, 8, 16], gl.int32, L3)
        sh3 = gl.expand_dims(gl.expand_dims(2 * ((u // 2) + (u % 2) * 8), 0), 0) + zero3
        w3 = gl.expand_dims(gl.convert_layout(w, gl.SliceLayout(2, L3)), 2) + zero3
        a = gl.convert_layout(gl.reshape(_asm1(_AV2, w3, sh3), [BLOCK_R, 128]), aL, assert_trivial=True)
        return mma_v2(a, b, part), xs

    @gluon.jit
    def _work(blocks_ptr, blk, counts_ptr, table_ptr, n_slices, most, sl, j, s_known, width: gl.constexpr, KNOWN: gl.constexpr):
        """(slot or -1, first sorted position, rows) of row block ``blk`` (deltaset.plan_blocks),
        how many rows the table holds for that slot and slice, and the address of row ``j`` of them
        (the tables are padded, so it is readable either way). KNOWN: every block's slot is ``s_known``
        or -1 (deltaset.known_slot), so the table is read beside the block, not after it."""
        slot = gl.load(blocks_ptr + 3 * blk)
        pos0 = gl.load(blocks_ptr + 3 * blk + 1)
        nrows = gl.load(blocks_ptr + 3 * blk + 2)
        if KNOWN:
            s = s_known
        else:
            s = gl.maximum(slot, 0)
        have = gl.load(counts_ptr + s * n_slices + sl)
        return slot, pos0, nrows, have, table_ptr + ((s * n_slices + sl) * most + j) * width

    @gluon.jit
    def _shrink_groups(words_ptr, wrow, r, r_ok, x_ptr, xoff, m, m_ok, scales_ptr, zeros_ptr, v_sz, off, bits, g0, G, K, RW, bsm,
                       BLOCK_R: gl.constexpr, BM: gl.constexpr, GPS: gl.constexpr, KS: gl.constexpr, HAS2: gl.constexpr,
                       HAS3: gl.constexpr, HAS8: gl.constexpr, COMPACT: gl.constexpr, LW: gl.constexpr, L3: gl.constexpr,
                       XL: gl.constexpr, num_warps: gl.constexpr):
        """A shrink program's float32 sums over its groups g0 .. (scales and zero points applied): one
        body for the call sites of :func:`_shrink_kernel` (with and without the alignment hints)."""
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
        mL: gl.constexpr = gl.SliceLayout(0, mma)
        acc = gl.zeros([BLOCK_R, BM], gl.float32, mma)
        for g in range(g0, gl.minimum(g0 + GPS, G)):
            k0 = g * 128
            part = gl.zeros([BLOCK_R, BM], gl.float32, mma)
            xs = gl.zeros([BM], gl.float32, mL)
            if COMPACT:
                if bits == 2:
                    part, xs = _shrink_group2(words_ptr, wrow, r_ok, x_ptr, xoff, m_ok, k0, K, RW, part, xs, bsm,
                                              BLOCK_R, BM, LW, L3, XL, num_warps)
            for h in gl.static_range(128 // KS):
                if HAS2 and not COMPACT:
                    if bits == 2:
                        part, xs = _shrink_group(words_ptr, wrow, r_ok, x_ptr, xoff, m_ok, k0 + h * KS, K, RW, part, xs,
                                                 2, BLOCK_R, BM, KS, num_warps)
                if HAS3:
                    if bits == 3:
                        part, xs = _shrink_group(words_ptr, wrow, r_ok, x_ptr, xoff, m_ok, k0 + h * KS, K, RW, part, xs,
                                                 3, BLOCK_R, BM, KS, num_warps)
                if HAS8:
                    if bits == 8:
                        part, xs = _shrink_group(words_ptr, wrow, r_ok, x_ptr, xoff, m_ok, k0 + h * KS, K, RW, part, xs,
                                                 8, BLOCK_R, BM, KS, num_warps)
            sc = gl.load(scales_ptr + v_sz + r * G + g, mask=r_ok, other=0.0).to(gl.float32)
            zq = gl.load(zeros_ptr + v_sz + r * G + g, mask=r_ok, other=0.0).to(gl.float32) + off
            acc += sc[:, None] * (part - zq[:, None] * xs[None, :])
        return acc

    @gluon.jit
    def _shrink_kernel(x_ptr, z_ptr, words_ptr, scales_ptr, zeros_ptr, svals_ptr, tiles_ptr, ntiles_ptr, rows_ptr, blocks_ptr,
                       K, stride_xm, ZC, n_slices, T_max, s_known,
                       NFIELD: gl.constexpr, BM: gl.constexpr, GPS: gl.constexpr, TILES: gl.constexpr, KS: gl.constexpr,
                       HAS2: gl.constexpr, HAS3: gl.constexpr, HAS8: gl.constexpr, COMPACT: gl.constexpr,
                       LW: gl.constexpr, L3: gl.constexpr, XL: gl.constexpr, XS: gl.constexpr,
                       HOIST: gl.constexpr, IDENT: gl.constexpr, num_warps: gl.constexpr, USE_GDC: gl.constexpr = False):
        """z[pos, zcol + r] += S[r] sum over this program's groups of x[row(pos)] . V^[r]: program
        (slice and tile, groups GPS g .. of the input, row block of one slot). USE_GDC: the expand launched
        after it as a dependent (PDL, :data:`PDL`) may start once every program here has started."""
        if USE_GDC:
            _gdc_launch()
        BLOCK_R: gl.constexpr = 16 * TILES * num_warps
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
        pid0 = gl.program_id(0)
        pid_k = gl.program_id(1)
        blk = gl.program_id(2)
        sl = pid0 // T_max
        t = pid0 % T_max
        slot, pos0, nrows, nt, tb = _work(blocks_ptr, blk, ntiles_ptr, tiles_ptr, n_slices, T_max, sl, t, s_known, NFIELD, HOIST)
        v_q = gl.load(tb + 0)
        v_sz = gl.load(tb + 1).to(gl.int32)
        s_off = gl.load(tb + 4).to(gl.int32)
        bits = gl.load(tb + 5).to(gl.int32)
        count = gl.load(tb + 6).to(gl.int32)
        zcol = gl.load(tb + 7).to(gl.int32)
        dsh = gl.load(tb + NFIELD - 1).to(gl.int32)  # virtual rows a component, as a shift (2-bit planes)
        G = (K + 127) // 128
        g0 = pid_k * GPS
        go = (slot >= 0) & (t < nt) & (g0 < G)
        if HOIST:  # every field >= 0 in the tables the DeltaSet builds: the test keeps their loads before the branch,
            # beside the count's, where the compiler sinks them below it, a round trip later (:data:`HOIST`)
            go = go & ((v_q | (v_sz | s_off | bits | count | zcol | dsh | pos0 | nrows).to(gl.int64)) >= 0)
        if go:
            RW = bits * ((K + 31) // 32)
            off = 128.0 + 2048.0 * (bits == 8).to(gl.float32)  # 16 (128 + h) + (128 + l) = q + 2176 at 8 bits
            rL: gl.constexpr = gl.SliceLayout(1, mma)
            mL: gl.constexpr = gl.SliceLayout(0, mma)
            r = gl.arange(0, BLOCK_R, layout=rL)
            r_ok = r < count
            wrow = v_q + r.to(gl.int64) * RW
            m = gl.arange(0, BM, layout=mL)
            m_ok = m < nrows
            if IDENT:  # every row the known slot's, in order: sorted position p is row p (no table read)
                xrow = pos0 + m
            else:
                xrow = gl.load(rows_ptr + pos0 + m, mask=m_ok, other=0)
            xoff = xrow.to(gl.int64) * stride_xm
            if COMPACT:
                bsm = gl.allocate_shared_memory(gl.bfloat16, [128, BM], XS)
                if (bits == 2) & (RW % 4 == 0) & (v_q % 4 == 0):  # every row's words 16-byte aligned: vector loads
                    # (x // 4) * 4: a new value the compiler knows to be a multiple of 4 (gl.multiple_of would
                    # mark v_q and RW themselves, for every use: the unaligned calls too)
                    acc = _shrink_groups(words_ptr, (v_q // 4) * 4 + r.to(gl.int64) * ((RW // 4) * 4), r, r_ok,
                                         x_ptr, xoff, m, m_ok, scales_ptr, zeros_ptr, v_sz, off, bits, g0, G, K, RW, bsm,
                                         BLOCK_R, BM, GPS, KS, HAS2, HAS3, HAS8, COMPACT, LW, L3, XL, num_warps)
                else:
                    acc = _shrink_groups(words_ptr, wrow, r, r_ok, x_ptr, xoff, m, m_ok, scales_ptr, zeros_ptr, v_sz, off, bits,
                                         g0, G, K, RW, bsm, BLOCK_R, BM, GPS, KS, HAS2, HAS3, HAS8, COMPACT, LW, L3, XL, num_warps)
            else:
                acc = _shrink_groups(words_ptr, wrow, r, r_ok, x_ptr, xoff, m, m_ok, scales_ptr, zeros_ptr, v_sz, off, bits,
                                     g0, G, K, RW, None, BLOCK_R, BM, GPS, KS, HAS2, HAS3, HAS8, COMPACT, LW, L3, XL, num_warps)
            acc = acc * gl.load(svals_ptr + s_off + (r >> dsh), mask=r_ok, other=0.0)[:, None]
            zp = z_ptr + (pos0 + m).to(gl.int64)[None, :] * ZC + (zcol + (r >> dsh))[:, None]  # (planes: atomics sum them)
            gl.atomic_add(zp, acc, mask=m_ok[None, :] & r_ok[:, None], sem="relaxed")

    @gluon.jit
    def _expand_step(words_ptr, wrow, n, n_ok, r0, count, RW, BITS: gl.constexpr, NIB: gl.constexpr,
                     BLOCK_N: gl.constexpr, ES: gl.constexpr, num_warps: gl.constexpr):
        """The A operand (BLOCK_N outputs, ES components r0 ..) of one tier as bf16 128 + q (at 8
        bits the nibble NIB: 4 high, 0 low)."""
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
        aL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        rr = r0 + gl.arange(0, ES, layout=gl.SliceLayout(0, aL))
        na = gl.convert_layout(n, gl.SliceLayout(1, aL))
        oka = gl.convert_layout(n_ok, gl.SliceLayout(1, aL))[:, None] & (rr < count)[None, :]
        base = wrow + rr.to(gl.int64)[None, :] * RW
        if BITS == 2:
            w = gl.load(words_ptr + base + (na // 16)[:, None], mask=oka, other=0)
            sh = gl.full([BLOCK_N, ES], 0, gl.int32, aL) + (2 * (na % 8))[:, None]
            return _asm1(_AU2, w, sh)
        elif BITS == 3:
            c3 = 3 * (na // 32)
            w = gl.load(words_ptr + base + (c3 + (na % 32) // 16)[:, None], mask=oka, other=0)
            h = gl.load(words_ptr + base + (c3 + 2)[:, None], mask=oka, other=0)
            sh = gl.full([BLOCK_N, ES], 0, gl.int32, aL) + (2 * (na % 8))[:, None]
            hb = gl.full([BLOCK_N, ES], 0, gl.int32, aL) + (na % 32)[:, None]
            return _asm2(_AU3, w, h, sh, hb)
        else:
            w = gl.load(words_ptr + base + (na // 4)[:, None], mask=oka, other=0)
            byte = na % 4
            sel = byte + (byte << 4) + ((byte + 4) << 8) + ((byte + 4) << 12)
            sh = gl.full([BLOCK_N, ES], 0, gl.int32, aL) + sel[:, None]
            if NIB == 4:
                return _asm1(_AU8H, w, sh)
            else:
                return _asm1(_AU8L, w, sh)

    @gluon.jit
    def _item_words(words_ptr, u_q, g, RW, count, wsm, CH: gl.constexpr, EWL: gl.constexpr):
        """An item's [CH, 8] words of output group ``g`` (a component's 8 words of the group are
        contiguous: vector loads where the caller's ``u_q`` and ``RW`` allow them) into ``wsm`` as CH / 16
        steps of [8, 16] (the layout :func:`_expand_item2`'s A operand view reads)."""
        rw = gl.arange(0, CH, layout=gl.SliceLayout(1, EWL))
        wi = 8 * g + gl.arange(0, 8, layout=gl.SliceLayout(0, EWL))
        wp = words_ptr + u_q + rw.to(gl.int64)[:, None] * RW + wi[None, :]
        if 8 * g + 8 <= RW:  # the group's 8 words inside the row: masks constant along them (vector loads)
            wt = gl.load(wp, mask=(rw < count)[:, None], other=0)
        else:
            wt = gl.load(wp, mask=(rw < count)[:, None] & (wi < RW)[None, :], other=0)
        wsm.store(gl.reshape(gl.permute(gl.reshape(wt, [CH // 16, 16, 8]), (0, 2, 1)), [CH // 2, 16]))

    @gluon.jit
    def _item_a_shifts(E3: gl.constexpr):
        """(zeros, shifts) of the [8 words, 16 outputs, 16 components] view E3 that
        :func:`_item_step_a` unpacks with: output n's 2-bit field of its word starts at bit 2 (n % 8)."""
        zero3 = gl.zeros([8, 16, 16], gl.int32, E3)
        n_in = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(2, E3)))
        return zero3, gl.expand_dims(gl.expand_dims(2 * (n_in % 8), 0), 2) + zero3

    @gluon.jit
    def _item_step_a(wsm, i: gl.constexpr, zero3, sh3, BLOCK_N: gl.constexpr, E3: gl.constexpr, aL: gl.constexpr):
        """Step i's MMA A operand (BLOCK_N outputs x 16 components of 2-bit codes) from its [8, 16] words
        slice of ``wsm`` through the view E3, whose reshape is the A layout (no data movement: checked
        when it compiles). i is a constant, so the slice takes a constant offset."""
        w3 = gl.expand_dims(wsm.slice(8 * i, 8).load(gl.SliceLayout(1, E3)), 1) + zero3
        return gl.convert_layout(gl.reshape(_asm1(_AU2, w3, sh3), [BLOCK_N, 16]), aL, assert_trivial=True)

    @gluon.jit
    def _item_col(ptr, u_sz, g, G, count, CH: gl.constexpr, num_warps: gl.constexpr):
        """The item's components' fp16 values of output group ``g`` in a table of G columns (scales or
        zero points: 2-byte loads G apart), one load a thread in a 1-D layout over the CH components,
        0 past ``count``."""
        V1: gl.constexpr = gl.BlockedLayout([CH // (32 * num_warps)], [32], [num_warps], [0])
        r1 = gl.arange(0, CH, layout=V1)
        return gl.load(ptr + u_sz + r1 * G + g, mask=r1 < count, other=0.0)

    @gluon.jit
    def _expand_item2(words_ptr, scales_ptr, zeros_ptr, zbase, ZC, nrows, dsh, u_q, u_sz, g, G, RW, count, wsm, ssm, qsm,
                      BLOCK_N: gl.constexpr, BM: gl.constexpr, CH: gl.constexpr, EWL: gl.constexpr, E3: gl.constexpr,
                      STAGE: gl.constexpr, ZS: gl.constexpr, USE_GDC: gl.constexpr, num_warps: gl.constexpr):
        """(acc, correction) of a 2-bit item's components for one group of 128 outputs with its words
        read once (ncu on the H200: the per-step loads, each word loaded by the 8 lanes that share it,
        kept L1 at 92% with DRAM at 7%): the item's [CH, 8] words tile (a component's 8 words of the
        group are contiguous: vector loads where aligned), kept in shared memory as CH / 16 steps of
        [8, 16], with the item's scales and zero points; each step's A operand made from an [8, 16]
        slice through the [8 words, 16 outputs, 16 components] view E3, whose reshape is the MMA's A
        layout (no data movement: checked when it compiles). z: the block's first row's at the item's
        first column ``zbase``, rows ``ZC`` apart, ``nrows`` of them.
        STAGE (:data:`STAGE_Z`): the B operand z S sc (bf16) of every component and row made once into
        shared memory with the correction (:func:`_expand_item2_staged`); else each step loads its z
        (float32, global) and scales and rounds it."""
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
        aL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        bL: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        if STAGE:
            return _expand_item2_staged(words_ptr, scales_ptr, zeros_ptr, zbase, ZC, nrows, dsh, u_q, u_sz, g, G, RW, count, wsm,
                                        BLOCK_N, BM, CH, EWL, E3, ZS, USE_GDC, num_warps)
        mb = gl.arange(0, BM, layout=gl.SliceLayout(0, bL))
        mb_ok = mb < nrows
        zrow = (zbase + mb.to(gl.int64) * ZC)[None, :]  # (1, BM): a component's z is zrow + (r >> dsh)
        _item_words(words_ptr, u_q, g, RW, count, wsm, CH, EWL)
        ssm.store(_item_col(scales_ptr, u_sz, g, G, count, CH, num_warps))
        qsm.store(_item_col(zeros_ptr, u_sz, g, G, count, CH, num_warps))
        if USE_GDC:  # (PDL: z complete after this)
            _gdc_wait()
        gl.thread_barrier()
        zero3, sh3 = _item_a_shifts(E3)
        rb = gl.arange(0, 16, layout=gl.SliceLayout(1, bL))
        acc = gl.zeros([BLOCK_N, BM], gl.float32, mma)
        corr = gl.zeros([16, BM], gl.float32, bL)
        for i in gl.static_range(CH // 16):  # (unrolled: shared-memory slices take constant offsets)
            if 16 * i < count:
                a = _item_step_a(wsm, i, zero3, sh3, BLOCK_N, E3, aL)
                r_ok = (16 * i + rb) < count
                zt = gl.load(zrow + ((16 * i + rb) >> dsh)[:, None], mask=mb_ok[None, :] & r_ok[:, None], other=0.0)
                sc = ssm.slice(16 * i, 16).load(gl.SliceLayout(1, bL)).to(gl.float32)
                zq = qsm.slice(16 * i, 16).load(gl.SliceLayout(1, bL)).to(gl.float32) + 128.0
                zb = (zt * sc[:, None]).to(gl.bfloat16)
                corr += zb.to(gl.float32) * zq[:, None]  # summed as rounded (see _expand_kernel)
                acc = mma_v2(a, zb, acc)
        return acc, gl.convert_layout(gl.sum(corr, axis=0), gl.SliceLayout(0, mma))

    @gluon.jit
    def _item_scales(scales_ptr, zeros_ptr, u_sz, g, G, count, CH: gl.constexpr, ZL: gl.constexpr, num_warps: gl.constexpr):
        """The item's components' scale and zero point + 128 of output group ``g`` (G apart: 2-byte loads),
        one load a thread, then to the lanes of ``ZL`` that use them, as float32."""
        sc = gl.convert_layout(_item_col(scales_ptr, u_sz, g, G, count, CH, num_warps), gl.SliceLayout(1, ZL)).to(gl.float32)
        zq = gl.convert_layout(_item_col(zeros_ptr, u_sz, g, G, count, CH, num_warps), gl.SliceLayout(1, ZL)).to(gl.float32)
        return sc, zq + 128.0

    @gluon.jit
    def _expand_item2_staged(words_ptr, scales_ptr, zeros_ptr, zbase, ZC, nrows, dsh, u_q, u_sz, g, G, RW, count, wsm,
                             BLOCK_N: gl.constexpr, BM: gl.constexpr, CH: gl.constexpr, EWL: gl.constexpr, E3: gl.constexpr,
                             ZS: gl.constexpr, USE_GDC: gl.constexpr, num_warps: gl.constexpr):
        """:func:`_expand_item2` with its B operand made once: the item's [CH, BM] z (a virtual
        component r reads column r >> dsh) loaded with the components along the lanes, times each
        component's scale of this output group, rounded to bf16 into shared memory (``zsm``); the
        correction (128 + zp) * the rounded operand summed over the components once; each step's MMA
        reads its [16, BM] slice. The operand's values are the per-step path's (the same product rounded
        once); the correction's float32 sum runs in another order."""
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
        aL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        bL: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        # [CH, BM]: a row's components over 8 lanes, 4 contiguous a thread (16-byte loads, the component sum
        # inside a warp), the rows over the other lanes and the warps
        ZL: gl.constexpr = gl.BlockedLayout([4, 1], [8, 4], [1, num_warps], [0, 1])
        _item_words(words_ptr, u_q, g, RW, count, wsm, CH, EWL)
        if USE_GDC:  # launched beside the shrink's tail (PDL): what does not depend on it first, then wait for its z
            sc, zq = _item_scales(scales_ptr, zeros_ptr, u_sz, g, G, count, CH, ZL, num_warps)
            _gdc_wait()
        rz = gl.arange(0, CH, layout=gl.SliceLayout(1, ZL))
        rz_ok = rz < count
        mz = gl.arange(0, BM, layout=gl.SliceLayout(0, ZL))
        zt = gl.load(zbase + mz.to(gl.int64)[None, :] * ZC + (rz >> dsh)[:, None], mask=(mz < nrows)[None, :] & rz_ok[:, None],
                     other=0.0)
        if not USE_GDC:  # (after z: in this order the sm_90 compile takes 80 registers at 16 rows, 86 the other way)
            sc, zq = _item_scales(scales_ptr, zeros_ptr, u_sz, g, G, count, CH, ZL, num_warps)
        zb = (zt * sc[:, None]).to(gl.bfloat16)
        corr = gl.sum(zb.to(gl.float32) * zq[:, None], axis=0)  # summed as rounded (see _expand_kernel)
        zsm = gl.allocate_shared_memory(gl.bfloat16, [CH, BM], ZS)
        zsm.store(zb)
        gl.thread_barrier()
        zero3, sh3 = _item_a_shifts(E3)
        acc = gl.zeros([BLOCK_N, BM], gl.float32, mma)
        for i in gl.static_range(CH // 16):  # (unrolled: shared-memory slices take constant offsets)
            if 16 * i < count:
                a = _item_step_a(wsm, i, zero3, sh3, BLOCK_N, E3, aL)
                acc = mma_v2(a, zsm.slice(16 * i, 16).load(bL), acc)
        return acc, gl.convert_layout(corr, gl.SliceLayout(0, mma))

    @gluon.jit
    def _expand_loop(words_ptr, scales_ptr, zeros_ptr, zrow, dsh, mb_ok, u_q, u_sz, g, G, RW, count, bits, n, n_ok,
                     BLOCK_N: gl.constexpr, BM: gl.constexpr, ES: gl.constexpr, HAS2: gl.constexpr, HAS3: gl.constexpr,
                     HAS8: gl.constexpr, USE_GDC: gl.constexpr, num_warps: gl.constexpr):
        """(acc, correction) of an item's components, ES a step, each step's words loaded per element
        (every width; :func:`_expand_item2` reads a 2-bit item's words once). USE_GDC: first waits for
        the shrink launched before it (PDL) to be done."""
        if USE_GDC:
            _gdc_wait()
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
        bL: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        rb = gl.arange(0, ES, layout=gl.SliceLayout(1, bL))
        acc = gl.zeros([BLOCK_N, BM], gl.float32, mma)
        corr = gl.zeros([ES, BM], gl.float32, bL)
        off = 128.0 + 2048.0 * (bits == 8).to(gl.float32)
        for r0 in range(0, count, ES):  # ES components a step: its loads issued together
            r_ok = (r0 + rb) < count
            zt = gl.load(zrow + ((r0 + rb) >> dsh)[:, None], mask=mb_ok[None, :] & r_ok[:, None], other=0.0)
            sc = gl.load(scales_ptr + u_sz + (r0 + rb) * G + g, mask=r_ok, other=0.0).to(gl.float32)
            zq = gl.load(zeros_ptr + u_sz + (r0 + rb) * G + g, mask=r_ok, other=0.0).to(gl.float32) + off
            zb = (zt * sc[:, None]).to(gl.bfloat16)
            # summed as rounded, so the operand's 128 + q and this 128 + zp cancel exactly
            corr += zb.to(gl.float32) * zq[:, None]
            if HAS2:
                if bits == 2:
                    acc = mma_v2(_expand_step(words_ptr, u_q, n, n_ok, r0, count, RW, 2, 0, BLOCK_N, ES, num_warps), zb, acc)
            if HAS3:
                if bits == 3:
                    acc = mma_v2(_expand_step(words_ptr, u_q, n, n_ok, r0, count, RW, 3, 0, BLOCK_N, ES, num_warps), zb, acc)
            if HAS8:
                if bits == 8:
                    acc = mma_v2(_expand_step(words_ptr, u_q, n, n_ok, r0, count, RW, 8, 4, BLOCK_N, ES, num_warps),
                                 (zb.to(gl.float32) * 16.0).to(gl.bfloat16), acc)
                    acc = mma_v2(_expand_step(words_ptr, u_q, n, n_ok, r0, count, RW, 8, 0, BLOCK_N, ES, num_warps), zb, acc)
        return acc, gl.convert_layout(gl.sum(corr, axis=0), gl.SliceLayout(0, mma))

    @gluon.jit
    def _expand_kernel(z_ptr, d_ptr, words_ptr, scales_ptr, zeros_ptr, items_ptr, nitems_ptr, rows_ptr, blocks_ptr,
                       mout_ptr, coloff_ptr, ZC, stride_dm, n_slices, I_max, s_known,
                       NFI: gl.constexpr, BM: gl.constexpr, TILES: gl.constexpr, ES: gl.constexpr,
                       HAS2: gl.constexpr, HAS3: gl.constexpr, HAS8: gl.constexpr, COMPACT: gl.constexpr,
                       CH: gl.constexpr, EWL: gl.constexpr, E3: gl.constexpr, STAGE: gl.constexpr, ZS: gl.constexpr,
                       HOIST: gl.constexpr, IDENT: gl.constexpr, num_warps: gl.constexpr, USE_GDC: gl.constexpr = False):
        """d[row(pos), col0 + n] += sum over the item's components of z[pos, zcol + r] U^[n, r]
        (z already carries S): program (128 outputs of a slice, item of one slot-slice, row block)."""
        BLOCK_N: gl.constexpr = 16 * TILES * num_warps
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
        bL: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        pid_n = gl.program_id(0)
        pj = gl.program_id(1)
        blk = gl.program_id(2)
        sl = pj // I_max
        i = pj % I_max
        slot, pos0, nrows, ni, ib = _work(blocks_ptr, blk, nitems_ptr, items_ptr, n_slices, I_max, sl, i, s_known, NFI, HOIST)
        u_q = gl.load(ib + 2)
        u_sz = gl.load(ib + 3).to(gl.int32)
        bits = gl.load(ib + 4).to(gl.int32)
        count = gl.load(ib + 5).to(gl.int32)
        zcol = gl.load(ib + 6).to(gl.int32)
        dsh = gl.load(ib + NFI - 1).to(gl.int32)  # virtual components a component, as a shift (2-bit planes)
        m_s = gl.load(mout_ptr + sl)
        col0 = gl.load(coloff_ptr + sl)
        n0 = pid_n * BLOCK_N
        go = (slot >= 0) & (i < ni) & (n0 < m_s)
        if HOIST:  # (as the shrink's)
            go = go & ((u_q | (u_sz | bits | count | zcol | dsh | pos0 | nrows | col0).to(gl.int64)) >= 0)
        if go:
            RW = bits * ((m_s + 31) // 32)
            G = (m_s + 127) // 128
            g = n0 // 128
            nL: gl.constexpr = gl.SliceLayout(1, mma)
            mL: gl.constexpr = gl.SliceLayout(0, mma)
            n = n0 + gl.arange(0, BLOCK_N, layout=nL)
            n_ok = n < m_s
            mb = gl.arange(0, BM, layout=gl.SliceLayout(0, bL))
            mb_ok = mb < nrows
            zbase = z_ptr + pos0.to(gl.int64) * ZC + zcol  # the block's first row's z at the item's first column
            zrow = (zbase + mb.to(gl.int64) * ZC)[None, :]  # (1, BM): a component's z is zrow + (r >> dsh)
            if COMPACT:
                if bits == 2:
                    wsm = gl.allocate_shared_memory(gl.int32, [CH // 2, 16], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
                    ssm = gl.allocate_shared_memory(gl.float16, [CH], gl.SwizzledSharedLayout(1, 1, 1, [0]))
                    qsm = gl.allocate_shared_memory(gl.float16, [CH], gl.SwizzledSharedLayout(1, 1, 1, [0]))
                    if (u_q % 4 == 0) & (RW % 4 == 0):  # every component's words 16-byte aligned: vector loads (as in the shrink)
                        acc, c = _expand_item2(words_ptr, scales_ptr, zeros_ptr, zbase, ZC, nrows, dsh, (u_q // 4) * 4, u_sz, g,
                                               G, (RW // 4) * 4, count, wsm, ssm, qsm, BLOCK_N, BM, CH, EWL, E3, STAGE, ZS, USE_GDC, num_warps)
                    else:
                        acc, c = _expand_item2(words_ptr, scales_ptr, zeros_ptr, zbase, ZC, nrows, dsh, u_q, u_sz, g, G, RW, count,
                                               wsm, ssm, qsm, BLOCK_N, BM, CH, EWL, E3, STAGE, ZS, USE_GDC, num_warps)
                else:
                    acc, c = _expand_loop(words_ptr, scales_ptr, zeros_ptr, zrow, dsh, mb_ok, u_q, u_sz, g, G, RW, count, bits, n,
                                          n_ok, BLOCK_N, BM, ES, HAS2, HAS3, HAS8, USE_GDC, num_warps)
            else:
                acc, c = _expand_loop(words_ptr, scales_ptr, zeros_ptr, zrow, dsh, mb_ok, u_q, u_sz, g, G, RW, count, bits, n,
                                      n_ok, BLOCK_N, BM, ES, HAS2, HAS3, HAS8, USE_GDC, num_warps)
            acc = acc - c[None, :]
            m = gl.arange(0, BM, layout=mL)
            m_ok = m < nrows
            if IDENT:  # (as the shrink's)
                drow = (pos0 + m).to(gl.int64)
            else:
                drow = gl.load(rows_ptr + pos0 + m, mask=m_ok, other=0).to(gl.int64)
            dp = d_ptr + drow[None, :] * stride_dm + (col0 + n)[:, None]
            gl.atomic_add(dp, acc, mask=m_ok[None, :] & n_ok[:, None], sem="relaxed")


@functools.lru_cache(maxsize=None)
def compact_layouts(block_r: int, num_warps: int = 4, swizzle: bool = True, pairs_bm: int = 0) -> Mapping:
    """The layouts :func:`_shrink_group2` takes for tiles of ``block_r`` components (64 or 128 on 4
    warps, as the MMA layout spreads them): LW, a [block_r, 8] words tile with each lane's rows
    and its quad's lanes sharing them; L3, the [block_r, 8 words, 16 fields] view of the A operand
    (the MMA's A layout with its k split into word and field); XL, a [BM, 128] x tile, 8
    contiguous elements a thread (``pairs_bm``: :func:`x_pairs` of that many rows); XS, the x tile's
    shared layout (:func:`x_smem`, swizzled or not). Made once per arguments: an eager forward asks per linear, and
    building them on every call made a lazy 7B's first token 9-21 ms slower on the H200 (128 calls;
    benchmarks/probe_first_token.py, raw_h200/s23/first_token_ab*.md)."""
    if num_warps != 4 or block_r not in (64, 128):
        raise KernelError(f"the compact shrink takes 64 or 128 components on 4 warps, not {block_r} on {num_warps}")
    more = [[64, 0]] if block_r == 128 else []
    lw = gl.DistributedLinearLayout(reg_bases=[[0, 1], [0, 2], [0, 4], [8, 0]] + more,
                                    lane_bases=[[0, 0], [0, 0], [1, 0], [2, 0], [4, 0]],
                                    warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[block_r, 8])
    l3 = gl.DistributedLinearLayout(reg_bases=[[0, 0, 1], [8, 0, 0], [0, 0, 8], [0, 1, 0], [0, 2, 0], [0, 4, 0]]
                                    + [[64, 0, 0]] * bool(more),
                                    lane_bases=[[0, 0, 2], [0, 0, 4], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
                                    warp_bases=[[16, 0, 0], [32, 0, 0]], block_bases=[], shape=[block_r, 8, 16])
    xl = x_pairs(pairs_bm) if pairs_bm else gl.BlockedLayout([1, 8], [2, 16], [num_warps, 1], [1, 0])
    return MappingProxyType(dict(LW=lw, L3=l3, XL=xl, XS=x_smem(swizzle)))


def x_pairs(bm: int):
    """A [bm, 128] x tile with each thread's k those of 8 contiguous MMA slots (k = a + 8b of a 16-k
    tile sits in slot 2a + b): k c..c + 3 and c + 8..c + 11, two 8-byte loads, so the tile goes into
    shared memory as one 16-byte store a thread instead of eight 2-byte ones."""
    rows = [[1 << i, 0] for i in range(3, (bm - 1).bit_length())]
    return gl.DistributedLinearLayout(reg_bases=[[0, 1], [0, 2], [0, 8]] + rows,
                                      lane_bases=[[0, 4], [0, 16], [0, 32], [0, 64], [1, 0]],
                                      warp_bases=[[2, 0], [4, 0]], block_bases=[], shape=[bm, 128])


def x_smem(swizzle: bool = True):
    """The shared layout of a [k, rows] bf16 B operand whose k is contiguous (the shrink's x tile, the
    staged expand's z tile): rows 256 bytes apart, so an ldmatrix's 8 rows of one 16-byte column all
    fall in the same banks unless the column is swizzled by the row (XOR of the 16-byte chunk with
    row % 8: the 8 rows in 8 distinct bank groups). ``swizzle=False``: plain, as before."""
    return gl.SwizzledSharedLayout(8, 1, 8, [0, 1]) if swizzle else gl.SwizzledSharedLayout(1, 1, 1, [0, 1])


@functools.lru_cache(maxsize=None)
def expand_layouts(chunk: int, num_warps: int = 4, swizzle: bool = True) -> Mapping:
    """The layouts :func:`_expand_item2` takes: EWL, an item's [chunk, 8] words tile, a component's 8
    words a thread; E3, the [8 words, 16 outputs of a word, 16 components] view of a step's A
    operand (outputs 16 a warp along the MMA's M, as its layout spreads them over 4 warps); ZS, the
    staged z tile's shared layout (:func:`x_smem`)."""
    if num_warps != 4 or chunk % 128:
        raise KernelError(f"the compact expand takes items of a multiple of 128 components on 4 warps, not {chunk} on {num_warps}")
    ewl = gl.BlockedLayout([1, 8], [32, 1], [num_warps, 1], [1, 0])
    e3 = gl.DistributedLinearLayout(reg_bases=[[0, 0, 1], [0, 8, 0], [0, 0, 8], [4, 0, 0]],
                                    lane_bases=[[0, 0, 2], [0, 0, 4], [0, 1, 0], [0, 2, 0], [0, 4, 0]],
                                    warp_bases=[[1, 0, 0], [2, 0, 0]], block_bases=[], shape=[8, 16, 16])
    return MappingProxyType(dict(EWL=ewl, E3=e3, ZS=x_smem(swizzle)))


def block_m(plan: RowPlan, dset: DeltaSet) -> int:
    """Rows a row block holds (the MMA's N side): the smallest of 8, 16, 32, 64 that holds a slot's
    rows, at most :data:`BLOCK_ROWS` (a slot with more rows takes several blocks)."""
    if BLOCK_ROWS not in (8, 16, 32, 64):
        raise KernelError(f"DELTASTORE_MMA_BLOCK_ROWS must be 8, 16, 32 or 64, not {BLOCK_ROWS}")
    per, bm = plan.rows_a_slot(dset.n_slots), 8
    while bm < per and bm < BLOCK_ROWS:
        bm *= 2
    return bm


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def usable(x: torch.Tensor, dset: DeltaSet) -> bool:
    """Whether these kernels can serve ``dset`` for activations ``x``: Gluon, a CUDA device of
    compute capability 8.0+, bf16/fp16 activations, every tier 2, 3 or 8 bits in groups of 128;
    ``DELTASTORE_MMA=0`` turns them off."""
    if not HAVE_GLUON or not x.is_cuda or os.environ.get("DELTASTORE_MMA", "1") in ("", "0"):
        return False
    if x.dtype not in (torch.bfloat16, torch.float16) or _capability(x.device.index or 0) < (8, 0):
        return False
    return _serves(dset)


def _serves(dset: DeltaSet) -> bool:
    """Whether every tier of the set is one these kernels read, worked out once per build of the
    set (every linear of every forward asks)."""
    build = dset.cache_key  # (owner, build): builds the set if it must
    got = _SERVES.get(dset)
    if got is None or got[0] != build:
        gss = {rec[F["gs"]] for per in dset.records for recs in per for rec in recs}
        got = _SERVES[dset] = (build, bool(dset.bit_widths) and dset.bit_widths <= WIDTHS and gss <= {GROUP})
    return got[1]


_SERVES: "weakref.WeakKeyDictionary[DeltaSet, tuple[tuple[int, int], bool]]" = weakref.WeakKeyDictionary()


def _one_fine_tune(plan: RowPlan, dset: DeltaSet) -> bool:
    """Whether one fine-tune serves the batch as far as the host knows (the set holds one, or the
    plan was made from ids held on the host naming one)."""
    return plan.only_slot is not None or dset.n_slots < 2


def use_mma(x: torch.Tensor, dset: DeltaSet, plan: RowPlan, path: str | None = None) -> bool:
    """Whether :func:`apply` serves this batch: ``path`` "mma" forces it (another path: no); else
    where :func:`usable`, several fine-tunes at :data:`MIN_ROWS` to :data:`MAX_ROWS` rows each (the
    batch spread evenly over the set's fine-tunes) in a batch of :data:`ONE_MIN_ROWS` rows or more (one
    row: the GEMV kernels, whatever the set), or one fine-tune's batch (the set holds one, or the
    host knows one serves every row) of :data:`ONE_MIN_ROWS` to :data:`ONE_MAX_ROWS` rows. Rows are
    those that name a fine-tune where the host knew the ids (:attr:`RowPlan.served_rows`), every row else.

    Measured through the modules users get (benchmarks/ab_mma.py, one Llama-2-7B layer on the H200,
    twentieth session, the 3- and 8-bit tiers as planes): 2 rows over 8 fine-tunes 0.69x the GEMV
    kernels' time, 2 over 32 0.66x, 4 over 8 0.41x, 8 over 8 0.36x; 1 row over 8 or 4 level (0.96-0.97x
    the layer, 1.03-1.05x the deltas alone): the GEMV kernels keep it. One fine-tune: 16 rows 0.67x the
    dense path; 1 row 98.5 us of deltas against the GEMV kernels' 92 (the GEMV kernels keep it); 2 to 4
    rows 0.84x / 0.62x / 0.61x the layer on the GEMV kernels (twenty-sixth session, atomic GEMV expand).
    Thirty-fifth session (swizzled tiles, the staged expand operand, the paired x tile): 8 rows over 8
    fine-tunes 0.92x the GEMV kernels' layer, 4 over 4 0.98x, so one row a fine-tune here too."""
    if path is not None:
        return path == "mma"
    if plan.served_rows < max(ONE_MIN_ROWS, 1):
        return False
    if _one_fine_tune(plan, dset):
        rows_ok = plan.served_rows <= min(ONE_MAX_ROWS, MAX_ROWS)
    else:
        rows_ok = MIN_ROWS <= plan.rows_a_slot(dset.n_slots) <= MAX_ROWS
    return rows_ok and usable(x, dset)


def apply(x: torch.Tensor, y: torch.Tensor, dset: DeltaSet, plan: RowPlan, overwrite: bool = False) -> torch.Tensor:
    """y (M, sum out) += per-row delta of x (M, in), in place (two launches; a float32 y takes the
    atomic adds itself, another dtype through a float32 scratch added once). ``overwrite``: y = the
    delta instead (a float32 y zeroed in the launch that zeroes the shrink's z, not one of its own)."""
    if not usable(x, dset):
        raise KernelError("the mma kernels need Gluon, a CUDA device of compute capability 8.0+, bf16/fp16 activations "
                          "and tiers of 2, 3 or 8 bits in groups of 128")
    M, K = x.shape
    if K != dset.in_features or y.shape != (M, sum(dset.out_features)):
        raise KernelError(f"x {tuple(x.shape)} / y {tuple(y.shape)} do not fit the set ({dset.in_features} -> {sum(dset.out_features)})")
    if x.stride(1) != 1:
        x = x.contiguous()
    if PLANES:
        dset.use_planes()
    bm = block_m(plan, dset)
    blocks = plan_blocks(plan, bm)
    nb = blocks.shape[0]
    tiles, ntiles, T = dset.tiles(16 * SHRINK_TILES * 4, mma=True)
    chunk = ONE_CHUNK if _one_fine_tune(plan, dset) else CHUNK
    items, nitems, I_max = dset.items(chunk, mma=True)
    has = {f"HAS{b}": b in dset.mma_bit_widths for b in (2, 3, 8)}
    compact = COMPACT and "shrink" in COMPACT_PARTS and has["HAS2"] and SHRINK_KS == 128 and SHRINK_TILES in (1, 2)
    compact_e = COMPACT and "expand" in COMPACT_PARTS and has["HAS2"] and chunk % 128 == 0
    G = -(-K // GROUP)
    per = dset.n_slices * T * nb
    # groups a program takes one after the other (a memory round trip each): the fewest that keep the
    # launch near SHRINK_PROGRAMS, at most MAX_GPS (at 64 rows over 32 fine-tunes the rule alone gave
    # 32; capped at 4, or at 1, the layer measured the same: 1.22x / 1.24x the GEMV kernels' time)
    gps = next((g for g in (1, 2, 4, 8, 16, 32) if g >= MAX_GPS or per * -(-G // g) <= SHRINK_PROGRAMS), MAX_GPS)
    z = torch.empty(M, max(dset.zcols, 1), dtype=torch.float32, device=x.device)
    y_f32 = y.dtype == torch.float32 and y.stride(1) == 1
    if overwrite and y_f32 and y.is_contiguous():
        torch._foreach_zero_([z, y])  # one multi-tensor launch for both
    else:
        z.zero_()
        if overwrite:
            y.zero_()
    kn = known_args(dset, plan) if HOIST else {"KNOWN": False, "s_known": 0}  # (the host-known slot's entries, see HOIST)
    # IDENT: the host knows every row names that slot (no base rows), so the rows sorted by slot are in order
    hoist = dict(HOIST=kn["KNOWN"], IDENT=HOIST and plan.only_slot is not None and not plan.base_rows)
    d = y if y_f32 else torch.zeros(M, y.shape[1], dtype=torch.float32, device=x.device)  # (before the shrink: the
    # expand launched with PDL depends on the launch right before it)
    _shrink_kernel[(dset.n_slices * T, -(-G // gps), nb)](
        x, z, dset.words, dset.scales, dset.zeros, dset.svals, tiles, ntiles, plan.rows, blocks,
        K, x.stride(0), z.stride(0), dset.n_slices, T, kn["s_known"],
        NFIELD=tiles.shape[-1], BM=bm, GPS=gps, TILES=SHRINK_TILES, KS=SHRINK_KS, **has, COMPACT=compact,
        **(compact_layouts(16 * SHRINK_TILES * 4, 4, SWIZZLE, bm if X_PAIRS and bm != 16 else 0) if compact
           else dict(LW=None, L3=None, XL=None, XS=None)), **hoist, USE_GDC=pdl_on(x, PDL),
        **maxnreg_option(SHRINK_MAXNREG or None), num_warps=4)
    nblk = -(-max(dset.out_features) // BLOCK)
    _expand_kernel[(nblk, dset.n_slices * I_max, nb)](
        z, d, dset.words, dset.scales, dset.zeros, items, nitems, plan.rows, blocks, dset.m_out, dset.col_off,
        z.stride(0), d.stride(0), dset.n_slices, I_max, kn["s_known"],
        NFI=items.shape[-1], BM=bm, TILES=2, ES=EXPAND_STEP, **has, COMPACT=compact_e, CH=chunk, STAGE=STAGE_Z,
        **(expand_layouts(chunk, 4, SWIZZLE) if compact_e else dict(EWL=None, E3=None, ZS=None)), **hoist,
        **pdl_launch(x, PDL), num_warps=4)
    if d is not y:
        y.add_(d)
    return y
