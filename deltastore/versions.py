"""What happens to versions once they exist: tags, removal, lineage.

The catalog is the index; each change here is mirrored in the records beside the objects
(``records.py``) so ``db rebuild`` sees the same names.
"""

from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

from sqlalchemy import delete, func, literal, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import joinedload

from . import records
from .catalog import Lineage as LineageRow, Model, Tag, Version, VersionObject
from .errors import BadInputError, ConflictError, UnknownRefError
from .lookup import find_model, resolve_version, version_info
from .protocols import StoreView
from .refs import check_name
from .results import Lineage, LineageNode, VersionInfo

T = TypeVar("T")


def _retrying(fn: Callable[[], T], what: str) -> T:
    """Run a catalog transaction again when a concurrent writer changed what it read (a version
    removed under a tag, a child added under an rm: the database refuses the write, or SQLite is
    busy); the retry reads afresh and fails with a store error if the version is gone."""
    for attempt in range(20):
        try:
            return fn()
        except (IntegrityError, OperationalError) as e:
            if isinstance(e, OperationalError) and "locked" not in str(e) and "serializ" not in str(e):
                raise
            time.sleep(0.02 * (1 + attempt) * (1 + random.random()))
    raise ConflictError(f"the catalog kept changing while {what}; try again")


def tag(store: StoreView, ref: str, name: str, *, move: bool = True) -> VersionInfo:
    check_name(name, "tag name")

    def txn() -> VersionInfo:
        with store.Session.begin() as s:
            v = resolve_version(s, ref)
            old = s.scalar(select(Tag).where(Tag.model_id == v.model_id, Tag.name == name))
            if old is not None:
                if not move and old.version_id != v.id:
                    raise BadInputError(f"tag {name!r} already names another version")
                old.version_id = v.id
            else:
                s.add(Tag(model_id=v.model_id, name=name, version_id=v.id))
            s.flush()
            return version_info(s, v)

    info = _retrying(txn, f"tagging {ref}")
    records.write_tag(store.backend, info.model, name, info.number)
    return info


def untag(store: StoreView, model: str, name: str) -> None:
    with store.Session.begin() as s:
        m = find_model(s, model)
        n = s.execute(delete(Tag).where(Tag.model_id == m.id, Tag.name == name)).rowcount
        if not n:
            raise UnknownRefError(f"{model} has no tag {name!r}")
    records.delete_tag(store.backend, model, name)


def lineage(store: StoreView, ref: str) -> Lineage:
    """Ancestors (nearest first) and the tree of descendants of a version."""
    with store.Session() as s:
        v = resolve_version(s, ref)
        # ancestors: the base chain in one recursive query, nearest first
        a = select(Version.id, Version.base_version_id, literal(1).label("depth")).where(Version.id == v.base_version_id)
        a = a.cte("ancestors", recursive=True)
        a = a.union(select(Version.id, Version.base_version_id, (a.c.depth + 1).label("depth"))
                    .join(a, Version.id == a.c.base_version_id).where(a.c.depth < 100_000))
        rows = s.execute(select(Model.name, Version.number).join(a, Version.id == a.c.id)
                         .join(Model, Model.id == Version.model_id).order_by(a.c.depth)).all()
        ancestors = [f"{name}@v{number}" for name, number in rows]

        # every descendant in one recursive query (UNION, not UNION ALL: a cycle in a damaged
        # catalog ends instead of looping), whatever the depth of the chain
        d = select(LineageRow.parent_id, LineageRow.child_id).where(LineageRow.parent_id == v.id).cte("descendants", recursive=True)
        d = d.union(select(LineageRow.parent_id, LineageRow.child_id).join(d, LineageRow.parent_id == d.c.child_id))
        q = (select(d.c.parent_id, Version).join(Version, Version.id == d.c.child_id)
             .order_by(Version.id).options(joinedload(Version.model)))
        kids_of: dict[int, list[Version]] = {}
        seen = {v.id}
        for pid, kid in s.execute(q).all():
            if kid.id not in seen:
                seen.add(kid.id)
                kids_of.setdefault(pid, []).append(kid)

        def node(x: Version) -> LineageNode:
            return LineageNode(f"{x.model.name}@v{x.number}", x.codec, [node(k) for k in kids_of.get(x.id, [])])

        return Lineage(f"{v.model.name}@v{v.number}", ancestors, node(v))


def rm(store: StoreView, ref: str) -> VersionInfo:
    """Remove a version from the catalog (its objects go at the next ``gc``)."""

    def txn() -> VersionInfo:
        with store.Session.begin() as s:
            v = resolve_version(s, ref)
            kids = s.scalars(select(Version).where(Version.base_version_id == v.id)).all()
            if kids:
                names = ", ".join(f"{k.model.name}@v{k.number}" for k in kids[:5])
                raise BadInputError(f"{v.model.name}@v{v.number} is the base of {names}: remove those first")
            info = version_info(s, v)
            s.execute(delete(Tag).where(Tag.version_id == v.id))
            s.execute(delete(VersionObject).where(VersionObject.version_id == v.id))
            s.execute(delete(LineageRow).where((LineageRow.child_id == v.id) | (LineageRow.parent_id == v.id)))
            m = v.model
            s.delete(v)
            s.flush()
            if not s.scalar(select(func.count()).select_from(Version).where(Version.model_id == m.id)):
                s.execute(delete(Tag).where(Tag.model_id == m.id))
                s.delete(m)
            return info

    info = _retrying(txn, f"removing {ref}")
    records.delete_version(store.backend, info)
    return info
