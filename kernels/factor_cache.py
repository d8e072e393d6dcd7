"""The CPU serving path's dequantized factors, kept between calls within a byte budget.

Without a GPU a lazy model applies its delta-come deltas with the torch reference ops
(:mod:`.ref_ops`), which unpack and dequantize every tier's V^ and U^ from the packed words on every
call: on the dev VM two thirds of a SmolLM2 lazy forward, 4-5x the materialized model's time a
token. The factors do not change between calls, so the CPU path keeps the float32 factors
(exactly what the reference computes, stacked a slot or a slice at a time as it stacks them: the
results are the reference's, bit for bit) in one
process-wide store of at most ``DELTASTORE_CPU_FACTOR_MB`` MB (default 2048; 0 turns it off),
first come, first kept: once it is full, further factors are dequantized per call as before. No
least-recently-used eviction on purpose: a forward pass visits every layer in turn, so a model
whose factors exceed the budget would evict each layer's entry before its next use and keep
nothing useful; kept as they come, the first layers stay and the speed-up is in proportion to the
budget. Bitdelta's CPU path keeps its unpacked signs here too. Entries belong to an owner (a
:class:`~.deltaset.DeltaSet` or a :class:`~.bitdelta.BitDeltaSet`) and its generation: adding or
dropping a fine-tune, moving the set, or the set being garbage-collected frees them. GPU tensors
are never kept here (the Triton paths read the packed words directly).
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from typing import Callable

import torch

DEFAULT_MB = 2048

_lock = threading.Lock()
_entries: dict[tuple[int, int, int], dict[object, torch.Tensor]] = {}  # (owner, generation, slot) -> {what: tensor}
_sizes: dict[tuple[int, int, int], int] = {}
_total = [0]
_ids = itertools.count(1)


def budget_bytes() -> int:
    """The cache's budget from ``DELTASTORE_CPU_FACTOR_MB`` (read on every call, so a test or a
    server can change it); a value that is not a number of MB >= 0 is refused."""
    raw = os.environ.get("DELTASTORE_CPU_FACTOR_MB", "").strip()
    if not raw:
        return DEFAULT_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb >= 0:
        from .errors import KernelError

        raise KernelError(f"DELTASTORE_CPU_FACTOR_MB must be a number of MB >= 0, not {raw!r}")
    return int(mb * (1 << 20))


def new_owner(owner: object) -> int:
    """An id for ``owner`` (a delta set) under which its entries are kept; they are forgotten when
    ``owner`` is garbage-collected."""
    uid = next(_ids)
    weakref.finalize(owner, forget, uid)
    return uid


def forget(uid: int, generation: int | None = None) -> None:
    """Drop the entries of owner ``uid`` (of every generation, or of those other than ``generation``)."""
    with _lock:
        for key in [k for k in _entries if k[0] == uid and (generation is None or k[1] != generation)]:
            _drop(key)


def _drop(key: tuple[int, int, int]) -> None:
    del _entries[key]
    _total[0] -= _sizes.pop(key)


def held_bytes() -> int:
    """Bytes of factors held now (all owners)."""
    with _lock:
        return _total[0]


def keep(uid: int, generation: int, slot: int, sub: object, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor kept for (owner ``uid``'s build ``generation``, ``slot``, ``sub``), else ``make()``,
    kept if it is on the CPU and the budget has room."""
    key = (uid, generation, slot)
    with _lock:
        got = _entries.get(key, {}).get(sub)
    if got is not None:
        return got
    t = make()
    if t.device.type != "cpu":
        return t
    size = t.numel() * t.element_size()
    limit = budget_bytes()
    with _lock:
        if _total[0] + size <= limit:
            entry = _entries.setdefault(key, {})
            if sub not in entry:  # (another thread may have kept it meanwhile)
                entry[sub] = t
                _sizes[key] = _sizes.get(key, 0) + size
                _total[0] += size
    return t


def stacks(uid: int, generation: int) -> Callable[[int, object, Callable[[], torch.Tensor]], torch.Tensor]:
    """``stacked(slot, key, make)``: the tensor kept for owner ``uid``'s build ``generation``,
    ``slot`` and ``key`` (ref_ops' stacked V^, S or a slice's U^), else ``make()``, kept if the
    budget has room (:func:`keep`)."""

    def stacked(slot: int, key: object, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        return keep(uid, generation, slot, ("stack", key), make)

    return stacked


__all__ = ["DEFAULT_MB", "budget_bytes", "forget", "held_bytes", "keep", "new_owner", "stacks"]
