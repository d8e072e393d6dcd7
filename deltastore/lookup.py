"""Catalog lookups inside a session: a model by name, a version by REF, its public record.

Every capability module resolves names the same way through these, so a REF means one thing
everywhere (``NAME``, ``NAME@v3``, ``NAME@latest``, ``NAME@tag``, ``NAME@<manifest-sha-prefix>``).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .catalog import Model, Tag, Version
from .errors import UnknownRefError
from .refs import Ref, parse_ref
from .results import VersionInfo


def find_model(s: Session, name: str) -> Model:
    m = s.scalar(select(Model).where(Model.name == name))
    if m is None:
        known = s.scalars(select(Model.name).order_by(Model.name).limit(10)).all()
        hint = f"; models: {', '.join(known)}" if known else "; the store is empty"
        raise UnknownRefError(f"no model named {name!r}{hint}")
    return m


def latest_number(s: Session, m: Model) -> int:
    return s.scalar(select(func.max(Version.number)).where(Version.model_id == m.id)) or 0


def resolve_version(s: Session, ref: str | Ref) -> Version:
    r = parse_ref(ref) if isinstance(ref, str) else ref
    m = find_model(s, r.model)
    q = select(Version).where(Version.model_id == m.id)
    if r.version is not None:
        v = s.scalar(q.where(Version.number == r.version))
        if v is None:
            raise UnknownRefError(f"{r.model} has no version v{r.version} (latest is v{latest_number(s, m)})")
        return v
    if r.latest:
        v = s.scalar(q.order_by(Version.number.desc()).limit(1))
        if v is None:
            raise UnknownRefError(f"{r.model} has no versions")
        return v
    if r.tag is not None:
        t = s.scalar(select(Tag).where(Tag.model_id == m.id, Tag.name == r.tag))
        if t is not None:
            return s.get(Version, t.version_id)
    if r.manifest_prefix is not None:
        hits = s.scalars(q.where(Version.manifest.like(f"sha256:{r.manifest_prefix}%"))).all()
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise UnknownRefError(f"{ref}: manifest prefix {r.manifest_prefix} is ambiguous ({len(hits)} versions)")
    raise UnknownRefError(f"{ref}: {r.model} has no tag or manifest {r.tag or r.manifest_prefix!r}")


def version_info(s: Session, v: Version) -> VersionInfo:
    return version_infos(s, [v])[0]


def version_infos(s: Session, vs: list[Version]) -> list[VersionInfo]:
    """Public records of many versions in three queries (tags, base names), not two per version:
    ``log`` over a model with hundreds of versions stays fast."""
    ids = [v.id for v in vs]
    tags: dict[int, list[str]] = {}
    bases: dict[int, str] = {}
    base_ids = sorted({v.base_version_id for v in vs if v.base_version_id is not None})
    for i in range(0, len(ids), 500):
        for vid, name in s.execute(select(Tag.version_id, Tag.name).where(Tag.version_id.in_(ids[i : i + 500])).order_by(Tag.name)):
            tags.setdefault(vid, []).append(name)
    for i in range(0, len(base_ids), 500):
        q = select(Version.id, Model.name, Version.number).join(Model, Model.id == Version.model_id)
        for vid, mname, number in s.execute(q.where(Version.id.in_(base_ids[i : i + 500]))):
            bases[vid] = f"{mname}@v{number}"
    return [VersionInfo(
        model=v.model.name, number=v.number, manifest=v.manifest, kind=v.kind,
        base=bases.get(v.base_version_id) if v.base_version_id is not None else None, codec=v.codec,
        codec_params=v.codec_params or {}, logical_bytes=v.logical_bytes, stored_bytes=v.stored_bytes,
        referenced_bytes=v.referenced_bytes, message=v.message, author=v.author, created_at=v.created_at,
        metrics=v.metrics or {}, tags=tags.get(v.id, []), calib_sha256=v.calib_sha256,
    ) for v in vs]
