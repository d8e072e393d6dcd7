"""Two catalogs on one objects location must not gc each other's objects or records.

The hole: a team's catalog and someone's local home pointed at the same bucket (``deltastore
--objects-url s3://team/objects gc`` with the default SQLite catalog), or two homes on one objects
folder. Each catalog sees only its own versions; before version records named their catalog, a gc
in one deleted every object the other referenced, and its record reconcile deleted the other's
records. Real stores, real files; the two catalogs share ``tmp/objects``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import deltastore
from deltastore import records
from deltastore.errors import ConflictError

from ..conftest import finetune_of, llama_like, tree_hashes, write_model


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    b = llama_like(0, hidden=32)
    return {"b": write_model(tmp_path / "src" / "b", b), "f": write_model(tmp_path / "src" / "f", finetune_of(b, seed=1)),
            "c": write_model(tmp_path / "src" / "c", llama_like(3, hidden=32))}


def two_homes(tmp_path: Path) -> tuple[deltastore.Store, deltastore.Store]:
    objects = str(tmp_path / "objects")
    return deltastore.open(tmp_path / "a", objects_url=objects), deltastore.open(tmp_path / "b", objects_url=objects)


def test_gc_in_one_catalog_keeps_the_others_versions(tmp_path: Path, models) -> None:
    a, b = two_homes(tmp_path)
    a.add_base("base", models["b"])
    a.add_finetune("ft", models["f"], base="base", codec="lossless")
    b.add_base("other", models["c"])  # b has a version of its own: it is not an empty catalog
    before = sorted(a.backend.list("objects"))

    rep = b.gc()
    assert rep.deleted == 0 and rep.other_versions == 2 and not rep.unreadable
    assert sorted(a.backend.list("objects")) == before
    assert sorted(a.backend.list("catalog/versions")) == ["catalog/versions/base/v1.json", "catalog/versions/ft/v1.json",
                                                          "catalog/versions/other/v1.json"]
    assert a.verify().ok
    a.checkout("ft", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models["f"])

    # b removes its version (its record goes: this process's add bound b's id to its backend):
    # whichever gc runs next frees b's objects, and only those
    b.rm("other")
    assert not a.backend.exists("catalog/versions/other/v1.json")
    rep = a.gc()
    assert rep.other_versions == 0 and rep.deleted > 0
    assert b.gc().deleted == 0
    assert a.verify().ok and b.models() == []
    a.checkout("ft", tmp_path / "out2")
    assert tree_hashes(tmp_path / "out2") == tree_hashes(models["f"])

def test_an_empty_home_on_the_bucket_deletes_nothing(tmp_path: Path, models) -> None:
    """The report's case: `deltastore --objects-url BUCKET gc` from a fresh default home."""
    a, b = two_homes(tmp_path)
    a.add_base("base", models["b"])
    a.add_finetune("ft", models["f"], base="base", codec="delta-come")
    n = len(list(a.backend.list("objects")))
    rep = b.gc(dry_run=True)
    assert (rep.deleted, rep.other_versions) == (0, 2)
    assert b.gc().deleted == 0 and len(list(a.backend.list("objects"))) == n
    assert a.verify().ok


def test_records_name_their_catalog_and_strays_are_cleaned_by_their_own(tmp_path: Path, models) -> None:
    a, b = two_homes(tmp_path)
    v = a.add_base("base", models["b"])
    rec = records.parse_version("catalog/versions/base/v1.json", a.backend.get("catalog/versions/base/v1.json"))
    with a.Session() as s:
        assert rec["format"] == records.FORMAT and rec["catalog"] == deltastore.catalog.catalog_id(s)
    with b.Session() as s:
        assert rec["catalog"] != deltastore.catalog.catalog_id(s)
    # a crashed add of a (a record of a version a never committed) is a's to remove, not b's
    stray = records.encode_version(deltastore.VersionInfo(**{**v.__dict__, "number": 2, "tags": []}), rec["catalog"])
    a.backend.put("catalog/versions/base/v2.json", stray)
    assert b.gc().other_versions == 2 and a.backend.exists("catalog/versions/base/v2.json")
    assert a.gc().temp_deleted == 1 and not a.backend.exists("catalog/versions/base/v2.json")
    # a record without an owner (format 1, written before records named one) is the reader's own
    old = json.loads(stray)
    del old["format"], old["catalog"]
    b.backend.put("catalog/versions/base/v2.json", json.dumps(old).encode())
    assert b.gc().temp_deleted == 1 and not a.backend.exists("catalog/versions/base/v2.json")
    assert a.verify().ok


def test_one_model_name_in_two_catalogs_is_refused(tmp_path: Path, models) -> None:
    a, b = two_homes(tmp_path)
    a.add_base("base", models["b"])
    with pytest.raises(ConflictError, match="belongs to another catalog"):
        b.add_base("base", models["c"])
    assert b.models() == []
    b.gc()
    assert a.verify().ok and a.resolve("base").number == 1


