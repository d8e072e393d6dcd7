"""What happens to versions once they exist: tags, removal, lineage.

The catalog is the index; each change here is mirrored in the records beside the objects
(``records.py``) so ``db rebuild`` sees the same names.
"""

from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

from sqlalchemy import CompoundSelect, delete, func, literal, select, true, union_all
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from . import records
from .catalog import Lineage as LineageRow, Model, RetiredNumber, Tag, Version, VersionObject, catalog_id
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
    """Ancestors (nearest first) and the tree of descendants of a version: after the REF's
    lookup, one statement whatever the depth (each round trip to a loaded PostgreSQL server costs
    milliseconds; the old query per generation, and later one query per part, added up)."""
    with store.Session() as s:
        v = resolve_version(s, ref, fetch=False)  # the history of what is here: nothing is pulled for it
        rows = s.execute(_history(s, v.id, v.base_version_id)).all()
    names = {vid: (f"{mname}@v{number}", codec) for _, _, vid, mname, number, codec in rows}
    ancestors = [names[vid][0] for part, _, vid, *_ in sorted(r for r in rows if r[0] == "a") if part == "a"]
    kids_of: dict[int, list[int]] = {}
    seen = {v.id}
    for _, pid, kid, *_ in sorted((r for r in rows if r[0] == "d"), key=lambda r: r[2]):  # children in the order added
        if kid not in seen:
            seen.add(kid)
            kids_of.setdefault(pid, []).append(kid)

    def node(x: int) -> LineageNode:
        return LineageNode(names[x][0], names[x][1], [node(k) for k in kids_of.get(x, [])])

    return Lineage(names[v.id][0], ancestors, node(v.id))


def _history(s: Session, root: int, base: int | None) -> CompoundSelect:
    """Rows (part, key, version id, model name, number, codec) for the version itself (part "r"),
    its base chain ("a", key = depth, 1 = its base) and every descendant ("d", key = its parent),
    in one statement of two recursive queries (UNION, not UNION ALL, in the descendants: a cycle in
    a damaged catalog ends instead of looping).

    On PostgreSQL the descendants' recursive step reads each new child's lineage rows and version
    through a LATERAL subquery fenced with OFFSET 0, so it is an index probe per child whatever the
    planner's statistics say. Written as a plain join, a catalog filled faster than autovacuum
    analyzes it got a hash join that scanned the whole lineage table once per generation (99 scans
    of 10,000 rows for a 99-deep chain: 105 ms idle, 450 ms under load, against under 1 ms for the
    probes). SQLite has no LATERAL and plans the plain join as index probes already."""
    a = select(Version.id, Version.base_version_id, literal(1).label("depth")).where(Version.id == base)
    a = a.cte("ancestors", recursive=True)
    a = a.union(select(Version.id, Version.base_version_id, (a.c.depth + 1).label("depth"))
                .join(a, Version.id == a.c.base_version_id).where(a.c.depth < 100_000))
    edge = select(LineageRow.parent_id, LineageRow.child_id, Version.model_id, Version.number, Version.codec) \
        .join(Version, Version.id == LineageRow.child_id)
    d = edge.where(LineageRow.parent_id == root).cte("descendants", recursive=True)
    if s.get_bind().dialect.name == "postgresql":
        step = edge.where(LineageRow.parent_id == d.c.child_id).offset(0).lateral("step")
        d = d.union(select(*step.c).select_from(d).join(step, true()))
    else:
        d = d.union(edge.join(d, LineageRow.parent_id == d.c.child_id))
    cols = (Version.id, Model.name, Version.number, Version.codec)
    return union_all(
        select(literal("r"), literal(0), *cols).join(Model, Model.id == Version.model_id).where(Version.id == root),
        select(literal("a"), a.c.depth, *cols).join(a, Version.id == a.c.id).join(Model, Model.id == Version.model_id),
        select(literal("d"), d.c.parent_id, d.c.child_id, Model.name, d.c.number, d.c.codec).join(Model, Model.id == d.c.model_id),
    )


def rm(store: StoreView, ref: str) -> VersionInfo:
    """Remove a version from the catalog (its objects go at the next ``gc``). Its number is
    retired: the model's next version takes a new one (``lookup.next_number``)."""

    def txn() -> tuple[VersionInfo, str]:
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
            if s.get(RetiredNumber, (m.name, v.number)) is None:
                s.add(RetiredNumber(model_name=m.name, number=v.number))  # never handed out again
            s.delete(v)
            s.flush()
            if not s.scalar(select(func.count()).select_from(Version).where(Version.model_id == m.id)):
                s.execute(delete(Tag).where(Tag.model_id == m.id))
                s.delete(m)
            return info, catalog_id(s)  # the record to remove must be this catalog's (records.delete_version)

    info, owner = _retrying(txn, f"removing {ref}")
    records.write_retired(store.backend, info.model, info.number)  # before the version's record goes (rebuild)
    records.delete_version(store.backend, info, catalog=owner)
    return info
