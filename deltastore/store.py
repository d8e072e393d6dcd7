"""The public Store: one catalog (SQL) plus one object backend (fsspec), and every operation.

This module is a facade. Each capability lives in a module of its own, which takes the store as a
:class:`~deltastore.protocols.StoreView`:

- ``ingest``       reading sources, base checks, the encode pipeline, commit (``add_base``, ``add_finetune``)
- ``materialize``  tensor bytes from objects (``tensor``, ``iter_tensors``, ``state_dict``, ``checkout``, ``diff``)
- ``versions``     tags, removal, lineage
- ``maintenance``  leases, ``gc``, ``verify``, ``du``, catalog rebuild
- ``lookup``       REF -> version inside a catalog session
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import sessionmaker

from . import codec as codecs
from . import chains, ingest, maintenance, materialize, records, remotes, versions
from .backend import Backend
from .catalog import Model, Version
from .config import StoreConfig, load_config, safe_url
from .db import ensure_schema, is_local_catalog, make_engine
from .lookup import find_model, resolve_version, version_info, version_infos
from .manifest import Manifest
from .objects import MAX_MANIFEST, ObjectDB
from .pipeline import default_workers
from .protocols import Progress, no_progress
from .records import RebuildReport
from .results import CheckoutResult, DuReport, GcReport, Lineage, ModelInfo, TensorDiff, VerifyReport, VersionInfo
from .transfer import TransferResult

DEFAULT_FINETUNE_CODEC = ingest.DEFAULT_FINETUNE_CODEC
resolve_codec = ingest.resolve_codec


class Store:
    """One store: a catalog (SQL) plus an object backend (fsspec). Open with :func:`deltastore.open`.

    ``workers`` is how many tensors are read, hashed, encoded or decoded at once (default: every
    core, or ``DELTASTORE_THREADS``); peak memory grows with it (about workers x the largest tensor).
    """

    def __init__(self, config: StoreConfig, *, read_only: bool = False, migrate: bool = True, workers: int | None = None):
        self.config = config.register_secrets()
        self.read_only = read_only
        self.workers = workers or default_workers()
        self.engine = make_engine(config.db_url)
        if migrate:  # a local SQLite home upgrades itself; a shared catalog at an older revision asks
            try:       # for `deltastore db upgrade`; a newer one is refused (deltastore.db)
                ensure_schema(self.engine, may_upgrade=is_local_catalog(self.engine), may_create=not read_only)
            except BaseException:
                self.engine.dispose()
                raise
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self.backend = Backend(config.objects_url, read_only=read_only, storage_options=config.storage_options or None)
        self.objects = ObjectDB(self.backend)
        self._manifest_cache: dict[str, Manifest] = {}

    def __repr__(self) -> str:
        # no password or key in a repr (it lands in logs and tracebacks)
        return (f"<deltastore.Store home={str(self.config.home)!r} db={safe_url(self.config.db_url)!r} "
                f"objects={safe_url(self.config.objects_url)!r}>")

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lookups -----------------------------------------------------------------------------------
    def resolve(self, ref: str) -> VersionInfo:
        """The version a REF names (``NAME``, ``NAME@v3``, ``NAME@latest``, ``NAME@tag``, ``NAME@<sha-prefix>``)."""
        with self.Session() as s:
            return version_info(s, resolve_version(s, ref))

    def versions(self, name: str) -> list[VersionInfo]:
        with self.Session() as s:
            m = find_model(s, name)
            return version_infos(s, list(s.scalars(select(Version).where(Version.model_id == m.id).order_by(Version.number))))

    def models(self) -> list[ModelInfo]:
        """Every model with its version count, latest version and sizes: two grouped queries,
        however many versions the catalog holds (``ls`` over 10,000 versions stays fast)."""
        with self.Session() as s:
            stats = s.execute(select(Version.model_id, func.count(), func.max(Version.number), func.sum(Version.logical_bytes),
                                     func.sum(Version.stored_bytes)).group_by(Version.model_id)).all()
            by_model = {row[0]: row[1:] for row in stats}
            latest = select(Version.model_id, Version.number, Version.kind).where(
                tuple_(Version.model_id, Version.number).in_(select(Version.model_id, func.max(Version.number)).group_by(Version.model_id)))
            kinds = {mid: kind for mid, _, kind in s.execute(latest).all()}
            out = []
            for m in s.scalars(select(Model).order_by(Model.name)):
                n, last, logical, stored = by_model.get(m.id, (0, None, 0, 0))
                out.append(ModelInfo(name=m.name, versions=int(n), latest=last, kind=kinds.get(m.id, "-"),
                                     logical_bytes=int(logical or 0), stored_bytes=int(stored or 0)))
            return out

    def manifest(self, ref_or_oid: str) -> Manifest:
        """A version's manifest, by REF or by manifest object id (cached: manifests never change)."""
        oid = ref_or_oid if ref_or_oid.startswith("sha256:") and len(ref_or_oid) == 71 else self.resolve(ref_or_oid).manifest
        m = self._manifest_cache.get(oid)
        if m is None:
            # named by its id in every error (as every other reader of manifests does), read no
            # larger than a manifest may be whatever kind its frame claims
            m = self._manifest_cache[oid] = Manifest.from_json(self.objects.get(oid, max_size=MAX_MANIFEST), oid)
        return m

    # -- adding ------------------------------------------------------------------------------------
    def add_base(self, name: str, path: str | Path, *, message: str = "", tags: list[str] | None = None,
                 author: str | None = None, metrics: dict[str, Any] | None = None, progress: Progress | None = None,
                 file_sha256: bool = False) -> VersionInfo:
        """Store a model losslessly, as a new version of ``name`` with no base. ``file_sha256`` also
        records each safetensors file's SHA-256 (one serial pass: see :func:`ingest.add`)."""
        return ingest.add(self, name, path, base=None, codec=None, message=message, tags=tags or [], author=author,
                          metrics=metrics or {}, calib=None, progress=progress or no_progress, file_sha256=file_sha256)

    def add_finetune(self, name: str, path: str | Path, base: str, *, codec: str | codecs.Codec | dict | None = None,
                     message: str = "", tags: list[str] | None = None, author: str | None = None,
                     metrics: dict[str, Any] | None = None, calib: str | Path | None = None,
                     progress: Progress | None = None, file_sha256: bool = False,
                     base_from: str | Path | None = None) -> VersionInfo:
        """Store a fine-tune as deltas against the version ``base`` names (default codec: delta-come).

        Tensors the codec does not take (embeddings, lm_head, norms for lossy codecs) go lossless;
        tensors whose bits equal the base's cost nothing. A lossless checkpoint series (``base`` is
        ``name``'s own latest version) deltas against its series base instead (:mod:`.chains`: the
        predecessor, every 16th checkpoint a skip-delta), so a checkout walks at most 15 + log2(n / 16)
        + 1 deltas; the named base is kept in the metrics. ``base_from``: a directory holding the
        version the delta is made against, e.g. the previous checkpoint still on disk (for a series, the
        latest version; the chosen delta base must be what is there): its tensors are read from there,
        each one checked against the sha256 the store recorded, instead of decoded through the base's
        chain; a tensor that does not match is decoded as without it, and a warning says how many
        (:class:`.ingest.BaseFiles`)."""
        use = resolve_codec(codec)
        choice = chains.delta_base(self, name, base, use)
        chains.check_depth(self, choice.ref, adding=True)
        metrics = dict(records.check_metrics(metrics or {}))  # (a non-dict: the add's own error, not a TypeError here)
        if choice.previous is not None:
            metrics[chains.PREVIOUS_KEY] = choice.previous
        return ingest.add(self, name, path, base=choice.ref, codec=use, message=message, tags=tags or [],
                          author=author, metrics=metrics, calib=calib, progress=progress or no_progress,
                          file_sha256=file_sha256, base_from=base_from)

    # -- materializing -----------------------------------------------------------------------------
    # each checks first that REF's base chain is one a tensor can be rebuilt through (chains.check_depth)
    def tensor(self, ref: str, name: str, *, device: str | torch.device = "cpu") -> torch.Tensor:
        chains.check_depth(self, ref)
        return materialize.tensor(self, ref, name, device=device)

    def iter_tensors(self, ref: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                     ) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) one at a time, so a caller can stream a model larger than memory."""
        chains.check_depth(self, ref)
        return materialize.iter_tensors(self, ref, device=device, dtype=dtype)

    def state_dict(self, ref: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Every tensor of a version, materialized (deltas applied) on ``device``."""
        return dict(self.iter_tensors(ref, device=device, dtype=dtype))

    def checkout(self, ref: str, out: str | Path, *, dtype: str | torch.dtype | None = None,
                 progress: Progress | None = None, overwrite: bool = False) -> CheckoutResult:
        """Write a version as a Hugging Face directory; lossless versions come back byte-identical."""
        chains.check_depth(self, ref)
        return materialize.checkout(self, ref, out, dtype=dtype, progress=progress, overwrite=overwrite)

    def diff(self, a: str, b: str) -> list[TensorDiff]:
        """Tensors that differ between two versions, and by how much (computed in float32)."""
        chains.check_depth(self, a)
        chains.check_depth(self, b)
        return materialize.diff(self, a, b)

    # -- names and history -------------------------------------------------------------------------
    def tag(self, ref: str, tag: str, *, move: bool = True) -> VersionInfo:
        return versions.tag(self, ref, tag, move=move)

    def untag(self, name: str, tag: str) -> None:
        versions.untag(self, name, tag)

    def lineage(self, ref: str) -> Lineage:
        """Ancestors (nearest first) and the tree of descendants of a version."""
        return versions.lineage(self, ref)

    def rm(self, ref: str) -> VersionInfo:
        """Remove a version from the catalog (its objects go at the next ``gc``)."""
        return versions.rm(self, ref)

    # -- maintenance -------------------------------------------------------------------------------
    def gc(self, *, dry_run: bool = False) -> GcReport:
        """Delete objects no version references (never those an add in progress may need)."""
        report = maintenance.gc(self, dry_run=dry_run)
        self._manifest_cache.clear()
        return report

    def verify(self, ref: str | None = None, *, progress: Progress | None = None) -> VerifyReport:
        """Re-hash every object the version(s) need; collect every problem with the versions it breaks."""
        return maintenance.verify(self, ref, progress=progress)

    def du(self) -> DuReport:
        return maintenance.du(self)

    def rebuild_catalog(self) -> RebuildReport:
        """Fill an empty catalog from the version and tag records and manifests on the backend."""
        report = maintenance.rebuild_catalog(self)
        self._manifest_cache.clear()
        return report

    # -- remotes -----------------------------------------------------------------------------------
    def push(self, ref: str, remote: str | None = None, *, progress: Progress | None = None) -> TransferResult:
        """Send a version, its base chain and tags to a remote (name, URL or None: the default);
        only objects it lacks move, and the version appears there once they all have."""
        return remotes.push(self, ref, remote, progress=progress)[0]

    def pull(self, ref: str, remote: str | None = None, *, progress: Progress | None = None) -> TransferResult:
        """Fetch a version, its base chain and tags from a remote; committed here like an add."""
        return remotes.pull(self, ref, remote, progress=progress)[0]

    def push_versions(self, model: str | None = None, remote: str | None = None, *, tagged: str | None = None,
                      tags: bool = True, progress: Progress | None = None) -> list[TransferResult]:
        """Push many versions at once (``deltastore push --all`` / ``--tag``): every version of
        ``model`` (of every model when None), or with ``tagged`` only those tagged so. A version
        this store holds badly is refused alone and the others are pushed; then PushRefusedError
        names each refused one and why (``.results``: what was pushed)."""
        return remotes.push(self, model, remote, all_versions=tagged is None, tagged=tagged, tags=tags,
                            progress=progress)

    def pull_versions(self, model: str | None = None, remote: str | None = None, *, tagged: str | None = None,
                      tags: bool = True, progress: Progress | None = None) -> list[TransferResult]:
        """Pull many versions at once (``deltastore pull --all`` / ``--tag``): every version of
        ``model`` on the remote (of every model when None), or with ``tagged`` only those tagged so.
        A version the remote holds badly is refused alone and the others are pulled; then
        PullRefusedError names each refused one and why (``.results``: what was pulled)."""
        return remotes.pull(self, model, remote, all_versions=tagged is None, tagged=tagged, tags=tags,
                            progress=progress)

    # -- serving -----------------------------------------------------------------------------------
    def load(self, ref: str, *, device: str | torch.device = "cpu", lazy: bool = True, preference: str = "auto") -> Any:
        """A transformers model of REF on ``device``; with ``lazy`` its delta-come and lowrank linears
        keep the shared base weight and the delta as stored (delta-come: Triton kernels on a GPU;
        lowrank: two GEMMs on its factors). See deltastore.lazy."""
        from . import lazy as lazy_models  # transformers and the kernels load on first use

        chains.check_depth(self, ref)
        return lazy_models.load(self, ref, device=device, lazy=lazy, preference=preference)

    def load_many(self, refs: list[str], *, device: str | torch.device = "cpu", preference: str = "auto") -> Any:
        """One model serving every fine-tune in REFS (one base) row by row: pass ``delta_ids``."""
        from . import lazy as lazy_models

        for ref in refs:
            chains.check_depth(self, ref)
        return lazy_models.load_many(self, refs, device=device, preference=preference)


def open_store(home: str | Path | None = None, *, db_url: str | None = None, objects_url: str | None = None,
               read_only: bool = False) -> Store:
    """Open an existing store (``deltastore init`` makes one)."""
    return Store(load_config(home, db_url=db_url, objects_url=objects_url), read_only=read_only)


def init_store(home: str | Path | None = None, *, db_url: str | None = None, objects_url: str | None = None) -> Store:
    """Create a store (config file, catalog schema) if there is none; open it either way."""
    return Store(load_config(home, db_url=db_url, objects_url=objects_url, create=True))
