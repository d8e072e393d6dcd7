"""Moving versions between two stores: objects first, then the version, so nothing half-there is visible.

Both ends are a :class:`Side`. A :class:`StoreSide` is a store with a catalog (the local store, or
a remote with ``--db``): a version lands there through ``ingest.commit_version``, the same commit
path as an add, so numbers are allocated by that catalog. A :class:`RecordsSide` is a bare object
store whose version and tag records (``records.py``, what ``db rebuild`` reads) are its catalog: a
version lands there as a record created with a conditional write (``If-None-Match: *`` on S3, a
hard link that fails on an existing name locally: ``Backend.put_if_absent``), so two writers
of one NAME can never overwrite each other; the loser takes the next number.

A transfer of REF (:func:`transfer`):

1. the version and its whole base chain are read on the source; every manifest is fetched and
   hashed, each record's base must be the version whose manifest the manifest names, and each
   version (a catalog's row as much as a bucket's record) is checked as a record is
   (:func:`check_info`);
2. versions the destination already holds (same model, same manifest) are matched, not copied;
   the others must be ones it can take (:meth:`Side.admit`);
3. the objects the others need and the destination lacks (or holds damaged: a copy whose size
   differs from the source's and which does not decode to its id) move ``workers`` at a time;
   each is decoded and re-hashed against its id after it was read, before it is written (and S3
   checks a Content-MD5 on arrival), and written atomically;
4. only then is each new version committed on the destination, base first; tags follow: a tag
   the source has on a version of the chain is set where the destination has no such tag, and a
   destination's tag that names another version is left where it is (:attr:`TransferResult.tags_left`
   names it): a push or a pull adds what the other side lacks, it never takes back a tag its user
   moved (``deltastore tag`` moves one, on purpose).

Nothing read from the other side is trusted: a record, a manifest or an object is read in one
request of at most what it may hold (:func:`read_at_most`), never whole; a FIFO or device named
like one is refused, not opened for a read that would never end.

Interrupted anywhere, the destination holds at most unreferenced objects; the next transfer sends
only what is still missing.
"""

from __future__ import annotations

import base64
import hashlib
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterator, Protocol

from sqlalchemy import select

from . import chains, records
from .backend import TMP_PREFIX, Backend, Unreadable, open_nonblocking
from .catalog import Model, ObjectRow, Tag, Version
from .errors import BadInputError, BadNameError, ChainTooDeepError, ConflictError, CorruptObjectError, CorruptRecordError, ObjectMissingError, RemoteError, UnknownRefError
from .ingest import commit_version
from .lookup import version_info
from .maintenance import LeaseHandle, lease
from .manifest import Manifest
from .objects import MAX_DECODED, MAX_MANIFEST, ObjectDB, PutResult, key_of, parse_oid
from .protocols import Progress, StoreView, no_progress
from .refs import check_name, parse_ref
from .results import VersionInfo

#: objects in flight at once (I/O bound: waiting on the network or the disk, not on a core)
TRANSFER_WORKERS = 16
#: S3 puts below this size are single requests, which can carry a Content-MD5 (s3fs's threshold)
_SINGLE_PUT = 100 * 2**20
#: version numbers a record can hold (records.parse_version refuses 2^31 and above)
NUMBER_LIMIT = 1 << 31
#: a transfer keeps a version's number only below this: each later add counts on from the
#: largest number, so a remote's v2147483647 kept here would leave no number for the next add
#: (its record could not be read back: ``db rebuild`` and gc refuse it) and overflow a
#: PostgreSQL integer column
KEEP_NUMBERS_BELOW = 1 << 30


# ----------------------------------------------------------------------------------------------
# objects
# ----------------------------------------------------------------------------------------------
class _OneObject:
    """A backend holding one object's bytes in memory, so ObjectDB's own decoder checks them."""

    def __init__(self, key: str, data: bytes):
        self.key, self.data = key, data

    def get(self, key: str, max_bytes: int | None = None) -> bytes | None:
        if key != self.key:
            return None
        if max_bytes is not None and len(self.data) > max_bytes:
            raise Unreadable(f"{key} holds {len(self.data)} bytes, more than the {max_bytes} it may")
        return self.data


def check_object(oid: str, data: bytes) -> int:
    """Decode a stored object's bytes and re-hash them against ``oid``; returns the logical size.
    Raises CorruptObjectError when they do not decode to their id."""
    return len(ObjectDB(_OneObject(key_of(oid), data)).get(oid, verify=True))  # type: ignore[arg-type]


