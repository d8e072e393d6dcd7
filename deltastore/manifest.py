"""Manifests: one model version as canonical JSON, stored as an object.

A manifest lists the version's files in order. A plain file points at a blob. A safetensors file
keeps its header verbatim (a blob) and lists its tensors in data order, each with where its bytes
come from:

- ``tensor``: a tensor object holding the bytes losslessly;
- ``delta``: a codec payload applied to the base version's tensor of the same name;
- ``base``: the base version's tensor, unchanged (costs no object).

``sha256`` is the hash of the bytes that were added (file or tensor); ``exact`` says whether the
store gives those bytes back (lossless) or an approximation (lossy codec). Canonical JSON (sorted
keys, no spaces) makes equal versions hash to the same manifest id.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

FORMAT = 1


@dataclass
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype code
    shape: list[int]
    nbytes: int
    sha256: str  # hex of the bytes that were added
    source: str  # "tensor" | "delta" | "base"
    object: str | None = None  # tensor or delta object id
    codec: str | None = None  # for deltas
    exact: bool = True
    rel_error: float | None = None  # lossy deltas: ||D - D^|| / ||D||, measured when added


@dataclass
class FileEntry:
    path: str
    kind: str  # "blob" | "safetensors"
    size: int
    sha256: str
    object: str | None = None  # blob id
    header: str | None = None  # blob id of the verbatim safetensors header
    tensors: list[TensorEntry] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return all(t.exact for t in self.tensors)


@dataclass
class Manifest:
    files: list[FileEntry]
    base: str | None = None  # the base version's manifest id
    codec: dict[str, Any] = field(default_factory=dict)  # config of the codec asked for
    format: int = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Manifest":
        d = json.loads(data)
        if d.get("format") != FORMAT:
            raise ValueError(f"manifest format {d.get('format')} is not one this deltastore reads ({FORMAT})")
        files = [
            FileEntry(**{**f, "tensors": [TensorEntry(**t) for t in f.get("tensors", [])]})
            for f in d["files"]
        ]
        return cls(files=files, base=d.get("base"), codec=d.get("codec", {}), format=d["format"])

    def tensors(self) -> Iterator[tuple[FileEntry, TensorEntry]]:
        for f in self.files:
            for t in f.tensors:
                yield f, t

    def tensor_map(self) -> dict[str, TensorEntry]:
        """Entries by tensor name; built once, since add and checkout look up every tensor's base
        entry by name (manifests are not modified after they are read or built)."""
        tmap = self.__dict__.get("_tensor_map")
        if tmap is None:
            tmap = self.__dict__["_tensor_map"] = {t.name: t for _, t in self.tensors()}
        return tmap

    def object_ids(self) -> set[str]:
        """Objects this manifest itself names (not its base's)."""
        out: set[str] = set()
        for f in self.files:
            for oid in (f.object, f.header):
                if oid:
                    out.add(oid)
            for t in f.tensors:
                if t.object:
                    out.add(t.object)
        return out

    def object_kinds(self, manifest_oid: str) -> dict[str, str]:
        """The kind of every object this manifest names (and of the manifest itself), for the
        catalog's object index."""
        kinds = {manifest_oid: "manifest"}
        for f in self.files:
            for oid in (f.object, f.header):
                if oid:
                    kinds[oid] = "blob"
            for t in f.tensors:
                if t.object:
                    kinds[t.object] = "tensor" if t.source == "tensor" else "delta"
        return kinds

    @property
    def logical_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def exact(self) -> bool:
        return all(f.exact for f in self.files)
