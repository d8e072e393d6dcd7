"""Engine set-up, the schema check every open makes, and Alembic migrations for the catalog.

Schema changes are explicit on a shared catalog. :func:`ensure_schema` runs on every open:
- the catalog at this client's head revision: nothing to do;
- an empty catalog (no deltastore tables): created, when the open may write (``deltastore init``,
  ``deltastore.open``);
- an older revision: upgraded only where ``may_upgrade`` (a local SQLite home, private to its
  user); anywhere else (PostgreSQL shared by a team) it is an error that says to run
  ``deltastore db upgrade``, so a newer client never migrates a catalog under older ones;
- a revision this client does not know (a newer deltastore migrated it): an error naming both.
Every change runs through :func:`upgrade`, which holds a lock while it re-reads the revision and
migrates (a transaction-scoped advisory lock on PostgreSQL, a file lock beside a SQLite file), so
concurrent opens and upgrades never race on the schema.
"""

from __future__ import annotations

import fcntl
import functools
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from .config import redact, safe_url
from .errors import BadInputError, DeltaStoreError

#: pg_advisory_xact_lock key held while the schema is read and migrated (any constant; "dsschema")
PG_SCHEMA_LOCK = 0x6473736368656D61
#: tables whose presence means "a deltastore catalog", with or without an alembic_version row
_OUR_TABLES = {"models", "versions", "objects"}


class CatalogError(DeltaStoreError):
    """The catalog cannot be used as it is (unreachable, or at a schema this client cannot use)."""


class CatalogUnavailableError(CatalogError, ConnectionError):
    """The catalog database cannot be reached or opened."""


class SchemaError(CatalogError):
    """The catalog's schema revision is not the one this deltastore needs."""


class SchemaTooOldError(SchemaError):
    """A shared catalog at an older revision: ``deltastore db upgrade`` migrates it."""


class SchemaTooNewError(SchemaError):
    """A catalog migrated by a newer deltastore than this one."""


class NoSchemaError(SchemaError):
    """A catalog database with no deltastore schema, opened where it may not be created."""


def _migrations_dir() -> Path:
    import deltastore.migrations as m

    return Path(m.__file__).resolve().parent


def make_engine(url: str) -> Engine:
    """An engine for a catalog URL; a URL that names no database driver is a BadInputError."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 60})

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _):  # noqa: ANN001
                cur = dbapi_conn.cursor()
                # Switching a new file to WAL needs an exclusive lock, and SQLite answers "database
                # is locked" at once (no busy wait: deadlock avoidance) while another process holds
                # a write transaction, e.g. a concurrent open creating the catalog. Wait for it.
                deadline = time.monotonic() + 60
                while True:
                    try:
                        cur.execute("PRAGMA journal_mode=WAL")
                        break
                    except sqlite3.OperationalError as e:
                        if "locked" not in str(e) or time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

            return engine
        engine = create_engine(url, pool_pre_ping=True)
        if engine.dialect.name == "postgresql":
            event.listen(engine, "connect", _postgres_session)
        return engine
    except (ArgumentError, NoSuchModuleError) as e:
        raise BadInputError(f"not a catalog URL deltastore can open: {safe_url(url)} ({redact(str(e))})") from None
    except ModuleNotFoundError as e:
        raise BadInputError(f"the catalog URL {safe_url(url)} needs the {e.name} package "
                            "(pip install 'deltastore[postgres]' for PostgreSQL)") from None


def _postgres_session(dbapi_conn, _) -> None:  # noqa: ANN001
    """Per connection: no JIT. Catalog queries are index probes returning a few hundred rows at
    most, but a plan whose estimate is large (a recursive query, tables autovacuum has not yet
    analyzed) crosses ``jit_above_cost`` and PostgreSQL spends about 200 ms compiling it: lineage
    of a 99-deep chain took 317 ms, 316 of them JIT (EXPLAIN ANALYZE), and 1 ms without."""
    autocommit = dbapi_conn.autocommit
    dbapi_conn.autocommit = True  # a SET outside any transaction: it lasts for the connection
    try:
        with dbapi_conn.cursor() as cur:
            cur.execute("SET jit = off")
    finally:
        dbapi_conn.autocommit = autocommit


def is_local_catalog(engine: Engine) -> bool:
    """A SQLite catalog: private to one home, so it may upgrade its own schema on open."""
    return engine.dialect.name == "sqlite"


def _alembic_config(conn=None):  # noqa: ANN001
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def _script():
    return _script_at(str(_migrations_dir()))


@functools.lru_cache(maxsize=4)
def _script_at(location: str):  # noqa: ANN202
    """The revisions, read once per process (every open asks for the head)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


