"""Push and pull between two local stores through a third (a bare directory, or a store with a
catalog): byte-exact checkouts, nothing re-sent, bases and tags travel, numbers stay distinct."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

import deltastore
from deltastore import remotes
from deltastore.errors import CorruptObjectError, RemoteError
from deltastore.objects import key_of

from ..conftest import tree_hashes


def test_push_then_pull_is_byte_exact(source, other, models, tmp_path: Path) -> None:
    url = str(tmp_path / "remote")
    remotes.add_remote(source.config.home, "origin", url, replace=True)
    seen: list[tuple[str, int, int]] = []
    r = source.push("f@best", progress=lambda *a: seen.append(a))
    assert [(m.src, m.dst, m.new) for m in r.versions] == [("b@v1", "b@v1", True), ("f@v1", "f@v1", True)]
    assert r.objects_sent > 0 and r.objects_present == 0 and sorted(r.tags) == ["b@prod", "f@best"]
    assert seen[-1][1] == seen[-1][2] == r.bytes_sent  # progress in bytes, ending at the total
    assert r.bytes_sent == sum(p.stat().st_size for p in (tmp_path / "remote" / "objects").rglob("*") if p.is_file())

    again = source.push("f@best")  # a second push sends nothing
    assert (again.objects_sent, again.bytes_sent, again.new_versions, again.tags) == (0, 0, [], [])

    remotes.add_remote(other.config.home, "origin", url)
    p = other.pull("f@best")  # a pull of a fine-tune brings its base
    assert [(m.src, m.dst, m.new) for m in p.versions] == [("b@v1", "b@v1", True), ("f@v1", "f@v1", True)]
    assert p.objects_sent == r.objects_sent
    other.checkout("f@best", tmp_path / "out-f")
    other.checkout("b@prod", tmp_path / "out-b")
    assert tree_hashes(tmp_path / "out-f") == tree_hashes(models.ft)
    assert tree_hashes(tmp_path / "out-b") == tree_hashes(models.base)
    v = other.resolve("f@v1")
    assert (v.base, v.message, v.codec, v.kind) == ("b@v1", "tuned", "lossless", "finetune")
    assert other.lineage("b").tree.children[0].ref == "f@v1"
    assert other.verify().ok
    assert other.pull("f@v1").objects_sent == 0


def test_pull_numbers_locally(source, other, models, tmp_path: Path) -> None:
    """Numbers are each store's own: a pull commits like an add, after what the store already has."""
    url = str(tmp_path / "remote")
    source.push("f", url)
    other.add_base("f", models.base)  # 'f' exists here already, as another model's v1
    with pytest.raises(deltastore.DeltaStoreError):
        other.pull("f@v1", url)  # 'f' here holds bases; the remote's f@v1 is a fine-tune
    other.rm("f")  # f@v1 retired here: never handed out again
    assert other.add_finetune("f", models.ft2, base=other.pull("b", url).dst_ref, codec="lossless").ref == "f@v2"
    p = other.pull("f@v1", url)
    assert p.dst_ref == "f@v3" and other.resolve("f@v3").manifest == source.resolve("f@v1").manifest


def test_two_stores_push_one_name(source, other, models, tmp_path: Path) -> None:
    """Two stores each with their own f@v1: both land on the remote, as f@v1 and f@v2."""
    url = str(tmp_path / "remote")
    other.add_base("b", models.base)
    other.add_finetune("f", models.ft2, base="b", codec="lossless")
    a = source.push("f", url)
    b = other.push("f", url)
    assert (a.dst_ref, b.dst_ref) == ("f@v1", "f@v2")
    assert [m.new for m in b.versions] == [False, True]  # the shared base was matched, not re-sent
    c = deltastore.open(tmp_path / "c")
    assert c.pull("f@v2", url).dst_ref == "f@v2"  # the remote's number, free here
    c.checkout("f@v2", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.ft2)