def put_checked(backend: Backend, key: str, data: bytes) -> None:
    """Write an object's bytes (atomically); on S3 with a Content-MD5, so the server refuses bytes
    that arrive other than they left."""
    if backend.local or len(data) >= _SINGLE_PUT:
        backend.put(key, data)
        return
    backend._check_writable()
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    backend.fs.pipe_file(f"{backend.root}/{key}", data, ContentMD5=md5)


def stored_cap(logical: int) -> int:
    """The most bytes an object that decodes to at most ``logical`` bytes can be stored in: zstd's
    worst case (``ZSTD_compressBound``: 1/256 more), the frame and the plane chunk tables."""
    return logical + logical // 64 + (1 << 20)


#: the most bytes a stored object may hold (ObjectDB decodes none to more than MAX_DECODED)
MAX_STORED = stored_cap(MAX_DECODED)
#: the most bytes a stored manifest may hold
MAX_STORED_MANIFEST = stored_cap(MAX_MANIFEST)


def read_at_most(backend: Backend, key: str, limit: int) -> bytes | None:
    """A key's bytes in one request, never more than ``limit`` of them read; None when there is no
    such key. Raises :class:`Unreadable` for a key that holds more, or (on disk) that is not a
    plain file: what another store's folder or bucket holds is not trusted (a sparse 1 TiB file
    named like a record, a FIFO named like an object)."""
    if not backend.local:
        return backend.get(key, max_bytes=limit)  # one ranged GET of limit + 1 bytes
    got = open_nonblocking(backend._path(key))  # (Backend.get reads a non-file as missing: here it is refused)
    if got is None:
        return None
    f, st = got
    with f:
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable(f"{key} is not a plain file")
        if st.st_size > limit:
            raise Unreadable(f"{key} holds {st.st_size} bytes, more than the {limit} it may")
        data = f.read(limit + 1)
    if len(data) > limit:  # (grew since its fstat)
        raise Unreadable(f"{key} holds more than the {limit} bytes it may")
    return data


def get_whole(backend: Backend, key: str, limit: int = MAX_STORED) -> bytes | None:
    """An object's stored bytes in one request (a ranged GET: s3fs's ``cat_file`` without a
    range first asks for the size, to split large reads, a second round trip per object that
    cost a third of a pull's time), at most ``limit`` of them (:func:`read_at_most`)."""
    return read_at_most(backend, key, limit)


