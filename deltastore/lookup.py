"""Catalog lookups inside a session: a model by name, a version by REF, its public record.

Every capability module resolves names the same way through these, so a REF means one thing
everywhere (``NAME``, ``NAME@v3``, ``NAME@latest``, ``NAME@tag``, ``NAME@<manifest-sha-prefix>``).

A store that tracks a remote (``deltastore clone``) holds only what was asked for. When a REF is
not in its catalog, :func:`resolve_version` asks the catalog's *fetcher* to bring that version
(and its base chain) over and returns the local copy: so ``checkout``, ``state_dict``, ``load``
and the mount pull what they need on first use. This module knows nothing of remotes:
``remotes.py`` installs the function that finds a catalog's fetcher (:func:`set_fetcher_finder`),
so the arrows still point one way (remotes -> transfer -> lookup).
"""

from __future__ import annotations

import threading
from typing import Callable

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, joinedload

from .catalog import Model, RetiredNumber, Tag, Version
from .errors import ConflictError, UnknownRefError
from .refs import MAX_VERSION, Ref, parse_ref
from .results import VersionInfo

#: brings the version a REF names into this catalog; returns (model, number) of the local copy,
#: or raises (UnknownRefError when the remote lacks it too, RemoteError when it cannot be used)
Fetcher = Callable[[str], tuple[str, int]]
_finder: Callable[[Engine], Fetcher | None] | None = None
_fetching = threading.local()  # a fetch resolves REFs itself: those must not fetch again


def set_fetcher_finder(finder: Callable[[Engine], Fetcher | None] | None) -> None:
    """Install what finds the fetcher of a catalog (remotes.py does, on import)."""
    global _finder
    _finder = finder


def find_model(s: Session, name: str) -> Model:
    m = s.scalar(select(Model).where(Model.name == name))
    if m is None:
        known = s.scalars(select(Model.name).order_by(Model.name).limit(10)).all()
        hint = f"; models: {', '.join(known)}" if known else "; the store is empty"
        raise UnknownRefError(f"no model named {name!r}{hint}")
    return m


def latest_number(s: Session, m: Model) -> int:
    return s.scalar(select(func.max(Version.number)).where(Version.model_id == m.id)) or 0


def next_number(s: Session, m: Model, preferred: int | None = None) -> int:
    """The number a new version of ``m`` takes: ``preferred`` (a pull or push keeping the other
    store's number) when no version of this model has it and it was never retired here, else one
    past the largest number this model has used, removed ones included (numbers are never
    reused: ``RetiredNumber``). Call inside the transaction that holds the model row."""
    if preferred is not None and preferred >= 1:
        used = s.scalar(select(Version.id).where(Version.model_id == m.id, Version.number == preferred))
        retired = s.scalar(select(RetiredNumber.number).where(
            RetiredNumber.model_name == m.name, RetiredNumber.number == preferred))
        if used is None and retired is None:
            return preferred
    gone = s.scalar(select(func.max(RetiredNumber.number)).where(RetiredNumber.model_name == m.name)) or 0
    n = max(latest_number(s, m), gone) + 1
    if n > MAX_VERSION:  # (a catalog rebuilt from a bucket holding v2147483647: records and REFs stop there)
        raise ConflictError(f"model {m.name!r} has used every version number up to {MAX_VERSION}; add this under another name")
    return n


def resolve_version(s: Session, ref: str | Ref, *, fetch: bool = True) -> Version:
    """The version REF names. When this catalog lacks it and ``fetch`` is on, the catalog's
    fetcher (a tracked remote, module doc) may bring it here first; only a session that is not
    inside an explicit transaction (``Session.begin()``: a write in progress) fetches."""
    r = parse_ref(ref) if isinstance(ref, str) else ref
    try:
        return _resolve(s, r, ref)
    except UnknownRefError:
        fetcher = _fetcher(s) if fetch else None
        if fetcher is None:
            raise
    _fetching.on = True
    try:
        model, number = fetcher(str(ref))
    finally:
        _fetching.on = False
    v = s.scalar(_versions().where(Model.name == model, Version.number == number))
    if v is None:  # removed again between the fetch and now
        raise UnknownRefError(f"{ref}: fetched as {model}@v{number}, which is gone again")
    return v


def _fetcher(s: Session) -> Fetcher | None:
    if _finder is None or getattr(_fetching, "on", False):
        return None
    t = s.get_transaction()
    if (t is not None and t.origin.name != "AUTOBEGIN") or s.new or s.dirty or s.deleted:
        return None  # inside Session.begin(), or with changes pending: a write is in progress
    return _finder(s.get_bind())


def _versions():  # noqa: ANN202 - a Select of Version joined to its model
    return select(Version).join(Model, Model.id == Version.model_id).options(joinedload(Version.model))


def _resolve(s: Session, r: Ref, ref: str | Ref) -> Version:
    """One query for the usual REFs (the model joined in); the model's own lookup only on the
    way to an error message or for a manifest prefix."""
    q = _versions().where(Model.name == r.model)
    if r.version is not None:
        v = s.scalar(q.where(Version.number == r.version))
        if v is None:
            m = find_model(s, r.model)
            raise UnknownRefError(f"{r.model} has no version v{r.version} (latest is v{latest_number(s, m)})")
        return v
    if r.latest:
        v = s.scalar(q.order_by(Version.number.desc()).limit(1))
        if v is None:
            find_model(s, r.model)
            raise UnknownRefError(f"{r.model} has no versions")
        return v
    if r.tag is not None:
        v = s.scalar(q.join(Tag, Tag.version_id == Version.id).where(Tag.model_id == Version.model_id, Tag.name == r.tag))
        if v is not None:
            return v
    m = find_model(s, r.model)
    if r.manifest_prefix is not None:
        hits = s.scalars(select(Version).where(Version.model_id == m.id, Version.manifest.like(f"sha256:{r.manifest_prefix}%"))).all()
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
