"""The small typed view of a store that the capability modules work against.

``ingest``, ``materialize``, ``maintenance``, ``versions``, ``records`` and ``calibrate`` take a
:class:`StoreView` rather than importing :class:`deltastore.store.Store`: the facade imports them,
so they must not import it back, and a Protocol says exactly which parts of a store each one uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sqlalchemy.orm import sessionmaker

    from .backend import Backend
    from .config import StoreConfig
    from .manifest import Manifest
    from .objects import ObjectDB
    from .results import Lineage, VersionInfo

#: progress(phase, done, total): phases "add", "checkout", "verify"; counts are bytes or objects
Progress = Callable[[str, int, int], None]


def no_progress(phase: str, done: int, total: int) -> None:
    """The default progress callback: says nothing."""


class StoreView(Protocol):
    """What a capability module may use of a store: its catalog sessions, its objects, and
    the lookups every module needs (REF -> version, manifest by id, lineage)."""

    config: "StoreConfig"
    read_only: bool
    backend: "Backend"
    objects: "ObjectDB"
    Session: "sessionmaker"
    workers: int

    def resolve(self, ref: str) -> "VersionInfo": ...

    def manifest(self, ref_or_oid: str) -> "Manifest": ...

    def lineage(self, ref: str) -> "Lineage": ...

    def tensor(self, ref: str, name: str, *, device: str = "cpu") -> "torch.Tensor": ...

    def iter_tensors(self, ref: str, *, device: str = "cpu", dtype: "torch.dtype | None" = None
                     ) -> Iterator[tuple[str, "torch.Tensor"]]: ...

    def state_dict(self, ref: str, *, device: str = "cpu", dtype: "torch.dtype | None" = None
                   ) -> dict[str, "torch.Tensor"]: ...
