"""Adding a model: read its files, check them against the base, encode every tensor, commit.

The pipeline, per safetensors file: each tensor is read (``pread``), hashed, matched against the
base tensor of the same name, encoded (a tensor object for a base model; nothing when its bits
equal the base's; a delta otherwise) and written as an object, ``workers`` tensors at a time;
results come back in file order (where the file's own SHA-256 is extended, when it is asked for:
``file_sha256``; one serial pass, it bounds add at one core's hashing speed). At most ``workers``
tensors (and about a GiB of them) are in flight, so memory tracks the largest tensor, not the
model. Objects are written with ``defer=True``: a worker returns once the bytes are written, and
the backend's own thread fsyncs and renames them, so the disk's time overlaps the encoding
instead of following each tensor's. Nothing reaches the catalog until every object is on the backend: the version row, its
object index and lineage go in one transaction at the end, so an interrupted add leaves only
unreferenced objects, which ``gc`` removes.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import inspect
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, OperationalError

from . import codec as codecs
from . import records
from .codec.serialize import to_parts
from .catalog import Lineage as LineageRow, Model, ObjectRow, Tag, Version, VersionObject, catalog_id, utcnow
from .errors import BadInputError, BadSafetensorsError, BaseMismatchError, ConflictError
from .lookup import next_number, resolve_version, version_info
from .crash import crash_point
from .maintenance import LeaseHandle, lease
from .manifest import FileEntry, Manifest, TensorEntry
from .materialize import WARM_MIN_WORKERS, info_of, tensor_bytes, warm_codecs_beside
from .objects import PutResult
from .pipeline import BufferPool, InOrderHash, frozen_heap, largest_first, ordered_map
from .protocols import Progress, StoreView
from .refs import check_name
from .results import VersionInfo
from .safetensors_io import DTYPES, FLOAT_CODES, SafetensorsHeader, TensorInfo, as_tensor
from .source import SourceFile, scan_model_dir

log = logging.getLogger("deltastore.ingest")

DEFAULT_FINETUNE_CODEC = "delta-come"
#: lossy encodes already use every core inside torch: run them one at a time, one tensor read ahead
LOSSY_WORKERS = 2
#: tries at the commit transaction when concurrent adds take the same number or SQLite is busy
COMMIT_ATTEMPTS = 40


def resolve_codec(codec: str | codecs.Codec | dict | None, default: str = DEFAULT_FINETUNE_CODEC) -> codecs.Codec:
    """A codec instance from a name, a config dict or an instance; bad names/params -> BadInputError."""
    if codec is None:
        codec = default if default in codecs.list_codecs() else "lossless"
    if isinstance(codec, codecs.Codec):
        return codec
    try:
        return codecs.get_codec(codec)
    except codecs.CodecError as e:
        raise BadInputError(str(e)) from None
    except TypeError:
        cfg = {"id": codec} if isinstance(codec, str) else dict(codec)
        cls = codecs.codec_class(cfg["id"])
        takes = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        given = sorted(k for k in cfg if k != "id")
        raise BadInputError(f"codec {cfg['id']!r} takes {', '.join(takes) or 'no parameters'}; got {', '.join(given)}") from None


def sha256_hex(data: bytes | bytearray | memoryview | np.ndarray) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class _Job:
    """What one add needs to encode a tensor: the codecs, the base, and calibration results."""

    codec: codecs.Codec | None
    lossless: codecs.Codec
    base_oid: str | None
    base_man: Manifest | None
    hessians: dict[str, torch.Tensor]
    extras: dict[str, dict]
    #: set once the codecs' kernels are loaded (``warm_codecs_beside``); a base's decode waits for it
    kernels: threading.Event | None = None
    #: the base's own files where the caller has them (``base_from``)
    base_hint: "BaseFiles | None" = None


class BaseFiles:
    """The base version's bits already on disk (``add_finetune(..., base_from=DIR)``, e.g. the
    previous checkpoint of a training run, still on the trainer's disk): a base tensor is read from
    there instead of decoded through the base's chain, used only where its bytes hash to the sha256
    the base recorded for it (any other file, tensor or read error: decoded as without it). Why: an
    add decodes its base through every link of its chain (a series checkpoint: up to 16), and a
    read plus one hash does not grow with the chain."""

    def __init__(self, path: str | Path):
        self.tensors: dict[str, tuple[SourceFile, TensorInfo]] = {}
        for src in scan_model_dir(path):  # every header checked, as an add's own
            if src.is_safetensors:
                for info in src.header.tensors:
                    self.tensors.setdefault(info.name, (src, info))
        self.path = Path(path)
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()
        self.used = self.missed = 0  # base tensors read from here / decoded instead (told at the end)

    def read(self, entry: TensorEntry, pool: BufferPool | None) -> np.ndarray | None:
        """The base tensor ``entry``'s bytes from these files (a pooled buffer), or None."""
        got = self.tensors.get(entry.name)
        if got is None or not entry.exact or not entry.sha256:
            return None
        src, info = got
        raw = None
        if info.dtype == entry.dtype and list(info.shape) == list(entry.shape) and info.nbytes == entry.nbytes:
            try:
                raw = _pread(self._fd(src.path), src.header, info, src.path, pool.take(info.nbytes) if pool is not None else None)
            except (OSError, BadSafetensorsError):
                raw = None
            if raw is not None and sha256_hex(raw) != entry.sha256:
                if pool is not None:
                    pool.give(raw)
                raw = None
        with self._lock:
            if raw is None:
                self.missed += 1
            else:
                self.used += 1
        return raw

    def _fd(self, path: Path) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def report(self) -> None:
        """Once the add's tensors are done: a warning where some base tensor was not in the files with
        the base's bytes (a wrong directory costs nothing but the speed it was given for, so it would
        go unseen; the files of the base itself leave none out)."""
        if self.missed:
            log.warning("--base-from %s: %d of the %d base tensors this add needed were not there with the base's bytes "
                        "(decoded from the store instead)", self.path, self.missed, self.missed + self.used)