def sizes_of(backend: Backend, oids: list[str], pool: ThreadPoolExecutor) -> list[int | None]:
    """The stored size of each object, None where it is missing; many at once.

    On disk, one ``stat`` each. On an object store, one LIST of ``objects/`` for the fan-out
    folders that exist, then one LIST per folder that holds a wanted object: a few requests for
    a whole model where a HEAD per object (and a LIST after each 404, as s3fs's ``info`` does)
    would cost two round trips per object."""
    if backend.local or len(oids) < 8:
        return list(pool.map(lambda o: backend.size(key_of(o)), oids))
    fs, base = backend.fs, f"{backend.root}/objects"
    try:
        folders = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False, refresh=True)}
    except FileNotFoundError:
        return [None] * len(oids)
    want = sorted({parse_oid(o)[:2] for o in oids} & folders)

    def listing(folder: str) -> dict[str, int]:
        try:
            entries = fs.ls(f"{base}/{folder}", detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        return {f"objects/{folder}/{e['name'].rstrip('/').rsplit('/', 1)[-1]}": int(e.get("size") or 0)
                for e in entries if e.get("type") != "directory"}

    found: dict[str, int] = {}
    for d in pool.map(listing, want):
        found.update(d)
    return [found.get(key_of(o)) for o in oids]


def _usable(backend: Backend, oid: str) -> bool:
    """Whether the object stored under ``oid``'s name there decodes to ``oid``."""
    try:
        data = get_whole(backend, key_of(oid))
        return data is not None and check_object(oid, data) >= 0
    except (Unreadable, CorruptObjectError):
        return False


@dataclass
class CopyStats:
    sent: int = 0  # objects written on the destination
    sent_bytes: int = 0
    present: int = 0  # objects the destination already had
    puts: dict[str, PutResult] = field(default_factory=dict)  # oid -> sizes, for the commit


def copy_objects(src: "Side", dst: "Side", oids: list[str], *, progress: Progress = no_progress,
                 workers: int = TRANSFER_WORKERS, phase: str = "transfer", total_hint: int = 0) -> CopyStats:
    """Copy the objects ``dst`` lacks from ``src``, ``workers`` at a time, each checked by hash
    before it is written. ``progress(phase, bytes_done, bytes_total)`` as bytes move, ending at
    (sent, sent). The total: from a local source, a stat of each object; from an object store,
    ``total_hint`` (the versions' referenced bytes, from their records): listing the source's
    fan-out folders for the sizes took as long as half the GETs on a loopback SeaweedFS pull
    (256 LIST requests competing with them) and told nothing the records do not."""
    stats = CopyStats()
    lock = threading.Lock()
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="deltastore-transfer") as pool:
        there = sizes_of(dst.backend, oids, pool)
        ours = sizes_of(src.backend, oids, pool) if src.backend.local else [None] * len(oids)
        # a copy there whose size differs from the source's may be damage (a truncated or foreign
        # file under an object's name), or the same content stored another way: read it and keep it
        # only if it decodes to its id, else send ours over it (a push must not publish a version
        # whose objects the remote holds only corrupt). Sizes alike: trusted, as verify checks them.
        odd = [i for i, (a, b) in enumerate(zip(there, ours)) if a is not None and b is not None and a != b]
        for i, good in zip(odd, pool.map(lambda i: _usable(dst.backend, oids[i]), odd)):
            if not good:
                there[i] = None
        missing = [o for o, sz in zip(oids, there) if sz is None]
        total = sum(sz or 0 for sz, th in zip(ours, there) if th is None) if src.backend.local else total_hint
        done = [0]
        progress(phase, 0, total)
        for o, sz in zip(oids, there):
            if sz is not None:
                stats.present += 1
                dst.keep(o)
                stats.puts[o] = PutResult(o, -1, sz, False)  # logical size filled in by the caller if needed

        def one(oid: str) -> None:
            key = key_of(oid)
            try:
                data = get_whole(src.backend, key)
            except Unreadable as e:
                raise CorruptObjectError(oid, f"{e} (the copy on {src.label}; run `deltastore verify` there)") from None
            if data is None:
                raise ObjectMissingError(oid, f"{src.label} lacks object {oid} that a version there needs "
                                              "(run `deltastore verify` there)")
            try:
                logical = check_object(oid, data)
            except CorruptObjectError as e:
                raise CorruptObjectError(oid, f"{e.why} (the copy on {src.label}; run `deltastore verify` there)") from None
            put_checked(dst.backend, key, data)
            with lock:
                stats.sent += 1
                stats.sent_bytes += len(data)
                stats.puts[oid] = PutResult(oid, logical, len(data), True)
                done[0] += len(data)
                progress(phase, done[0], max(total, done[0]))

        for _ in pool.map(one, missing):
            pass
        if done[0] != total:
            progress(phase, done[0], done[0])
    dst.backend.flush()
    return stats


# ----------------------------------------------------------------------------------------------
# the two kinds of side
# ----------------------------------------------------------------------------------------------
class Side(Protocol):
    """One end of a transfer: its objects, its versions, and how a version is committed there."""

    label: str
    backend: Backend
    objects: ObjectDB

    def resolve(self, ref: str) -> VersionInfo: ...

    def find(self, model: str, manifest: str) -> VersionInfo | None: ...

    def refs(self) -> list[str]: ...

    def tagged(self, tag: str) -> list[str]: ...

    def publish(self, src: VersionInfo, base: VersionInfo | None, manifest: Manifest, puts: dict[str, PutResult]) -> VersionInfo: ...

    def set_tag(self, info: VersionInfo, tag: str, move: bool = False) -> int | None:
        """Tag ``info`` with ``tag`` here unless this side has that tag already; the number of the
        version it named before (left as it is, even when another), None when it named none or
        (``move``: asked for) named another and was moved."""
        ...

    def admit(self, info: VersionInfo) -> None:
        """Raise if ``info`` could not be published here (checked before any object is sent)."""

    def keep(self, oid: str) -> None: ...

    def hold(self, what: str) -> AbstractContextManager: ...


@dataclass
class _CodecLabel:
    """What ``commit_version`` reads of a codec (its id and config), for a version that arrives
    already encoded: pulling needs no codec installed, only its name and parameters."""

    codec_id: str
    params: dict

    @property
    def lossless(self) -> bool:
        return self.codec_id == "lossless"

    def get_config(self) -> dict:
        return {"id": self.codec_id, **self.params}


def check_kind(label: str, src: VersionInfo, kinds: set[str]) -> None:
    """One name holds base models or fine-tunes, never both (as ``add`` enforces)."""
    if kinds and src.kind not in kinds:
        holds = "fine-tunes" if "finetune" in kinds else "base models"
        raise BadInputError(f"{src.model!r} on {label} holds {holds}, and {src.ref} is a "
                            f"{'fine-tune' if src.kind == 'finetune' else 'base model'}; rename one of them")


