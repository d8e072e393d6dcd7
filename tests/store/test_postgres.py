"""The catalog on a real PostgreSQL server: the same store behaviour, and concurrent writers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import deltastore

from ..conftest import finetune_of, llama_like, tree_hashes, write_model
from ..pg import pg_bin

pytestmark = pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL is not installed (.ci/run installs it)")
pytest.importorskip("psycopg")


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


def _chain(st, name: str, depth: int) -> None:
    """Catalog rows for ``name``: v1 a fine-tune of b@v1, vN of v(N-1), and a branch off v2 (what
    commit_version writes, in bulk; every version indexes the real fine-tune's objects)."""
    from sqlalchemy import insert, select

    from deltastore.catalog import Lineage, Model, Version, VersionObject, utcnow

    ft = st.resolve("f@v1")
    oids = sorted(st.manifest(ft.manifest).object_ids() | {ft.manifest})
    with st.Session.begin() as s:
        parent = s.scalar(select(Version.id).join(Model, Model.id == Version.model_id).where(Model.name == "b"))
        m = Model(name=name)
        s.add(m)
        s.flush()
        ids = {}
        for n in range(1, depth + 2):
            p = ids[2] if n == depth + 1 else parent  # the last one branches off v2
            vid = s.execute(insert(Version).values(
                model_id=m.id, number=n, manifest=ft.manifest, base_version_id=p, kind="finetune", codec="lossless",
                codec_params={}, logical_bytes=1, stored_bytes=1, referenced_bytes=1, message="", author="t",
                created_at=utcnow(), metrics={}, calib_sha256=None).returning(Version.id)).scalar_one()
            s.execute(insert(Lineage), [{"parent_id": p, "child_id": vid, "relation": "base"}])
            s.execute(insert(VersionObject), [{"version_id": vid, "oid": o} for o in oids])
            ids[n] = parent = vid


def test_lineage_of_a_deep_chain_matches_sqlite(pg, tmp_path: Path) -> None:
    """The PostgreSQL form of the descendants query (a LATERAL probe per child) gives the tree
    SQLite's plain recursive join gives: a 40-deep chain with a branch; connections run without JIT."""
    base = llama_like(0)
    b, f = write_model(tmp_path / "b", base), write_model(tmp_path / "f", finetune_of(base))
    got = {}
    for name, url in (("pg", pg.create_db("lineage")), ("sqlite", None)):
        st = deltastore.open(tmp_path / name, db_url=url)
        st.add_base("b", b)
        st.add_finetune("f", f, base="b", codec="lossless")
        _chain(st, "deep", 40)
        got[name] = (st.lineage("deep@v1"), st.lineage("deep@v40"), st.lineage("b@v1"))
        if url:
            with st.engine.connect() as c:
                assert c.exec_driver_sql("SHOW jit").scalar() == "off"
        st.close()
    assert got["pg"] == got["sqlite"]
    top, leaf, root = got["pg"]
    assert leaf.ancestors == [f"deep@v{n}" for n in range(39, 0, -1)] + ["b@v1"] and leaf.tree.children == []
    depth, node = 0, top.tree
    while node.children:
        assert [c.ref for c in node.children] == (["deep@v3", "deep@v41"] if node.ref == "deep@v2" else [f"deep@v{depth + 2}"])
        node, depth = node.children[0], depth + 1
    assert depth == 39 and [c.ref for c in root.tree.children] == ["f@v1", "deep@v1"]


def test_metrics_that_are_not_json_are_refused_before_anything_is_written(pg, tmp_path: Path) -> None:
    """NaN and infinities are not JSON: Python writes them, SQLite keeps them, PostgreSQL's JSON
    column refuses them at the commit, after every object was written (a traceback; a record in
    a shared bucket that no PostgreSQL catalog could pull). add refuses them first, on either
    catalog, one BadInputError, nothing written."""
    from deltastore.errors import BadInputError

    model = write_model(tmp_path / "b", llama_like(0))
    for url in (pg.create_db("metrics"), None):
        st = deltastore.open(tmp_path / ("pg" if url else "lite"), **({"db_url": url} if url else {}))
        for bad in ({"loss": float("nan")}, {"x": [1.0, float("inf")]}, {"y": {"z": -float("inf")}}):
            with pytest.raises(BadInputError, match="metrics are not JSON"):
                st.add_base("b", model, metrics=bad)
        assert st.models() == [] and not list(st.backend.list("objects"))
        assert st.add_base("b", model, metrics={"loss": 0.5}).ref == "b@v1"
        st.close()