@frozen_heap()  # from the first step: the catalog and header reads before the lease set off a full pass too
def add(store: StoreView, name: str, path: str | Path, *, base: str | None, codec: codecs.Codec | None, message: str,
        tags: list[str], author: str | None, metrics: dict[str, Any], calib: str | Path | None,
        progress: Progress, file_sha256: bool = False, base_from: str | Path | None = None) -> VersionInfo:
    """Store the model directory ``path`` as the next version of ``name`` (see the module doc).

    ``file_sha256``: also record each safetensors file's SHA-256 (what ``sha256sum`` prints). Off
    by default: the verbatim header and every tensor's sha256 already pin the file's bytes (a
    checkout checks them all), and the file's hash is the one serial stage of an add.
    ``base_from``: the base version's own files (:class:`BaseFiles`), read instead of decoding the base."""
    check_name(name)
    for t in tags:
        check_name(t, "tag name")
    records.check_message(message)  # a longer one made a record no reader takes
    records.check_metrics(metrics, message)  # so did metrics nested too deep, or too large beside the message
    sources = scan_model_dir(path)  # every header checked before anything is written
    base_info = base_man = None
    if base is not None:
        base_info = store.resolve(base)
        base_man = store.manifest(base_info.manifest)
        check_against_base(sources, base_man, base_info.ref)
    calib_sha = None
    if calib is not None:
        calib_sha = check_calib(Path(calib))
        if base is None or codec is None or codec.lossless:
            raise BadInputError("--calib applies to lossy fine-tune codecs only (e.g. delta-come)")
    _check_kind(store, name, finetune=base is not None)
    hessians: dict[str, torch.Tensor] = {}
    extras: dict[str, dict] = {}  # per-tensor EncodeContext.extra from a calibration pre-pass
    if calib is not None:
        codec, hessians, extras, metrics = _calibrate(store, base_info.ref, Path(path), Path(calib), codec, metrics)
    job = _Job(codec, codecs.get_codec("lossless"), base_info.manifest if base_info else None, base_man, hessians, extras)
    if base_from is not None:
        if base is None:
            raise BadInputError("base_from (--base-from) names the base version's files: it needs a base")
        job.base_hint = BaseFiles(base_from)
    workers = store.workers if codec is None or codec.lossless else min(store.workers, LOSSY_WORKERS)
    if base_info is not None and workers >= WARM_MIN_WORKERS:  # the codecs' compiled kernels, loaded before the workers meet them
        codes = {t.dtype for f in sources if f.is_safetensors for t in f.header.tensors}
        job.kernels = warm_codecs_beside((c.codec_id, code) for c in {job.lossless, codec or job.lossless} for code in codes)
    total = sum(f.size for f in sources)
    done = 0
    puts: list[PutResult] = []
    progress("add", 0, total)
    with lease(store, f"add {name} from {path}") as held, _deferred_writes_settle(store):
        beat = held
        slots: list[FileEntry | None] = []  # the directory's files in order, safetensors ones filled in at the end
        opened: list[_Reading] = []
        try:
            for src in sources:
                if not src.is_safetensors:
                    data = src.path.read_bytes()
                    if len(data) != src.size:
                        raise BadInputError(f"{src.path} changed while it was being added")
                    r = store.objects.put_bytes(data, "blob")
                    puts.append(r)
                    slots.append(FileEntry(src.rel, "blob", src.size, sha256_hex(data), object=r.oid))
                    done += src.size
                    progress("add", done, total)
                    continue
                r = store.objects.put_bytes(src.header.raw, "blob")
                puts.append(r)
                opened.append(_Reading(src, r.oid, len(slots), file_sha256, workers))
                slots.append(None)
            pool = BufferPool()  # tensor buffers reused from one tensor to the next (pipeline.BufferPool)

            def one(item: tuple[int, int, TensorInfo]) -> tuple[TensorEntry, PutResult | None, np.ndarray | None]:
                # the read buffer comes back only to be handed to the pool once the file hash
                # is past it (the pool reuses it for a later read: no tensor more in memory)
                fi, i, info = item
                f = opened[fi]
                raw = _pread(f.fd, f.src.header, info, f.src.path, pool.take(info.nbytes))
                if f.file_hash is not None:
                    f.file_hash.put(i, raw)
                elif f.inline_hash is not None:
                    f.inline_hash.update(raw)  # one worker: items run inline, in file order
                entry, put = _encode_tensor(store, job, info, raw, pool)
                if f.file_hash is None:
                    pool.give(raw)
                    raw = None
                return entry, put, raw

            # Every file's tensors in one stream, so the cores do not drain at each shard's end.
            items = [(fi, i, info) for fi, f in enumerate(opened) for i, info in enumerate(f.src.header.tensors)]
            in_order = workers <= 1 or file_sha256  # one at a time, or each file's hash reads its tensors in order
            if not in_order:  # the largest first, so none of them runs alone at the end (pipeline.largest_first)
                items = [items[k] for k in largest_first([it[2].nbytes for it in items])]
            # A finished tensor holds no bytes (its object is written) unless the file's hash still
            # has to read its buffer, so only running tensors count toward the window (held=False):
            # with finished ones counted until handed back in file order, a slow tensor at the head
            # stalled the others in waves (16 cores: 3 of 16 threads busy for a quarter second at a
            # time once the chunk encode stopped queueing on the GIL; scaling_h200.md)
            for (fi, i, _), (entry, put, raw) in zip(items, ordered_map(one, items, workers=workers,
                                                                         weight=lambda it: it[2].nbytes, held=in_order)):
                f = opened[fi]
                if f.file_hash is not None:
                    f.file_hash.wait_through(i)  # memory: no piece outlives the window
                    pool.give(raw)
                del raw
                f.entries[i] = entry
                if put is not None:
                    puts.append(put)
                done += entry.nbytes
                progress("add", done, total)
                beat()
            for f in opened:
                slots[f.slot] = f.finish()
            if job.base_hint is not None:
                job.base_hint.report()
        finally:
            for f in opened:
                f.close()
            if job.base_hint is not None:
                job.base_hint.close()
            if job.kernels is not None:  # (where no tensor changed, none waited): no import left running
                job.kernels.wait()  # behind the caller's back, as a process that exits next would cut it off
        files = [f for f in slots if f is not None]
        manifest = Manifest(files=files, base=base_info.manifest if base_info else None,
                            codec=codec.get_config() if codec is not None else {"id": "lossless"})
        mput = store.objects.put_bytes(manifest.to_json(), "manifest")
        puts.append(mput)
        crash_point("add.before-commit")
        return commit_version(store, name, manifest, mput.oid, puts, base_info, codec, message, tags, author, metrics, calib_sha,
                              held=held)