class StoreSide:
    """A store with a catalog: the local store, or a remote given with ``--db``."""

    def __init__(self, store: StoreView, label: str):
        self.store = store
        self.label = label
        self.backend = store.backend
        self.objects = store.objects
        self._held: LeaseHandle | None = None

    def resolve(self, ref: str) -> VersionInfo:
        return self.store.resolve(ref)

    def find(self, model: str, manifest: str) -> VersionInfo | None:
        with self.store.Session() as s:
            v = s.scalar(select(Version).join(Model, Model.id == Version.model_id)
                         .where(Model.name == model, Version.manifest == manifest).order_by(Version.number).limit(1))
            return version_info(s, v) if v is not None else None

    def refs(self) -> list[str]:
        with self.store.Session() as s:
            rows = s.execute(select(Model.name, Version.number).join(Version, Version.model_id == Model.id)
                             .order_by(Model.name, Version.number)).all()
        return [f"{m}@v{n}" for m, n in rows]

    def tagged(self, tag: str) -> list[str]:
        """``MODEL@TAG`` for every model here with a version tagged ``tag``."""
        with self.store.Session() as s:
            models = s.scalars(select(Model.name).join(Tag, Tag.model_id == Model.id).where(Tag.name == tag).order_by(Model.name))
            return [f"{m}@{tag}" for m in models]

    def publish(self, src: VersionInfo, base: VersionInfo | None, manifest: Manifest, puts: dict[str, PutResult]) -> VersionInfo:
        oids = manifest.object_ids() | {src.manifest}
        with self.store.Session() as s:
            kinds = set(s.scalars(select(Version.kind).join(Model, Model.id == Version.model_id).where(Model.name == src.model)))
        check_kind(self.label, src, kinds)
        same = self.find(src.model, src.manifest)
        if same is not None:  # another transfer of this very version committed since we looked
            return same
        with self.store.Session() as s:
            known = set()
            ids = sorted(oids)
            for i in range(0, len(ids), 500):
                known.update(s.scalars(select(ObjectRow.oid).where(ObjectRow.oid.in_(ids[i : i + 500]))))
        full: list[PutResult] = []
        for oid in ids:
            p = puts.get(oid)
            if p is None or (p.logical < 0 and oid not in known):
                # here before this transfer but in no catalog row: its logical size, read and checked
                size = self.objects.stored_size(oid) or 0
                p = PutResult(oid, len(self.objects.get(oid)), size, False)
            full.append(p)
        codec = None if src.kind == "base" else _CodecLabel(src.codec, dict(src.codec_params))
        return commit_version(self.store, src.model, manifest, src.manifest, full, base, codec, src.message, [],
                              src.author, dict(src.metrics), src.calib_sha256, held=self._held,
                              number=src.number if src.number < KEEP_NUMBERS_BELOW else None)

    def _tagged_number(self, model: str, tag: str) -> int | None:
        with self.store.Session() as s:  # (not a resolve of MODEL@TAG: a missing tag would fetch)
            return s.scalar(select(Version.number).join(Tag, Tag.version_id == Version.id)
                            .join(Model, Model.id == Tag.model_id).where(Model.name == model, Tag.name == tag))

    def set_tag(self, info: VersionInfo, tag: str, move: bool = False) -> int | None:
        n = self._tagged_number(info.model, tag)
        if move and n is not None and n != info.number:
            self.store.tag(info.ref, tag)  # type: ignore[attr-defined]
            return None
        if n is not None:
            return n
        try:
            self.store.tag(info.ref, tag, move=False)  # type: ignore[attr-defined]
        except BadInputError:  # tagged meanwhile, on another version: left there too
            n = self._tagged_number(info.model, tag)
            if n is None:
                raise
            return n
        return None

    def admit(self, info: VersionInfo) -> None:
        pass  # a catalog takes any version a store made

    def keep(self, oid: str) -> None:
        self.backend.touch(key_of(oid))  # an object this transfer relies on: out of gc's grace window

    @contextmanager
    def hold(self, what: str) -> Iterator[None]:
        """An add's lease for the transfer: no gc runs here from the first object to the commit."""
        with lease(self.store, what) as held:
            self._held = held
            try:
                yield
            finally:
                self._held = None


