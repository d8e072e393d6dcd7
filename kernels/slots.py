"""One linear's deltas of one kind by slot (the fine-tune ids every delta set of a model shares),
kept on the linear's device: what the lowrank and bitdelta sets (:mod:`.lowrank`, :mod:`.bitdelta`)
have in common. The packed delta-come sets are :class:`~.deltaset.DeltaSet`."""

from __future__ import annotations

from typing import Any

import torch

from .errors import KernelError


class SlotDeltas:
    """Deltas by slot, each checked against the linear's shape and moved to its device.
    ``kind`` names them in errors; :meth:`_changed` runs after every add, drop or move (a set that
    builds tables from its slots drops them there)."""

    kind = "delta"

    def __init__(self, in_features: int, out_features: int, device: torch.device | str):
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.device = torch.device(device)
        self._slots: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, f: Any, slot: int) -> None:  # noqa: ANN401 - LowRankFactors or BitDeltaSigns
        if tuple(f.shape) != (self.out_features, self.in_features):
            raise KernelError(f"{self.kind} delta is {f.shape[0]}x{f.shape[1]}; the linear is {self.out_features}x{self.in_features}")
        if slot in self._slots:
            raise KernelError(f"slot {slot} already holds a {self.kind} delta")
        self._slots[int(slot)] = f.to(self.device)
        self._changed()

    def drop(self, slot: int) -> None:
        if self._slots.pop(int(slot), None) is not None:
            self._changed()

    def to(self, device: torch.device | str) -> "SlotDeltas":
        device = torch.device(device)
        if device != self.device:
            self._slots = {s: f.to(device) for s, f in self._slots.items()}
            self.device = device
            self._changed()
        return self

    def _changed(self) -> None:
        pass