def test_transfers_keep_numbers_where_free(filled, other, models, tmp_path: Path) -> None:
    """`pull f@v3` then `checkout f@v3` works: a transfer keeps the version's number when the other
    side does not use it (to a bare remote and back, and between two stores), and takes the next
    number (said in its result) only where that number holds another version."""
    filled.add_finetune("f", models.ft2, base="b", codec="lossless")  # f@v2
    filled.add_finetune("f", models.ft, base="b", codec="delta-come")  # f@v3
    url = str(tmp_path / "remote")
    assert filled.push("f@v3", url).dst_ref == "f@v3"  # a bare remote keeps it too
    p = other.pull("f@v3", url)
    assert p.dst_ref == "f@v3" and [v.number for v in other.versions("f")] == [3]
    assert other.resolve("f@v3").manifest == filled.resolve("f@v3").manifest
    assert other.resolve("b@v1").manifest == filled.resolve("b@v1").manifest  # the base kept its number too
    other.checkout("f@v3", tmp_path / "out")
    assert other.add_finetune("f", models.ft2, base="b", codec="lossless").ref == "f@v4"  # after the latest
    assert filled.push("f@v1", url).dst_ref == "f@v1"
    assert other.pull("f@v1", url).dst_ref == "f@v1"  # an older number, free: kept
    third = deltastore.open(tmp_path / "c")
    third.add_base("b", models.base)
    third.add_finetune("f", models.ft2, base="b", codec="lossless", message="someone else's f@v1")
    assert third.pull("f@v1", url).dst_ref == "f@v2"  # f@v1 here is another version: the next number
    third.close()


def test_records_remote_rebuilds_as_a_store(source, tmp_path: Path) -> None:
    """A pushed-to directory is a store's objects: `db rebuild` over it gives the versions back."""
    url = tmp_path / "remote"
    source.push("f", str(url))
    st = deltastore.open(tmp_path / "r", objects_url=str(url))
    rep = st.rebuild_catalog()
    assert (rep.versions, rep.tags) == (2, 2)
    assert st.resolve("f@best").manifest == source.resolve("f").manifest
    assert st.verify().ok


def test_catalog_remote(source, other, models, tmp_path: Path) -> None:
    """A remote with its own catalog: versions are committed there through it."""
    db = f"sqlite:///{tmp_path / 'team.db'}"
    remotes.add_remote(source.config.home, "team", str(tmp_path / "team"), db_url=db)
    source.push("f", "team")
    team = deltastore.open(tmp_path / "team-home", db_url=db, objects_url=str(tmp_path / "team"))
    assert team.resolve("f@best").base == "b@v1" and team.verify().ok
    remotes.add_remote(other.config.home, "team", str(tmp_path / "team"), db_url=db)
    other.pull("f@best", "team")
    other.checkout("f", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.ft)


def test_corrupt_remote_object_is_refused(source, other, tmp_path: Path) -> None:
    url = tmp_path / "remote"
    source.push("f", str(url))
    oid = next(t.object for _, t in source.manifest("f").tensors() if t.object)
    p = url / key_of(oid)
    os.chmod(p, stat.S_IWUSR | stat.S_IRUSR)
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptObjectError, match="run `deltastore verify` there"):
        other.pull("f", str(url))
    assert other.models() == []  # nothing visible here


def test_conditional_create(tmp_path: Path) -> None:
    """The rule two pushers of one NAME rely on: of many creators of one key, exactly one wins."""
    from deltastore.backend import Backend

    b = Backend(str(tmp_path / "x"))
    wins: list[int] = []

    def go(i: int) -> None:
        if b.put_if_absent("catalog/versions/m/v1.json", json.dumps({"who": i}).encode()):
            wins.append(i)

    ts = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(wins) == 1 and json.loads(b.get("catalog/versions/m/v1.json")) == {"who": wins[0]}
    assert [p.name for p in (tmp_path / "x" / "catalog" / "versions" / "m").iterdir()] == ["v1.json"]