class RecordsSide:
    """A bare object store whose records beside the objects are its catalog (what ``db rebuild`` reads)."""

    def __init__(self, backend: Backend, label: str):
        self.backend = backend
        self.objects = ObjectDB(backend)
        self.label = label
        self._versions: dict[str, dict[int, VersionInfo]] = {}
        #: every version record read through this side, by key: a record is created once (a
        #: conditional create, or a commit's write before its catalog commit), so a fresh look
        #: lists the keys and reads only the new ones; without this, each of n transfers (pull
        #: --all, a long base chain) read all n records of its model again: n^2 GETs
        self._read: dict[str, VersionInfo] = {}
        #: records that could not be read (malformed, too large, not a plain file), by key, and by
        #: model and the number in their name: such a record is that version's refusal, not its
        #: model's (one planted or damaged record made every version of the model unpullable, and
        #: a pull --all of the whole remote stopped before its first version)
        self._unreadable: dict[str, str] = {}
        self._bad: dict[str, dict[int, str]] = {}
        #: by model, tag records that could not be read, by the tag name in their key (:meth:`_tags`)
        self._bad_tags: dict[str, dict[str, str]] = {}

    # -- reading records (nothing read from a remote is trusted: records.py checks every field) --
    def _get(self, key: str) -> bytes | None:
        """A record's bytes; a key holding more than a record may (or not a plain file) is one
        RemoteError naming it, never read whole."""
        try:
            return read_at_most(self.backend, key, records.MAX_RECORD)
        except Unreadable as e:
            raise RemoteError(f"{self.label}: record {e}; not a record deltastore writes") from None

    def _info(self, key: str, data: bytes | None) -> VersionInfo:
        try:
            d = records.parse_version(key, data)
        except CorruptRecordError as e:
            raise RemoteError(f"{self.label}: {e}") from None
        return VersionInfo(**{f.name: d[f.name] for f in fields(VersionInfo) if f.name in d})

    def _model_versions(self, model: str, *, fresh: bool = False) -> dict[int, VersionInfo]:
        """The versions of ``model`` whose records read back; those that do not are in
        ``self._bad[model]``, by the number their file's name says."""
        if fresh or model not in self._versions:
            out: dict[int, VersionInfo] = {}
            bad: dict[int, str] = {}
            for key in self.backend.list(f"{records.PREFIX}/versions/{model}"):
                name = key.rsplit("/", 1)[-1]
                # a stray file no record is named so (v007.json, v0.json, past what a number may
                # be, other digits than ASCII ones): not read
                if (not records.RECORD_FILE.match(name) or len(name) > 16
                        or name != f"v{(n := int(name[1:-5]))}.json" or not 0 < n < NUMBER_LIMIT):
                    continue
                info = self._read.get(key)
                if info is None:
                    if key in self._unreadable:
                        bad[n] = self._unreadable[key]
                        continue
                    try:
                        data = self._get(key)
                        if data is None:  # removed since the listing
                            continue
                        info = self._read[key] = self._info(key, data)
                    except RemoteError as e:
                        bad[n] = self._unreadable[key] = str(e)
                        continue
                out[info.number] = info
            self._versions[model] = out
            self._bad[model] = {n: e for n, e in bad.items() if n not in out}
        return self._versions[model]

    def _tags(self, model: str) -> dict[str, int]:
        """``model``'s tags here (name -> version number). A tag record that cannot be read is left
        out, its error kept by the tag name in its key (``_bad_tags``): it refuses a resolve by that
        tag only (it failed every resolve of the model, since each version's tags come with it)."""
        out: dict[str, int] = {}
        bad: dict[str, str] = {}
        for key in self.backend.list(f"{records.PREFIX}/tags/{model}"):
            name = key.rsplit("/", 1)[-1]
            if key.endswith(".json") and not name.startswith(TMP_PREFIX):
                try:
                    data = self._get(key)
                    if data is None:
                        continue
                    d = records.parse_tag(key, data)
                except (CorruptRecordError, RemoteError) as e:  # (a RemoteError names the remote already)
                    bad[name.removesuffix(".json")] = str(e) if isinstance(e, RemoteError) else f"{self.label}: {e}"
                    continue
                if d["model"] == model:
                    out[d["tag"]] = d["version"]
        self._bad_tags[model] = {t: e for t, e in bad.items() if t not in out}
        return out

    def _with_tags(self, info: VersionInfo) -> VersionInfo:
        """A copy of ``info`` (the one read stays as read) with its tags there."""
        return replace(info, tags=sorted(t for t, n in self._tags(info.model).items() if n == info.number))

    def resolve(self, ref: str) -> VersionInfo:
        r = parse_ref(ref)
        vs = self._model_versions(r.model, fresh=True)
        bad = self._bad[r.model]  # a version named whose record is unreadable: that record's error
        if not vs and not bad:
            raise UnknownRefError(f"{self.label} has no model named {r.model!r}")
        if r.version is not None:
            if r.version in bad:
                raise RemoteError(bad[r.version])
            if r.version not in vs:
                raise UnknownRefError(f"{self.label}: {r.model} has no version v{r.version} "
                                      f"(latest is v{max(vs.keys() | bad.keys())})")
            return self._with_tags(vs[r.version])
        if r.latest:
            if bad and max(bad) > max(vs, default=0):  # not an older version in its place
                raise RemoteError(bad[max(bad)])
            return self._with_tags(vs[max(vs)])
        if r.tag is not None:
            n = self._tags(r.model).get(r.tag)
            if n is None and r.tag in self._bad_tags[r.model]:
                raise RemoteError(self._bad_tags[r.model][r.tag])
            if n is not None and n in bad:
                raise RemoteError(bad[n])
            if n is not None and n in vs:
                return self._with_tags(vs[n])
        if r.manifest_prefix is not None:
            hits = [v for v in vs.values() if v.manifest.startswith(f"sha256:{r.manifest_prefix}")]
            if len(hits) == 1:
                return self._with_tags(hits[0])
            if hits:
                raise UnknownRefError(f"{ref}: manifest prefix {r.manifest_prefix} is ambiguous on {self.label}")
        raise UnknownRefError(f"{self.label}: {r.model} has no tag or manifest {r.tag or r.manifest_prefix!r}")

    def find(self, model: str, manifest: str) -> VersionInfo | None:
        hits = [v for _, v in sorted(self._model_versions(model, fresh=True).items()) if v.manifest == manifest]
        return self._with_tags(hits[0]) if hits else None

    def refs(self) -> list[str]:
        """Every version here, in model and number order; one whose record is unreadable too
        (what resolving it raises says why)."""
        models = sorted({k.split("/")[2] for k in self.backend.list(f"{records.PREFIX}/versions") if k.count("/") == 3})
        out = []
        for m in models:
            vs = self._model_versions(m, fresh=True)
            out += [f"{m}@v{n}" for n in sorted(vs.keys() | self._bad[m].keys())]
        return out

    def tagged(self, tag: str) -> list[str]:
        """``MODEL@TAG`` for every model with a tag record of that name (one listing)."""
        models = sorted({k.split("/")[2] for k in self.backend.list(f"{records.PREFIX}/tags")
                         if k.count("/") == 3 and k.rsplit("/", 1)[-1] == f"{tag}.json"})
        return [f"{m}@{tag}" for m in models]

    # -- writing ------------------------------------------------------------------------------
    def publish(self, src: VersionInfo, base: VersionInfo | None, manifest: Manifest, puts: dict[str, PutResult]) -> VersionInfo:
        oids = manifest.object_ids() | {src.manifest}
        # this transfer wrote or found every object just now (copy_objects), and a bare remote has
        # no gc of its own, so no second round of requests to look again
        unseen = oids - puts.keys()
        if unseen:
            raise ConflictError(f"{len(unseen)} objects of {src.ref} were not confirmed on {self.label}; push again")
        vs = self._model_versions(src.model, fresh=True)
        check_kind(self.label, src, {v.kind for v in vs.values()})
        same = [v for _, v in sorted(vs.items()) if v.manifest == src.manifest]
        if same:  # another push of this very version landed since we looked
            return same[0]
        taken = vs.keys() | self._bad[src.model].keys()  # an unreadable record's number is taken too
        # keep its number where free (and not so large it leaves no room after it)
        number = src.number if src.number not in taken and src.number < KEEP_NUMBERS_BELOW else max(taken, default=0) + 1
        stored_new = sum(p.stored for p in puts.values() if p.new and p.oid in oids)
        referenced = sum(p.stored for p in puts.values() if p.oid in oids)
        for _ in range(1000):
            if number >= NUMBER_LIMIT:
                raise ConflictError(f"{src.model!r} on {self.label} has no version number left (its records "
                                    f"go up to v{max(taken)}); push it under another name")
            info = VersionInfo(**{**asdict(src), "number": number, "base": base.ref if base else None, "tags": [],
                                  "stored_bytes": stored_new, "referenced_bytes": referenced})
            # owned by no catalog (a bare remote has none): every catalog's gc keeps what it names
            if self.backend.put_if_absent(records.version_key(info.model, number), records.encode_version(info, None)):
                self._versions.setdefault(src.model, {})[number] = info
                return info
            key = records.version_key(src.model, number)  # another writer took it
            try:
                data = self._get(key)
                other = self._info(key, data) if data is not None else None
            except RemoteError:
                other = None  # an unreadable record there: its number is taken all the same
            if other is not None and other.manifest == src.manifest:
                return other  # the same version, pushed at once
            number += 1
        raise ConflictError(f"could not allocate a version number for {src.model!r} on {self.label}")

    def set_tag(self, info: VersionInfo, tag: str, move: bool = False) -> int | None:
        n = self._tags(info.model).get(tag)
        if move and n is not None and n != info.number:
            records.write_tag(self.backend, info.model, tag, info.number)
            return None
        if n is not None:
            return n
        if tag not in self._bad_tags.get(info.model, {}) and records.create_tag(self.backend, info.model, tag, info.number):
            return None
        n = self._tags(info.model).get(tag)  # another writer's, just now: left as it is
        if n is not None:
            return n
        # what is there names no version anyone reads (a damaged record): replaced
        records.write_tag(self.backend, info.model, tag, info.number)
        return None

    def admit(self, info: VersionInfo) -> None:
        """A version whose record would be larger than any reader takes is refused: written, it
        would make every read of its model here fail. (:func:`check_info` refuses such a version
        first, on any side; this side keeps its own guard.)"""
        size = len(records.encode_version(info, None))
        if size > records.MAX_RECORD:
            raise BadInputError(f"{info.ref}'s record would be {size} bytes (its message is {len(info.message)} "
                                f"characters), more than the {records.MAX_RECORD} a record on {self.label} may hold")

    def keep(self, oid: str) -> None:
        pass

    def hold(self, what: str) -> AbstractContextManager:
        return nullcontext()


