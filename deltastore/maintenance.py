"""Keeping a store healthy: the add/gc exclusion, ``gc``, ``verify``, ``du``, catalog rebuild.

**Why gc can never delete what an add needs.** gc and adds exclude each other, as restic's prune
takes an exclusive lock and its backups shared ones. Each add, and each gc, holds a *lease*: a
row in the catalog's ``leases`` table (host, pid, start, heartbeat; a gc's ``what`` is ``gc``).
Taking one is *insert, commit, then look*: insert our row in one transaction, then, in a new one,
look for live rows of the other kind. Of an add and a gc that race, the one whose insert
committed second sees the other's row in its look, so at least one of them sees the other; an
add that sees a gc removes its row and waits (``ADD_WAIT_S``); a gc that sees adds keeps its row,
so no new add can start, and waits for them to end (``GC_WAIT_S``, then ``LockedError``). So
while a gc lists, decides and deletes, no add is between its first dedup check and its catalog
commit, which closes all three races of a reachability gc:
an add that starts after gc read the catalog; an add that deduplicates against an object of a
removed version (gc is not running while that add holds its lease, and a running gc makes the
add wait until it is done); the add's own check that its objects exist before committing.

Why this and not the alternatives: a grace period counts from an object's mtime, and on S3 an
add that reuses an old object cannot refresh it without rewriting it (no cheap touch); a
two-phase mark-then-sweep needs a marker per object on the backend. The catalog is already the
one place every writer shares, with transactions on SQLite and PostgreSQL alike, so the
exclusion costs two small transactions per add and works the same on local disk and S3; it asks
nothing of the backend's clock. The price: gc does not run during an add (it waits, then says
who holds the store), as restic's prune does not run during a backup.

A lease whose process is gone (same host: the pid no longer exists) or whose heartbeat is older
than ``LEASE_TIMEOUT`` (another host) is dead and removed by whoever looks. An add checks, in its
commit transaction, that its lease is still there (locked ``FOR UPDATE`` where the database has
it), so an add presumed dead that wakes up cannot commit objects a gc may have deleted.
Writers of objects other than ``add`` (a remote's pull) must hold a lease too.

**Other catalogs on the same objects.** A bucket may be shared by catalogs that do not see each
other's versions (a team's PostgreSQL catalog, someone's local home run with ``--objects-url`` on
it). gc keeps, beside what its own catalog references, everything that another catalog's version
records reach (records.py: each record names its catalog), and removes only its own stray records.
Leases live in each catalog, so they cannot make a gc in one catalog wait for an add in another;
for that each lease also leaves a *marker* on the bucket, ``catalog/leases/<catalog id>/<add|gc>-<lease
id>.json`` (host, pid, heartbeat), taken the same way, insert then look: an add puts its marker and
then lists the bucket's gc markers of other catalogs (one live: remove ours, wait, as for a gc in
its own catalog); a gc puts its marker and then waits until no other catalog's add marker is live.
A marker is live on the same host while its pid runs, elsewhere while its heartbeat (rewritten
with the lease's, in the writer's UTC clock) is younger than the lease timeouts; a gc removes its
own catalog's stale ones. Listing after a write is consistent on local disk and on S3 (strong
read-after-write since 2020).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import socket
import time
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import delete, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, joinedload

from . import records
from .backend import TMP_PREFIX, Unreadable
from .catalog import Lease, ObjectRow, Version, VersionObject, catalog_id, utcnow
from .crash import crash_point
from .errors import ConflictError, CorruptObjectError, DeltaStoreError, LockedError, ObjectMissingError
from .lookup import resolve_version, version_info
from .manifest import Manifest
from .objects import MAX_MANIFEST, oid_of_key
from .protocols import Progress, StoreView, no_progress
from .results import DuReport, GcReport, Problem, VerifyReport

#: a lease on another host whose heartbeat is older than this is presumed dead
LEASE_TIMEOUT = dt.timedelta(hours=6)
#: a gc beats while it lists and deletes; one silent this long on another host is presumed dead
GC_LEASE_TIMEOUT = dt.timedelta(minutes=15)
HEARTBEAT_EVERY_S = 60.0
#: how long an add waits for a running gc, and a gc for running adds, before giving up
ADD_WAIT_S = float(os.environ.get("DELTASTORE_ADD_WAIT_S", 1800))
GC_WAIT_S = float(os.environ.get("DELTASTORE_GC_WAIT_S", 60))
GC_WHAT = "gc"


def bind_catalog(store: StoreView) -> str:
    """This store's catalog id, bound to its backend so records written through it name it."""
    with store.Session() as s:
        cid = catalog_id(s)
    records.bind(store.backend, cid)
    return cid