class _Reading:
    """One safetensors file of an add while its tensors are read: its descriptor, its header's
    object, the SHA-256 of the whole file where asked (``file_sha256``: on a thread of its own fed
    each tensor as it is read where there are workers, as one serial pass costs its own time once
    beside the encodes; inline with one worker), and its tensors' entries as they come."""

    def __init__(self, src: SourceFile, header_oid: str, slot: int, file_sha256: bool, workers: int) -> None:
        self.src, self.header_oid, self.slot = src, header_oid, slot
        self.fd = os.open(src.path, os.O_RDONLY)
        try:
            self.file_hash = InOrderHash(src.header.raw) if file_sha256 and workers > 1 else None
        except BaseException:  # not yet in the add's list of files to close
            os.close(self.fd)
            raise
        self.inline_hash = hashlib.sha256(src.header.raw) if file_sha256 and self.file_hash is None else None
        self.entries: dict[int, TensorEntry] = {}

    def finish(self) -> FileEntry:
        """The file's entry, tensors in the file's order, once every tensor is in."""
        if os.fstat(self.fd).st_size != self.src.size:
            raise BadInputError(f"{self.src.path} changed size while it was being added")
        n = len(self.src.header.tensors)
        digest = (self.file_hash.hexdigest(n) if self.file_hash is not None
                  else self.inline_hash.hexdigest() if self.inline_hash is not None else None)
        return FileEntry(self.src.rel, "safetensors", self.src.size, digest, header=self.header_oid,
                         tensors=[self.entries[i] for i in range(n)])

    def close(self) -> None:
        os.close(self.fd)
        if self.file_hash is not None:
            self.file_hash.close()