# ----------------------------------------------------------------------------------------------
# a transfer
# ----------------------------------------------------------------------------------------------
@dataclass
class Moved:
    """One version of the chain: its REF on each side, and whether this transfer created it."""

    src: str
    dst: str
    new: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LeftTag:
    """A tag the source has on a version of the chain that the destination has on another version:
    left there (a transfer never moves a tag). Both REFs are the destination's."""

    tag: str  # NAME@tag
    at: str  # the version the destination's tag names, kept
    source_at: str  # the version the source's tag names, as the destination numbers it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TransferResult:
    """What a push or pull did: the versions (base first), objects and bytes sent, tags set, and
    the tags left where the destination has them."""

    direction: str  # "push" | "pull"
    remote: str
    ref: str  # the REF asked for, on the source
    dst_ref: str  # the same version's REF on the destination
    versions: list[Moved]
    objects_sent: int
    bytes_sent: int
    objects_present: int  # already on the destination: not sent
    tags: list[str]  # "NAME@tag" set on the destination (it had no such tag)
    seconds: float
    tags_left: list[LeftTag] = field(default_factory=list)  # on another version there: not moved

    @property
    def new_versions(self) -> list[Moved]:
        return [m for m in self.versions if m.new]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["versions"] = [m.to_dict() for m in self.versions]
        d["tags_left"] = [t.to_dict() for t in self.tags_left]
        return d


