"""Version and tag records on the object backend, so the catalog can be rebuilt from it alone.

The SQL catalog is the index everyone queries; these small JSON files beside the objects are its
backup: ``catalog/versions/<model>/v<N>.json`` (what the catalog's version row says) and
``catalog/tags/<model>/<tag>.json``. They are written after the catalog commits and removed
with ``rm``/``untag``. ``deltastore db rebuild`` fills an empty catalog from them and the
manifests they name (a lost SQLite file, a new PostgreSQL server, a second team's catalog).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from .backend import Backend
from .catalog import Lineage as LineageRow, Model, ObjectRow, Tag, Version, VersionObject
from .errors import BadInputError
from .manifest import Manifest
from .protocols import StoreView
from .results import VersionInfo

PREFIX = "catalog"


def version_key(model: str, number: int) -> str:
    return f"{PREFIX}/versions/{model}/v{number}.json"


def tag_key(model: str, tag: str) -> str:
    return f"{PREFIX}/tags/{model}/{tag}.json"


def write_version(backend: Backend, info: VersionInfo) -> None:
    d = info.to_dict()
    d.pop("tags", None)  # tags live in their own records: they move
    backend.put(version_key(info.model, info.number), json.dumps(d, sort_keys=True, indent=1).encode())


def write_tag(backend: Backend, model: str, tag: str, number: int) -> None:
    backend.put(tag_key(model, tag), json.dumps({"model": model, "tag": tag, "version": number}).encode())


def delete_version(backend: Backend, info: VersionInfo) -> None:
    backend.delete(version_key(info.model, info.number))
    for t in info.tags:
        backend.delete(tag_key(info.model, t))


def delete_tag(backend: Backend, model: str, tag: str) -> None:
    backend.delete(tag_key(model, tag))


@dataclass
class RebuildReport:
    versions: int
    tags: int
    objects: int

    def to_dict(self) -> dict[str, Any]:
        return {"versions": self.versions, "tags": self.tags, "objects": self.objects}


def rebuild(store: StoreView) -> RebuildReport:
    """Fill an empty catalog from the records and manifests on the backend."""

    with store.Session() as s:
        if s.scalar(select(func.count()).select_from(Version)):
            raise BadInputError("the catalog already has versions; rebuild fills an empty one (point --db-url at a new database)")
    recs = []
    for key in store.backend.list(f"{PREFIX}/versions"):
        if key.endswith(".json"):
            recs.append(json.loads(store.backend.get(key)))
    # bases were added before their fine-tunes
    recs.sort(key=lambda r: (r["created_at"], r["model"], r["number"]))
    ids: dict[str, int] = {}
    seen: set[str] = set()
    ntags = 0
    with store.Session.begin() as s:
        models: dict[str, Model] = {}
        for r in recs:
            m = models.get(r["model"])
            if m is None:
                m = models[r["model"]] = Model(name=r["model"])
                s.add(m)
                s.flush()
            man = Manifest.from_json(store.objects.get(r["manifest"]))
            base_id = None
            if r.get("base"):
                if r["base"] not in ids:
                    raise BadInputError(f"{r['ref']}: its base {r['base']} has no record on the backend")
                base_id = ids[r["base"]]
            created = dt.datetime.fromisoformat(r["created_at"].removesuffix("Z"))
            v = Version(model_id=m.id, number=r["number"], manifest=r["manifest"], base_version_id=base_id, kind=r["kind"],
                        codec=r["codec"], codec_params=r["codec_params"], logical_bytes=r["logical_bytes"],
                        stored_bytes=r["stored_bytes"], referenced_bytes=r["referenced_bytes"], message=r["message"],
                        author=r["author"], created_at=created, metrics=r["metrics"], calib_sha256=r.get("calib_sha256"))
            s.add(v)
            s.flush()
            ids[f"{r['model']}@v{r['number']}"] = v.id
            if base_id is not None:
                s.add(LineageRow(parent_id=base_id, child_id=v.id, relation="base"))
            kinds = man.object_kinds(r["manifest"])
            logical = {t.object: t.nbytes for _, t in man.tensors() if t.object and t.source == "tensor"}
            logical.update({f.object: f.size for f in man.files if f.object})
            for oid in sorted(man.object_ids() | {r["manifest"]}):
                s.add(VersionObject(version_id=v.id, oid=oid))
                if oid not in seen:
                    seen.add(oid)
                    size = store.objects.stored_size(oid) or 0
                    s.add(ObjectRow(oid=oid, kind=kinds.get(oid, "blob"), logical_bytes=logical.get(oid, size), stored_bytes=size))
        for key in store.backend.list(f"{PREFIX}/tags"):
            if not key.endswith(".json"):
                continue
            t = json.loads(store.backend.get(key))
            vid = ids.get(f"{t['model']}@v{t['version']}")
            if vid is not None:
                s.add(Tag(model_id=models[t["model"]].id, name=t["tag"], version_id=vid))
                ntags += 1
    return RebuildReport(versions=len(recs), tags=ntags, objects=len(seen))
