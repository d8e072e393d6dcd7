"""Many processes at once on one store: random add / rm / gc / tag / checkout.

Every add lands with a version of its own or fails with a store error (a gc holding the store,
a base removed meanwhile); nothing else ever comes out; afterwards ``verify`` is clean, every
version checks out byte-identical to what was added, and gc leaves nothing stray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import deltastore

from ..conftest import tree_hashes
from ..pg import PostgresServer, pg_bin
from ..s3 import SeaweedServer, weed_bin
from .common import REPO, assert_checkouts_exact, make_sources, stray_keys


def run_workers(home: Path, srcdir: Path, logdir: Path, n: int, rounds: int, env: dict[str, str]) -> list[dict]:
    logdir.mkdir()
    deltastore.open(home, db_url=env.get("DB_URL"), objects_url=env.get("OBJECTS_URL")).close()  # created once, up front
    procs = [subprocess.Popen([sys.executable, "-m", "tests.reliability.ops", str(home), "random", str(seed), str(rounds),
                               str(srcdir), str(logdir / f"w{seed}.jsonl")], cwd=REPO,
                              env={**os.environ, "DELTASTORE_GC_WAIT_S": "3", "DELTASTORE_THREADS": "1", **env},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for seed in range(n)]
    for p in procs:
        out, _ = p.communicate(timeout=1800)
        assert p.returncode == 0, out.decode()[-3000:]
    recs = []
    for f in sorted(logdir.glob("w*.jsonl")):
        recs += [json.loads(line) for line in f.read_text().splitlines()]
    assert len(recs) == n * rounds
    return recs


def check_history(st: deltastore.Store, recs: list[dict], srcdir: Path) -> dict[str, int]:
    unclean = [r for r in recs if str(r.get("error", "")).startswith("UNCLEAN")]
    assert not unclean, json.dumps(unclean[:3], indent=1)
    adds = [r for r in recs if r["op"].startswith("add") and r["ok"]]
    keys = [(r["ref"], r["created"]) for r in adds]
    assert len(set(keys)) == len(keys), "two adds were handed the same version"
    removed = {(r["ref"], r["created"]): r["manifest"] for r in recs if r["op"] == "rm" and r["ok"] and "skipped" not in r}
    live = {(v.ref, v.created_at.isoformat()): v for m in st.models() for v in st.versions(m.name)}
    for r in adds:  # every add that succeeded is in the catalog as it was added, or was removed by an rm
        k = (r["ref"], r["created"])
        assert k in removed or (k in live and live[k].manifest == r["manifest"] and live[k].message == r["src"]), r
    assert set(live) <= set(keys), "a version is in the catalog that no add reported"
    for r in recs:  # checkouts that succeeded while everything else ran gave exact bytes
        if r["op"] == "checkout" and r["ok"] and "skipped" not in r:
            assert tree_hashes(Path(r["out"])) == tree_hashes(srcdir / r["src"]), r
    return {"adds": len(adds), "failed_clean": sum(1 for r in recs if not r["ok"]), "live": len(live),
            "gcs": sum(1 for r in recs if r["op"] == "gc" and r["ok"])}


def check_store(st: deltastore.Store, srcdir: Path, out: Path) -> None:
    rep = st.verify()
    assert rep.ok, rep.problems
    assert_checkouts_exact(st, srcdir, out)
    st.gc()
    assert stray_keys(st) == []
    assert st.verify().ok


def test_four_processes_sqlite_local(tmp_path: Path) -> None:
    srcdir = make_sources(tmp_path / "src")
    recs = run_workers(tmp_path / "home", srcdir, tmp_path / "logs", n=4, rounds=5, env={})
    with deltastore.open(tmp_path / "home") as st:
        stats = check_history(st, recs, srcdir)
        assert stats["adds"] > 0
        check_store(st, srcdir, tmp_path / "final")


@pytest.mark.slow
def test_eight_processes_sqlite_local(tmp_path: Path) -> None:
    srcdir = make_sources(tmp_path / "src")
    recs = run_workers(tmp_path / "home", srcdir, tmp_path / "logs", n=8, rounds=20, env={})
    with deltastore.open(tmp_path / "home") as st:
        stats = check_history(st, recs, srcdir)
        print("sqlite+local 8x20:", stats)
        check_store(st, srcdir, tmp_path / "final")


@pytest.mark.slow
def test_eight_processes_postgres_s3(tmp_path: Path) -> None:
    if pg_bin() is None or weed_bin() is None:
        pytest.skip("needs PostgreSQL and SeaweedFS")
    s3fs = pytest.importorskip("s3fs")
    s3fs.S3FileSystem.clear_instance_cache()  # no client of an earlier server
    pg, s3 = PostgresServer(), SeaweedServer()
    try:
        pg.start()
        db = pg.create_db("concurrency")
        s3.start()
        env = {"DB_URL": db, "OBJECTS_URL": "s3://deltastore/conc", **s3.env()}
        os.environ.update(s3.env())
        srcdir = make_sources(tmp_path / "src")
        recs = run_workers(tmp_path / "home", srcdir, tmp_path / "logs", n=8, rounds=12, env=env)
        with deltastore.open(tmp_path / "home", db_url=db, objects_url="s3://deltastore/conc") as st:
            stats = check_history(st, recs, srcdir)
            print("postgres+s3 8x12:", stats)
            check_store(st, srcdir, tmp_path / "final")
    finally:
        for k in s3.env():
            os.environ.pop(k, None)
        s3.stop()
        pg.stop()