@contextlib.contextmanager
def _deferred_writes_settle(store: StoreView) -> Iterator[None]:
    """On the way out of a failed add, wait for the objects its workers wrote with ``defer=True``
    (fsync and rename still running on the backend's thread), so they finish under the add's
    lease: a gc must not remove a temp file from under them. Their own errors matter less than
    the one already on its way. (A successful add waits for them in ``commit_version``.)"""
    try:
        yield
    except BaseException:
        try:
            store.backend.flush()
        except Exception:  # noqa: BLE001
            pass
        raise


def _pread(fd: int, header: SafetensorsHeader, info: TensorInfo, path: Path, buf: np.ndarray | None = None) -> np.ndarray:
    """One tensor's bytes by offset (threads read different tensors of one file at once), into
    ``buf`` (uint8, ``info.nbytes``; a pooled buffer) or a new one.

    Into an uninitialised numpy buffer, not ``bytearray(n)``: that zero-fills (and so faults in)
    every page while holding the GIL, which measured as the largest serial cost of an add (1.5 s
    a GB on the dev VM); ``preadv`` faults the pages in with the GIL released."""
    if buf is None:
        buf = np.empty(info.nbytes, dtype=np.uint8)
    view = memoryview(buf)
    off, got = header.data_start + info.start, 0
    while got < info.nbytes:
        n = os.preadv(fd, [view[got:]], off + got)
        if n <= 0:
            raise BadSafetensorsError(f"{path}: truncated while reading tensor {info.name!r}")
        got += n
    return buf


