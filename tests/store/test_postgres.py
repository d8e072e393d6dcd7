"""The catalog on a real PostgreSQL server: the same store behaviour, and concurrent writers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import deltastore

from ..conftest import finetune_of, llama_like, tree_hashes, write_model
from ..pg import PostgresServer, pg_bin

pytestmark = pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL is not installed (.ci/run installs it)")
pytest.importorskip("psycopg")


@pytest.fixture(scope="module")
def pg():
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


def test_store_on_postgres(pg, tmp_path: Path) -> None:
    url = pg.create_db("store1")
    st = deltastore.open(tmp_path / "home", db_url=url)
    assert "postgresql" in st.config.db_url
    base = llama_like(0)
    st.add_base("b", write_model(tmp_path / "b", base), tags=["prod"])
    st.add_finetune("f", write_model(tmp_path / "f", finetune_of(base)), base="b@prod", codec="lossless")
    st.checkout("f", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(tmp_path / "f")
    assert st.lineage("b").tree.children[0].ref == "f@v1"
    assert st.verify().ok
    st.rm("f")
    assert st.gc().deleted > 0
    # a second client sees the same catalog through the config file
    st2 = deltastore.open_store(tmp_path / "home")
    assert [m.name for m in st2.models()] == ["b"]


ADD = """
import sys, deltastore
st = deltastore.open(sys.argv[1], db_url=sys.argv[2])
for _ in range(3):
    st.add_base("shared", sys.argv[3])
"""


def test_concurrent_writers_get_distinct_version_numbers(pg, tmp_path: Path) -> None:
    url = pg.create_db("store2")
    deltastore.open(tmp_path / "home", db_url=url).close()
    src = write_model(tmp_path / "m", llama_like(1))
    procs = [subprocess.Popen([sys.executable, "-c", ADD, str(tmp_path / "home"), url, str(src)]) for _ in range(3)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    st = deltastore.open_store(tmp_path / "home")
    assert [v.number for v in st.versions("shared")] == list(range(1, 10))
    assert st.verify().ok