def read_manifest(src: Side, oid: str) -> bytes:
    """A manifest's logical bytes from ``src``, checked against its id, its stored bytes read
    only up to what a manifest may hold (``MAX_MANIFEST``)."""
    key = key_of(oid)
    try:
        data = read_at_most(src.backend, key, MAX_STORED_MANIFEST)
    except Unreadable as e:
        raise CorruptObjectError(oid, f"{e} (the copy on {src.label})") from None
    if data is None:
        raise ObjectMissingError(oid, f"{src.label} lacks manifest {oid} that a version there names")
    return ObjectDB(_OneObject(key, data)).get(oid, verify=True)  # type: ignore[arg-type]


def check_info(side: Side, info: VersionInfo) -> None:
    """A version as ``side`` describes it, checked as a record read from a bucket is (every field:
    names, numbers, types, sizes; ``records.parse_version``), and its tag names: a remote's catalog
    is not trusted either, and what could not be written as a record is not moved. Checked before
    anything is copied; BadInputError naming the version, never a TypeError from deep in a commit."""
    try:
        key = records.version_key(info.model, info.number)
        # its free-form fields' depth and size first: encoding them recurses once a level
        records.check_nesting(key, {"codec_params": info.codec_params, "metrics": info.metrics})
        # the whole message, by add's rule: a longer one made a record here no reader takes (a
        # catalog's commit writes the version's record too), and only its first 100 characters
        # were checked, so a pull from a catalog remote wrote one that `db rebuild` then refused
        records.check_message(info.message)
        # then the record as a bucket would hold it, whole: what could not be read back is not moved
        records.parse_version(key, records.encode_version(info, None))
        # its metrics by add's rule too: JSON values only (a record's NaN or inf, which Python's
        # json reads, went into this catalog's rows and record, or failed PostgreSQL's commit),
        # taking at most what a record holds beside the message; and its codec's parameters
        records.check_metrics(info.metrics, info.message)
        records.check_json(info.codec_params, "codec_params")
        for t in info.tags:
            check_name(t, "tag name")
        return
    except CorruptRecordError as e:
        why = e.why
    except BadInputError as e:  # a bad tag name, a message too long
        why = str(e)
    except (TypeError, ValueError, AttributeError, RecursionError, OverflowError) as e:
        why = f"{type(e).__name__}: {e}"
    raise BadInputError(f"{side.label}: version {info.model!s:.200}@v{info.number!s:.20} cannot be transferred: {why}")