class LeaseHandle:
    """A held lease. Calling it refreshes the heartbeat (at most once a minute); ``check`` in a
    write transaction raises ConflictError if the lease was taken from us as dead."""

    def __init__(self, store: StoreView, lease_id: int, marker: tuple[str, str] | None = None):
        self.store = store
        self.id = lease_id
        self.marker = marker  # (key, what) of its marker on the bucket
        self._last = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self._last < HEARTBEAT_EVERY_S:
            return
        self._last = time.monotonic()
        with self.store.Session.begin() as s:
            r = s.get(Lease, self.id)
            if r is not None:
                r.heartbeat_at = utcnow()
        if self.marker is not None:
            _put_marker(self.store, *self.marker)

    def check(self, s: Session) -> None:
        row = s.scalar(select(Lease).where(Lease.id == self.id).with_for_update())
        if row is None:
            raise ConflictError("this add's lease was removed as dead (was the process suspended for hours?); "
                                "nothing was committed: run the add again")


def _is_gc(row: Lease) -> bool:
    return row.what == GC_WHAT


def _alive(row: Lease, host: str, now: dt.datetime) -> bool:
    if row.host == host:
        try:
            os.kill(row.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return now - row.heartbeat_at <= (GC_LEASE_TIMEOUT if _is_gc(row) else LEASE_TIMEOUT)


def _txn_retry(fn, what: str):  # noqa: ANN001, ANN202
    """Run a short catalog transaction, retrying when SQLite reports the database busy."""
    for attempt in range(50):
        try:
            return fn()
        except OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e).lower() and "serializ" not in str(e):
                raise
            time.sleep(0.02 * (1 + attempt % 10) * (1 + random.random()))
    raise ConflictError(f"the catalog stayed busy while {what}; try again")


def _insert(store: StoreView, what: str) -> int:
    def go() -> int:
        with store.Session.begin() as s:
            row = Lease(host=socket.gethostname(), pid=os.getpid(), what=what[:400])
            s.add(row)
            s.flush()
            return row.id
    return _txn_retry(go, "taking a lease")


def _remove(store: StoreView, lease_id: int) -> None:
    def go() -> None:
        with store.Session.begin() as s:
            s.execute(delete(Lease).where(Lease.id == lease_id))
    _txn_retry(go, "releasing a lease")


def _live_others(store: StoreView, own: int, *, gc_rows: bool) -> list[str]:
    """Live leases of the other kind (gc rows when ``gc_rows``, else adds); dead ones are removed."""
    def go() -> list[str]:
        host, now, out = socket.gethostname(), utcnow(), []
        with store.Session.begin() as s:
            for row in s.scalars(select(Lease).where(Lease.id != own)).all():
                if not _alive(row, host, now):
                    s.delete(row)
                elif _is_gc(row) == gc_rows:
                    out.append(f"{row.what!r} (host {row.host}, pid {row.pid}, since {row.started_at:%Y-%m-%d %H:%M:%S} UTC)")
        return out
    return _txn_retry(go, "looking at leases")


MARKERS = f"{records.PREFIX}/leases"


def _marker_key(catalog: str, lease_id: int, *, gc_lease: bool) -> str:
    return f"{MARKERS}/{catalog}/{'gc' if gc_lease else 'add'}-{lease_id}.json"


def _put_marker(store: StoreView, key: str, what: str) -> None:
    body = {"host": socket.gethostname(), "pid": os.getpid(), "what": what[:400], "beat": utcnow().isoformat()}
    store.backend.put(key, json.dumps(body).encode())


