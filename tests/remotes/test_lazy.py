"""A clone pulls nothing until a REF is used: checkout and state_dict of a version the clone lacks
fetch it (with its base chain) from the tracked remote, byte-exact, through a bare directory and
through SeaweedFS S3; a REF on neither side, and a remote that cannot be used, are one line each
with nothing changed locally; a store whose remote is not lazy never fetches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import deltastore
from deltastore import remotes
from deltastore.errors import RemoteError, UnknownRefError
from deltastore.store import Store, init_store

from ..cli.test_cli import run
from ..conftest import tree_hashes
from ..ports import free_ports


def _clone(url: str, home: Path, **kw) -> deltastore.Store:
    st, r = remotes.clone(url, home, store_cls=Store, init=init_store, **kw)
    assert r.lazy and remotes.load_remotes(home)["origin"].lazy
    st.close()
    return deltastore.open(home)


def _state(st: deltastore.Store) -> tuple:
    return (sorted(st.objects.all_oids()), [(v.ref, tuple(v.tags)) for m in st.models() for v in st.versions(m.name)])


def test_clone_fetches_on_first_use(filled, models, tmp_path: Path) -> None:
    url = str(tmp_path / "remote")
    filled.push("f@best", url)
    st = _clone(url, tmp_path / "clone")
    assert st.models() == [] and not list(st.objects.all_oids())  # nothing pulled by the clone

    st.checkout("f@best", tmp_path / "out")  # f and its base come over on first use
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.ft)
    assert [(v.ref, v.tags) for v in st.versions("f")] == [("f@v1", ["best"])]
    assert st.resolve("b@prod").number == 1 and st.verify().ok
    before = _state(st)
    st.checkout("b@v1", tmp_path / "out-b")  # here now: nothing fetched (the remote is not asked)
    assert tree_hashes(tmp_path / "out-b") == tree_hashes(models.base) and _state(st) == before
    st.close()

    st2 = _clone(url, tmp_path / "clone2")  # state_dict (what load builds on) fetches too
    sd = st2.state_dict("f@v1")
    want = filled.state_dict("f@v1")
    assert sd.keys() == want.keys() and all(torch.equal(sd[k], want[k]) for k in want)
    assert st2.lineage("b@v1").tree.children[0].ref == "f@v1"
    st2.close()


def test_missing_everywhere_and_unusable_remote(filled, tmp_path: Path) -> None:
    url = tmp_path / "remote"
    filled.push("b@v1", str(url))
    st = _clone(str(url), tmp_path / "clone")
    with pytest.raises(UnknownRefError) as e:
        st.resolve("nosuch@v1")
    assert "neither in this store nor on its remotes" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnknownRefError):
        st.resolve("b@v7")
    assert _state(st) == ([], [])

    url.rename(tmp_path / "moved")  # the remote is gone: one line, nothing changed here
    with pytest.raises(RemoteError) as e:
        st.checkout("b@v1", tmp_path / "out")
    msg = str(e.value)
    assert msg.startswith("b@v1 is not in this store and fetching it failed: remote 'origin'") and "\n" not in msg
    assert _state(st) == ([], []) and not (tmp_path / "out").exists()
    st.close()


def test_a_remote_that_is_not_lazy_is_never_asked(filled, other, tmp_path: Path) -> None:
    url = str(tmp_path / "remote")
    filled.push("b@v1", url)
    remotes.add_remote(other.config.home, "origin", url)  # pushed to and pulled from, not fetched from
    with pytest.raises(UnknownRefError) as e:
        other.resolve("b@v1")
    assert "no model named 'b'" in str(e.value)
    assert _state(other) == ([], [])


def test_writes_and_history_do_not_fetch(filled, tmp_path: Path) -> None:
    """Tagging, removing and lineage name what is here; only reads that materialize fetch."""
    url = str(tmp_path / "remote")
    filled.push("f@best", url)
    st = _clone(url, tmp_path / "clone")
    for op in (lambda: st.tag("b@v1", "x"), lambda: st.rm("b@v1"), lambda: st.lineage("b@v1")):
        with pytest.raises(UnknownRefError):
            op()
    assert _state(st) == ([], [])
    st.close()


def test_clone_of_s3_fetches_on_checkout(s3, filled, models, tmp_path: Path) -> None:
    url = "s3://deltastore/lazy"
    filled.push("f@best", url)
    st = _clone(url, tmp_path / "clone")
    st.checkout("f@v1", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.ft) and st.verify().ok

    # an endpoint nobody answers on: one line, no secret, nothing changed
    dead = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_ports(1)[0]}", "region_name": "us-east-1"},
            "config_kwargs": {"connect_timeout": 2, "retries": {"max_attempts": 1}},
            "key": "lazy-key", "secret": "Sup3rSecret-lazy"}
    home2 = tmp_path / "clone2"
    st2 = _clone(url, home2)
    remotes.add_remote(home2, "origin", url, storage_options=dead, replace=True, lazy=True)
    with pytest.raises(RemoteError) as e:
        st2.checkout("f@v1", tmp_path / "out2")
    msg = str(e.value)
    assert "cannot reach it" in msg and "Sup3rSecret-lazy" not in msg and "\n" not in msg
    assert _state(st2) == ([], [])
    st.close()
    st2.close()


def test_cli_clone_pull_by_tag_then_checkout(models, tmp_path: Path) -> None:
    a, b, url = tmp_path / "a", tmp_path / "b", tmp_path / "remote"
    run(a, "init")
    run(a, "add", "base", "llama", str(models.base), "--tag", "prod")
    run(a, "add", "finetune", "wiz", str(models.ft), "--base", "llama", "--codec", "lossless")
    run(a, "push", "wiz", str(url))
    run(tmp_path, "clone", str(url), str(b))
    assert json.loads(run(b, "remote", "ls", "--json").stdout)[0]["lazy"] is True
    pulled = json.loads(run(b, "pull", "--tag", "prod", "--json").stdout)  # the base, by its tag
    assert [r["dst_ref"] for r in pulled] == ["llama@v1"]
    run(b, "checkout", "wiz@v1", str(tmp_path / "out"))  # no pull first: wiz comes over, its base is here
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.ft)
    assert [m["name"] for m in json.loads(run(b, "ls", "--json").stdout)] == ["llama", "wiz"]
    assert "yes" in run(b, "remote", "ls").stdout  # the lazy column

    c = tmp_path / "c"  # an existing store made lazy by `remote add --lazy`
    run(c, "init")
    run(c, "remote", "add", "origin", str(url), "--lazy")
    run(c, "checkout", "llama@prod", str(tmp_path / "out-c"))
    assert tree_hashes(tmp_path / "out-c") == tree_hashes(models.base)


def test_track_names_the_home_of_any_catalog(filled, tmp_path: Path) -> None:
    """A catalog outside its home (here a SQLite file elsewhere; a team's PostgreSQL alike) is not
    recognized from its engine alone: ``remotes.track`` names its home, and then it fetches."""
    url = str(tmp_path / "remote")
    filled.push("b@v1", url)
    home = tmp_path / "home"
    (tmp_path / "elsewhere").mkdir()
    st = deltastore.open(home, db_url=f"sqlite:///{tmp_path / 'elsewhere' / 'cat.db'}")
    remotes.add_remote(home, "origin", url, lazy=True)
    with pytest.raises(UnknownRefError, match="no model named 'b'"):
        st.resolve("b@v1")
    remotes.track(st)
    assert st.resolve("b@v1").ref == "b@v1" and st.verify().ok
    st.close()


def test_files_of_a_clone_fetch_on_first_open(filled, models, tmp_path: Path) -> None:
    """`deltastore://` (and so the mount, which reads through the same filesystem) on a clone:
    a version the clone lacks appears when a path names it, byte-exact; a REF on neither side is
    FileNotFoundError (ENOENT through FUSE)."""
    from deltastore.fs import DeltaStoreFileSystem

    url = str(tmp_path / "remote")
    filled.push("f@best", url)
    _clone(url, tmp_path / "clone").close()
    fsys = DeltaStoreFileSystem(str(tmp_path / "clone"))
    assert fsys.ls("", detail=False) == []  # nothing local yet
    want = (models.ft / "model.safetensors").read_bytes()
    assert fsys.cat("f@best/model.safetensors") == want  # fetched on first use, with its base
    assert fsys.cat("b@prod/model.safetensors") == (models.base / "model.safetensors").read_bytes()
    with pytest.raises(FileNotFoundError):
        fsys.cat("nosuch@v1/model.safetensors")
