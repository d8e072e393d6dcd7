"""Packed deltas of linears that share an input, for many tenants, in flat device buffers.

A :class:`DeltaSet` holds, for one or more linears that read the same input x ("slices": q/k/v,
or gate/up, or a single linear) and for every loaded fine-tune ("slot"), the delta-come tiers as
stored. All packed words of all slots and slices live in one int32 buffer, all scales in one
fp16 buffer, all zero points in another, all singular values in one fp32 buffer; small int64
tables say where each tier (and each block of ``tile_r`` components) starts. The kernels take
those tables and the buffers: per-delta pointers and tier metadata live on the GPU, so one launch
serves a batch whose rows use different fine-tunes, and the grid does not depend on the data (a
CUDA graph captures it). Adding or dropping a fine-tune rebuilds the buffers of this set only.

Table rows (int64), one per tier (``tiers``) and one per block of ``tile_r`` components of a
tier (``tiles``), fields in :data:`FIELDS` order: word offset of the V^T rows, scale/zero offset
of the V^T rows, the same two for the U columns, offset of the first singular value, bits,
number of components, first column of this slot-slice in the shrink output z, group size.
:func:`plan_blocks` cuts a batch's rows into blocks of one slot each, the GEMV kernels' row axis.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from deltastore.codec import quant

from . import factor_cache
from .errors import KernelError
from .packed import PackedDeltaCoMe, PackedFactor

FIELDS = ("v_q", "v_sz", "u_q", "u_sz", "s_off", "bits", "count", "zcol", "gs")
NF = len(FIELDS)
F = {name: i for i, name in enumerate(FIELDS)}
#: fields of a GEMV expand work item (see :meth:`DeltaSet.items`)
ITEM_FIELDS = ("slot", "slice", "u_q", "u_sz", "bits", "count", "zcol", "gs", "j", "nj", "grp")
def planes_of(f: PackedFactor) -> PackedFactor | None:
    """A 3- or 8-bit factor as 2-bit planes, for the tensor-core kernels' fast 2-bit path: a 2-bit
    factor of count * P rows, P = 2 (3 bits) or 4 (8 bits), row ``r * P + i`` holding bits 2i, 2i+1
    of component r's values. Exact: (q - z) s =
    (q_0 - z) s + sum over i >= 1 of (q_i - 0) (4^i s), every 4^i s exact in float16. None where a
    scale times 4^(P-1) would overflow float16 (the factor is then read as stored)."""
    P = 4 if f.bits == 8 else 2
    q = quant.unpack(f.q, f.bits, f.length)
    planes = torch.stack([(q >> (2 * i)) & 3 for i in range(P)], dim=1).reshape(f.count * P, f.length)
    mult = torch.tensor([4.0**i for i in range(P)], device=f.s.device).view(1, P, 1)
    s = (f.s.float().unsqueeze(1) * mult).to(torch.float16)
    if not bool(torch.isfinite(s).all()):
        return None
    z = torch.zeros(f.count, P, f.z.shape[-1], dtype=f.z.dtype, device=f.z.device)
    z[:, 0] = f.z
    return PackedFactor(2, f.count * P, f.length, quant.pack(planes, 2), s.reshape(f.count * P, -1), z.reshape(f.count * P, -1))


@dataclass
class RowPlan:
    """Which rows of a batch use which slot: rows sorted by slot, with counts and starts.

    ``rows[starts[s] : starts[s] + counts[s]]`` are the rows (of x and y) that slot ``s`` serves;
    rows whose id is -1 (base only) are in no slot. Built on the device without a host sync, so
    it can be rebuilt inside a captured graph from a static ids buffer.
    """

    rows: torch.Tensor  # int32 (M,)
    counts: torch.Tensor  # int32 (n_slots,)
    starts: torch.Tensor  # int32 (n_slots,)
    n_rows: int
    #: row-block tables by block size (see :func:`plan_blocks`), built on first use
    blocks: dict[int, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    #: what the host knew of the ids without a device read (set by DeltaContext.plan): the one slot
    #: every row that names a slot names (None: unknown or several), and whether some rows may be -1
    only_slot: int | None = None
    base_rows: bool = True
    #: rows that name a slot, where the host knew the ids (None: unknown, take n_rows): one fine-tune's
    #: row beside base-only rows is one row to the path choice, not the batch's size
    served: int | None = None
    #: the dense path's per-slot masks of served rows (kernels/dense.py), built on first use
    masks: dict[int, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    #: the reference ops' (slot, sorted positions, rows) of the slots that serve rows (ref_ops: a
    #: host read of the counts, so the CPU path's), built on first use: every linear of a forward shares it
    slot_rows: list | None = field(default=None, repr=False, compare=False)

    @property
    def n_slots(self) -> int:
        return int(self.counts.shape[0])

    @property
    def counts_served(self) -> bool:
        """Whether the path choice counts :attr:`served`: the host knew the ids and
        :data:`COUNT_SERVED` is on."""
        return self.served is not None and COUNT_SERVED

    @property
    def served_rows(self) -> int:
        """Rows that name a slot as far as the host knows: :attr:`served`, else every row."""
        return self.served if self.counts_served else self.n_rows

    def rows_a_slot(self, n_slots: int) -> int:
        """Rows a slot's row blocks must hold, known without a device read: every served row when
        one slot serves the batch (the host knew the ids, or the set holds one fine-tune), else the
        served rows spread over the slots (plan_blocks cuts a slot's rows into blocks of at most
        the block size: any spread stays correct)."""
        if self.only_slot is not None or n_slots == 1:
            return self.served_rows
        return -(-self.served_rows // max(n_slots, 1))


#: whether the path choice counts the rows that name a fine-tune (:attr:`RowPlan.served`, where the
#: host knew the ids) rather than the batch's rows. On since 2026-12-03, chosen by correctness (a
#: fine-tune's 6 rows beside 12 base rows took the dense path, as if 18 were its own), and timed on
#: the H200 (served_device.sh, raw_h200/s29/ab_served.md, a Llama-2-7B layer): 6 rows + 12 base rows
#: 225.2 us against 245.2 with it off, 4 rows over 2 fine-tunes + 20 base rows 262.4 against 312.7,
#: 1 + 7 level. DELTASTORE_COUNT_SERVED=0 (or this flag) counts every row (benchmarks/ab_mma.py's
#: "M+B" cases: M rows of fine-tunes beside B base rows, their ids on the host)
COUNT_SERVED = os.environ.get("DELTASTORE_COUNT_SERVED", "1") not in ("", "0")


def plan_rows(ids: torch.Tensor, n_slots: int) -> RowPlan:
    """A :class:`RowPlan` for per-row slot ids (M,) in [-1, n_slots); -1 = the base alone.

    No host sync and fixed shapes (a sort and a compare against every slot), as vLLM's LoRA
    metadata does; ids out of range are the caller's to refuse (see :func:`check_ids`).
    """
    ids = ids.reshape(-1).to(torch.int64)
    key = torch.where(ids < 0, torch.full_like(ids, n_slots), ids)
    rows = torch.argsort(key, stable=True).to(torch.int32)
    slots = torch.arange(max(n_slots, 1), device=ids.device, dtype=torch.int64)[:n_slots]
    counts = (key.unsqueeze(0) == slots.unsqueeze(1)).sum(dim=1).to(torch.int32)
    starts = (torch.cumsum(counts, 0) - counts).to(torch.int32)
    return RowPlan(rows.contiguous(), counts.contiguous(), starts.contiguous(), int(ids.shape[0]))


def host_hint(ids: torch.Tensor) -> tuple[int | None, bool]:
    """(only_slot, base_rows) of :class:`RowPlan` from per-row ids held on the host (a CPU
    tensor: no device read): the one slot every row naming a slot names, or None (several, or
    none), and whether some row is -1."""
    ids = ids.reshape(-1)
    served = ids[ids >= 0]
    base = served.numel() < ids.numel()
    if served.numel() == 0:
        return None, base
    lo, hi = int(served.min()), int(served.max())
    return (lo if lo == hi else None), base


def known_slot(dset: "DeltaSet", plan: RowPlan) -> int | None:
    """The slot that serves every row naming one, where the host knows it without a device read
    (the plan's hint, or a set of one slot); None otherwise. Kernels may index that slot's tables
    without waiting for the batch's row blocks (every block is that slot's or -1)."""
    if plan.only_slot is not None:
        return plan.only_slot
    return 0 if dset.n_slots == 1 else None


def plan_blocks(plan: RowPlan, block_m: int) -> torch.Tensor:
    """int32 (NB, 3): the batch's blocks of at most ``block_m`` rows of one slot each, as (slot,
    first sorted position, rows); rows past the real blocks read (-1, 0, 0).

    The GEMV kernels' grids run over these blocks instead of (slot x row block), so a batch of
    many fine-tunes launches no program per slot for rows it does not have (at 32 rows over 8
    fine-tunes 7 of 8 programs had none). NB = min(M, cdiv(M, block_m) + slots - 1), the most
    blocks any spread of M rows over the slots can need: fixed by the shapes, and built with
    device ops (a cumsum and a searchsorted), no host sync, so a CUDA graph captures it. Cached on
    the plan per block size (a plan serves every linear of a forward).
    """
    got = plan.blocks.get(block_m)
    if got is not None:
        return got
    M, S, dev = plan.n_rows, plan.n_slots, plan.counts.device
    nb = max(1, min(M, -(-M // block_m) + S - 1)) if S else 1
    if S == 0:
        t = torch.tensor([[-1, 0, 0]], dtype=torch.int32, device=dev)
    else:
        counts = plan.counts.to(torch.int64)
        per = (counts + block_m - 1) // block_m
        end = torch.cumsum(per, 0)
        b = torch.arange(nb, dtype=torch.int64, device=dev)
        slot = torch.searchsorted(end, b, right=True)  # S past the last real block
        ok = slot < S
        sc = slot.clamp(max=S - 1)
        local = b - (end - per)[sc]
        pos0 = plan.starts.to(torch.int64)[sc] + local * block_m
        rows = torch.clamp(counts[sc] - local * block_m, max=block_m)
        zero = torch.zeros_like(b)
        t = torch.stack([torch.where(ok, slot, zero - 1), torch.where(ok, pos0, zero), torch.where(ok, rows, zero)], 1)
        t = t.to(torch.int32).contiguous()
    plan.blocks[block_m] = t
    return t


def check_ids(ids: torch.Tensor, n_slots: int) -> None:
    """Refuse ids outside [-1, n_slots) (one host sync; call it where the ids come in, not per linear)."""
    if ids.numel() and (int(ids.min()) < -1 or int(ids.max()) >= n_slots):
        raise KernelError(f"delta ids must lie in [-1, {n_slots}) (-1 = base only); got {ids.min().item()}..{ids.max().item()}")


class DeltaSet:
    """The packed deltas of ``len(out_features)`` linears sharing an input of ``in_features``."""

    def __init__(self, in_features: int, out_features: Sequence[int], device: torch.device | str = "cpu", *, tile_r: int = 32):
        self.in_features = int(in_features)
        self.out_features = [int(m) for m in out_features]
        if not self.out_features:
            raise KernelError("a DeltaSet needs at least one linear")
        self.col_offsets = [sum(self.out_features[:i]) for i in range(len(self.out_features))]
        self.device = torch.device(device)
        self.tile_r = int(tile_r)
        self._slots: list[list[PackedDeltaCoMe | None] | None] = []
        self._built = False
        self._generation = 0  # builds so far: the CPU factor cache's entries are per build
        self._cache_id = factor_cache.new_owner(self)
        #: the one-launch base GEMV + expand for <= 4 rows (kernels/fused_gemv.py): True/False here,
        #: None = the environment's DELTASTORE_FUSED_GEMV (off unless set: slower on the H200)
        self.fused_gemv: bool | None = None
        #: keep 2-bit planes of the 3- and 8-bit tiers for the tensor-core kernels (:func:`planes_of`):
        #: True/False here, None = once those kernels serve the set (:meth:`use_planes`)
        self.planes: bool | None = None
        self._planes_asked = False
        self._plane_cache: dict[int, tuple[PackedFactor, PackedFactor | None]] = {}

    # -- membership -------------------------------------------------------------------------------
    @property
    def n_slices(self) -> int:
        return len(self.out_features)

    @property
    def n_slots(self) -> int:
        return len(self._slots)

    def add(self, deltas: Sequence[PackedDeltaCoMe | None], slot: int | None = None) -> int:
        """Load one fine-tune's deltas (one per slice; None = that linear unchanged) into ``slot``
        (by default the first free one); returns the slot id. Models keep slot ids equal across
        the sets of all their linears by passing ``slot``."""
        if len(deltas) != self.n_slices:
            raise KernelError(f"expected {self.n_slices} deltas (one per linear of the set), got {len(deltas)}")
        for i, d in enumerate(deltas):
            if d is not None and tuple(d.shape) != (self.out_features[i], self.in_features):
                raise KernelError(f"delta {i} is {d.shape[0]}x{d.shape[1]}; the linear is {self.out_features[i]}x{self.in_features}")
        moved = [None if d is None else d.to(self.device) for d in deltas]
        if slot is not None:
            while len(self._slots) <= slot:
                self._slots.append(None)
            if self._slots[slot] is not None:
                raise KernelError(f"slot {slot} already holds a delta")
            self._slots[slot] = moved
            self._built = False
            return slot
        for s, cur in enumerate(self._slots):
            if cur is None:
                self._slots[s] = moved
                self._built = False
                return s
        self._slots.append(moved)
        self._built = False
        return len(self._slots) - 1

    def drop(self, slot: int) -> None:
        """Free a slot (its id may be reused by a later :meth:`add`); rows naming it get the base alone."""
        if not 0 <= slot < len(self._slots) or self._slots[slot] is None:
            raise KernelError(f"no delta in slot {slot}")
        self._slots[slot] = None
        self._built = False

    def to(self, device: torch.device | str) -> "DeltaSet":
        """Move every slot's packed arrays (tables and buffers are rebuilt there on next use)."""
        device = torch.device(device)
        if device != self.device:
            self._slots = [None if sl is None else [None if d is None else d.to(device) for d in sl] for sl in self._slots]
            self.device = device
            self._built = False
        return self

    def slot(self, s: int) -> list[PackedDeltaCoMe | None] | None:
        return self._slots[s]

    @property
    def holds_any(self) -> bool:
        """Whether any slot holds a tier to apply (slots of fine-tunes stored otherwise, e.g.
        lowrank, hold none): read from the tables, which :meth:`build` makes once per add/drop."""
        return bool(self.build().bit_widths)

    def use_planes(self) -> "DeltaSet":
        """What the tensor-core kernels call before serving the set, where they read planes
        (``kernels.mma.PLANES``): the first time (where :attr:`planes` is None, on a CUDA device),
        rebuild with the 2-bit planes of the 3- and 8-bit tiers, kept from then on (+6% of a 1/16
        delta's device memory). So a set
        that only the GEMV or dense paths serve (one row per fine-tune, or many of one) holds none.
        Eager forwards come before any CUDA graph is captured (graph_decode's first step of a
        shape), so the rebuild never runs inside a capture."""
        if self.planes is None and not self._planes_asked and self.device.type == "cuda":
            self._planes_asked = True
            self._built = False
        return self.build()

    # -- flat buffers and tables ------------------------------------------------------------------
    def build(self) -> "DeltaSet":
        """(Re)build the flat buffers and tables on the device; done once per add/drop, not per call."""
        if self._built:
            return self
        words: list[torch.Tensor] = []
        scales: list[torch.Tensor] = []
        zeros: list[torch.Tensor] = []
        svals: list[torch.Tensor] = []
        off = {"w": 0, "sz": 0, "s": 0}
        rebind: list[tuple[object, str, str, int]] = []  # (owner, attribute, buffer, offset)

        def put(t: torch.Tensor, lst: list[torch.Tensor], key: str, owner: object = None, attr: str = "") -> int:
            if key == "w" and off[key] % 4:  # each factor's words start 16-byte aligned (the mma kernels' vector loads)
                pad = 4 - off[key] % 4
                lst.append(t.new_zeros(pad))
                off[key] += pad
            at = off[key]
            lst.append(t.reshape(-1))
            off[key] += t.numel()
            rebind.append((owner, attr, key, at))
            return at

        records: list[list[list[list[int]]]] = []  # [slot][slice] -> tier rows
        mma_records: list[list[list[list[int]]]] = []  # the same with a dsh field, 3/8-bit tiers as planes
        want_planes = self.planes if self.planes is not None else (self._planes_asked and self.device.type == "cuda")
        cache: dict[int, tuple[PackedFactor, PackedFactor | None]] = {}  # a factor's planes, made once

        def mma_row(rec: list[int], v: PackedFactor, u: PackedFactor) -> list[int]:
            """The tensor-core kernels' row for tier ``rec``: itself with dsh 0, or for a 3- or 8-bit tier
            (where wanted) its 2-bit planes, put into the buffers beside the tier as stored (kept as views
            of them, like the payloads' arrays, for the next build)."""
            if not want_planes or v.bits not in (3, 8):
                return [*rec, 0]
            pl = []
            for f in (v, u):
                got = self._plane_cache.get(id(f))
                cache[id(f)] = got = got if (got is not None and got[0] is f) else (f, planes_of(f))
                pl.append(got[1])
            if pl[0] is None or pl[1] is None:
                return [*rec, 0]
            row = [*rec, 2 if v.bits == 8 else 1]
            for p, fq, fsz in ((pl[0], "v_q", "v_sz"), (pl[1], "u_q", "u_sz")):
                row[F[fq]] = put(p.q, words, "w", p, "q")
                row[F[fsz]] = put(p.s, scales, "sz", p, "s")
                zeros.append(p.z.reshape(-1))  # (zeros share the scales' offsets)
                rebind.append((p, "z", "z", row[F[fsz]]))
            row[F["bits"]] = 2
            row[F["count"]] = rec[F["count"]] << row[NF]
            return row

        gss: set[int] = set()
        zc = 1
        for deltas in self._slots:
            per_slice: list[list[list[int]]] = []
            mma_slice: list[list[list[int]]] = []
            zcol = 0
            for d in deltas or [None] * self.n_slices:
                rows: list[list[int]] = []
                mrows: list[list[int]] = []
                if d is not None and d.rank:
                    gss.add(d.group_size)
                    s0 = put(d.S, svals, "s", d, "S")
                    comp = 0
                    for v, u in d.tiers:
                        rec = [0] * NF
                        rec[F["v_q"]] = put(v.q, words, "w", v, "q")
                        rec[F["v_sz"]] = put(v.s, scales, "sz", v, "s")
                        zeros.append(v.z.reshape(-1))  # zeros share the scales' offsets
                        rebind.append((v, "z", "z", rec[F["v_sz"]]))
                        rec[F["u_q"]] = put(u.q, words, "w", u, "q")
                        rec[F["u_sz"]] = put(u.s, scales, "sz", u, "s")
                        zeros.append(u.z.reshape(-1))
                        rebind.append((u, "z", "z", rec[F["u_sz"]]))
                        rec[F["s_off"]] = s0 + comp
                        rec[F["bits"]] = v.bits
                        rec[F["count"]] = v.count
                        rec[F["zcol"]] = zcol + comp
                        rec[F["gs"]] = d.group_size
                        rows.append(rec)
                        mrows.append(mma_row(rec, v, u))
                        comp += v.count
                    zcol += d.rank
                per_slice.append(rows)
                mma_slice.append(mrows)
            zc = max(zc, zcol)
            records.append(per_slice)
            mma_records.append(mma_slice)
        common = [b for b in (128, 64, 32) if all(g % b == 0 for g in gss)]
        if not common:
            raise KernelError(f"group sizes {sorted(gss)} share no kernel block width (32, 64 or 128)")
        self.block_k = common[0]
        dev = self.device

        def cat(lst: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
            return torch.cat(lst).to(device=dev, dtype=dtype).contiguous() if lst else torch.zeros(1, dtype=dtype, device=dev)

        self.words = cat(words, torch.int32)
        self.scales = cat(scales, torch.float16)
        self.zeros = cat(zeros, torch.float16)
        self.svals = cat(svals, torch.float32)
        # every slot's arrays become views of the flat buffers: the device holds one copy of each delta
        bufs = {"w": self.words, "sz": self.scales, "z": self.zeros, "s": self.svals}
        for owner, attr, key, at in rebind:
            t = getattr(owner, attr)
            setattr(owner, attr, bufs[key][at : at + t.numel()].view(t.shape))
        del words, scales, zeros, svals
        n_slots = max(len(records), 1)
        max_tiers = max([len(r) for per in records for r in per] + [1])
        tiers = torch.zeros(n_slots, self.n_slices, max_tiers, NF, dtype=torch.int64)
        ntiers = torch.zeros(n_slots, self.n_slices, dtype=torch.int32)
        for a, per in enumerate(records):
            for b, rows in enumerate(per):
                ntiers[a, b] = len(rows)
                if rows:
                    tiers[a, b, : len(rows)] = torch.tensor(rows, dtype=torch.int64)
        self.records = records
        self._plane_cache = cache
        #: the tensor-core kernels' tier rows: :data:`FIELDS` and ``dsh``, virtual rows per component
        #: as a shift (2-bit planes of a 3- or 8-bit tier: 1 or 2; 0 for a tier read as stored)
        self.mma_records = mma_records
        self.mma_bit_widths = frozenset(rec[F["bits"]] for per in mma_records for recs in per for rec in recs)
        self.tiers, self.ntiers = tiers.to(dev), ntiers.to(dev)
        # components per slot-slice (its rank; 0 where it holds no delta): the dot expand's runs
        ranks = torch.tensor([[sum(rec[F["count"]] for rec in recs) for recs in per] for per in records] or [[0] * self.n_slices],
                             dtype=torch.int32)
        self.ranks, self.max_rank = ranks.to(dev), int(ranks.max()) if ranks.numel() else 0
        self.max_tiers = max_tiers
        self.bit_widths = frozenset(rec[F["bits"]] for per in records for recs in per for rec in recs)
        self._tiles: dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._lut: dict[int, tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]] = {}
        self._tile_total: dict[int, int] = {}
        self.zcols = zc
        self.m_out = torch.tensor(self.out_features, dtype=torch.int32, device=dev)
        self.col_off = torch.tensor(self.col_offsets, dtype=torch.int32, device=dev)
        self._nblk: dict[int, torch.Tensor] = {}
        self._items: dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor, int]] = {}
        #: int32 counters and scratch kept at zero, by use: (n_blocks, n_rowblocks) the expand's
        #: handshake, ("join", n) a fused join's, ("sink", n) the prefetch's (:meth:`_zeros_i32`)
        self._sems: dict[tuple, torch.Tensor] = {}
        #: the dense path's scratch layouts per (slot, row block) (kernels/dense.py)
        self.dense_cache: dict = {}
        self._generation += 1
        factor_cache.forget(self._cache_id, self._generation)  # factors of earlier builds: slots moved or gone
        self._built = True
        return self

    @property
    def cache_key(self) -> tuple[int, int]:
        """(owner id, build): under which :mod:`.factor_cache` keeps this build's dequantized factors."""
        self.build()
        return self._cache_id, self._generation

    def tiles(self, tile_r: int | None = None, mma: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(tiles (slots, slices, T, NF) int64, ntiles (slots, slices) int32, T): the tier rows cut
        into blocks of ``tile_r`` components (the shrink's unit of work), built once per size.
        ``mma``: the tensor-core kernels' rows (:attr:`mma_records`, one field more: dsh; a tile's
        singular values and z columns are its virtual rows shifted right by dsh)."""
        tile_r = int(tile_r or self.tile_r)
        if mma and tile_r % 4:
            raise KernelError(f"the mma tiles take a multiple of 4 components (a component's planes in one tile), not {tile_r}")
        self.build()
        got = self._tiles.get((tile_r, mma))
        if got is not None:
            return got
        rows: dict[tuple[int, int], list[list[int]]] = {}
        for a, per in enumerate(self.mma_records if mma else self.records):
            for b, recs in enumerate(per):
                tl: list[list[int]] = []
                for rec in recs:
                    tl.extend(x for _c0, x in self._cut(rec, b, tile_r, mma))
                rows[(a, b)] = tl
        got = self._tiles[(tile_r, mma)] = self._padded(rows, NF + mma)
        if not mma:
            self._tile_total[tile_r] = sum(len(v) for v in rows.values())
        return got

    def _cut(self, rec: list[int], b: int, tile_r: int, mma: bool) -> Iterator[tuple[int, list[int]]]:
        """(first row c0, table row) of each tile of ``tile_r`` rows of tier row ``rec`` of slice b: its
        offsets moved to row c0 (singular values and z columns by c0 >> dsh, dsh the mma rows' last field)."""
        bits, cnt, gs = rec[F["bits"]], rec[F["count"]], rec[F["gs"]]
        dsh = rec[NF] if mma else 0
        vw, uw = quant.packed_words(self.in_features, bits), quant.packed_words(self.out_features[b], bits)
        vg, ug = quant.n_groups(self.in_features, gs), quant.n_groups(self.out_features[b], gs)
        for c0 in range(0, cnt, tile_r):
            x = list(rec)
            x[F["v_q"]] += c0 * vw
            x[F["v_sz"]] += c0 * vg
            x[F["u_q"]] += c0 * uw
            x[F["u_sz"]] += c0 * ug
            x[F["s_off"]] += c0 >> dsh
            x[F["zcol"]] += c0 >> dsh
            x[F["count"]] = min(tile_r, cnt - c0)
            yield c0, x

    def lut_tiles(self, tile_r: int) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        """(tiles (slots, slices, T, 8) int64, ntiles (slots, slices) int32, T, words): the one-row lookup
        shrink's tiles (:mod:`.lut`) over the 2-bit rows of :attr:`mma_records`, their V^ words copied
        word-major (``words[off + j * count + r]``: word j of row r of a tier, so a warp's lanes, one row
        each, read one line), built on first use per size and kept until the next build. A tile's fields:
        (words offset of its first row, its tier's row count (the stride), scales offset, singular-value
        offset, rows, z column, dsh, group size). The copy holds as many words as the V^ halves: only
        sets the lookup serves make it."""
        self.build()
        got = self._lut.get(int(tile_r))
        if got is not None:
            return got
        K = self.in_features
        parts: list[torch.Tensor] = []
        at = 0
        rows: dict[tuple[int, int], list[list[int]]] = {}
        for a, per in enumerate(self.mma_records):
            for b, recs in enumerate(per):
                tl: list[list[int]] = []
                for rec in recs:
                    bits, cnt = rec[F["bits"]], rec[F["count"]]
                    if bits != 2:
                        raise KernelError(f"the lookup shrink reads 2-bit rows; this set holds a {bits}-bit tier")
                    vw = quant.packed_words(K, 2)
                    parts.append(self.words[rec[F["v_q"]]: rec[F["v_q"]] + cnt * vw].view(cnt, vw).t().reshape(-1))
                    for c0, x in self._cut(rec, b, tile_r, True):
                        tl.append([at + c0, cnt, x[F["v_sz"]], x[F["s_off"]], x[F["count"]], x[F["zcol"]], rec[NF], x[F["gs"]]])
                    at += cnt * vw
                rows[(a, b)] = tl
        words = torch.cat(parts).contiguous() if parts else torch.zeros(1, dtype=torch.int32, device=self.device)
        got = self._lut[int(tile_r)] = (*self._padded(rows, 8), words)
        return got

    def _padded(self, rows: dict[tuple[int, int], list[list[int]]], width: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(table (slots, slices, most, width) int64 on the device, zero-padded; counts (slots,
        slices) int32; most): per slot-slice lists of table rows, as the kernels index them."""
        most = max([len(v) for v in rows.values()] + [1])
        table = torch.zeros(max(len(self.records), 1), self.n_slices, most, width, dtype=torch.int64)
        counts = torch.zeros(max(len(self.records), 1), self.n_slices, dtype=torch.int32)
        for (a, b), lst in rows.items():
            counts[a, b] = len(lst)
            if lst:
                table[a, b, : len(lst)] = torch.tensor(lst, dtype=torch.int64)
        return table.to(self.device), counts.to(self.device), most

    def n_tiles(self, tile_r: int) -> int:
        """How many tiles of ``tile_r`` components all slots and slices hold (no device read)."""
        self.tiles(tile_r)
        return self._tile_total[int(tile_r)]

    def items(self, chunk: int, mma: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(items (slots, slices, I, NFI) int64, n_items (slots, slices) int32, I): the GEMV
        expand's units of work, padded to I (the most of one slot-slice). An item is a run of at most
        ``chunk`` components of one tier (so one bit width) of one slot and slice; fields in
        :data:`ITEM_FIELDS` order (``j``: its index among the items of its slot-slice, ``nj``: how
        many there are, ``grp``: slot * n_slices + slice). Built once per chunk size. ``mma``: of the
        tensor-core kernels' rows, with dsh as a last field (see :meth:`tiles`)."""
        chunk = int(chunk)
        if mma and chunk % 4:
            raise KernelError(f"the mma items take a multiple of 4 components (a component's planes in one item), not {chunk}")
        self.build()
        got = self._items.get((chunk, mma))
        if got is not None:
            return got
        per: dict[tuple[int, int], list[list[int]]] = {}
        for a, recs_of in enumerate(self.mma_records if mma else self.records):
            for b, recs in enumerate(recs_of):
                mine: list[list[int]] = []
                for rec in recs:
                    bits, cnt, gs = rec[F["bits"]], rec[F["count"]], rec[F["gs"]]
                    dsh = rec[NF] if mma else 0
                    uw, ug = quant.packed_words(self.out_features[b], bits), quant.n_groups(self.out_features[b], gs)
                    for c0 in range(0, cnt, chunk):
                        mine.append([a, b, rec[F["u_q"]] + c0 * uw, rec[F["u_sz"]] + c0 * ug, bits, min(chunk, cnt - c0),
                                     rec[F["zcol"]] + (c0 >> dsh), gs, len(mine), 0, a * self.n_slices + b] + [dsh] * mma)
                for row in mine:
                    row[9] = len(mine)
                per[(a, b)] = mine
        got = self._items[(chunk, mma)] = self._padded(per, len(ITEM_FIELDS) + mma)
        return got

    def gemv_tables_built(self, chunk: int, n_blocks: int, n_rowblocks: int) -> bool:
        """Whether the GEMV expand's items (for ``chunk``) and counters (for this grid) exist
        already, so asking for them now queues no work on the device."""
        return (int(chunk), False) in self._items and (n_blocks, n_rowblocks) in self._sems

    def semaphores(self, n_blocks: int, n_rowblocks: int) -> torch.Tensor:
        """int32 counters, zero, one per (row block of the batch (:func:`plan_blocks`), slice,
        column block): the GEMV expand's last-program-adds-the-partials handshake (a row block
        belongs to one slot; each use leaves the counters at zero again)."""
        return self._zeros_i32((n_blocks, n_rowblocks), n_rowblocks * self.n_slices * n_blocks)

    def join_counters(self, n: int) -> torch.Tensor:
        """int32 (n,) counters at zero, one per block of output columns: a fused join's
        (:mod:`.join`; each use leaves them at zero again). Kept with the set, rebuilt with it."""
        return self._zeros_i32(("join", n), n)

    def prefetch_sink(self, n: int) -> torch.Tensor:
        """int32 (n,): where :func:`.triton_ops.prefetch_` could store (it never does)."""
        return self._zeros_i32(("sink", n), n)

    def _zeros_i32(self, key: tuple, n: int) -> torch.Tensor:
        """The int32 zeros of ``n`` values kept under ``key`` (made on first use, on the set's device)."""
        t = self._sems.get(key)
        if t is None:
            t = self._sems[key] = torch.zeros(n, dtype=torch.int32, device=self.device)
        return t

    def nblocks(self, block_n: int) -> torch.Tensor:
        """int32 (n_blocks, 2): (slice, first column) of every block of ``block_n`` output columns."""
        t = self._nblk.get(block_n)
        if t is None:
            rows = [(s, c) for s, m in enumerate(self.out_features) for c in range(0, m, block_n)]
            t = self._nblk[block_n] = torch.tensor(rows, dtype=torch.int32, device=self.device).reshape(-1, 2)
        return t

    @property
    def nbytes(self) -> int:
        """Device bytes of the packed deltas (words, scales, zeros, singular values)."""
        self.build()
        return sum(t.numel() * t.element_size() for t in (self.words, self.scales, self.zeros, self.svals))
