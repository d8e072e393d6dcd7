"""Alembic environment. The store passes its open connection in ``config.attributes``; the
``alembic`` command line works too, with ``-x url=...`` or DELTASTORE_DB_URL (on PostgreSQL it takes
the same advisory lock as ``deltastore db upgrade``, deltastore.db.PG_SCHEMA_LOCK)."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, text

from deltastore.catalog import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("DELTASTORE_DB_URL")
    if not url:
        raise SystemExit("pass -x url=... or set DELTASTORE_DB_URL")
    engine = create_engine(url)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # the lock `deltastore db upgrade` holds: one migrator at a time
            from deltastore.db import PG_SCHEMA_LOCK

            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_SCHEMA_LOCK})
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