def _encode_tensor(store: StoreView, job: _Job, info: TensorInfo, raw: np.ndarray,
                   pool: BufferPool | None = None) -> tuple[TensorEntry, PutResult | None]:
    """A tensor object (base models), nothing (bits equal the base's), or a delta. ``pool``: where
    the base tensor's decode buffer comes from and goes back to once the delta is made."""
    sha = sha256_hex(raw)
    common = dict(name=info.name, dtype=info.dtype, shape=list(info.shape), nbytes=info.nbytes, sha256=sha)
    if job.base_man is None:
        put = store.objects.put_tensor(raw, DTYPES[info.dtype][1], info.dtype in FLOAT_CODES, oid="sha256:" + sha, defer=True)
        return TensorEntry(**common, source="tensor", object=put.oid), put
    base_entry = job.base_man.tensor_map()[info.name]
    if base_entry.exact and base_entry.sha256 == sha and base_entry.dtype == info.dtype:
        return TensorEntry(**common, source="base"), None  # untouched by the fine-tune: no object
    if job.kernels is not None:
        job.kernels.wait()  # the read and hash above ran beside the kernels' load; the decode uses them
    base_raw = job.base_hint.read(base_entry, pool) if job.base_hint is not None else None
    if base_raw is None:
        # check_base=False, as a checkout: an exact base tensor is checked once, against its own sha256 at
        # the top of its chain, not again at every link (a series' add of checkpoint 10 hashed it ten times)
        base_raw = tensor_bytes(store, job.base_oid, base_entry, out=pool.take(base_entry.nbytes) if pool is not None else None,
                                scratch=pool, check_base=False)
    try:
        return _encode_delta(store, job, info, raw, base_entry, base_raw, sha, common)
    finally:
        if pool is not None:
            pool.give(base_raw)  # the codecs' outputs never view their inputs


def _encode_delta(store: StoreView, job: _Job, info: TensorInfo, raw: np.ndarray, base_entry: TensorEntry, base_raw: np.ndarray,
                  sha: str, common: dict) -> tuple[TensorEntry, PutResult | None]:
    """:func:`_encode_tensor` for a fine-tune's tensor whose bits differ from its base's."""
    if not base_entry.exact and base_entry.dtype == info.dtype and sha256_hex(base_raw) == sha:
        return TensorEntry(**common, source="base"), None  # a lossy base's bits, reproduced exactly
    target = as_tensor(info, raw)
    base_t = as_tensor(info_of(base_entry), base_raw)
    codec = job.codec
    use = codec if codec is not None and codec.takes(info.name, target, base_t) else job.lossless
    # the lossless codec runs on the CPU: no CUDA query for it (the first one holds the GIL ~0.2 s
    # on a GPU machine while every worker waits; py-spy over a 16-thread add, issue 7)
    gpu = not use.lossless and torch.cuda.is_available()
    ctx = codecs.EncodeContext(name=info.name, hessian=job.hessians.get(info.name), extra=dict(job.extras.get(info.name) or {}),
                               device="cuda" if gpu else None)
    try:
        enc = use.encode(target, base_t, ctx)
    except codecs.CodecError as e:
        raise BadInputError(f"tensor {info.name!r}: {e}") from None
    rel = None
    if not use.lossless:  # measured where the encode ran: on the GPU when there is one
        dev = ctx.device or "cpu"
        d = target.to(dev, torch.float32) - base_t.to(dev, torch.float32)
        dn = float(d.norm())
        rel = float((use.decode_delta(enc, device=dev) - d).norm()) / dn if dn else 0.0
    put = store.objects.put_raw(to_parts(enc), "delta", defer=True)  # the payload's arrays hashed and written in place
    return TensorEntry(**common, source="delta", object=put.oid, codec=use.codec_id, exact=use.lossless, rel_error=rel), put