def _foreign_markers(store: StoreView, catalog: str, *, gc_rows: bool) -> list[str]:
    """Live markers of other catalogs' leases on this bucket: gc ones when ``gc_rows``, else adds.
    A marker that does not parse is no lease anyone holds (an outside hand could as well delete
    objects): ignored."""
    host, now, out = socket.gethostname(), utcnow(), []
    for key in sorted(store.backend.list(MARKERS)):
        parts = key.split("/")
        if len(parts) != 4 or parts[2] == catalog or not parts[3].endswith(".json") or parts[3].startswith(TMP_PREFIX):
            continue
        is_gc = parts[3].startswith("gc-")
        if is_gc != gc_rows:
            continue
        try:
            data = store.backend.get(key, max_bytes=4096)  # a lease marker is a few hundred bytes
        except Unreadable:
            continue
        if data is None:
            continue
        try:
            d = json.loads(data)
            row = Lease(host=str(d["host"])[:200], pid=int(d["pid"]), what=GC_WHAT if is_gc else str(d["what"])[:400],
                        heartbeat_at=dt.datetime.fromisoformat(str(d["beat"])).replace(tzinfo=None))
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError):
            continue
        if _alive(row, host, now):
            out.append(f"{row.what!r} of catalog {parts[2]} (host {row.host}, pid {row.pid})")
    return out


@contextmanager
def lease(store: StoreView, what: str, *, wait_s: float | None = None) -> Iterator[LeaseHandle]:
    """Hold an add's lease (see the module doc): waits while a gc runs; yields a
    :class:`LeaseHandle`, called to refresh the heartbeat during a long add."""
    if what == GC_WHAT:
        raise ValueError("an add's lease cannot be named 'gc'")
    cid = bind_catalog(store)  # the add's record names this catalog (records.write_version)
    deadline = time.monotonic() + (ADD_WAIT_S if wait_s is None else wait_s)
    delay = 0.05
    while True:
        lid = _insert(store, what)
        gcs = _live_others(store, lid, gc_rows=True)
        if not gcs:  # none in this catalog: now the bucket, for another catalog's gc
            mkey = _marker_key(cid, lid, gc_lease=False)
            _put_marker(store, mkey, what)
            gcs = _foreign_markers(store, cid, gc_rows=True)
            if not gcs:
                break
            store.backend.delete(mkey)
        _remove(store, lid)
        if time.monotonic() >= deadline:
            raise LockedError(f"a gc is running ({gcs[0]}); adds wait for it: try again when it ends")
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)
    crash_point("lease.taken")
    try:
        yield LeaseHandle(store, lid, (mkey, what))
    finally:
        store.backend.delete(mkey)
        _remove(store, lid)


@contextmanager
def exclusive(store: StoreView, *, wait_s: float | None = None) -> Iterator[LeaseHandle]:
    """Hold gc's lease: no add runs while it is held (see the module doc). Waits up to ``wait_s``
    for running adds to end (new ones wait for us meanwhile), then raises LockedError."""
    cid = bind_catalog(store)
    lid = _insert(store, GC_WHAT)
    mkey = _marker_key(cid, lid, gc_lease=True)
    try:
        _put_marker(store, mkey, GC_WHAT)
        deadline = time.monotonic() + (GC_WAIT_S if wait_s is None else wait_s)
        delay = 0.05
        while adds := _live_others(store, lid, gc_rows=False) or _foreign_markers(store, cid, gc_rows=False):
            if time.monotonic() >= deadline:
                more = f" and {len(adds) - 1} more" if len(adds) > 1 else ""
                raise LockedError(f"an add is in progress: {adds[0]}{more}; gc deletes nothing while adds run: "
                                  "try again when it ends")
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)
        crash_point("gc.locked")
        for key in list(store.backend.list(f"{MARKERS}/{cid}")):  # no add of ours runs: every other marker is stale
            if key != mkey:
                store.backend.delete(key)
        yield LeaseHandle(store, lid, (mkey, GC_WHAT))
    finally:
        store.backend.delete(mkey)
        _remove(store, lid)


def gc(store: StoreView, *, dry_run: bool = False, wait_s: float | None = None) -> GcReport:
    """Delete objects no version references, temp files, and version records no committed
    version has. Runs under :func:`exclusive`, so no add is in flight (a dry run only reads)."""
    if dry_run:
        return _sweep(store, dry_run=True, beat=lambda: None)
    with exclusive(store, wait_s=wait_s) as beat:
        return _sweep(store, dry_run=False, beat=beat)