def test_unreadable_foreign_records_and_manifests(tmp_path: Path, models) -> None:
    """What gc reads of another catalog is checked like everything from a bucket: a record that
    does not parse, or whose manifest is missing or not a manifest, is reported and the rest kept."""
    a, b = two_homes(tmp_path)
    a.add_base("base", models["b"])
    a.add_finetune("ft", models["f"], base="base", codec="lossless")
    good = json.loads(a.backend.get("catalog/versions/ft/v1.json"))
    a.backend.put("catalog/versions/junk/v1.json", b"{not json")
    a.backend.put("catalog/versions/gone/v1.json", json.dumps({**good, "model": "gone", "manifest": "sha256:" + "e" * 64}).encode())
    tensor = next(o for o in a.manifest("base").object_ids())
    # listed before the real records, so its "manifest" is read before anything else reaches it
    a.backend.put("catalog/versions/aodd/v1.json", json.dumps({**good, "model": "aodd", "manifest": tensor}).encode())
    rep = b.gc()
    assert rep.deleted == 0 and rep.other_versions == 4
    assert any(u.startswith("catalog/versions/junk/v1.json") for u in rep.unreadable)
    assert any(u.startswith("catalog/versions/gone/v1.json") for u in rep.unreadable)
    assert any(u.startswith("catalog/versions/aodd/v1.json") for u in rep.unreadable)
    assert a.backend.exists("catalog/versions/junk/v1.json")  # not b's to remove
    assert a.verify().ok


def test_a_newer_record_format_stops_gc(tmp_path: Path, models) -> None:
    a, b = two_homes(tmp_path)
    a.add_base("base", models["b"])
    good = json.loads(a.backend.get("catalog/versions/base/v1.json"))
    a.backend.put("catalog/versions/next/v1.json", json.dumps({**good, "model": "next", "format": 99}).encode())
    a.rm("base")
    with pytest.raises(ConflictError, match="format 99"):
        a.gc()
    assert a.backend.exists(f"objects/{good['manifest'][7:9]}/{good['manifest'][9:]}")


def test_rebuild_adopts_what_it_imports(tmp_path: Path, models) -> None:
    a, _ = two_homes(tmp_path)
    a.add_base("base", models["b"], tags=["prod"])
    a.add_finetune("ft", models["f"], base="base", codec="lossless")
    c = deltastore.open(tmp_path / "c", objects_url=str(tmp_path / "objects"))
    assert c.rebuild_catalog().versions == 2
    with c.Session() as s:
        cid = deltastore.catalog.catalog_id(s)
    for key in ("catalog/versions/base/v1.json", "catalog/versions/ft/v1.json"):
        assert records.parse_version(key, c.backend.get(key))["catalog"] == cid
    assert c.gc().other_versions == 0 and c.verify().ok
    assert a.gc().other_versions == 2 and a.verify().ok  # a still running: c's now, and kept
    c.checkout("ft", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models["f"])


def test_gc_on_either_side_of_a_push_to_a_store_keeps_everything(tmp_path: Path, models) -> None:
    """A push to another store's home commits through its catalog (records owned by it)."""
    a = deltastore.open(tmp_path / "a")
    other = deltastore.open(tmp_path / "other")
    a.add_base("base", models["b"])
    a.add_finetune("ft", models["f"], base="base", codec="lossless")
    assert a.push("ft", str(other.config.home)).dst_ref == "ft@v1"
    assert a.gc().deleted == 0 and other.gc().deleted == 0
    # someone else's home on the remote's objects (their own catalog): keeps what `other` holds
    third = deltastore.open(tmp_path / "third", objects_url=other.config.objects_url)
    assert third.gc().deleted == 0 and other.verify().ok
    c = deltastore.open(tmp_path / "c")
    assert c.pull("ft", str(other.config.home)).dst_ref == "ft@v1"
    c.checkout("ft", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models["f"])


def test_gc_from_a_home_on_a_bare_remote_keeps_what_was_pushed(tmp_path: Path, models) -> None:
    a = deltastore.open(tmp_path / "a")
    a.add_base("base", models["b"])
    a.add_finetune("ft", models["f"], base="base", codec="lossless")
    remote = str(tmp_path / "remote")
    a.push("ft", remote)
    assert a.gc().deleted == 0
    on_remote = deltastore.open(tmp_path / "b", objects_url=remote)
    assert on_remote.gc().deleted == 0
    c = deltastore.open(tmp_path / "c")
    c.pull("ft", remote)
    c.checkout("ft", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models["f"])


def test_an_add_in_one_catalog_and_a_gc_in_another_exclude_each_other(tmp_path: Path, models) -> None:
    """Leases live in each catalog; their markers on the bucket make a gc wait for another
    catalog's add (and an add for another catalog's gc), insert then look, as within one catalog."""
    from deltastore import maintenance
    from deltastore.errors import LockedError

    a, b = two_homes(tmp_path)
    with maintenance.lease(a, "add in a") as held:
        assert a.backend.exists(held.marker[0])
        with pytest.raises(LockedError, match="'add in a' of catalog"):
            maintenance.gc(b, wait_s=0.2)
        assert b.gc(dry_run=True).deleted == 0  # a dry run takes no lease and deletes nothing
    with maintenance.exclusive(b, wait_s=0):
        with pytest.raises(LockedError, match="a gc is running"):
            with maintenance.lease(a, "add in a", wait_s=0.2):
                pass
        with maintenance.exclusive(a, wait_s=0):
            pass  # two gcs of two catalogs may run at once: neither deletes what the other's records reach
    assert list(a.backend.list(maintenance.MARKERS)) == []
    # a marker left by a crashed add (its process gone) blocks nobody, and its own catalog's gc removes it
    a.add_base("base", models["b"])
    with a.Session() as s:
        cid = deltastore.catalog.catalog_id(s)
    stale = f"{maintenance.MARKERS}/{cid}/add-999999.json"
    a.backend.put(stale, json.dumps({"host": "elsewhere", "pid": 1, "what": "add x", "beat": "2000-01-01T00:00:00"}).encode())
    assert b.gc().deleted == 0
    a.gc()
    assert not a.backend.exists(stale) and a.verify().ok