def chain_of(src: Side, ref: str) -> list[tuple[VersionInfo, Manifest]]:
    """The version REF names and its bases, base first; each manifest fetched and re-hashed, and
    each record's base checked against what its manifest says. A version whose chain is deeper
    than chains.MAX_BASE_CHAIN (which no checkout rebuilds a tensor through) is refused, as
    ChainTooDeepError naming it, once its walk passes the limit: before anything moves."""
    out: list[tuple[VersionInfo, Manifest]] = []
    info: VersionInfo | None = src.resolve(ref)
    seen: set[str] = set()
    while info is not None:
        if info.ref in seen:
            raise RemoteError(f"{src.label}: the base chain of {ref} loops at {info.ref}")
        if len(out) > chains.MAX_BASE_CHAIN:  # the first version is at least len(out) links from its root
            raise ChainTooDeepError(f"{src.label}: {chains.too_deep(out[0][0].ref)}; it is not transferred")
        seen.add(info.ref)
        check_info(src, info)
        try:
            man = Manifest.from_json(read_manifest(src, info.manifest), info.manifest)
        except ValueError as e:
            if isinstance(e, CorruptObjectError):
                raise
            raise CorruptObjectError(info.manifest, f"not a manifest ({e})") from None
        base = src.resolve(info.base) if info.base else None
        if (base.manifest if base else None) != man.base:
            raise RemoteError(f"{src.label}: {info.ref}'s record names base {info.base}, but its manifest names another")
        out.append((info, man))
        info = base
    return out[::-1]


def transfer(src: Side, dst: Side, ref: str, *, direction: str, remote: str, tags: bool = True,
             progress: Progress = no_progress, workers: int = TRANSFER_WORKERS, move_tags: bool = False) -> TransferResult:
    """Copy the version REF names on ``src``, with its base chain and tags, to ``dst`` (module doc).
    ``move_tags``: a tag ``dst`` has on another version is moved to the source's (the user asked:
    ``--move-tags``), not left there."""
    t0 = time.perf_counter()
    chain = chain_of(src, ref)
    with dst.hold(f"{direction} {ref} from {src.label}"):
        there = [dst.find(info.model, info.manifest) for info, _ in chain]
        need: set[str] = set()
        for (info, man), have in zip(chain, there):
            if have is None:
                need |= man.object_ids() | {info.manifest}
        for (info, _), have in zip(chain, there):
            if have is None:
                dst.admit(info)
        hint = sum(info.referenced_bytes or 0 for (info, _), have in zip(chain, there) if have is None)
        stats = copy_objects(src, dst, sorted(need), progress=progress, workers=workers, phase=direction, total_hint=hint)
        moved: list[Moved] = []
        set_tags: list[str] = []
        left: list[LeftTag] = []
        prev: VersionInfo | None = None
        for (info, man), have in zip(chain, there):
            if have is None:
                have = dst.publish(info, prev, man, stats.puts)
                moved.append(Moved(info.ref, have.ref, True))
            else:
                moved.append(Moved(info.ref, have.ref, False))
            if tags:
                for t in info.tags:
                    before = dst.set_tag(have, t, move=move_tags)
                    if before is None:
                        set_tags.append(f"{have.model}@{t}")
                    elif before != have.number:
                        left.append(LeftTag(f"{have.model}@{t}", f"{have.model}@v{before}", have.ref))
            prev = have
    return TransferResult(direction=direction, remote=remote, ref=chain[-1][0].ref, dst_ref=moved[-1].dst, versions=moved,
                          objects_sent=stats.sent, bytes_sent=stats.sent_bytes, objects_present=stats.present,
                          tags=set_tags, seconds=time.perf_counter() - t0, tags_left=left)
