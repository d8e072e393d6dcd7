"""Typed results the Python API returns (and the CLI prints, or dumps with --json)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class VersionInfo:
    model: str
    number: int
    manifest: str
    kind: str  # "base" | "finetune"
    base: str | None  # REF of the base version, e.g. "llama@v1"
    codec: str
    codec_params: dict[str, Any]
    logical_bytes: int
    stored_bytes: int
    referenced_bytes: int
    message: str
    author: str
    created_at: dt.datetime
    metrics: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    calib_sha256: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.model}@v{self.number}"

    @property
    def ratio(self) -> float:
        """Bytes of the files added / bytes the store added for them."""
        return self.logical_bytes / max(self.stored_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ref"] = self.ref
        d["created_at"] = self.created_at.isoformat() + "Z"
        d["ratio"] = round(self.ratio, 4)
        return d


@dataclass
class ModelInfo:
    name: str
    versions: int
    latest: int | None
    kind: str
    logical_bytes: int
    stored_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CheckoutResult:
    ref: str
    out: str
    files: int
    bytes_written: int
    exact: bool  # every file byte-identical to what was added (checked by sha256)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TensorDiff:
    name: str
    status: str  # "changed" | "only-a" | "only-b" | "shape" | "dtype"
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    max_abs: float | None = None
    rel_fro: float | None = None  # ||b - a|| / ||a||
    changed_frac: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Problem:
    """One thing verify found wrong; collected, not raised, so one run names them all."""

    oid: str | None
    what: str
    versions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyReport:
    versions: int
    objects: int
    bytes_read: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "versions": self.versions, "objects": self.objects, "bytes_read": self.bytes_read,
                "problems": [p.to_dict() for p in self.problems]}


@dataclass
class GcReport:
    deleted: int
    freed_bytes: int
    kept_recent: int  # unreferenced but possibly needed by an add in progress
    temp_deleted: int
    dry_run: bool
    #: version records of other catalogs (or of none: a bare remote's) whose objects this gc kept
    other_versions: int = 0
    #: "key: why" for records, or their manifests, that could not be read (what they name is unknown)
    unreadable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DuReport:
    versions: int
    objects: int
    logical_bytes: int  # what the versions' files add up to
    referenced_bytes: int  # stored bytes each version uses, counted once per version
    stored_bytes: int  # stored bytes of all objects, counted once
    dedup_saved_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LineageNode:
    ref: str
    codec: str
    children: list["LineageNode"] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "codec": self.codec, "children": [c.to_dict() for c in self.children]}


@dataclass
class Lineage:
    ref: str
    ancestors: list[str]  # nearest first
    tree: LineageNode  # this version and its descendants

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "ancestors": self.ancestors, "descendants": self.tree.to_dict()}