def _calibrate(store: StoreView, base_ref: str, path: Path, calib: Path, codec: codecs.Codec,
               metrics: dict[str, Any]) -> tuple[codecs.Codec, dict, dict, dict[str, Any]]:
    """Run the calibration the codec declares it needs (``Codec.needs``) on the calibration text."""
    from .calibrate import collect_hessians, tune_codec

    if "model" in codec.needs:  # a pre-pass that runs the base model (bitdelta distillation, deltadq search)
        tuned: dict[str, Any] = {}
        codec, extras = tune_codec(store, base_ref, path, calib, codec, metrics=tuned)
        return codec, {}, extras, {**metrics, **tuned}
    if "hessian" in codec.needs:  # GPTQ error compensation
        hessians, ntok = collect_hessians(store, base_ref, calib)
        return codec, hessians, {}, {**metrics, "calib_tokens": ntok}
    users = sorted(c for c in codecs.list_codecs() if codecs.codec_class(c).needs)
    raise BadInputError(f"--calib is used by {', '.join(users)}; {codec.codec_id} does not use it")


def _check_kind(store: StoreView, name: str, *, finetune: bool) -> None:
    with store.Session() as s:
        m = s.scalar(select(Model).where(Model.name == name))
        if m is not None and m.versions:
            kinds = {v.kind for v in m.versions}
            want = "finetune" if finetune else "base"
            if want not in kinds:
                holds = "finetune" if "finetune" in kinds else "base"
                raise BadInputError(f"{name!r} holds {'fine-tunes' if holds == 'finetune' else 'base models'}; "
                                    f"add this as another name, or use `add {holds}`")


