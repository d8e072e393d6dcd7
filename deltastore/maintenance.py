"""Keeping a store healthy: leases of adds in progress, ``gc``, ``verify``, ``du``, catalog rebuild.

gc deletes what no version references, but never what an add still in progress may need: each
add holds a lease (host, pid, start, heartbeat) in the catalog, and gc keeps every object touched
since the oldest live lease began.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from . import records
from .backend import TMP_PREFIX
from .catalog import Lease, ObjectRow, Version, VersionObject, utcnow
from .errors import CorruptObjectError, DeltaStoreError, ObjectMissingError
from .lookup import resolve_version
from .manifest import Manifest
from .objects import oid_of_key
from .protocols import Progress, StoreView, no_progress
from .results import DuReport, GcReport, Problem, VerifyReport

#: a lease on another host whose heartbeat is older than this is presumed dead
LEASE_TIMEOUT = dt.timedelta(hours=6)
HEARTBEAT_EVERY_S = 60.0


@contextmanager
def lease(store: StoreView, what: str) -> Iterator[Callable[[], None]]:
    """Hold a lease for the duration of an add; yields ``beat()``, which refreshes the lease's
    heartbeat (at most once a minute) so gc on another host does not presume the add dead."""
    with store.Session.begin() as s:
        row = Lease(host=socket.gethostname(), pid=os.getpid(), what=what[:400])
        s.add(row)
        s.flush()
        lease_id = row.id
    last = [time.monotonic()]

    def beat() -> None:
        if time.monotonic() - last[0] < HEARTBEAT_EVERY_S:
            return
        last[0] = time.monotonic()
        with store.Session.begin() as s2:
            r = s2.get(Lease, lease_id)
            if r is not None:
                r.heartbeat_at = utcnow()

    try:
        yield beat
    finally:
        with store.Session.begin() as s:
            s.execute(delete(Lease).where(Lease.id == lease_id))


def live_lease_cutoff(s: Session) -> dt.datetime | None:
    """Start of the oldest add still running; dead leases (process gone) are dropped."""
    host = socket.gethostname()
    oldest = None
    for row in s.scalars(select(Lease)).all():
        alive = True
        if row.host == host:
            try:
                os.kill(row.pid, 0)
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
        elif utcnow() - row.heartbeat_at > LEASE_TIMEOUT:
            alive = False
        if not alive:
            s.delete(row)
        elif oldest is None or row.started_at < oldest:
            oldest = row.started_at
    return oldest


def gc(store: StoreView, *, dry_run: bool = False) -> GcReport:
    """Delete objects no version references. Objects touched since the oldest add still in
    progress began are kept: that add may still need them."""
    with store.Session.begin() as s:
        cutoff = live_lease_cutoff(s)
        reachable = set(s.scalars(select(VersionObject.oid).distinct()).all())
    cutoff_ts = None if cutoff is None else cutoff.replace(tzinfo=dt.timezone.utc).timestamp() - 2.0
    deleted = freed = kept = temps = 0
    gone: list[str] = []
    backend = store.backend
    for key in list(backend.list("objects")):
        name = key.rsplit("/", 1)[-1]
        if name.startswith(TMP_PREFIX):
            mt = backend.mtime(key)
            if cutoff_ts is None or (mt is not None and mt < cutoff_ts):
                if not dry_run:
                    backend.delete(key)
                temps += 1
            continue
        oid = oid_of_key(key)
        if oid is None or oid in reachable:
            continue
        mt = backend.mtime(key)
        if cutoff_ts is not None and (mt is None or mt >= cutoff_ts):
            kept += 1
            continue
        size = backend.size(key) or 0
        if not dry_run:
            backend.delete(key)
        gone.append(oid)
        deleted += 1
        freed += size
    if gone and not dry_run:
        with store.Session.begin() as s:
            for i in range(0, len(gone), 500):
                s.execute(delete(ObjectRow).where(ObjectRow.oid.in_(gone[i : i + 500])))
    return GcReport(deleted=deleted, freed_bytes=freed, kept_recent=kept, temp_deleted=temps, dry_run=dry_run)


def verify(store: StoreView, ref: str | None = None, *, progress: Progress | None = None) -> VerifyReport:
    """Re-hash every object the version(s) need; collect every problem with the versions it breaks."""
    progress = progress or no_progress
    with store.Session() as s:
        if ref is not None:
            vs = [resolve_version(s, ref)]
            cur = vs[0]  # a version needs its base chain too
            while cur.base_version_id is not None:
                cur = s.get(Version, cur.base_version_id)
                vs.append(cur)
        else:
            vs = list(s.scalars(select(Version).order_by(Version.id)))
        need: dict[str, set[str]] = {}
        problems: list[Problem] = []
        for v in vs:
            vref = f"{v.model.name}@v{v.number}"
            listed = set(s.scalars(select(VersionObject.oid).where(VersionObject.version_id == v.id)))
            need.setdefault(v.manifest, set()).add(vref)
            try:
                man = Manifest.from_json(store.objects.get(v.manifest))
            except (DeltaStoreError, ValueError) as e:
                problems.append(Problem(v.manifest, f"manifest unreadable: {e}", [vref]))
                continue
            for oid in man.object_ids():
                need.setdefault(oid, set()).add(vref)
            if man.object_ids() | {v.manifest} != listed:
                problems.append(Problem(None, "catalog's object list disagrees with the manifest", [vref]))
    total = len(need)
    nbytes = 0
    for i, (oid, users) in enumerate(sorted(need.items())):
        try:
            store.objects.verify(oid)
            nbytes += store.objects.stored_size(oid) or 0
        except (ObjectMissingError, CorruptObjectError) as e:
            why = "missing" if isinstance(e, ObjectMissingError) else f"corrupt ({e.why})"
            problems.append(Problem(oid, why, sorted(users | _descendants_of(store, users))))  # a base's problem breaks its descendants
        progress("verify", i + 1, total)
    return VerifyReport(versions=len(vs), objects=total, bytes_read=nbytes, problems=problems)


def _descendants_of(store: StoreView, refs: set[str]) -> set[str]:
    out: set[str] = set()
    for r in refs:
        stack = [store.lineage(r).tree]
        while stack:
            n = stack.pop()
            out.add(n.ref)
            stack.extend(n.children)
    return out


def du(store: StoreView) -> DuReport:
    with store.Session() as s:
        nv = s.scalar(select(func.count()).select_from(Version)) or 0
        logical = s.scalar(select(func.sum(Version.logical_bytes))) or 0
        referenced = s.scalar(select(func.sum(Version.referenced_bytes))) or 0
        reach = select(VersionObject.oid).distinct().subquery()
        stored = s.scalar(select(func.sum(ObjectRow.stored_bytes)).where(ObjectRow.oid.in_(select(reach)))) or 0
        nobj = s.scalar(select(func.count()).select_from(reach)) or 0
    return DuReport(versions=nv, objects=nobj, logical_bytes=int(logical), referenced_bytes=int(referenced),
                    stored_bytes=int(stored), dedup_saved_bytes=int(referenced) - int(stored))


def rebuild_catalog(store: StoreView) -> "records.RebuildReport":
    """Fill an empty catalog from the version and tag records and manifests on the backend."""
    return records.rebuild(store)
