"""Version and tag records on the object backend, so the catalog can be rebuilt from it alone.

The SQL catalog is the index everyone queries; these small JSON files beside the objects are its
backup: ``catalog/versions/<model>/v<N>.json`` (what the catalog's version row says) and
``catalog/tags/<model>/<tag>.json``. A version's record is written *before* the catalog
transaction that creates the version commits (after its row has taken the version number, which
no other writer can take until it ends), so every committed version has its record; a crash in
between leaves a record with no version, which the next add of that number overwrites and
``gc`` (which excludes adds) removes. Records are removed with ``rm``/``untag``.
``deltastore db rebuild`` fills an empty catalog from them and the manifests they name (a lost
SQLite file, a new PostgreSQL server, a second team's catalog).

Records come from a shared bucket and are not trusted: :func:`parse_version` and
:func:`parse_tag` check every field and raise :class:`CorruptRecordError`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from .backend import TMP_PREFIX, Backend
from .catalog import Lineage as LineageRow, Model, ObjectRow, Tag, Version, VersionObject
from .crash import crash_point
from .errors import BadInputError, BadNameError, CorruptRecordError, ObjectMissingError
from .manifest import Manifest
from .protocols import StoreView
from .refs import check_name
from .results import VersionInfo

PREFIX = "catalog"
#: a record is a few KiB; one larger than this is not ours
MAX_RECORD = 1 << 20
_OID = re.compile(r"^sha256:[0-9a-f]{64}$")
_BASE_REF = re.compile(r"^(.+)@v([1-9][0-9]{0,9})$")
_VKEY = re.compile(r"^catalog/versions/([^/]+)/v([1-9][0-9]{0,9})\.json$")
_INTS = ("logical_bytes", "stored_bytes", "referenced_bytes")
_STRS = ("codec", "message", "author")


def _need(cond: bool, key: str, why: str) -> None:
    if not cond:
        raise CorruptRecordError(key, why)


def _load(key: str, data: bytes | None) -> dict:
    _need(data is not None, key, "it vanished while being read")
    _need(len(data) <= MAX_RECORD, key, f"{len(data)} bytes is too large for a record")
    try:
        d = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise CorruptRecordError(key, f"not JSON: {e}") from None
    _need(isinstance(d, dict), key, "not a JSON object")
    return d


def _name(key: str, v: object, what: str) -> str:
    try:
        return check_name(v, what)  # type: ignore[arg-type]
    except BadNameError as e:
        raise CorruptRecordError(key, str(e)) from None


def parse_version(key: str, data: bytes | None) -> dict[str, Any]:
    """A version record's fields, each checked (types, names, ids, numbers, the date)."""
    d = _load(key, data)
    _name(key, d.get("model"), "model name")
    _need(type(d.get("number")) is int and 1 <= d["number"] < 1 << 31, key, "number is not a positive integer")
    _need(isinstance(d.get("manifest"), str) and bool(_OID.match(d["manifest"])), key, "manifest is not an object id")
    _need(d.get("kind") in ("base", "finetune"), key, f"kind {d.get('kind')!r:.40} is not base or finetune")
    base = d.get("base")
    if base is not None:
        m = _BASE_REF.match(base) if isinstance(base, str) else None
        _need(m is not None, key, f"base {base!r:.80} is not NAME@vN")
        _name(key, m.group(1), "base model name")
    _need((base is None) == (d["kind"] == "base"), key, "a fine-tune names its base, a base names none")
    for k in _INTS:
        _need(type(d.get(k)) is int and 0 <= d[k] < 1 << 62, key, f"{k} is not a non-negative integer")
    for k in _STRS:
        _need(isinstance(d.get(k), str) and len(d[k]) < 1 << 16, key, f"{k} is not a string")
    for k in ("codec_params", "metrics"):
        _need(isinstance(d.get(k, {}), dict), key, f"{k} is not a JSON object")
    calib = d.get("calib_sha256")
    _need(calib is None or (isinstance(calib, str) and bool(re.match(r"^[0-9a-f]{64}$", calib))), key, "calib_sha256 is not a sha256")
    created = d.get("created_at")
    _need(isinstance(created, str) and len(created) < 64, key, "created_at is not a date")
    try:
        d["created_at"] = dt.datetime.fromisoformat(created.removesuffix("Z")).replace(tzinfo=None)
    except ValueError:
        raise CorruptRecordError(key, f"created_at {created!r} is not an ISO date") from None
    m = _VKEY.match(key)
    _need(m is not None and (m.group(1), int(m.group(2))) == (d["model"], d["number"]), key,
          "its name does not match the version it holds")
    d.setdefault("codec_params", {})
    d.setdefault("metrics", {})
    return d


def parse_tag(key: str, data: bytes | None) -> dict[str, Any]:
    d = _load(key, data)
    _name(key, d.get("model"), "model name")
    _name(key, d.get("tag"), "tag name")
    _need(type(d.get("version")) is int and 1 <= d["version"] < 1 << 31, key, "version is not a positive integer")
    return d