def commit_version(store: StoreView, name: str, manifest: Manifest, manifest_oid: str, puts: list[PutResult],
                   base_info: VersionInfo | None, codec: codecs.Codec | None, message: str, tags: list[str],
                   author: str | None, metrics: dict[str, Any], calib_sha: str | None,
                   held: LeaseHandle | None = None, number: int | None = None) -> VersionInfo:
    """One transaction: the version row (next free number), its object index, lineage and tags.

    ``number``: the number to take when it is free in this model (a pull or push keeps the
    version's number from the other store, so ``NAME@v5`` names the same version on both sides
    whenever it can); taken or absent, the next number after the latest.

    Called under the add's lease (``held``), so no gc runs from the first object written to the
    commit (maintenance.py). Order: every object durable (``flush``); the transaction takes the
    version number (a row no other writer can take until we end); the version's record goes to
    the backend; then the commit. So every committed version has its record (``db rebuild``);
    a crash before the commit leaves only unreferenced objects and a record of no version,
    which the next add of that number overwrites and gc removes."""
    oids = manifest.object_ids() | {manifest_oid}
    # objects durable before the catalog names them; this also waits for the objects the add's
    # workers wrote with defer=True (fsync and rename on the backend's thread), so they exist now
    store.backend.flush()
    missing = [o for o in oids if not store.objects.exists(o)]  # only an outside hand deletes under a lease
    if missing:
        raise ConflictError(f"{len(missing)} objects vanished while adding (deleted by hand?); run the add again")
    crash_point("commit.after-flush")
    sizes = {p.oid: p for p in puts}
    stored_new = sum(p.stored for p in sizes.values() if p.new)
    referenced = sum(p.stored for p in sizes.values())
    kinds = manifest.object_kinds(manifest_oid)
    preferred = number  # the caller's wish, asked afresh at each attempt (number is reassigned below)
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            with store.Session.begin() as s:
                if held is not None:
                    held.check(s)
                m = s.scalar(select(Model).where(Model.name == name))
                if m is None:
                    m = Model(name=name)
                    s.add(m)
                    s.flush()
                number = next_number(s, m, preferred)
                base_v = resolve_version(s, base_info.ref) if base_info else None
                if base_v is not None and base_v.manifest != base_info.manifest:
                    raise ConflictError(f"{base_info.ref} was removed and re-added while this add ran; add again")
                v = Version(
                    model_id=m.id, number=number, manifest=manifest_oid, base_version_id=base_v.id if base_v else None,
                    kind="finetune" if base_v else "base", codec=codec.codec_id if codec else "lossless",
                    codec_params={k: x for k, x in (codec.get_config() if codec else {}).items() if k != "id"},
                    logical_bytes=manifest.logical_bytes, stored_bytes=stored_new, referenced_bytes=referenced,
                    message=message, author=author if author is not None else _default_author(),
                    metrics=metrics, calib_sha256=calib_sha,
                )
                s.add(v)
                s.flush()
                known: set[str] = set()
                ids = list(sizes)
                for i in range(0, len(ids), 500):
                    known.update(s.scalars(select(ObjectRow.oid).where(ObjectRow.oid.in_(ids[i : i + 500]))))
                rows = [{"oid": p.oid, "kind": kinds.get(p.oid, "blob"), "logical_bytes": p.logical,
                         "stored_bytes": p.stored, "created_at": utcnow()} for p in sizes.values() if p.oid not in known]
                if rows:
                    s.execute(insert(ObjectRow), rows)
                s.execute(insert(VersionObject), [{"version_id": v.id, "oid": oid} for oid in sorted(oids)])
                if base_v is not None:
                    s.add(LineageRow(parent_id=base_v.id, child_id=v.id, relation="base"))
                for t in tags:
                    old = s.scalar(select(Tag).where(Tag.model_id == m.id, Tag.name == t))
                    if old is not None:
                        old.version_id = v.id
                    else:
                        s.add(Tag(model_id=m.id, name=t, version_id=v.id))
                s.flush()
                info = version_info(s, v)
                # the number is ours until this transaction ends: record first, then commit
                records.write_version(store.backend, info, catalog=catalog_id(s))
                crash_point("commit.before-db-commit")
            crash_point("commit.after-db-commit")
            for t in tags:
                records.write_tag(store.backend, name, t, info.number)
            return info
        except (IntegrityError, OperationalError) as e:
            if isinstance(e, OperationalError) and "locked" not in str(e) and "serializ" not in str(e):
                raise
            if attempt == COMMIT_ATTEMPTS - 1:
                raise ConflictError(f"could not allocate a version number for {name!r}: concurrent adds; try again") from None
            time.sleep(0.02 * (1 + attempt % 10) * (1 + random.random()))
    raise AssertionError("unreachable")


def _default_author() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return ""


def check_against_base(sources: list[SourceFile], base: Manifest, base_ref: str) -> None:
    """A fine-tune has exactly the base's tensors, each of the base's shape."""
    theirs = {t.name: t for f in sources if f.header for t in f.header.tensors}
    ours = base.tensor_map()
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    if missing or extra:
        parts = []
        if extra:
            parts.append(f"{len(extra)} tensors the base lacks (e.g. {', '.join(extra[:3])})")
        if missing:
            parts.append(f"lacks {len(missing)} of the base's tensors (e.g. {', '.join(missing[:3])})")
        raise BaseMismatchError(f"not a fine-tune of {base_ref}: it has {' and '.join(parts)}")
    for tname, t in theirs.items():
        b = ours[tname]
        if list(t.shape) != list(b.shape):
            raise BaseMismatchError(f"not a fine-tune of {base_ref}: tensor {tname!r} is {list(t.shape)} here, {b.shape} in the base")


def check_calib(path: Path) -> str:
    """The calibration file must be UTF-8 text with at least one line; returns its sha256."""
    if not path.is_file():
        raise BadInputError(f"calibration file {path} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInputError(f"calibration file {path} is not UTF-8 text") from None
    if "\x00" in text:
        raise BadInputError(f"calibration file {path} is not text (it holds NUL bytes)")
    if not any(line.strip() for line in text.splitlines()):
        raise BadInputError(f"calibration file {path} is empty: give lines of text")
    return sha256_hex(data)