def _sweep(store: StoreView, *, dry_run: bool, beat) -> GcReport:  # noqa: ANN001
    own = bind_catalog(store)
    with store.Session() as s:  # read after the exclusion holds: every committed add is in it
        reachable = set(s.scalars(select(VersionObject.oid).distinct()).all())
        # each version with its model in one statement: loaded one by one, a model that a concurrent rm
        # removed with its last version between the two reads was None (an AttributeError traceback
        # from gc, seen in tests/reliability/test_concurrency.py's random runs)
        versions = s.scalars(select(Version).options(joinedload(Version.model, innerjoin=True))).unique().all()
        committed = {(v.model.name, v.number): version_info(s, v) for v in versions}
    backend = store.backend
    # other catalogs' versions: read before any object is removed (a newer record format stops gc here)
    try:
        found = records.scan(backend, own)
    except records.NewerRecordError as e:
        raise ConflictError(f"gc removes nothing: {e} (it may be another catalog's, whose objects gc cannot know)") from None
    kept_for_others, unread = records.foreign_reach(store.objects, found.foreign)
    reachable |= kept_for_others
    deleted = freed = temps = 0
    gone: list[str] = []
    for key in list(backend.list("objects")):
        beat()
        name = key.rsplit("/", 1)[-1]
        if name.startswith(TMP_PREFIX):  # no add is writing: every temp file is a crash's leftover
            if not dry_run:
                backend.delete(key)
            temps += 1
            continue
        oid = oid_of_key(key)
        if oid is None or oid in reachable:
            continue
        size = backend.size(key) or 0
        if not dry_run:
            backend.delete(key)
            crash_point("gc.deleted-one")
        gone.append(oid)
        deleted += 1
        freed += size
    temps += records.reconcile(backend, own, committed, found, dry_run=dry_run)
    if not dry_run:
        backend.flush()
    if gone and not dry_run:
        def drop() -> None:
            with store.Session.begin() as s:
                for i in range(0, len(gone), 500):
                    s.execute(delete(ObjectRow).where(ObjectRow.oid.in_(gone[i : i + 500])))
        _txn_retry(drop, "dropping deleted objects from the index")
    crash_point("gc.before-unlock")
    return GcReport(deleted=deleted, freed_bytes=freed, kept_recent=0, temp_deleted=temps, dry_run=dry_run,
                    other_versions=len(found.foreign), unreadable=found.unreadable + unread)


def verify(store: StoreView, ref: str | None = None, *, progress: Progress | None = None) -> VerifyReport:
    """Re-hash every object the version(s) need; collect every problem with the versions it breaks."""
    progress = progress or no_progress
    with store.Session() as s:
        if ref is not None:
            vs = [resolve_version(s, ref)]
            cur = vs[0]  # a version needs its base chain too
            seen = {cur.id}
            while cur.base_version_id is not None:
                if cur.base_version_id in seen:  # rows no add writes (a damaged or hand-edited catalog)
                    raise DeltaStoreError(f"the catalog's base chain of {ref} loops back to itself; "
                                          "run `deltastore db rebuild` to rebuild the catalog from the records")
                seen.add(cur.base_version_id)
                cur = s.get(Version, cur.base_version_id)
                if cur is None:
                    raise DeltaStoreError(f"the catalog's base chain of {ref} names a version it does not hold; "
                                          "run `deltastore db rebuild` to rebuild the catalog from the records")
                vs.append(cur)
        else:
            vs = list(s.scalars(select(Version).order_by(Version.id)))
        need: dict[str, set[str]] = {}
        sizes: dict[str, int] = {}  # what each object decodes to at most: no read goes further
        problems: list[Problem] = []
        for v in vs:
            vref = f"{v.model.name}@v{v.number}"
            listed = set(s.scalars(select(VersionObject.oid).where(VersionObject.version_id == v.id)))
            need.setdefault(v.manifest, set()).add(vref)
            sizes[v.manifest] = MAX_MANIFEST
            try:
                man = Manifest.from_json(store.objects.get(v.manifest, max_size=MAX_MANIFEST), v.manifest)
            except (DeltaStoreError, ValueError) as e:
                problems.append(Problem(v.manifest, f"manifest unreadable: {e}", [vref]))
                continue
            for oid, n in man.object_sizes().items():
                need.setdefault(oid, set()).add(vref)
                sizes[oid] = max(sizes.get(oid, 0), n)
            if man.object_ids() | {v.manifest} != listed:
                problems.append(Problem(None, "catalog's object list disagrees with the manifest", [vref]))
    total = len(need)
    nbytes = 0
    for i, (oid, users) in enumerate(sorted(need.items())):
        try:
            store.objects.verify(oid, max_size=sizes.get(oid))
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
