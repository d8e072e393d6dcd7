"""The SQL catalog: names for what the object store holds.

SQLAlchemy 2.x ORM; SQLite file by default, PostgreSQL for teams. The schema changes only through
Alembic revisions in migrations/ (``deltastore db upgrade``; opening a store applies pending
ones). The catalog is an index: every version's manifest is an object, so what the catalog says
about files and tensors can always be checked against the backend (``verify``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    select,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from .errors import DeltaStoreError


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Model(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    versions: Mapped[list["Version"]] = relationship(back_populates="model", order_by="Version.number", foreign_keys="Version.model_id")


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "number", name="uq_versions_model_number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), nullable=False, index=True)
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    manifest: Mapped[str] = mapped_column(String(80), nullable=False, index=True)
    base_version_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(20), nullable=False)  # "base" | "finetune"
    codec: Mapped[str] = mapped_column(String(50), nullable=False)
    codec_params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    logical_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)  # size of the files added
    stored_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)  # new objects this version added
    referenced_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)  # every object it uses, shared ones too
    message: Mapped[str] = mapped_column(Text, default="", nullable=False)
    author: Mapped[str] = mapped_column(String(200), default="", nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    calib_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)

    model: Mapped[Model] = relationship(back_populates="versions", foreign_keys=[model_id])
    base_version: Mapped["Version | None"] = relationship(remote_side="Version.id", foreign_keys=[base_version_id])


class Tag(Base):
    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("model_id", "name", name="uq_tags_model_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), nullable=False, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class Lineage(Base):
    """parent -> child edges: ``base`` (child is a delta against parent)."""

    __tablename__ = "lineage"
    parent_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    relation: Mapped[str] = mapped_column(String(20), default="base", nullable=False)


class ObjectRow(Base):
    __tablename__ = "objects"
    oid: Mapped[str] = mapped_column(String(80), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), nullable=False)
    logical_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class VersionObject(Base):
    __tablename__ = "version_objects"
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    oid: Mapped[str] = mapped_column(String(80), primary_key=True, index=True)


class Lease(Base):
    """An add in progress: gc leaves alone every object touched since the oldest live lease began."""

    __tablename__ = "leases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(200), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    what: Mapped[str] = mapped_column(String(400), default="", nullable=False)


class CatalogIdentity(Base):
    """This catalog's stable id: one row, made by migration 0002 (at creation or at the upgrade).

    Several catalogs can share one objects location (a team's PostgreSQL catalog and someone's
    local SQLite home pointed at the same bucket); each sees only its own versions. The id is the
    owner every version record names (records.py), so a gc keeps what another catalog's versions
    use and removes only its own stray records."""

    __tablename__ = "catalog_identity"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class RetiredNumber(Base):
    """A version number once used by a model and then removed (migration 0003).

    ``NAME@v5`` must never name a second, different version: scripts, notes and other stores
    refer to versions by number. A removed number is kept here, by model *name* (the model row
    goes with its last version, the name can come back), and never handed out again: the next
    version takes one past the largest number used or retired, and a pull that would keep a
    retired number takes the next one instead."""

    __tablename__ = "retired_numbers"
    model_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    retired_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class NoCatalogIdError(DeltaStoreError):
    """The catalog_identity row is gone (deleted by hand): nothing can tell this catalog's records
    from another's, so nothing that writes or removes records may run."""


def catalog_id(s: Session) -> str:
    """This catalog's id (the one row of ``catalog_identity``)."""
    ids = s.scalars(select(CatalogIdentity.id).limit(2)).all()
    if len(ids) != 1:
        raise NoCatalogIdError(f"the catalog's identity table holds {len(ids)} rows, not 1 (edited by hand?): "
                               "restore its one row, or rebuild the catalog (`deltastore db rebuild` into a new one)")
    return ids[0]
