"""The store: adds models, names versions, materializes them. Everything else calls through here.

Adding streams tensor by tensor: each tensor is read, hashed, encoded and written before the next
is read, so memory stays near the largest tensor (plus its base tensor for a fine-tune). Nothing
reaches the catalog until every object is on the backend; the version row, its object index and
lineage go in one transaction at the end, so an interrupted add leaves only unreferenced
objects, which ``gc`` removes.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from . import codec as codecs
from . import records
from .backend import TMP_PREFIX, Backend
from .catalog import Lease, Lineage as LineageRow, Model, ObjectRow, Tag, Version, VersionObject, utcnow
from .config import StoreConfig, load_config
from .db import make_engine, upgrade
from .errors import (
    BadInputError,
    BaseMismatchError,
    ConflictError,
    CorruptObjectError,
    DeltaStoreError,
    NotFoundError,
    ObjectMissingError,
    UnknownRefError,
)
from .manifest import FileEntry, Manifest, TensorEntry
from .objects import ObjectDB, PutResult, oid_of_key
from .refs import Ref, check_name, parse_ref
from .results import (
    CheckoutResult,
    DuReport,
    GcReport,
    Lineage,
    LineageNode,
    ModelInfo,
    Problem,
    TensorDiff,
    VerifyReport,
    VersionInfo,
)
from .safetensors_io import DTYPES, FLOAT_CODES, TORCH_TO_CODE, TensorInfo, as_tensor, build_header, read_tensor_bytes
from .source import SourceFile, scan_model_dir

#: progress(phase, done, total) — phases: "add", "checkout", "verify"; counts are bytes
Progress = Callable[[str, int, int], None]
DEFAULT_FINETUNE_CODEC = "delta-come"
#: codecs that take per-linear input Hessians from calibration text (EncodeContext.hessian)
HESSIAN_CODECS = {"delta-come"}


def _noop(phase: str, done: int, total: int) -> None:
    pass


def sha256_hex(data: bytes | bytearray | memoryview | np.ndarray) -> str:
    return hashlib.sha256(data).hexdigest()


def resolve_codec(codec: str | codecs.Codec | dict | None, default: str) -> codecs.Codec:
    if codec is None:
        codec = default if default in codecs.list_codecs() else "lossless"
    if isinstance(codec, codecs.Codec):
        return codec
    try:
        return codecs.get_codec(codec)
    except codecs.CodecError as e:
        raise BadInputError(str(e)) from None
    except TypeError:
        import inspect

        cfg = {"id": codec} if isinstance(codec, str) else dict(codec)
        cls = codecs.codec_class(cfg["id"])
        takes = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        given = sorted(k for k in cfg if k != "id")
        raise BadInputError(f"codec {cfg['id']!r} takes {', '.join(takes) or 'no parameters'}; got {', '.join(given)}") from None


class Store:
    """One store: a catalog (SQL) plus an object backend (fsspec). Open with :func:`deltastore.open`."""

    def __init__(self, config: StoreConfig, *, read_only: bool = False, migrate: bool = True):
        self.config = config
        self.read_only = read_only
        self.engine = make_engine(config.db_url)
        if migrate and not read_only:
            upgrade(self.engine)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self.backend = Backend(config.objects_url, read_only=read_only)
        self.objects = ObjectDB(self.backend)
        self._manifest_cache: dict[str, Manifest] = {}

    def __repr__(self) -> str:
        return f"<deltastore.Store home={str(self.config.home)!r} db={self.config.db_url!r} objects={self.config.objects_url!r}>"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------
    # lookups
    # ------------------------------------------------------------------------------------------
    def _model(self, s: Session, name: str) -> Model:
        m = s.scalar(select(Model).where(Model.name == name))
        if m is None:
            known = s.scalars(select(Model.name).order_by(Model.name).limit(10)).all()
            hint = f"; models: {', '.join(known)}" if known else "; the store is empty"
            raise UnknownRefError(f"no model named {name!r}{hint}")
        return m

    def _resolve(self, s: Session, ref: str | Ref) -> Version:
        r = parse_ref(ref) if isinstance(ref, str) else ref
        m = self._model(s, r.model)
        q = select(Version).where(Version.model_id == m.id)
        if r.version is not None:
            v = s.scalar(q.where(Version.number == r.version))
            if v is None:
                raise UnknownRefError(f"{r.model} has no version v{r.version} (latest is v{self._latest_number(s, m)})")
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

    def _latest_number(self, s: Session, m: Model) -> int:
        return s.scalar(select(func.max(Version.number)).where(Version.model_id == m.id)) or 0

    def _info(self, s: Session, v: Version) -> VersionInfo:
        tags = s.scalars(select(Tag.name).where(Tag.version_id == v.id).order_by(Tag.name)).all()
        base = None
        if v.base_version_id is not None:
            b = s.get(Version, v.base_version_id)
            base = f"{b.model.name}@v{b.number}"
        return VersionInfo(
            model=v.model.name, number=v.number, manifest=v.manifest, kind=v.kind, base=base, codec=v.codec,
            codec_params=v.codec_params or {}, logical_bytes=v.logical_bytes, stored_bytes=v.stored_bytes,
            referenced_bytes=v.referenced_bytes, message=v.message, author=v.author, created_at=v.created_at,
            metrics=v.metrics or {}, tags=list(tags), calib_sha256=v.calib_sha256,
        )

    def resolve(self, ref: str) -> VersionInfo:
        """The version a REF names (``NAME``, ``NAME@v3``, ``NAME@latest``, ``NAME@tag``, ``NAME@<sha-prefix>``)."""
        with self.Session() as s:
            return self._info(s, self._resolve(s, ref))

    def versions(self, name: str) -> list[VersionInfo]:
        with self.Session() as s:
            m = self._model(s, name)
            return [self._info(s, v) for v in s.scalars(select(Version).where(Version.model_id == m.id).order_by(Version.number))]

    def models(self) -> list[ModelInfo]:
        with self.Session() as s:
            out = []
            for m in s.scalars(select(Model).order_by(Model.name)):
                vs = list(m.versions)
                out.append(ModelInfo(
                    name=m.name, versions=len(vs), latest=vs[-1].number if vs else None,
                    kind=vs[-1].kind if vs else "-", logical_bytes=sum(v.logical_bytes for v in vs),
                    stored_bytes=sum(v.stored_bytes for v in vs),
                ))
            return out

    def manifest(self, ref_or_oid: str) -> Manifest:
        """A version's manifest, by REF or by manifest object id."""
        oid = ref_or_oid if ref_or_oid.startswith("sha256:") and len(ref_or_oid) == 71 else self.resolve(ref_or_oid).manifest
        m = self._manifest_cache.get(oid)
        if m is None:
            m = Manifest.from_json(self.objects.get(oid))
            self._manifest_cache[oid] = m
        return m

    # ------------------------------------------------------------------------------------------
    # materializing tensors
    # ------------------------------------------------------------------------------------------
    def _tensor_bytes(self, manifest_oid: str, entry: TensorEntry, *, verify: bool = True) -> np.ndarray:
        """The version's bytes for one tensor (uint8), resolving deltas against the base chain.

        ``verify=False`` skips re-hashing plain tensor objects, for callers that hash the result
        themselves (checkout hashes each whole file)."""
        if entry.source == "tensor":
            return self.objects.get_array(entry.object, verify=verify)
        man = self.manifest(manifest_oid)
        if man.base is None:
            raise CorruptObjectError(manifest_oid, f"tensor {entry.name!r} refers to a base, but the manifest has none")
        base_entry = self.manifest(man.base).tensor_map().get(entry.name)
        if base_entry is None:
            raise CorruptObjectError(man.base, f"base manifest lacks tensor {entry.name!r}")
        base_raw = self._tensor_bytes(man.base, base_entry)
        if entry.source == "base":
            return base_raw
        if entry.source != "delta":
            raise CorruptObjectError(manifest_oid, f"unknown tensor source {entry.source!r}")
        base_t = as_tensor(_info_of(base_entry), base_raw)
        payload = self.objects.get(entry.object)
        try:
            enc = codecs.from_bytes(payload)
            codec = codecs.codec_class(enc.codec).from_config(enc.params)
            out = codec.reconstruct(enc, base_t)
        except codecs.CodecError as e:
            raise CorruptObjectError(entry.object, str(e)) from None
        raw = out.contiguous().reshape(-1).view(torch.uint8).numpy()
        if verify and entry.exact and sha256_hex(raw) != entry.sha256:
            raise CorruptObjectError(entry.object, f"tensor {entry.name!r} decodes to bytes that do not match the sha256 it was added with")
        return raw

    def tensor(self, ref: str, name: str, *, device: str | torch.device = "cpu") -> torch.Tensor:
        v = self.resolve(ref)
        man = self.manifest(v.manifest)
        entry = man.tensor_map().get(name)
        if entry is None:
            raise NotFoundError(f"{v.ref} has no tensor {name!r}")
        return as_tensor(_info_of(entry), self._tensor_bytes(v.manifest, entry)).to(device)

    def iter_tensors(self, ref: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) one at a time, so a caller can stream a model larger than memory."""
        v = self.resolve(ref)
        for _, entry in self.manifest(v.manifest).tensors():
            t = as_tensor(_info_of(entry), self._tensor_bytes(v.manifest, entry))
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            yield entry.name, t.to(device)

    def state_dict(self, ref: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Every tensor of a version, materialized (deltas applied) on ``device``."""
        return dict(self.iter_tensors(ref, device=device, dtype=dtype))

    # ------------------------------------------------------------------------------------------
    # adding
    # ------------------------------------------------------------------------------------------
    @contextmanager
    def _lease(self, what: str) -> Iterator[Callable[[], None]]:
        """Hold a lease for the duration of an add; yields ``beat()``, which refreshes the lease's
        heartbeat (at most once a minute) so gc on another host does not presume the add dead."""
        with self.Session.begin() as s:
            lease = Lease(host=socket.gethostname(), pid=os.getpid(), what=what[:400])
            s.add(lease)
            s.flush()
            lease_id = lease.id
        last = [time.monotonic()]

        def beat() -> None:
            if time.monotonic() - last[0] < 60:
                return
            last[0] = time.monotonic()
            with self.Session.begin() as s2:
                row = s2.get(Lease, lease_id)
                if row is not None:
                    row.heartbeat_at = utcnow()

        try:
            yield beat
        finally:
            with self.Session.begin() as s:
                s.execute(delete(Lease).where(Lease.id == lease_id))

    def add_base(self, name: str, path: str | Path, *, message: str = "", tags: list[str] | None = None,
                 author: str | None = None, metrics: dict[str, Any] | None = None, progress: Progress | None = None) -> VersionInfo:
        """Store a model losslessly, as a new version of ``name`` with no base."""
        return self._add(name, path, base=None, codec=None, message=message, tags=tags or [], author=author,
                         metrics=metrics or {}, calib=None, progress=progress or _noop)

    def add_finetune(self, name: str, path: str | Path, base: str, *, codec: str | codecs.Codec | dict | None = None,
                     message: str = "", tags: list[str] | None = None, author: str | None = None,
                     metrics: dict[str, Any] | None = None, calib: str | Path | None = None,
                     progress: Progress | None = None) -> VersionInfo:
        """Store a fine-tune as deltas against the version ``base`` names (default codec: delta-come).

        Tensors the codec does not apply to (embeddings, lm_head, norms for lossy codecs) go
        lossless; tensors whose bits equal the base's cost nothing.
        """
        c = resolve_codec(codec, DEFAULT_FINETUNE_CODEC)
        return self._add(name, path, base=base, codec=c, message=message, tags=tags or [], author=author,
                         metrics=metrics or {}, calib=calib, progress=progress or _noop)

    def _add(self, name: str, path: str | Path, *, base: str | None, codec: codecs.Codec | None, message: str,
             tags: list[str], author: str | None, metrics: dict[str, Any], calib: str | Path | None,
             progress: Progress) -> VersionInfo:
        check_name(name)
        for t in tags:
            check_name(t, "tag name")
        sources = scan_model_dir(path)  # every header checked before anything is written
        base_info = base_man = None
        if base is not None:
            base_info = self.resolve(base)
            base_man = self.manifest(base_info.manifest)
            _check_against_base(sources, base_man, base_info.ref)
        calib_sha = None
        if calib is not None:
            calib_sha = _check_calib(Path(calib))
            if base is None or codec is None or codec.lossless:
                raise BadInputError("--calib applies to lossy fine-tune codecs only (e.g. delta-come)")
        with self.Session() as s:
            m = s.scalar(select(Model).where(Model.name == name))
            if m is not None and m.versions:
                kinds = {v.kind for v in m.versions}
                want = "finetune" if base is not None else "base"
                if want not in kinds:
                    raise BadInputError(f"{name!r} holds {'fine-tunes' if 'finetune' in kinds else 'base models'}; "
                                        f"add this as another name, or use `add {'finetune' if 'finetune' in kinds else 'base'}`")
        lossless = codecs.get_codec("lossless")
        hessians: dict[str, torch.Tensor] = {}
        extras: dict[str, dict] = {}  # per-tensor EncodeContext.extra from a calibration pre-pass
        if calib is not None:
            from .tuning import TUNABLE_CODECS, tune_codec

            if codec.codec_id in TUNABLE_CODECS:  # bitdelta scale distillation, deltadq h_g search
                tuned: dict[str, Any] = {}
                codec, extras = tune_codec(self, base_info.ref, Path(path), Path(calib), codec, metrics=tuned)
                metrics = {**metrics, **tuned}
            elif codec.codec_id in HESSIAN_CODECS:  # GPTQ error compensation
                from .calib import collect_hessians

                hessians, ntok = collect_hessians(self, base_info.ref, Path(calib))
                metrics = {**metrics, "calib_tokens": ntok}
            else:
                raise BadInputError(f"--calib is used by delta-come (GPTQ), bitdelta (scale distillation) and deltadq "
                                    f"(group-size search); {codec.codec_id} does not use it")
        total = sum(f.size for f in sources)
        done = 0
        puts: list[PutResult] = []
        files: list[FileEntry] = []
        progress("add", 0, total)
        with self._lease(f"add {name} from {path}") as beat:
            for src in sources:
                if not src.is_safetensors:
                    data = src.path.read_bytes()
                    if len(data) != src.size:
                        raise BadInputError(f"{src.path} changed while it was being added")
                    r = self.objects.put_bytes(data, "blob")
                    puts.append(r)
                    files.append(FileEntry(src.rel, "blob", src.size, sha256_hex(data), object=r.oid))
                    done += src.size
                    progress("add", done, total)
                    continue
                header = src.header
                r = self.objects.put_bytes(header.raw, "blob")
                puts.append(r)
                file_hash = hashlib.sha256(header.raw)
                entries: list[TensorEntry] = []
                base_oid = base_info.manifest if base_info else None

                def prepare(info, fh) -> _Prepared:  # noqa: ANN001 - runs on the read-ahead thread
                    raw = read_tensor_bytes(fh, header, info)
                    file_hash.update(raw)  # one reader thread, tensors in file order
                    return self._prepare_tensor(info, raw, base_oid, base_man)

                # read, hash and fetch the base of tensor k+1 while tensor k is encoded and written
                # (hashlib, zstd and numpy release the GIL): one tensor ahead, so memory stays bounded
                with open(src.path, "rb") as fh, ThreadPoolExecutor(1, thread_name_prefix="deltastore-read") as ahead:
                    tensors = list(header.tensors)
                    nxt = ahead.submit(prepare, tensors[0], fh) if tensors else None
                    for k, info in enumerate(tensors):
                        item = nxt.result()
                        nxt = ahead.submit(prepare, tensors[k + 1], fh) if k + 1 < len(tensors) else None
                        entry, put = self._encode_tensor(item, codec, lossless, hessians.get(info.name), extras.get(info.name))
                        entries.append(entry)
                        if put is not None:
                            puts.append(put)
                        done += info.nbytes
                        progress("add", done, total)
                        beat()
                        del item
                    if fh.read(1):
                        raise BadInputError(f"{src.path} grew while it was being added")
                files.append(FileEntry(src.rel, "safetensors", src.size, file_hash.hexdigest(), header=r.oid, tensors=entries))
            manifest = Manifest(files=files, base=base_info.manifest if base_info else None,
                                codec=codec.get_config() if codec is not None else {"id": "lossless"})
            mput = self.objects.put_bytes(manifest.to_json(), "manifest")
            puts.append(mput)
            return self._commit_version(name, manifest, mput.oid, puts, base_info, codec, message, tags, author, metrics, calib_sha)

    def _prepare_tensor(self, info, raw: bytearray, base_oid: str | None, base_man: Manifest | None) -> "_Prepared":
        """The read side of adding one tensor: hash it, and fetch the base tensor it will be coded
        against unless its bits equal the base's."""
        sha = sha256_hex(raw)
        if base_man is None:
            return _Prepared(info, raw, sha, None, None, same_as_base=False)
        base_entry = base_man.tensor_map()[info.name]
        if base_entry.exact and base_entry.sha256 == sha and base_entry.dtype == info.dtype:
            return _Prepared(info, raw, sha, base_entry, None, same_as_base=True)
        base_raw = self._tensor_bytes(base_oid, base_entry)
        # an exact base entry's bits hash to its sha256 (checked above); a lossy one's must be hashed
        same = not base_entry.exact and base_entry.dtype == info.dtype and sha256_hex(base_raw) == sha
        return _Prepared(info, raw, sha, base_entry, None if same else base_raw, same_as_base=same)

    def _encode_tensor(self, p: "_Prepared", codec: codecs.Codec | None, lossless: codecs.Codec,
                       hessian: torch.Tensor | None = None, extra: dict | None = None) -> tuple[TensorEntry, PutResult | None]:
        """The write side: a tensor object (base models), nothing (bits unchanged), or a delta."""
        info = p.info
        common = dict(name=info.name, dtype=info.dtype, shape=list(info.shape), nbytes=info.nbytes, sha256=p.sha)
        if p.base_entry is None:
            put = self.objects.put_tensor(p.raw, DTYPES[info.dtype][1], info.dtype in FLOAT_CODES, oid="sha256:" + p.sha)
            return TensorEntry(**common, source="tensor", object=put.oid), put
        if p.same_as_base:
            return TensorEntry(**common, source="base"), None  # untouched by the fine-tune: no object
        target = as_tensor(info, p.raw)
        base_t = as_tensor(_info_of(p.base_entry), p.base_raw)
        use = codec if codec is not None and codec_takes(codec, info.name, target, base_t) else lossless
        ctx = codecs.EncodeContext(name=info.name, hessian=hessian, extra=dict(extra or {}),
                                   device="cuda" if torch.cuda.is_available() else None)
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
        put = self.objects.put_raw(codecs.to_bytes(enc), "delta")
        return TensorEntry(**common, source="delta", object=put.oid, codec=use.codec_id, exact=use.lossless, rel_error=rel), put

    def _commit_version(self, name, manifest: Manifest, manifest_oid: str, puts: list[PutResult], base_info,
                        codec, message, tags, author, metrics, calib_sha) -> VersionInfo:
        # gc may have run while we wrote: make sure every object we name is still there
        oids = manifest.object_ids() | {manifest_oid}
        missing = [o for o in oids if not self.objects.exists(o)]
        if missing:
            raise ConflictError(f"{len(missing)} objects vanished while adding (a concurrent gc?); run the add again")
        self.backend.flush()  # objects durable before the catalog names them
        sizes = {p.oid: p for p in puts}
        stored_new = sum(p.stored for p in sizes.values() if p.new)
        referenced = sum(p.stored for p in sizes.values())
        for attempt in range(5):
            try:
                with self.Session.begin() as s:
                    m = s.scalar(select(Model).where(Model.name == name))
                    if m is None:
                        m = Model(name=name)
                        s.add(m)
                        s.flush()
                    number = self._latest_number(s, m) + 1
                    base_v = self._resolve(s, base_info.ref) if base_info else None
                    v = Version(
                        model_id=m.id, number=number, manifest=manifest_oid, base_version_id=base_v.id if base_v else None,
                        kind="finetune" if base_v else "base", codec=codec.codec_id if codec else "lossless",
                        codec_params={k: v for k, v in (codec.get_config() if codec else {}).items() if k != "id"},
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
                    kinds = _object_kinds(manifest_oid, manifest)
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
                    info = self._info(s, v)
                records.write_version(self.backend, info)
                for t in tags:
                    records.write_tag(self.backend, name, t, info.number)
                return info
            except IntegrityError:
                if attempt == 4:
                    raise ConflictError(f"could not allocate a version number for {name!r}: concurrent adds; try again") from None
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------------------
    # checkout
    # ------------------------------------------------------------------------------------------
    def checkout(self, ref: str, out: str | Path, *, dtype: str | torch.dtype | None = None,
                 progress: Progress | None = None, overwrite: bool = False) -> CheckoutResult:
        """Write a version as a Hugging Face directory. Lossless versions come back byte-identical
        (checked by sha256 as they are written); ``dtype`` converts floating tensors on the way out."""
        progress = progress or _noop
        t0 = time.perf_counter()
        v = self.resolve(ref)
        man = self.manifest(v.manifest)
        out = Path(out)
        target_code = _dtype_code(dtype) if dtype is not None else None
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise BadInputError(f"{out} exists and is not empty; pick a new directory (or pass overwrite=True / --force)")
        out.mkdir(parents=True, exist_ok=True)
        total = man.logical_bytes
        done = written = 0
        exact = target_code is None and man.exact
        progress("checkout", 0, total)
        for f in man.files:
            dest = out / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.deltastore-tmp")
            h = hashlib.sha256()
            with open(tmp, "wb") as fh:
                if f.kind == "blob":
                    data = self.objects.get(f.object)
                    fh.write(data)
                    h.update(data)
                    written += len(data)
                else:
                    convert = target_code is not None and any(t.dtype in FLOAT_CODES and t.dtype != target_code for t in f.tensors)
                    if convert:
                        meta = _header_metadata(self.objects.get(f.header))
                        new = [(t.name, target_code if t.dtype in FLOAT_CODES else t.dtype, tuple(t.shape)) for t in f.tensors]
                        head, _ = build_header(new, meta)
                    else:
                        head = self.objects.get(f.header)
                    fh.write(head)
                    h.update(head)
                    written += len(head)
                    for t in f.tensors:
                        raw = self._tensor_bytes(v.manifest, t, verify=not (f.exact and target_code is None))
                        if convert and t.dtype in FLOAT_CODES and t.dtype != target_code:
                            tt = as_tensor(_info_of(t), raw).to(DTYPES[target_code][0])
                            raw = tt.contiguous().reshape(-1).view(torch.uint8).numpy()
                        fh.write(memoryview(raw))
                        h.update(raw)
                        written += raw.size
                        done += t.nbytes
                        progress("checkout", done, total)
            if target_code is None and f.exact and h.hexdigest() != f.sha256:
                tmp.unlink()
                for oid in [f.object, f.header] + [t.object for t in f.tensors]:
                    if oid:
                        self.objects.verify(oid)  # names the corrupt object, if one is
                raise CorruptObjectError(f.header or f.object or "?", f"{f.path} came out with sha256 {h.hexdigest()[:16]}…, not the {f.sha256[:16]}… it was added with")
            os.replace(tmp, dest)
            if f.kind == "blob":
                done += f.size
                progress("checkout", done, total)
        return CheckoutResult(ref=v.ref, out=str(out), files=len(man.files), bytes_written=written, exact=exact,
                              seconds=time.perf_counter() - t0)

    # ------------------------------------------------------------------------------------------
    # tags, lineage, diff, rm
    # ------------------------------------------------------------------------------------------
    def tag(self, ref: str, tag: str, *, move: bool = True) -> VersionInfo:
        check_name(tag, "tag name")
        with self.Session.begin() as s:
            v = self._resolve(s, ref)
            old = s.scalar(select(Tag).where(Tag.model_id == v.model_id, Tag.name == tag))
            if old is not None:
                if not move and old.version_id != v.id:
                    raise BadInputError(f"tag {tag!r} already names another version")
                old.version_id = v.id
            else:
                s.add(Tag(model_id=v.model_id, name=tag, version_id=v.id))
            s.flush()
            info = self._info(s, v)
        records.write_tag(self.backend, info.model, tag, info.number)
        return info

    def untag(self, name: str, tag: str) -> None:
        with self.Session.begin() as s:
            m = self._model(s, name)
            n = s.execute(delete(Tag).where(Tag.model_id == m.id, Tag.name == tag)).rowcount
            if not n:
                raise UnknownRefError(f"{name} has no tag {tag!r}")
        records.delete_tag(self.backend, name, tag)

    def lineage(self, ref: str) -> Lineage:
        """Ancestors (nearest first) and the tree of descendants of a version."""
        with self.Session() as s:
            v = self._resolve(s, ref)
            ancestors = []
            cur = v
            while cur.base_version_id is not None:
                cur = s.get(Version, cur.base_version_id)
                ancestors.append(f"{cur.model.name}@v{cur.number}")

            def node(x: Version, seen: set[int]) -> LineageNode:
                seen.add(x.id)
                kids = s.scalars(select(Version).join(LineageRow, LineageRow.child_id == Version.id)
                                 .where(LineageRow.parent_id == x.id).order_by(Version.id)).all()
                return LineageNode(f"{x.model.name}@v{x.number}", x.codec, [node(k, seen) for k in kids if k.id not in seen])

            return Lineage(f"{v.model.name}@v{v.number}", ancestors, node(v, set()))

    def diff(self, a: str, b: str) -> list[TensorDiff]:
        """Tensors that differ between two versions, and by how much (computed in float32)."""
        va, vb = self.resolve(a), self.resolve(b)
        ma, mb = self.manifest(va.manifest).tensor_map(), self.manifest(vb.manifest).tensor_map()
        out: list[TensorDiff] = []
        for name, ea in ma.items():
            eb = mb.get(name)
            if eb is None:
                out.append(TensorDiff(name, "only-a", shape_a=ea.shape))
                continue
            if ea.shape != eb.shape:
                out.append(TensorDiff(name, "shape", shape_a=ea.shape, shape_b=eb.shape))
                continue
            if ea.sha256 == eb.sha256 and ea.exact and eb.exact and ea.dtype == eb.dtype:
                continue
            ta = as_tensor(_info_of(ea), self._tensor_bytes(va.manifest, ea))
            tb = as_tensor(_info_of(eb), self._tensor_bytes(vb.manifest, eb))
            if ea.dtype == eb.dtype and torch.equal(ta.reshape(-1).view(torch.uint8), tb.reshape(-1).view(torch.uint8)):
                continue
            fa, fb = ta.to(torch.float32), tb.to(torch.float32)
            d = fb - fa
            na = float(fa.norm())
            out.append(TensorDiff(name, "changed" if ea.dtype == eb.dtype else "dtype", shape_a=ea.shape, shape_b=eb.shape,
                                  max_abs=float(d.abs().max()) if d.numel() else 0.0,
                                  rel_fro=float(d.norm()) / na if na else float("inf"),
                                  changed_frac=float((d != 0).float().mean()) if d.numel() else 0.0))
        for name, eb in mb.items():
            if name not in ma:
                out.append(TensorDiff(name, "only-b", shape_b=eb.shape))
        return out

    def rm(self, ref: str) -> VersionInfo:
        """Remove a version from the catalog (its objects go at the next ``gc``)."""
        with self.Session.begin() as s:
            v = self._resolve(s, ref)
            kids = s.scalars(select(Version).where(Version.base_version_id == v.id)).all()
            if kids:
                names = ", ".join(f"{k.model.name}@v{k.number}" for k in kids[:5])
                raise BadInputError(f"{v.model.name}@v{v.number} is the base of {names}: remove those first")
            info = self._info(s, v)
            s.execute(delete(Tag).where(Tag.version_id == v.id))
            s.execute(delete(VersionObject).where(VersionObject.version_id == v.id))
            s.execute(delete(LineageRow).where((LineageRow.child_id == v.id) | (LineageRow.parent_id == v.id)))
            m = v.model
            s.delete(v)
            s.flush()
            if not s.scalar(select(func.count()).select_from(Version).where(Version.model_id == m.id)):
                s.execute(delete(Tag).where(Tag.model_id == m.id))
                s.delete(m)
        records.delete_version(self.backend, info)
        return info

    # ------------------------------------------------------------------------------------------
    # gc, verify, du
    # ------------------------------------------------------------------------------------------
    def _live_lease_cutoff(self, s: Session) -> dt.datetime | None:
        """Start of the oldest add still running; dead leases (process gone) are dropped."""
        host = socket.gethostname()
        oldest = None
        for lease in s.scalars(select(Lease)).all():
            alive = True
            if lease.host == host:
                try:
                    os.kill(lease.pid, 0)
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    alive = True
            elif utcnow() - lease.heartbeat_at > dt.timedelta(hours=6):
                alive = False
            if not alive:
                s.delete(lease)
            elif oldest is None or lease.started_at < oldest:
                oldest = lease.started_at
        return oldest

    def gc(self, *, dry_run: bool = False) -> GcReport:
        """Delete objects no version references. Objects touched since the oldest add still in
        progress began are kept: that add may still need them."""
        with self.Session.begin() as s:
            cutoff = self._live_lease_cutoff(s)
            reachable = set(s.scalars(select(VersionObject.oid).distinct()).all())
        cutoff_ts = None if cutoff is None else cutoff.replace(tzinfo=dt.timezone.utc).timestamp() - 2.0
        deleted = freed = kept = temps = 0
        gone: list[str] = []
        for key in list(self.backend.list("objects")):
            name = key.rsplit("/", 1)[-1]
            if name.startswith(TMP_PREFIX):
                mt = self.backend.mtime(key)
                if cutoff_ts is None or (mt is not None and mt < cutoff_ts):
                    if not dry_run:
                        self.backend.delete(key)
                    temps += 1
                continue
            oid = oid_of_key(key)
            if oid is None or oid in reachable:
                continue
            mt = self.backend.mtime(key)
            if cutoff_ts is not None and (mt is None or mt >= cutoff_ts):
                kept += 1
                continue
            size = self.backend.size(key) or 0
            if not dry_run:
                self.backend.delete(key)
            gone.append(oid)
            deleted += 1
            freed += size
        if gone and not dry_run:
            with self.Session.begin() as s:
                for i in range(0, len(gone), 500):
                    s.execute(delete(ObjectRow).where(ObjectRow.oid.in_(gone[i : i + 500])))
        self._manifest_cache.clear()
        return GcReport(deleted=deleted, freed_bytes=freed, kept_recent=kept, temp_deleted=temps, dry_run=dry_run)

    def verify(self, ref: str | None = None, *, progress: Progress | None = None) -> VerifyReport:
        """Re-hash every object the version(s) need; collect every problem with the versions it breaks."""
        progress = progress or _noop
        with self.Session() as s:
            if ref is not None:
                vs = [self._resolve(s, ref)]
                # a version needs its base chain too
                cur = vs[0]
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
                    man = Manifest.from_json(self.objects.get(v.manifest))
                except (DeltaStoreError, ValueError) as e:
                    problems.append(Problem(v.manifest, f"manifest unreadable: {e}", [vref]))
                    continue
                for oid in man.object_ids():
                    need.setdefault(oid, set()).add(vref)
                if man.object_ids() | {v.manifest} != listed:
                    problems.append(Problem(None, "catalog's object list disagrees with the manifest", [vref]))
        # a base's problem breaks its descendants too
        total = len(need)
        nbytes = 0
        for i, (oid, users) in enumerate(sorted(need.items())):
            try:
                self.objects.verify(oid)
                nbytes += self.objects.stored_size(oid) or 0
            except (ObjectMissingError, CorruptObjectError) as e:
                why = "missing" if isinstance(e, ObjectMissingError) else f"corrupt ({e.why})"
                problems.append(Problem(oid, why, sorted(users | self._descendants_of(users))))
            progress("verify", i + 1, total)
        return VerifyReport(versions=len(vs), objects=total, bytes_read=nbytes, problems=problems)

    def _descendants_of(self, refs: set[str]) -> set[str]:
        out: set[str] = set()
        for r in refs:
            stack = [self.lineage(r).tree]
            while stack:
                n = stack.pop()
                out.add(n.ref)
                stack.extend(n.children)
        return out

    def rebuild_catalog(self) -> "records.RebuildReport":
        """Fill an empty catalog from the version and tag records and manifests on the backend."""
        report = records.rebuild(self)
        self._manifest_cache.clear()
        return report

    def du(self) -> DuReport:
        with self.Session() as s:
            nv = s.scalar(select(func.count()).select_from(Version)) or 0
            logical = s.scalar(select(func.sum(Version.logical_bytes))) or 0
            referenced = s.scalar(select(func.sum(Version.referenced_bytes))) or 0
            reach = select(VersionObject.oid).distinct().subquery()
            stored = s.scalar(select(func.sum(ObjectRow.stored_bytes)).where(ObjectRow.oid.in_(select(reach)))) or 0
            nobj = s.scalar(select(func.count()).select_from(reach)) or 0
        return DuReport(versions=nv, objects=nobj, logical_bytes=int(logical), referenced_bytes=int(referenced),
                        stored_bytes=int(stored), dedup_saved_bytes=int(referenced) - int(stored))


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    """One tensor, read and hashed, with the base tensor it will be coded against (if any)."""

    info: Any
    raw: bytearray
    sha: str
    base_entry: TensorEntry | None
    base_raw: np.ndarray | None
    same_as_base: bool


def codec_takes(codec: codecs.Codec, name: str, target: torch.Tensor, base: torch.Tensor) -> bool:
    """Whether a fine-tune's tensor goes to ``codec`` rather than to ``lossless``: a 2-D float
    tensor (bf16, fp16, fp32, fp64) of its base's shape that the codec says it applies to."""
    return (TORCH_TO_CODE.get(target.dtype) in FLOAT_CODES and target.dim() == 2
            and tuple(base.shape) == tuple(target.shape) and codec.applies_to(name, target))


def _info_of(entry: TensorEntry):
    return TensorInfo(entry.name, entry.dtype, tuple(entry.shape), 0, entry.nbytes)


def _object_kinds(manifest_oid: str, manifest: Manifest) -> dict[str, str]:
    kinds = {manifest_oid: "manifest"}
    for f in manifest.files:
        for oid in (f.object, f.header):
            if oid:
                kinds[oid] = "blob"
        for t in f.tensors:
            if t.object:
                kinds[t.object] = "tensor" if t.source == "tensor" else "delta"
    return kinds


def _default_author() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return ""


def _dtype_code(dtype: str | torch.dtype) -> str:
    if isinstance(dtype, torch.dtype):
        code = TORCH_TO_CODE.get(dtype)
    else:
        aliases = {"bf16": "BF16", "bfloat16": "BF16", "fp16": "F16", "float16": "F16", "half": "F16",
                   "fp32": "F32", "float32": "F32", "float": "F32", "fp64": "F64", "float64": "F64"}
        code = aliases.get(dtype.lower(), dtype.upper() if dtype.upper() in FLOAT_CODES else None)
    if code not in FLOAT_CODES:
        raise BadInputError(f"--dtype must be one of bf16, fp16, fp32, fp64; got {dtype!r}")
    return code


def _header_metadata(raw: bytes) -> dict[str, str] | None:
    import json

    return json.loads(raw[8:]).get("__metadata__")


def _check_against_base(sources: list[SourceFile], base: Manifest, base_ref: str) -> None:
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
    for name, t in theirs.items():
        b = ours[name]
        if list(t.shape) != list(b.shape):
            raise BaseMismatchError(f"not a fine-tune of {base_ref}: tensor {name!r} is {list(t.shape)} here, {b.shape} in the base")


def _check_calib(path: Path) -> str:
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


def open_store(home: str | Path | None = None, *, db_url: str | None = None, objects_url: str | None = None,
               read_only: bool = False) -> Store:
    """Open an existing store (``deltastore init`` makes one)."""
    return Store(load_config(home, db_url=db_url, objects_url=objects_url), read_only=read_only)


def init_store(home: str | Path | None = None, *, db_url: str | None = None, objects_url: str | None = None) -> Store:
    """Create a store (config file, catalog schema) if there is none; open it either way."""
    return Store(load_config(home, db_url=db_url, objects_url=objects_url, create=True))