def head_revision() -> str:
    return _script().get_current_head()


def known_revisions() -> set[str]:
    return {s.revision for s in _script().walk_revisions()}


def _unavailable(engine: Engine, e: DBAPIError) -> CatalogUnavailableError:
    orig = getattr(e, "orig", None) or e
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    reason = lines[0] if lines else type(orig).__name__
    return CatalogUnavailableError(f"cannot open the catalog at {_where(engine)}: {redact(reason)}")


@contextmanager
def _connect(engine: Engine) -> Iterator[Connection]:
    """``engine.connect()``, with a failure to connect as a one-line CatalogUnavailableError."""
    try:
        conn = engine.connect()
    except DBAPIError as e:
        raise _unavailable(engine, e) from None
    with conn:
        yield conn


def _revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def current_revision(engine: Engine) -> str | None:
    with _connect(engine) as conn:
        return _revision(conn)


def _has_our_tables(conn: Connection) -> bool:
    return bool(_OUR_TABLES & set(inspect(conn).get_table_names()))


def _where(engine: Engine) -> str:
    """The catalog's URL as messages show it: no password."""
    return redact(engine.url.render_as_string(hide_password=True))


def _check_known(engine: Engine, rev: str | None, head: str) -> None:
    if rev is not None and rev not in known_revisions():
        raise SchemaTooNewError(
            f"the catalog at {_where(engine)} has schema revision {rev}, which this deltastore does not know "
            f"(it knows up to {head}): a newer deltastore migrated it; upgrade deltastore to use this catalog")


def ensure_schema(engine: Engine, *, may_upgrade: bool, may_create: bool = True) -> str:
    """Check that the catalog's schema is the one this client needs, creating or upgrading it only
    where allowed (see the module docstring); returns the revision. Raises SchemaError subclasses
    with the command that fixes each case, CatalogUnavailableError when it cannot connect."""
    head = head_revision()
    with _connect(engine) as conn:
        rev = _revision(conn)
        if rev == head:
            return head
        _check_known(engine, rev, head)
        ours = _has_our_tables(conn)
    if rev is None and ours:  # maybe another process is creating the catalog right now: it holds the
        with _schema_lock(engine) as conn:  # schema lock until its revision is stamped, so look again there
            rev, ours = _revision(conn), _has_our_tables(conn)
        if rev == head:
            return head
        _check_known(engine, rev, head)
    if rev is None:
        if ours:
            raise SchemaError(f"the catalog at {_where(engine)} has deltastore tables but no schema revision: "
                              f"run `deltastore db upgrade` only if it was made by deltastore before migrations")
        if not may_create:
            raise NoSchemaError(f"the catalog at {_where(engine)} holds no deltastore catalog: run `deltastore init` first")
    elif not may_upgrade:
        raise SchemaTooOldError(f"catalog schema is at revision {rev}, this deltastore needs {head}: run `deltastore db upgrade`")
    return upgrade(engine)[1]


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction, held under the catalog's schema lock: another upgrade (or
    an open creating the catalog) waits here, then sees the schema already done."""
    if engine.dialect.name == "postgresql":
        try:
            with engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_SCHEMA_LOCK})
                yield conn
        except DBAPIError as e:
            if e.connection_invalidated or getattr(e, "orig", None) is None:
                raise _unavailable(engine, e) from None
            raise
        return
    db = engine.url.database
    if engine.dialect.name == "sqlite" and db and db != ":memory:" and not db.startswith("file:"):
        lock_path = f"{os.path.abspath(db)}.schema-lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise CatalogUnavailableError(f"cannot open the catalog at {_where(engine)}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with engine.begin() as conn:
                yield conn
        finally:
            os.close(fd)
        return
    with engine.begin() as conn:
        yield conn


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Apply pending migrations under the schema lock; returns (revision before, revision after).
    A catalog at a revision this client does not know raises SchemaTooNewError untouched."""
    from alembic import command

    head = head_revision()
    with _connect(engine):
        pass  # a failure to connect is one clear line, before any lock is taken
    with _schema_lock(engine) as conn:
        before = _revision(conn)
        _check_known(engine, before, head)
        if before != head:
            command.upgrade(_alembic_config(conn), revision)
        after = _revision(conn) or ""
    return before, after
