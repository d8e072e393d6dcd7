"""Schema changes are explicit on a shared catalog: a local SQLite home upgrades itself; a
PostgreSQL catalog at an older revision asks for ``deltastore db upgrade`` and is left as it is;
a revision newer than the client is refused, naming both; concurrent opens and upgrades never race.

"A newer client" is this deltastore with one more Alembic revision (0003) in a copy of its
migrations folder: exactly what the next release that changes the schema looks like.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy import text

import deltastore
from deltastore import db, records
from deltastore.catalog import catalog_id
from deltastore.db import SchemaTooNewError, SchemaTooOldError, NoSchemaError, current_revision, make_engine

from ..conftest import llama_like, write_model
from ..clirun import cli
from ..pg import pg_bin

HEAD = "0003"
NEXT = "0004"
REV_NEXT = '''"""the next release's schema change (a test fixture)

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("models", sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as b:
        b.drop_column("note")
'''

needs_pg = pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL is not installed (.ci/run installs it)")


def newer_migrations(root: Path) -> Path:
    dst = root / "migrations-next"
    if not dst.exists():
        shutil.copytree(db._migrations_dir(), dst, ignore=shutil.ignore_patterns("__pycache__"))
        (dst / "versions" / "0004_next.py").write_text(REV_NEXT)
    return dst


@pytest.fixture
def become_newer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to turn this process into a client whose head is 0003."""

    def apply() -> None:
        dst = newer_migrations(tmp_path)
        monkeypatch.setattr(db, "_migrations_dir", lambda: dst)
        assert db.head_revision() == NEXT

    return apply




def revision_of(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def stamp(url: str, rev: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": rev})
    engine.dispose()


def test_sqlite_home_upgrades_itself(tmp_path: Path, become_newer) -> None:
    home = tmp_path / "home"
    with deltastore.open(home) as st:
        st.add_base("m", write_model(tmp_path / "m", llama_like(0, hidden=32, layers=1, vocab=64)))
    url = f"sqlite:///{home / 'catalog.db'}"
    assert revision_of(url) == HEAD
    become_newer()
    with deltastore.open_store(home, read_only=True) as st:  # even a read-only open: the home is private
        assert [m.name for m in st.models()] == ["m"]
    assert revision_of(url) == NEXT


@needs_pg
def test_shared_catalog_at_an_older_schema_asks_for_db_upgrade(pg, tmp_path: Path, become_newer) -> None:
    url = pg.create_db("older")
    home = tmp_path / "home"
    deltastore.open(home, db_url=url).close()
    become_newer()
    want = f"catalog schema is at revision {HEAD}, this deltastore needs {NEXT}: run `deltastore db upgrade`"
    for read_only in (False, True):
        with pytest.raises(SchemaTooOldError) as e:
            deltastore.open_store(home, read_only=read_only)
        assert str(e.value) == want
    with pytest.raises(SchemaTooOldError):
        deltastore.open(home)
    assert revision_of(url) == HEAD, "an open migrated a shared catalog"
    p = cli("ls", "--home", str(home))
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [f"deltastore: error: {want}"], p.stderr
    p = cli("db", "current", "--home", str(home), "--json")
    assert json.loads(p.stdout) == {"revision": HEAD, "head": NEXT, "status": "behind"}
    p = cli("db", "upgrade", "--home", str(home))
    assert p.returncode == 0 and f"catalog at revision {NEXT} (was {HEAD})" in p.stdout, p.stderr
    assert revision_of(url) == NEXT
    with deltastore.open_store(home) as st:
        assert st.models() == []


@needs_pg
def test_init_migrates_a_shared_catalog(pg, tmp_path: Path, become_newer) -> None:
    url = pg.create_db("older_init")
    home = tmp_path / "home"
    deltastore.open(home, db_url=url).close()
    become_newer()
    info = json.loads(cli("init", str(home), "--json").stdout)
    assert (info["schema_before"], info["schema"]) == (HEAD, NEXT)
    assert revision_of(url) == NEXT


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=needs_pg)])
def test_a_newer_schema_is_refused(kind: str, tmp_path: Path, request) -> None:
    home = tmp_path / "home"
    url = request.getfixturevalue("pg").create_db("newer") if kind == "postgresql" else f"sqlite:///{home / 'catalog.db'}"
    deltastore.open(home, db_url=url).close()
    stamp(url, "7f3e9a")
    for read_only in (False, True):
        with pytest.raises(SchemaTooNewError) as e:
            deltastore.open_store(home, read_only=read_only)
        assert "7f3e9a" in str(e.value) and HEAD in str(e.value) and "upgrade deltastore" in str(e.value)
    for args in (["ls"], ["db", "upgrade"], ["init"]):
        p = cli(*args, "--home", str(home))
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and "revision 7f3e9a" in lines[0] and f"up to {HEAD}" in lines[0], p.stderr
    assert revision_of(url) == "7f3e9a"


@needs_pg
def test_an_empty_shared_catalog_is_created_by_init(pg, tmp_path: Path) -> None:
    url = pg.create_db("empty")
    home = tmp_path / "home"
    with pytest.raises(NoSchemaError, match="run `deltastore init`"):
        deltastore.open_store(home, db_url=url, objects_url=str(tmp_path / "objs"), read_only=True)
    p = cli("init", str(home), "--db-url", url)
    assert p.returncode == 0, p.stderr
    assert revision_of(url) == HEAD
    with deltastore.open_store(home, read_only=True) as st:
        assert st.models() == []


def downgrade(url: str, rev: str) -> None:
    from alembic import command

    engine = make_engine(url)
    with engine.begin() as conn:
        command.downgrade(db._alembic_config(conn), rev)
    engine.dispose()


def made_before_catalog_ids(st: deltastore.Store, url: str) -> str:
    """Turn a store this deltastore made into one an older deltastore made: catalog at 0001 (no
    catalog_identity), its version records of format 1 (no owner). Returns a record's key."""
    key = "catalog/versions/m/v1.json"
    d = json.loads(st.backend.get(key))
    del d["format"], d["catalog"]
    st.backend.put(key, json.dumps(d, sort_keys=True, indent=1).encode())
    st.close()
    downgrade(url, "0001")
    assert revision_of(url) == "0001"
    return key


def catalog_id_of(st: deltastore.Store) -> str:
    with st.Session() as s:
        return catalog_id(s)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=needs_pg)])
def test_a_catalog_from_before_catalog_ids_gets_one_and_keeps_its_records(kind: str, tmp_path: Path, request) -> None:
    """0002 gives every catalog an id once: a local home at its first open, a shared one at `db
    upgrade` (an open asks for it, as for every schema change). Its old records, which name no
    catalog, stay its own: gc keeps what they name and removes them once their version goes."""
    home = tmp_path / "home"
    url = request.getfixturevalue("pg").create_db("before_ids") if kind == "postgresql" else f"sqlite:///{home / 'catalog.db'}"
    st = deltastore.open(home, db_url=url)
    st.add_base("m", write_model(tmp_path / "m", llama_like(0, hidden=32, layers=1, vocab=64)))
    key = made_before_catalog_ids(st, url)
    if kind == "postgresql":
        with pytest.raises(SchemaTooOldError, match="run `deltastore db upgrade`"):
            deltastore.open_store(home)
        assert revision_of(url) == "0001"
        p = cli("db", "upgrade", "--home", str(home))
        assert p.returncode == 0 and f"catalog at revision {HEAD} (was 0001)" in p.stdout, p.stderr
    with deltastore.open_store(home) as st:
        assert revision_of(url) == HEAD
        cid = catalog_id_of(st)
        rep = st.gc()
        assert (rep.deleted, rep.other_versions) == (0, 0) and st.backend.exists(key) and st.verify().ok
        st.add_base("m", write_model(tmp_path / "m2", llama_like(1, hidden=32, layers=1, vocab=64)))
        assert records.parse_version("catalog/versions/m/v2.json", st.backend.get("catalog/versions/m/v2.json"))["catalog"] == cid
    with deltastore.open_store(home) as st:
        assert catalog_id_of(st) == cid  # made once
        st.rm("m@v1")
        st.gc()
        assert not st.backend.exists(key) and st.verify().ok


RACE = """
import sys, json
from pathlib import Path
from deltastore import db, records
from deltastore.catalog import catalog_id
url, newer = sys.argv[1], sys.argv[2]
engine = db.make_engine(url)
db.head_revision()  # alembic loaded before the start, so the processes really run at once
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(db.ensure_schema(engine, may_upgrade=False, may_create=True)), flush=True)
sys.stdin.readline()
db._migrations_dir = lambda: Path(newer)
print(json.dumps(db.upgrade(engine)), flush=True)
"""


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=needs_pg)])
def test_concurrent_opens_and_upgrades_do_not_race(kind: str, tmp_path: Path, request) -> None:
    """Four processes open an empty catalog at once: it is created once and all four succeed;
    then the four, now newer clients, run `db upgrade` at once: exactly one migrates, all succeed."""
    url = request.getfixturevalue("pg").create_db("race") if kind == "postgresql" else f"sqlite:///{tmp_path / 'catalog.db'}"
    n = 4
    procs = [subprocess.Popen([sys.executable, "-c", RACE, url, str(newer_migrations(tmp_path))], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]

    def step() -> list:
        for p in procs:  # all start together
            p.stdin.write("go\n")
            p.stdin.flush()
        lines = [p.stdout.readline() for p in procs]
        assert all(lines), [p.communicate()[1] for p in procs]
        return [json.loads(ln) for ln in lines]

    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * n
        assert step() == [HEAD] * n
        assert revision_of(url) == HEAD
        ups = step()
        assert sorted(tuple(u) for u in ups) == [(HEAD, NEXT)] + [(NEXT, NEXT)] * (n - 1)
        assert [p.wait(timeout=120) for p in procs] == [0] * n
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert revision_of(url) == NEXT