def test_remote_that_is_not_a_store(source, other, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(RemoteError, match="not a deltastore store"):
        source.push("f", str(junk))
    with pytest.raises(RemoteError, match="is empty"):
        other.pull("f", str(tmp_path / "nothing-here"))
    assert not (junk / "objects").exists() and other.models() == []


def test_remotes_file(tmp_path: Path) -> None:
    home = tmp_path / "h"
    remotes.add_remote(home, "origin", "s3://b/p", storage_options={"key": "AKIDEXAMPLE", "secret": "s3cr3t-value",
                                                                    "client_kwargs": {"endpoint_url": "http://x:1"}})
    remotes.add_remote(home, "team", "/srv/models", db_url="postgresql+psycopg://u:pw-9876@db/team")
    p = home / "remotes.toml"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    rs = remotes.load_remotes(home)
    assert rs["origin"].storage_options["client_kwargs"] == {"endpoint_url": "http://x:1"}
    assert rs["team"].db_url.endswith("@db/team")
    shown = json.dumps([r.to_dict() for r in rs.values()])
    assert "s3cr3t-value" not in shown and "pw-9876" not in shown and "AKIDEXAMPLE" not in shown
    assert remotes.get_remote(home, None).name == "origin"
    with pytest.raises(deltastore.DeltaStoreError, match="exists"):
        remotes.add_remote(home, "origin", "/elsewhere")
    remotes.remove_remote(home, "origin")
    assert remotes.get_remote(home, None).name == "team"  # the only one left
    with pytest.raises(deltastore.DeltaStoreError, match="no remote named 'nope'"):
        remotes.get_remote(home, "nope")


def test_remote_that_is_another_stores_home(source, other, models, tmp_path: Path) -> None:
    """A store's home as the remote: its own catalog sees the pushed versions at once (no stray
    records for its gc), and it can be pulled from like any remote."""
    r = source.push("f@best", str(other.config.home))
    assert r.dst_ref == "f@v1"
    assert other.resolve("f@best").base == "b@v1" and other.verify().ok
    assert other.gc().deleted == 0
    other.checkout("f", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.ft)
    third = deltastore.open(tmp_path / "third")
    assert third.pull("b@prod", str(other.config.home)).dst_ref == "b@v1"


def test_push_and_pull_by_tag(filled, other, models, tmp_path: Path) -> None:
    """``--tag T``: every version tagged T (of every model, or of one), with its base chain; the
    module functions and the Store's push_versions/pull_versions alike."""
    url = str(tmp_path / "remote")
    filled.add_finetune("g", models.ft2, base="b", codec="lossless", tags=["best"])
    filled.add_finetune("f", models.ft2, base="b", codec="lossless")  # f@v2: not tagged
    res = filled.push_versions(None, url, tagged="best")  # the Store API: every model's
    assert sorted(r.ref for r in res) == ["f@v1", "g@v1"]
    assert sorted(m.dst for r in res for m in r.new_versions) == ["b@v1", "f@v1", "g@v1"]
    with pytest.raises(deltastore.DeltaStoreError, match="no version tagged 'nosuch'"):
        filled.push_versions(None, url, tagged="nosuch")

    remotes.add_remote(other.config.home, "origin", url)
    got = other.pull_versions("g", tagged="best")  # of one model
    assert [r.ref for r in got] == ["g@v1"] and other.resolve("g@best").number == 1
    assert [m.name for m in other.models()] == ["b", "g"]
    got = remotes.pull(other, None, tagged="prod")
    assert [r.ref for r in got] == ["b@v1"] and got[0].objects_sent == 0  # came with g
    with pytest.raises(deltastore.DeltaStoreError, match="--all or --tag, not both"):
        remotes.pull(other, None, all_versions=True, tagged="best")
    every = other.pull_versions()  # --all: the rest
    assert sorted(r.ref for r in every) == ["b@v1", "f@v1", "g@v1"]
    assert sorted(m.dst for r in every for m in r.new_versions) == ["f@v1"]