def version_key(model: str, number: int) -> str:
    return f"{PREFIX}/versions/{model}/v{number}.json"


def tag_key(model: str, tag: str) -> str:
    return f"{PREFIX}/tags/{model}/{tag}.json"


def write_version(backend: Backend, info: VersionInfo) -> None:
    """Write (or overwrite) a version's record, durably: the catalog commit comes after it."""
    d = info.to_dict()
    d.pop("tags", None)  # tags live in their own records: they move
    crash_point("records.write-version")
    backend.put(version_key(info.model, info.number), json.dumps(d, sort_keys=True, indent=1).encode())
    backend.flush()


def write_tag(backend: Backend, model: str, tag: str, number: int) -> None:
    backend.put(tag_key(model, tag), json.dumps({"model": model, "tag": tag, "version": number}).encode())


def delete_version(backend: Backend, info: VersionInfo) -> None:
    """Remove a removed version's record, unless it already holds another version that took the
    same number since (numbers are reused once the latest version is removed). The check and the
    delete are not atomic; gc writes back any record a committed version lacks."""
    crash_point("records.delete-version")
    key = version_key(info.model, info.number)
    try:
        r = parse_version(key, backend.get(key))
    except CorruptRecordError:
        r = None
    if r is None or (r["manifest"] == info.manifest and r["created_at"] == info.created_at):
        backend.delete(key)
    for t in info.tags:
        backend.delete(tag_key(info.model, t))


def delete_tag(backend: Backend, model: str, tag: str) -> None:
    backend.delete(tag_key(model, tag))


def reconcile(store: StoreView, committed: dict[tuple[str, int], VersionInfo], *, dry_run: bool = False) -> int:
    """Make the version records match the catalog: remove records (and temp files) that name no
    committed version (an add that crashed between its record and its commit), and write the
    record of any committed version that lacks one (an ``rm`` that raced a re-add of its
    number). Only safe while no add can be between its record and its commit, i.e. under gc's
    exclusion. Returns how many records were removed or written."""
    n = 0
    have: set[tuple[str, int]] = set()
    for key in list(store.backend.list(f"{PREFIX}/versions")):
        m = _VKEY.match(key)
        if m and (m.group(1), int(m.group(2))) in committed:
            have.add((m.group(1), int(m.group(2))))
        elif key.rsplit("/", 1)[-1].startswith(TMP_PREFIX) or m:
            if not dry_run:
                store.backend.delete(key)
            n += 1
    for k in sorted(set(committed) - have):
        if not dry_run:
            write_version(store.backend, committed[k])
        n += 1
    return n


@dataclass
class RebuildReport:
    versions: int
    tags: int
    objects: int
    #: records that could not be used (manifest gone, base gone), each "key: why"
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"versions": self.versions, "tags": self.tags, "objects": self.objects, "skipped": self.skipped}


def rebuild(store: StoreView) -> RebuildReport:
    """Fill an empty catalog from the records and manifests on the backend."""

    with store.Session() as s:
        if s.scalar(select(func.count()).select_from(Version)):
            raise BadInputError("the catalog already has versions; rebuild fills an empty one (point --db-url at a new database)")
    recs = []
    skipped: list[str] = []
    for key in sorted(store.backend.list(f"{PREFIX}/versions")):
        if key.endswith(".json") and not key.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
            r = parse_version(key, store.backend.get(key))
            r["key"] = key
            recs.append(r)
    # bases were added before their fine-tunes
    recs.sort(key=lambda r: (r["created_at"], r["model"], r["number"]))
    ids: dict[str, int] = {}
    seen: set[str] = set()
    ntags = 0
    with store.Session.begin() as s:
        models: dict[str, Model] = {}
        for r in recs:
            try:  # a record left by an add that never committed may name a manifest gc removed
                man = Manifest.from_json(store.objects.get(r["manifest"]), r["manifest"])
            except ObjectMissingError:
                skipped.append(f"{r['key']}: its manifest {r['manifest']} is not on the backend")
                continue
            base_id = None
            if r.get("base"):
                if r["base"] not in ids:
                    skipped.append(f"{r['key']}: its base {r['base']} has no usable record")
                    continue
                base_id = ids[r["base"]]
            m = models.get(r["model"])
            if m is None:
                m = models[r["model"]] = Model(name=r["model"])
                s.add(m)
                s.flush()
            created = r["created_at"]
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
        tagged: set[tuple[str, str]] = set()
        for key in sorted(store.backend.list(f"{PREFIX}/tags")):
            if not key.endswith(".json") or key.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
                continue
            t = parse_tag(key, store.backend.get(key))
            vid = ids.get(f"{t['model']}@v{t['version']}")
            if vid is not None and (t["model"], t["tag"]) not in tagged:
                tagged.add((t["model"], t["tag"]))
                s.add(Tag(model_id=models[t["model"]].id, name=t["tag"], version_id=vid))
                ntags += 1
    return RebuildReport(versions=len(ids), tags=ntags, objects=len(seen), skipped=skipped)
