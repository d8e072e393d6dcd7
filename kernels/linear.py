"""``DeltaLinear``: a linear layer that keeps the shared base weight and packed deltas beside it.

``y = x W^T (+ b) + x D_t^T`` for the fine-tune ``t`` each row names, with ``D_t`` applied from
its packed delta-come tiers (never expanded): two Triton launches on a GPU (for many rows of one
fine-tune a dequant launch into a scratch and cuBLAS GEMMs instead: :mod:`.dense`), the torch reference
ops elsewhere (same API, same results within rounding: see tests/kernels); or, for a fine-tune
stored with the ``lowrank`` codec, from its two fp16 factors by two GEMMs (:mod:`.lowrank`); with the
``bitdelta`` codec, from its sign bits by one launch (:mod:`.bitdelta`). Every DeltaLinear of a
model shares one :class:`DeltaContext`, which holds the current batch's per-row fine-tune ids
(vLLM's punica wrapper plays this role for LoRA): the ids are set once per forward, the row plan
(rows sorted by fine-tune) is built once per batch shape and reused by every linear.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import os
import weakref
from typing import Callable, Iterator, TypeVar

import torch
from torch import nn

from . import base_gemv, dense, factor_cache, join, lut, mma, ref_ops, triton_ops
from .deltaset import DeltaSet, RowPlan, check_ids, host_hint, plan_rows
from .errors import KernelError
from .bitdelta import BitDeltaSet
from .lowrank import LowRankSet
from .packed import PackedDeltaCoMe


class KernelPreference(str, enum.Enum):
    """Which implementation applies the deltas (torchao's names): AUTO picks Triton on a GPU when
    Triton is installed, the torch reference ops otherwise."""

    AUTO = "auto"
    TRITON = "triton"
    TORCH = "torch"


def resolve_preference(pref: KernelPreference | str, x: torch.Tensor) -> KernelPreference:
    pref = KernelPreference(pref)
    if pref is KernelPreference.AUTO:
        return KernelPreference.TRITON if (x.is_cuda and triton_ops.HAVE_TRITON) else KernelPreference.TORCH
    if pref is KernelPreference.TRITON and not triton_ops.usable(x):
        raise KernelError("KernelPreference.TRITON needs triton and a CUDA tensor (or TRITON_INTERPRET=1)")
    return pref


def apply_deltas(x: torch.Tensor, y: torch.Tensor, dset: DeltaSet, plan: RowPlan,
                 preference: KernelPreference | str = KernelPreference.AUTO, split_k: int | None = None,
                 path: str | None = None, overwrite: bool = False, fused: "join.Join | None" = None,
                 zsum: torch.Tensor | None = None, zero: torch.Tensor | None = None) -> torch.Tensor:
    """y (M, sum out) += per-row delta of x (M, in), in place: shrink then expand (2 launches);
    with Triton on a GPU, 2 to 32 rows of one fine-tune, or 1 to 32 rows each of several (a batch of 2+),
    take the tensor-core kernels (:mod:`.mma`, where they serve the set), more rows of one fine-tune the dense path (:mod:`.dense`:
    dequantize, then cuBLAS GEMMs). ``path`` ("mma", "gemv", "dot", "dense") forces a path.
    ``overwrite``: y = the delta (y's contents not read), zeroed by the kernels where they can (the
    GEMV shrink's programs; the tensor-core path's launch that zeroes its z) instead of a launch
    of its own. ``fused``: the GEMV path's expand joins y (fused.d) into the base output by its last
    program (:mod:`.join`; the caller checked that path serves: :func:`fused_join`). ``zsum``: a zeroed
    float32 (M, zcols) buffer for the GEMV shrink's atomically summed z (triton_ops.GEMV_Z_ATOMIC). ``zero``:
    a contiguous float32 buffer (:func:`beside`'s, holding y and zsum) zeroed first: by the lookup shrink's
    table launch where that serves (:mod:`.lut`), else by ``zero_()``."""
    if dset.n_slots == 0:
        _zero(zero)
        return y.zero_() if overwrite else y
    if plan.n_slots != dset.n_slots:
        raise KernelError(f"the row plan covers {plan.n_slots} fine-tunes; the deltas have {dset.n_slots}")
    if resolve_preference(preference, x) is KernelPreference.TRITON:
        if mma.use_mma(x, dset, plan, path):
            _zero(zero)
            return mma.apply(x, y, dset, plan, overwrite)
        if dense.use_dense(dset, plan, path):
            _zero(zero)
            return dense.apply(x, y.zero_() if overwrite else y, dset, plan)
        if path is None and split_k is None and lut.serves(x, dset, plan, zsum, fused):  # (off: see kernels/lut.py)
            z = lut.shrink(x, dset, plan, zsum, zero=zero)  # (its table launch zeroes ``zero``)
        else:
            _zero(zero)
            sk = triton_ops.pick_split_k(x.shape[0], dset, path, plan) if split_k is None else split_k
            z = triton_ops.shrink(x, dset, plan, sk, path=path, zero=y if overwrite else None, zsum=zsum)
        return triton_ops.expand(z, y, dset, plan, path=path, pdl=True, fused=fused)  # (launched right after its shrink)
    _zero(zero)
    if overwrite:
        y.zero_()
    stacks = cpu_stacks(dset) if x.device.type == "cpu" else None
    z = ref_ops.shrink(x, dset, plan, stacks=stacks)
    return ref_ops.expand(z, y, dset, plan, stacks=stacks)


def _zero(buf: torch.Tensor | None) -> None:
    """Zero ``buf`` by a launch of its own where given (the paths whose kernels do not)."""
    if buf is not None:
        buf.zero_()


def cpu_stacks(dset: DeltaSet) -> ref_ops.Stacks:
    """The reference ops' stacked factors of ``dset`` dequantized once and kept between calls
    (:mod:`.factor_cache`): the CPU path's results are the reference's, bit for bit."""
    uid, generation = dset.cache_key
    return factor_cache.stacks(uid, generation)


T = TypeVar("T")
_SIDE: dict[tuple[int, str], "torch.cuda.Stream"] = {}
#: the side stream's priority: "high" (the default: the deltas' programs are placed before the base
#: GEMM's as SMs free up) or "default" (a stream's default, the lowest, which the GEMM's stream has:
#: neither goes first). "default" measured slower beside the base GEMV (H200, one Llama-2-7B layer through
#: the modules, beside_device.sh, raw_h200/s28): one row 161.2 us against 157.2, 4 rows of one
#: fine-tune 184.1 / 176.6, 8 rows over 8 495.8 / 503.2 (level). An A/B knob: DELTASTORE_SIDE_PRIORITY
SIDE_PRIORITY = os.environ.get("DELTASTORE_SIDE_PRIORITY", "high")
#: :func:`beside` has the delta kernels zero its float32 buffer (``apply_deltas(overwrite=True)``:
#: the GEMV shrink's programs, or the tensor-core path's zeroing of its z) instead of a zero_() launch
#: of its own ahead of them on the side stream: one launch fewer a group on the deltas' chain. Off:
#: no gain measured (H200, beside_device.sh, raw_h200/s28): one row 162.9 us against 157.2, 8 rows
#: over 8 fine-tunes 492.3 / 503.2, 4 rows of one 177.8 / 176.6 (DELTASTORE_ZERO_IN_KERNELS=1 on)
ZERO_IN_KERNELS = os.environ.get("DELTASTORE_ZERO_IN_KERNELS", "0") not in ("", "0")


def side_stream(x: torch.Tensor, preference: KernelPreference | str, ctx: "DeltaContext | None" = None) -> "torch.cuda.Stream | None":
    """The stream a linear runs its packed deltas on beside its base GEMM: one high-priority CUDA
    stream per device, made once. None (deltas after the GEMM, on the current stream) on the CPU,
    for the torch reference ops, and by default (``DELTASTORE_DELTA_STREAM`` unset) everywhere but
    graph decoding: the side stream serves a forward while ``ctx`` plans from static ids (the steps
    of ``graph_decode``: the captured one and the eager first step of its shape, which compiles and
    loads every kernel the capture will launch); ``=1`` always, ``=0`` never. Not every capture: a
    graph captured by hand after an eager warm-up must launch the warm-up's kernels (a Triton kernel
    first loaded inside a capture fails it: cuModuleLoadData is not allowed while capturing), so it
    keeps the one-stream path its warm-up took.

    Why beside: at a few rows per fine-tune the delta kernels are bound by latency (a chain of
    dependent loads over ~1000 rank components, few programs), the base GEMM by memory bandwidth;
    run one after the other they add up, run side by side the deltas mostly hide under the GEMM's
    reads. High priority so the deltas' programs are placed first and the GEMM fills the rest.
    Why only in a graph: an eager forward at these rows is bound by the host's launches, and the
    fork, the join and the extra launches cost more host time than the overlap saves on the GPU (a
    lazy 7B's first token, its eager prefill: 86.7 ms with the side stream, 68.3 ms without; H200,
    benchmarks/probe_first_token.py, raw_h200/s23/first_token_ab.md).
    """
    mode = os.environ.get("DELTASTORE_DELTA_STREAM", "")
    if not x.is_cuda or mode == "0":
        return None
    if resolve_preference(preference, x) is not KernelPreference.TRITON:
        return None
    if mode != "1" and not (ctx is not None and ctx.static):
        return None
    idx = x.device.index if x.device.index is not None else torch.cuda.current_device()
    s = _SIDE.get((idx, SIDE_PRIORITY))
    if s is None:  # (a bad priority is never cached, so it is refused on every call)
        if SIDE_PRIORITY not in ("high", "default"):
            raise KernelError(f"DELTASTORE_SIDE_PRIORITY is 'high' or 'default', not {SIDE_PRIORITY!r}")
        lo, hi = torch.cuda.Stream.priority_range()  # (lowest, greatest): numerically lower is higher
        prio = min(lo, hi) if SIDE_PRIORITY == "high" else 0
        s = _SIDE[(idx, SIDE_PRIORITY)] = torch.cuda.Stream(device=idx, priority=prio)
    return s


def side_for(x: torch.Tensor, dset: DeltaSet, preference: KernelPreference | str,
             plan: RowPlan | None = None, ctx: "DeltaContext | None" = None) -> "torch.cuda.Stream | None":
    """:func:`side_stream` where it pays: the GEMV path (a few rows per fine-tune), and the
    tensor-core kernels (:mod:`.mma`, where they serve ``plan`` and :data:`.mma.SIDE`). On the H200
    (bench_kernels.py) a layer at M=1 ran 5% faster with it (209 -> 199 us) and 32 rows over 8
    fine-tunes 3% faster; on the tl.dot path (M=16) 1.5% slower: None there."""
    s = side_stream(x, preference, ctx)
    if s is None:
        return None
    if triton_ops.use_gemv(x.shape[0], dset, plan=plan):
        return s
    return s if (plan is not None and mma.SIDE and mma.use_mma(x, dset, plan)) else None


def _delta_buffer(x: torch.Tensor, dset: DeltaSet, plan: RowPlan, with_zsum: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(whole, d, zsum)``: one float32 allocation on x's device holding d (M, sum out) and, where the
    GEMV kernels serve the batch with their splits summed by atomics (:data:`.triton_ops.GEMV_Z_ATOMIC`; a few
    rows a fine-tune, so the extra floats stay few), the shrink's summed z (M, zcols) after it (else None):
    so one launch zeroes both (``whole.zero_()``)."""
    M, N = x.shape[0], sum(dset.out_features)
    zc = 0
    if with_zsum and triton_ops.GEMV_Z_ATOMIC and dset.n_slots and x.is_cuda:
        dset.build()
        zc = dset.zcols if triton_ops.use_gemv(M, dset, None, plan) else 0
    whole = torch.empty(M * (N + zc), dtype=torch.float32, device=x.device)
    return whole, whole[: M * N].view(M, N), (whole[M * N:].view(M, zc) if zc else None)


#: set while :func:`beside` computes the base with the deltas on the side stream
_BESIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("deltastore_base_beside_deltas", default=False)


def beside(x: torch.Tensor, dset: DeltaSet, plan: RowPlan, base: Callable[[], T],
           preference: KernelPreference | str = KernelPreference.AUTO, *, side: "torch.cuda.Stream | None | bool" = True,
           out: torch.Tensor | None = None, split_k: int | None = None, fused: "join.Join | None" = None) -> tuple[T, torch.Tensor]:
    """``(base(), d)``: d float32 (M, sum out) = the per-row packed delta of x (M, in), computed on
    :func:`side_stream` while ``base()`` runs on the current stream; both are done (on the current
    stream's order) when this returns. ``side=True``: the stream of :func:`side_for` (or none);
    ``side=False``: one after the other on the current stream.

    Graph-safe: the fork and join are stream waits (captured as graph edges), no host sync; d is
    allocated on the current stream before the fork (or given as ``out``), so the allocator never
    hands its memory to another stream while the side stream still writes it. ``fused``: d is
    fused.d and the expand joins it into the base output by its last program (``base()`` writes
    fused.y with the same join), so d is already in y when this returns (:mod:`.join`)."""
    zero_in = ZERO_IN_KERNELS and fused is None
    own = fused is None and out is None  # d allocated here (else fused.d or the caller's)
    if own:
        buf, d, zsum = _delta_buffer(x, dset, plan, with_zsum=not zero_in)
    elif fused is not None:  # (its d and summed z share one allocation too: fused_join)
        buf, d, zsum = fused.whole, fused.d, fused.zsum
    else:
        buf, d, zsum = out, out, None
    s = side_for(x, dset, preference) if side is True else (side or None)

    def deltas() -> None:  # the buffer zeroed by a launch of its own, or by the delta kernels (ZERO_IN_KERNELS)
        if triton_ops.PREFETCH and s is not None and dset.n_slots == 1:
            triton_ops.prefetch_(dset)
        apply_deltas(x, d, dset, plan, preference, split_k, overwrite=zero_in, fused=fused, zsum=zsum, zero=None if zero_in else buf)

    if s is None:
        deltas()
        return base(), d
    main = torch.cuda.current_stream(x.device)
    s.wait_stream(main)
    with torch.cuda.stream(s):
        deltas()
    token = _BESIDE.set(True)  # the base may take the Triton kernels that leave the deltas SMs (base_linear)
    try:
        y = base()
    finally:
        _BESIDE.reset(token)
    main.wait_stream(s)
    return y, d


def _triton_base_here() -> bool:
    """Whether the base being computed has the deltas running beside it (:func:`beside` on a side stream)."""
    return _BESIDE.get()


def base_linear(x2: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x2 W^T + b, the base part of a lazy linear: the Triton base GEMV where it serves
    (:func:`.base_gemv.serves`: up to 32 rows on a GPU) and the deltas run beside it on the side
    stream (graph decoding, by default), which its small CTAs leave SMs to; else torch's linear
    (cuBLAS), which is faster alone (the Triton base alone: x1.04 of cuBLAS at one row, x1.09 at 5,
    x1.31 at 32 rows over 8; H200, raw_h200/s22/ab_defaults.md) and costs less host time a launch
    in an eager forward."""
    if _triton_base_here() and base_gemv.serves(x2, W):
        return base_gemv.gemv(x2, W, b)
    return nn.functional.linear(x2, W, b)


def fused_join(x2: torch.Tensor, dset: DeltaSet, W: torch.Tensor | None, side_deltas: bool, plan: RowPlan) -> "join.Join | None":
    """A fused join for one step of a linear or group (:mod:`.join`), or None where its two kernels
    do not both serve: one row, on a GPU by the base GEMV (:func:`.base_gemv.serves`, W the whole
    weight: one GEMV) and the GEMV delta path with float32 atomics, every slice a multiple of
    :data:`.join.COLS` columns, nothing added into y after the base (``side_deltas``: lowrank or
    bitdelta deltas of a member)."""
    M = x2.shape[0]
    if not (join.ENABLED and join.HAVE_TRITON and triton_ops.GEMV_ATOMIC and M <= base_gemv.GEMV_ROWS and dset.n_slots
            and not side_deltas and W is not None and dset.block_k == join.COLS):
        return None
    N = sum(dset.out_features)
    if N % join.COLS or any(o % join.COLS for o in dset.col_offsets) or x2.dtype != W.dtype or not base_gemv.serves(x2, W):
        return None
    if mma.use_mma(x2, dset, plan) or dense.use_dense(dset, plan, None) or not triton_ops.use_gemv(M, dset, plan=plan):
        return None
    y = torch.empty(M, N, dtype=x2.dtype, device=x2.device)
    whole, d, zsum = _delta_buffer(x2, dset, plan)
    return join.Join(y, d, dset.join_counters(N // join.COLS), base_gemv.join_arrivals(N) + triton_ops.join_arrivals(M, dset, plan),
                     zsum, whole)


def with_delta(y: torch.Tensor, d: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float(y) + d rounded once to ``dtype``, in one kernel where y already has it (in place; on a
    GPU the Triton add, :func:`.triton_ops.add_f32_`, the same bits as torch's mixed-dtype add)."""
    if y.dtype != dtype:
        return d.add_(y).to(dtype)
    if y.is_cuda and triton_ops.HAVE_TRITON and triton_ops.JOIN_ADD and y.shape == d.shape and y.is_contiguous() and d.is_contiguous():
        return triton_ops.add_f32_(y, d)
    return y.add_(d)


class DeltaContext:
    """Per-row fine-tune ids for the current forward, shared by every DeltaLinear of a model.

    ``set(ids)``: one id per sequence (B,) or per token (B*T,), each a slot index or -1 for the
    base alone; ``None`` restores the default (``default_id`` for every row, or an error when
    there is none, so a multi-tenant model never silently serves the base).
    """

    def __init__(self, n_slots: int = 0, default_id: int | None = None):
        self.n_slots = n_slots
        self.default_id = default_id
        self._ids: torch.Tensor | None = None
        self._plans: dict[tuple[int, str], RowPlan] = {}
        self._static: torch.Tensor | None = None
        self.generation = 0  # bumped by every set(): what a DeltaGroup's kept slices are valid for

    def set(self, ids: torch.Tensor | list[int] | None) -> None:
        self._plans.clear()
        self.generation += 1
        if ids is None:
            self._ids = None
            return
        t = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
        check_ids(t, self.n_slots)
        self._ids = t

    @property
    def static(self) -> bool:
        """Whether forwards plan their rows from a static ids buffer (:meth:`static_ids`: graph
        decoding's steps, captured or the eager first step of a shape)."""
        return self._static is not None

    @property
    def has_ids(self) -> bool:
        return self._ids is not None

    def ids_for(self, n_rows: int, device: torch.device) -> torch.Tensor:
        """int64 (n_rows,) on ``device``: the current ids, one per row (ids given per sequence
        repeat over its tokens; no ids: ``default_id`` for every row, or an error)."""
        if self._ids is None:
            if self.default_id is None:
                raise KernelError("this model serves several fine-tunes: pass delta_ids (one per sequence; -1 = base) to forward/generate")
            return torch.full((n_rows,), self.default_id, dtype=torch.int64, device=device)
        ids = self._ids.to(device)
        if ids.numel() != n_rows:
            if ids.numel() == 0 or n_rows % ids.numel():
                raise KernelError(f"{ids.numel()} delta ids for a batch of {n_rows} rows")
            ids = ids.repeat_interleave(n_rows // ids.numel())
        return ids

    @contextlib.contextmanager
    def static_ids(self, buf: torch.Tensor) -> Iterator[None]:
        """Inside: a forward of ``buf.numel()`` rows plans its rows from ``buf`` (int64, on the
        model's device), read on the device with no host sync, so a captured CUDA graph replays
        with whatever ids are copied into ``buf`` later: one graph serves any mix of tenants. The
        plans made inside (which live in the graph's memory) are forgotten on exit."""
        self._plans.clear()
        self.generation += 1
        self._static = buf
        try:
            yield
        finally:
            self._static = None
            self._plans.clear()
            self.generation += 1

    def row_ids(self, n_rows: int, device: torch.device) -> torch.Tensor:
        """int64 (n_rows,): each row's fine-tune id for this forward (the static buffer inside
        :meth:`static_ids`, so graph replays read whatever ids are copied there)."""
        if self._static is not None and self._static.numel() == n_rows:
            return self._static
        return self.ids_for(n_rows, device)

    def plan(self, n_rows: int, device: torch.device) -> RowPlan:
        key = (n_rows, str(device))
        p = self._plans.get(key)
        if p is not None:
            return p
        p = self._plans[key] = plan_rows(self.row_ids(n_rows, device), self.n_slots)
        if self._static is None or self._static.numel() != n_rows:  # ids the host holds: what it knows of them
            if self._ids is None:
                if self.default_id is not None and self.default_id >= 0:
                    p.only_slot, p.base_rows, p.served = self.default_id, False, n_rows
            elif self._ids.device.type == "cpu":
                p.only_slot, p.base_rows = host_hint(self._ids)
                p.served = int((self._ids >= 0).sum()) * (n_rows // max(self._ids.numel(), 1))  # ids per sequence: its rows
        return p


def rows_view(ts: list[torch.Tensor]) -> torch.Tensor | None:
    """The one (sum of rows, cols) tensor whose consecutive row slices ARE ``ts`` (2-D, or 1-D
    biases: one vector whose slices they are), as a view of their shared storage; None when they
    are not such slices (separate tensors, another dtype, device or width, gaps between them)."""
    t0 = ts[0]
    if t0.dim() not in (1, 2) or any(t.dim() != t0.dim() or t.dtype != t0.dtype or t.device != t0.device for t in ts):
        return None
    cols = t0.shape[1] if t0.dim() == 2 else 1
    if any(t.shape[1:] != t0.shape[1:] or t.stride() != ((cols, 1) if t0.dim() == 2 else (1,)) for t in ts):
        return None
    ptr = t0.untyped_storage().data_ptr()
    off = t0.storage_offset()
    for t in ts:
        if t.untyped_storage().data_ptr() != ptr or t.storage_offset() != off:
            return None
        off += t.shape[0] * cols
    rows = sum(int(t.shape[0]) for t in ts)
    shape, stride = ((rows, cols), (cols, 1)) if t0.dim() == 2 else ((rows,), (1,))
    return t0.detach().as_strided(shape, stride, t0.storage_offset())


def concat_rows(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    """``ts`` (same dtype, device and width) as consecutive row slices of one new tensor, the same
    values; ``ts`` themselves when they already are (:func:`rows_view`). What a :class:`DeltaGroup`
    wants of its members' base weights: then one GEMM computes the whole group's base output. The
    caller drops the old tensors (else the base is held twice)."""
    if rows_view(ts) is not None:
        return list(ts)
    if len({(t.dtype, t.device, tuple(t.shape[1:])) for t in ts}) != 1:
        raise KernelError("concat_rows: the tensors differ in dtype, device or width")
    whole = torch.cat([t.detach() for t in ts], dim=0)
    out, o = [], 0
    for t in ts:
        out.append(whole[o : o + t.shape[0]])
        o += t.shape[0]
    return out


class DeltaGroup:
    """Linears that read the same input (q/k/v, gate/up): one DeltaSet with a slice each, so one
    shrink and one expand (2 launches) serve them all instead of 2 per linear.

    The first member called with an input computes the whole group's output y (rows, sum of
    out_features): one GEMM over the members' base weights where they are row slices of one tensor
    (:func:`concat_rows`; a lazy model's base is loaded so), else a GEMM each into y's columns;
    then the group's delta. Where the tl.dot kernels serve (more than a few rows per fine-tune, or
    the torch ops) the expand adds it into y in place, as a lone DeltaLinear does; where the GEMV
    kernels serve, the float32 delta is computed on the side stream (:func:`beside`) while the base
    GEMM runs, and added to y rounding once. Each member's output is its column slice of y (a
    view). The other members' slices are kept for their calls with the same input: the same
    tensor, unmodified since (its version counter), under the same row ids (the context's
    generation). A member whose module is gone is computed again at its own call.
    """

    def __init__(self, in_features: int, out_features: list[int], device: torch.device | str):
        self.deltas = DeltaSet(in_features, out_features, device)
        self._key: tuple | None = None
        self._kept: dict[int, torch.Tensor] = {}
        self._members: dict[int, weakref.ref] = {}
        self._whole: tuple[tuple, torch.Tensor | None, torch.Tensor | None] | None = None

    def join(self, index: int, member: "DeltaLinear") -> None:
        """Register member ``index`` (its base weight, bias and lowrank deltas serve the group's calls)."""
        self._members[index] = weakref.ref(member)

    def whole_weight(self, members: dict[int, "DeltaLinear"]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(W, b): the group's base weight (sum out, in) and bias as one tensor each, views of the
        members' (None where the weights are not row slices of one tensor, or a member is gone;
        b None also when no member has a bias). Kept while the members' tensors stay the same."""
        n = len(self.deltas.out_features)
        if len(members) != n:
            return None, None
        ms = [members[j] for j in range(n)]
        key = tuple((m.weight.data_ptr(), None if m.bias is None else m.bias.data_ptr()) for m in ms)
        if self._whole is not None and self._whole[0] == key:
            return self._whole[1], self._whole[2]
        W = rows_view([m.weight for m in ms])
        b = None
        if W is not None and any(m.bias is not None for m in ms):
            bs = [m.bias if m.bias is not None else torch.zeros(m.out_features, dtype=W.dtype, device=W.device) for m in ms]
            b = rows_view(bs) if all(m.bias is not None for m in ms) else None
            b = torch.cat([t.detach() for t in bs]) if b is None else b  # (a few KB; read-only, like the biases)
        self._whole = (key, W, b)
        return W, b

    def _base(self, x2: torch.Tensor, members: dict[int, "DeltaLinear"]) -> torch.Tensor:
        """(rows, sum out) in x2's dtype: every member's base output side by side, plus its
        lowrank deltas where it has some (added in place: rows of a lowrank fine-tune have no
        packed delta, and the reverse)."""
        W, b = self.whole_weight(members)
        if W is not None:
            y = base_linear(x2, W, b)
        else:
            y = torch.empty(x2.shape[0], sum(self.deltas.out_features), dtype=x2.dtype, device=x2.device)
            for j, (o, w) in enumerate(zip(self.deltas.col_offsets, self.deltas.out_features)):
                m = members.get(j)
                y[:, o : o + w] = 0 if m is None else base_linear(x2, m.weight, m.bias)
        for j, m in members.items():
            if m.has_side_deltas:
                o, w = self.deltas.col_offsets[j], self.deltas.out_features[j]
                y[:, o : o + w].add_(m.side_delta(x2))
        return y

    def output(self, index: int, x2: torch.Tensor, ctx: "DeltaContext", preference: KernelPreference | str) -> torch.Tensor:
        """(rows, out_features[index]) in x2's dtype: member ``index``'s output for x2 (rows,
        in_features), a column slice of the group's output (rows stride sum of out_features)."""
        key = (x2.data_ptr(), tuple(x2.shape), x2._version, x2.dtype, ctx.generation)
        if key == self._key and index in self._kept:
            return self._kept.pop(index)
        self._key, self._kept = None, {}
        members = {j: m for j, r in self._members.items() if (m := r()) is not None}
        plan = ctx.plan(x2.shape[0], x2.device)
        self.deltas.build()
        triton = resolve_preference(preference, x2) is KernelPreference.TRITON
        side = side_for(x2, self.deltas, preference, plan, ctx) if triton else None
        W, b = self.whole_weight(members)
        fused = fused_join(x2, self.deltas, W, any(m.has_side_deltas for m in members.values()), plan) if triton else None
        if fused is not None:  # the base GEMV and the GEMV expand join d into y by their last program
            y, _ = beside(x2, self.deltas, plan, lambda: base_gemv.gemv(x2, W, b, out=fused.y, path="gemv", fused=fused),
                          preference, side=side if side is not None else False, fused=fused)
        elif side is not None or (triton and triton_ops.use_gemv(x2.shape[0], self.deltas, plan=plan)):
            y, d = beside(x2, self.deltas, plan, lambda: self._base(x2, members), preference, side=side if side is not None else False)
            y = with_delta(y, d, x2.dtype)
        else:  # the tl.dot expand (or the torch op) adds into the base output in place
            y = apply_deltas(x2, self._base(x2, members), self.deltas, plan, preference)
        outs = {j: y[:, o : o + w] for j, (o, w) in enumerate(zip(self.deltas.col_offsets, self.deltas.out_features))}
        self._key = key
        self._kept = {j: t for j, t in outs.items() if j != index and j in members}
        return outs[index]


class DeltaLinear(nn.Module):
    """nn.Linear with packed deltas beside its (shared) base weight; see the module docstring."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, ctx: DeltaContext,
                 preference: KernelPreference | str = KernelPreference.AUTO, group: DeltaGroup | None = None, index: int = 0):
        super().__init__()
        self.out_features, self.in_features = (int(s) for s in weight.shape)
        # the base tensors are shared with other models of the same base: parameters that need no grad
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.ctx = ctx
        self.preference = KernelPreference(preference)
        # a member of a group shares the group's DeltaSet (its slice ``index``); alone, a set of its own
        self.group, self.index = group, int(index)
        self.deltas = group.deltas if group is not None else DeltaSet(self.in_features, [self.out_features], weight.device)
        #: this linear's lowrank deltas by slot (never shared with the group: two GEMMs each)
        self.lowrank = LowRankSet(self.in_features, self.out_features, weight.device)
        #: and its bitdelta deltas by slot (sign bits: one launch each, :mod:`.bitdelta`)
        self.bitdelta = BitDeltaSet(self.in_features, self.out_features, weight.device)
        if group is not None:
            group.join(self.index, self)

    @classmethod
    def from_linear(cls, lin: nn.Linear, ctx: DeltaContext, preference: KernelPreference | str = KernelPreference.AUTO,
                    group: DeltaGroup | None = None, index: int = 0) -> "DeltaLinear":
        return cls(lin.weight.data, None if lin.bias is None else lin.bias.data, ctx, preference, group, index)

    def add_delta(self, delta: PackedDeltaCoMe | None, slot: int | None = None) -> int:
        """Load one fine-tune's delta for this linear (None: unchanged); returns its slot."""
        if self.group is not None:
            raise KernelError("this linear shares a DeltaSet with its group; add the group's deltas with group.deltas.add")
        return self.deltas.add([delta], slot)

    def drop_delta(self, slot: int) -> None:
        if self.group is not None:
            raise KernelError("this linear shares a DeltaSet with its group; drop the slot with group.deltas.drop")
        self.deltas.drop(slot)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, deltas={self.deltas.n_slots}, preference={self.preference.value}"

    @property
    def has_side_deltas(self) -> bool:
        """Whether lowrank or bitdelta deltas are loaded (applied beside the packed sets)."""
        return bool(len(self.lowrank) or len(self.bitdelta))

    def side_delta(self, x2: torch.Tensor) -> torch.Tensor:
        """float32 (rows, out): this linear's lowrank and bitdelta deltas for the rows that name
        one (zero elsewhere; a row's fine-tune has one kind of delta for a linear, so a sum)."""
        ids = self.ctx.row_ids(x2.shape[0], x2.device)
        d = self.lowrank.delta(x2, ids) if len(self.lowrank) else None
        if len(self.bitdelta):
            triton_ok = resolve_preference(self.preference, x2) is KernelPreference.TRITON
            d = self.bitdelta.delta(x2, ids, d, triton_ok=triton_ok)
        return d

    def base_output(self, x2: torch.Tensor) -> torch.Tensor:
        """(rows, out): x2 W^T + b in x2's dtype; with lowrank or bitdelta deltas loaded, float32
        and plus this linear's delta for the rows that name one (rows of such a fine-tune have no
        packed delta, and the reverse: a sum)."""
        y = base_linear(x2, self.weight, self.bias)
        if self.has_side_deltas:
            return self.side_delta(x2).add_(y)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device != self.weight.device:
            raise KernelError(f"input on {x.device}, but this layer's weights and deltas are on {self.weight.device}")
        if self.deltas.device != self.weight.device:  # the module was moved (.to / .cuda): its deltas follow
            self.deltas.to(self.weight.device)
        self.lowrank.to(self.weight.device)
        self.bitdelta.to(self.weight.device)
        packed = self.deltas.n_slots > 0 and self.deltas.holds_any
        if not packed and not self.has_side_deltas:
            return nn.functional.linear(x, self.weight, self.bias)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if packed and self.group is not None:
            return self.group.output(self.index, x2, self.ctx, self.preference).reshape(*lead, self.out_features)
        if packed:  # (holds_any built the set's tables)
            plan = self.ctx.plan(x2.shape[0], x.device)
            side = side_for(x2, self.deltas, self.preference, plan, self.ctx)
            fused = fused_join(x2, self.deltas, self.weight, self.has_side_deltas, plan) if side is not None else None
            if fused is not None:  # the base GEMV and the GEMV expand join d into y by their last program
                y, _ = beside(x2, self.deltas, plan, lambda: base_gemv.gemv(x2, self.weight, self.bias, out=fused.y, path="gemv", fused=fused),
                              self.preference, side=side, fused=fused)
                return y.reshape(*lead, self.out_features)
            if side is not None:  # float32(base) + delta, rounded once
                y, d = beside(x2, self.deltas, plan, lambda: self.base_output(x2), self.preference, side=side)
                return with_delta(y, d, x.dtype).reshape(*lead, self.out_features)
            y2 = self.base_output(x2)  # one stream: the expand adds into the base output in place
            apply_deltas(x2, y2, self.deltas, plan, self.preference)
            return y2.to(x.dtype).reshape(*lead, self.out_features)
        return self.base_output(x2).to(x.dtype).reshape(*lead, self.out_features)
