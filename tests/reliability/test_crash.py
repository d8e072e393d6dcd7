"""kill -9 at named points inside object writes, around the catalog commit, during gc, rm, tag
and checkout (``DELTASTORE_CRASH_AT``, deltastore/crash.py), and with an S3 upload on the wire.

After each: every command works, ``verify`` is clean, the operation run again succeeds, gc
removes what the dead process left (objects, temp files, records of versions never committed),
every committed version checks out byte-identical and is visible to ``db rebuild``, and a
checkout that died left no file with wrong bytes."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

import deltastore

from ..conftest import tree_hashes
from ..s3 import SeaweedServer, weed_bin
from .common import assert_checkouts_exact, make_sources, run_op, stray_keys

OPS = {
    "add-base": lambda src, out: ["add-base", "b", str(src / "base2"), "prod"],
    "add-ft": lambda src, out: ["add-ft", "f", str(src / "ft1"), "b@v1"],
    "gc": lambda src, out: ["gc"],
    "checkout": lambda src, out: ["checkout", "f@v1", str(out)],
    "rm": lambda src, out: ["rm", "f@v1"],
    "tag": lambda src, out: ["tag", "b@v1", "prod"],
}

#: (operation, crash point[:n-th time reached])
POINTS = [
    ("add-base", "lease.taken"),
    ("add-base", "backend.put.open:3"),
    ("add-base", "backend.put.half-written:4"),
    ("add-base", "backend.put.before-fsync:4"),
    ("add-base", "backend.put.before-rename:4"),
    ("add-base", "backend.put.after-rename:4"),
    ("add-base", "add.before-commit"),
    ("add-base", "backend.flush"),
    ("add-base", "commit.after-flush"),
    ("add-base", "records.write-version"),
    ("add-base", "commit.before-db-commit"),
    ("add-base", "commit.after-db-commit"),
    ("add-ft", "backend.put.half-written:3"),
    ("add-ft", "commit.before-db-commit"),
    ("gc", "gc.locked"),
    ("gc", "gc.deleted-one"),
    ("gc", "backend.flush"),
    ("gc", "gc.before-unlock"),
    ("checkout", "backend.get:3"),
    ("checkout", "backend.get:9"),
    ("rm", "records.delete-version"),
    ("tag", "backend.put.open"),
]
#: the ones the default suite runs (the rest are marked slow)
QUICK = {("add-base", "backend.put.half-written:4"), ("add-base", "commit.before-db-commit"), ("gc", "gc.deleted-one")}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, Path]:
    """A store with a base, a fine-tune of it, and a removed version whose objects gc can take."""
    d = tmp_path_factory.mktemp("crash")
    src = make_sources(d / "src")
    with deltastore.open(d / "home") as st:
        st.add_base("b", src / "base0", message="base0")
        st.add_finetune("f", src / "ft0", "b", codec="lossless", message="ft0")
        st.add_base("tmp", src / "base1", message="base1")
        st.rm("tmp")
    return d / "home", src


def survive(home: Path, src: Path, op: str, point: str, tmp: Path, env: dict[str, str] | None = None,
            db_url: str | None = None, objects_url: str | None = None) -> None:
    out = tmp / "out"
    args = OPS[op](src, out)
    r = run_op(home, *args, env={"DELTASTORE_CRASH_AT": point, **(env or {})})
    assert r.returncode == -signal.SIGKILL, f"{point} was not reached: rc {r.returncode}\n{r.stderr[-2000:]}"
    if op == "checkout" and out.exists():  # what a dead checkout left: whole files, never wrong bytes
        want = tree_hashes(src / "ft0")
        for rel, h in tree_hashes(out).items():
            assert rel.rsplit("/", 1)[-1].endswith(".deltastore-tmp") or want.get(rel) == h, rel
    with deltastore.open(home, db_url=db_url, objects_url=objects_url) as st:
        before = {v.ref for m in st.models() for v in st.versions(m.name)}
        rep = st.verify()
        assert rep.ok, rep.problems
        # the operation again, in a process of its own, with no crash
        again = run_op(home, *(args + (["--force"] if op == "checkout" else [])), env=env)
        if op == "rm" and "f@v1" not in before:
            assert again.returncode == 1 and "UnknownRefError" in again.stderr  # it had committed: gone already
        else:
            assert again.returncode == 0, again.stderr[-2000:]
        if op == "checkout":
            assert tree_hashes(out) == tree_hashes(src / "ft0")
        st.gc()
        assert stray_keys(st) == []
        assert st.verify().ok
        assert_checkouts_exact(st, src, tmp / "final")
        committed = {(v.ref, v.manifest) for m in st.models() for v in st.versions(m.name)}
    # every committed version is visible to db rebuild, from the backend alone
    cfg_objects = objects_url or str(home)
    with deltastore.open(tmp / "rebuilt", db_url=f"sqlite:///{tmp / 'rebuilt.db'}", objects_url=cfg_objects) as st2:
        rep = st2.rebuild_catalog()
        assert {(v.ref, v.manifest) for m in st2.models() for v in st2.versions(m.name)} == committed, rep.skipped


@pytest.mark.parametrize("op,point", [pytest.param(o, p, marks=() if (o, p) in QUICK else pytest.mark.slow, id=f"{o}@{p}")
                                      for o, p in POINTS])
def test_kill_9(template, tmp_path: Path, op: str, point: str) -> None:
    home = tmp_path / "home"
    shutil.copytree(template[0], home)
    cfg = home / "config.toml"  # the copy's config names the copy's catalog and objects
    cfg.write_text(cfg.read_text().replace(str(template[0]), str(home)))
    survive(home, template[1], op, point, tmp_path)


@pytest.fixture(scope="module")
def s3_env():
    if weed_bin() is None:
        pytest.skip("SeaweedFS is not installed")
    s3fs = pytest.importorskip("s3fs")
    s3 = SeaweedServer()
    saved = dict(os.environ)
    try:
        s3.start()
        os.environ.update(s3.env())
        s3fs.S3FileSystem.clear_instance_cache()  # no client of an earlier server
        yield s3.env()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        s3fs.S3FileSystem.clear_instance_cache()
        s3.stop()


@pytest.mark.slow
@pytest.mark.parametrize("op,point", [("add-base", "backend.put.in-flight:4"), ("add-base", "backend.put.in-flight:7"),
                                      ("add-base", "backend.put.after-rename:5"), ("add-base", "commit.before-db-commit"),
                                      ("gc", "gc.deleted-one")], ids=lambda x: x)
def test_kill_9_with_objects_on_s3(s3_env, tmp_path: Path, op: str, point: str) -> None:
    url = f"s3://deltastore/{tmp_path.name}"
    src = make_sources(tmp_path / "src")
    home = tmp_path / "home"
    with deltastore.open(home, objects_url=url) as st:
        st.add_base("b", src / "base0", message="base0")
        st.add_finetune("f", src / "ft0", "b", codec="lossless", message="ft0")
        st.add_base("tmp", src / "base1", message="base1")
        st.rm("tmp")
    survive(home, src, op, point, tmp_path, env={"OBJECTS_URL": url, **s3_env}, objects_url=url)
