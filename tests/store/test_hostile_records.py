"""Version records on a shared bucket are not trusted. ``db rebuild`` takes a version's base from
its manifest (content-addressed) rather than its record, so a damaged or planted record cannot
make ``rm`` and ``gc`` take objects a version needs; a record file of any size is refused after
reading at most the largest record there can be."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

import deltastore
from deltastore import records
from deltastore.errors import BadInputError, CorruptRecordError

from ..conftest import finetune_of, llama_like, tree_hashes, write_model


def lose_catalog(home: Path) -> None:
    for p in home.glob("catalog.db*"):
        p.unlink()


@pytest.fixture
def two_bases_one_finetune(tmp_path: Path):
    """b@v1 and b@v2 (two bases), f@v1 a lossless fine-tune of b@v1; the catalog then lost."""
    home = tmp_path / "home"
    b1 = llama_like(0, hidden=16, layers=1)
    with deltastore.open(home) as st:
        st.add_base("b", write_model(tmp_path / "b1", b1))
        st.add_base("b", write_model(tmp_path / "b2", llama_like(5, hidden=16, layers=1)))
        st.add_finetune("f", write_model(tmp_path / "f", finetune_of(b1)), base="b@v1", codec="lossless")
    lose_catalog(home)
    return home, tmp_path / "f"


@pytest.mark.parametrize("lie", [{"base": "b@v2"}, {"base": None, "kind": "base"}, {"base": "nope@v1"}])
def test_rebuild_takes_the_base_from_the_manifest_not_the_record(two_bases_one_finetune, tmp_path: Path, lie: dict) -> None:
    """A record of f@v1 that names another base (or none): rebuilt, f@v1's base is still b@v1, so
    rm b@v1 is refused and gc keeps what f@v1 needs. It used to rebuild the lineage the record
    claimed: rm b@v1 went through, gc deleted b@v1's tensors and f@v1 no longer checked out."""
    home, src = two_bases_one_finetune
    key = records.version_key("f", 1)
    rec = json.loads((home / key).read_bytes())
    (home / key).write_text(json.dumps(rec | lie))
    with deltastore.open(home) as st:
        rep = st.rebuild_catalog()
        with pytest.raises(BadInputError, match="is the base of f@v1"):
            st.rm("b@v1")
        st.rm("b@v2")
        st.gc()
        assert st.verify().ok
        st.checkout("f@v1", tmp_path / "out")
        assert tree_hashes(tmp_path / "out") == tree_hashes(src)
        info = st.resolve("f@v1")
        assert (info.base, info.kind) == ("b@v1", "finetune")
        assert records.parse_version(key, st.backend.get(key))["base"] == "b@v1"  # the adopted record says so too
        assert rep.versions == 3 and rep.skipped == []
        assert len(rep.corrected) == 1 and key in rep.corrected[0] and "b@v1" in rep.corrected[0]


def test_a_base_record_whose_manifest_has_a_base_becomes_its_fine_tune(two_bases_one_finetune) -> None:
    """The other way: a record that names a base for a version whose manifest has none."""
    home, _ = two_bases_one_finetune
    key = records.version_key("b", 2)
    rec = json.loads((home / key).read_bytes())
    (home / key).write_text(json.dumps(rec | {"base": "b@v1", "kind": "finetune"}))
    with deltastore.open(home) as st:
        rep = st.rebuild_catalog()
        assert (st.resolve("b@v2").base, st.resolve("b@v2").kind) == (None, "base")
        assert [c.ref for c in st.lineage("b@v1").tree.children] == ["f@v1"]
        assert rep.versions == 3 and len(rep.corrected) == 1 and key in rep.corrected[0]


def _huge_record(home: Path, key: str, size: int) -> None:
    p = home / key
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:  # sparse: costs no disk
        f.write(b"{")
        f.truncate(size)


def test_a_huge_record_is_refused_without_reading_it_whole(two_bases_one_finetune) -> None:
    """A 256 MiB file where a version record goes: gc reports it unreadable and rebuild refuses it,
    each having read at most MAX_RECORD + 1 bytes of it (they used to read it whole first)."""
    home, _ = two_bases_one_finetune
    key = "catalog/versions/zz/v1.json"
    _huge_record(home, key, 256 << 20)
    with deltastore.open(home) as st:
        tracemalloc.start()
        try:
            with pytest.raises(CorruptRecordError, match="too large for a record"):
                st.rebuild_catalog()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 << 20, peak
        assert st.models() == []
    (home / key).unlink()
    with deltastore.open(home) as st:
        st.rebuild_catalog()
        _huge_record(home, key, 256 << 20)
        tracemalloc.start()
        try:
            rep = st.gc(dry_run=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 << 20, peak
        assert any(key in u and "too large" in u for u in rep.unreadable)
        assert rep.deleted == 0


def two_homes(tmp_path: Path) -> tuple[deltastore.Store, deltastore.Store]:
    objects = str(tmp_path / "objects")
    return deltastore.open(tmp_path / "a", objects_url=objects), deltastore.open(tmp_path / "b", objects_url=objects)


def a_base_beside_another_catalog(tmp_path: Path) -> tuple[deltastore.Store, deltastore.Store, Path, str, dict]:
    """(a, b, the model a added as base@v1, that version's record key, the record as read): two
    catalogs sharing one objects location, each with a base of its own."""
    a, b = two_homes(tmp_path)
    src = write_model(tmp_path / "m", llama_like(0, hidden=16, layers=1))
    a.add_base("base", src)
    b.add_base("other", write_model(tmp_path / "c", llama_like(3, hidden=16, layers=1)))
    key = records.version_key("base", 1)
    return a, b, src, key, json.loads(a.backend.get(key))


@pytest.mark.parametrize("damage", ["huge message", "bad field"])
def test_gc_keeps_what_another_catalogs_unreadable_record_names(tmp_path: Path, damage: str) -> None:
    """Catalog a's version whose record b cannot parse: a 2 MiB message (a record larger than any
    the reader takes, as an add before add refused such messages wrote it: sorted keys, indented),
    or a field damaged on the bucket. b's gc used to list it as unreadable and then delete every
    object of a's version (a could no longer check it out); what the record's manifest reaches is
    now kept whenever the record names one."""
    a, b, src, key, rec = a_base_beside_another_catalog(tmp_path)
    if damage == "bad field":
        a.backend.put(key, json.dumps(rec | {"created_at": "yesterday", "metrics": [1]}).encode())
    else:
        a.backend.put(key, json.dumps(rec | {"message": "x" * (2 << 20)}, sort_keys=True, indent=1).encode())
        assert len(a.backend.get(key)) > records.MAX_RECORD
    rep = b.gc()
    assert a.verify().ok
    a.checkout("base", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(src)
    assert rep.deleted == 0 and any(key in u for u in rep.unreadable)
    a.close()
    b.close()


def test_a_long_message_survives_db_rebuild(tmp_path: Path) -> None:
    """add takes a message of any length and writes it into the version's record; the record
    reader refused one over 65,535 characters, so db rebuild failed whole on such a version."""
    home = tmp_path / "home"
    msg = "why: " + "x" * 70_000
    with deltastore.open(home) as st:
        st.add_base("b", write_model(tmp_path / "b", llama_like(0, hidden=16, layers=1)), message=msg)
    lose_catalog(home)
    with deltastore.open(home) as st:
        rep = st.rebuild_catalog()
        assert rep.versions == 1 and rep.skipped == []
        assert st.resolve("b@v1").message == msg


def test_a_record_nested_too_deep_is_one_error_from_db_rebuild(tmp_path: Path) -> None:
    """A record whose metrics nest 600 levels (planted on the bucket) parsed, then raised
    RecursionError out of db rebuild (re-encoding it to adopt it): a traceback from the CLI. Now it
    is refused as the record is read, one line naming it and the field; nothing is imported, and
    with the record mended the version comes back whole."""
    from tests.clirun import cli

    home = tmp_path / "home"
    src = write_model(tmp_path / "b", llama_like(0, hidden=16, layers=1))
    with deltastore.open(home) as st:
        st.add_base("b", src, metrics={"loss": 0.5})
    lose_catalog(home)
    key = records.version_key("b", 1)
    good = (home / key).read_bytes()
    (home / key).write_text(json.dumps(json.loads(good) | {"metrics": {"loss": json.loads("[" * 600 + "]" * 600)}}))
    p = cli("db", "rebuild", "--home", str(home))
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr, p.stderr[-2000:]
    assert p.stderr.strip() == (f"deltastore: error: record {key} is malformed: metrics nests deeper than "
                                f"{records.MAX_JSON_DEPTH} levels")
    with deltastore.open(home) as st:
        assert st.models() == []
        (home / key).write_bytes(good)
        assert st.rebuild_catalog().versions == 1
        assert st.resolve("b@v1").metrics == {"loss": 0.5}
        st.checkout("b@v1", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(src)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_record_with_nan_metrics_is_one_error_from_db_rebuild(tmp_path: Path, value: str) -> None:
    """Python's json reads NaN and Infinity, so a planted record holding one parsed, and db rebuild
    into a PostgreSQL catalog then failed at the insert (its JSON refuses them); SQLite took it. No
    deltastore writes them (an add refuses such metrics). Now the record is refused as it is read,
    the same one line on every catalog, and with it mended the version comes back."""
    from tests.clirun import cli

    home = tmp_path / "home"
    with deltastore.open(home) as st:
        st.add_base("b", write_model(tmp_path / "b", llama_like(0, hidden=16, layers=1)), metrics={"loss": 0.5})
    lose_catalog(home)
    key = records.version_key("b", 1)
    good = (home / key).read_bytes()
    (home / key).write_bytes(good.replace(b'"loss": 0.5', b'"loss": ' + value.encode()))
    assert value.encode() in (home / key).read_bytes()
    p = cli("db", "rebuild", "--home", str(home))
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr, p.stderr[-2000:]
    assert p.stderr.strip() == f"deltastore: error: record {key} is malformed: metrics are not JSON: they hold NaN or Infinity (a catalog's JSON refuses them)"
    (home / key).write_bytes(good)
    with deltastore.open(home) as st:
        assert st.rebuild_catalog().versions == 1
        assert st.resolve("b@v1").metrics == {"loss": 0.5}


def test_a_manifest_id_with_a_trailing_newline_neither_stops_gc_nor_loses_the_version(tmp_path: Path) -> None:
    """Another catalog's record whose manifest id ends in '\\n' (Python's '$' let it parse): b's gc
    failed with a raw ValueError from the object store's id parser. Now the record is unreadable,
    gc runs, and what the id names is still kept (a's version checks out)."""
    a, b, src, key, rec = a_base_beside_another_catalog(tmp_path)
    a.backend.put(key, json.dumps(rec | {"manifest": rec["manifest"] + "\n"}).encode())
    with pytest.raises(CorruptRecordError, match="manifest is not an object id"):
        records.parse_version(key, a.backend.get(key))
    rep = b.gc()
    assert rep.deleted == 0 and any(key in u for u in rep.unreadable)
    assert a.verify().ok
    a.checkout("base", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(src)
    a.close()
    b.close()


def test_a_tag_record_must_sit_at_its_own_key(tmp_path: Path) -> None:
    """A tag record planted under another model's folder (catalog/tags/a/prod.json saying model b,
    tag prod, v1) sorted before b's own and moved b's prod tag on db rebuild; tag records are now
    checked against their key, as version and retired-number records are."""
    home = tmp_path / "home"
    with deltastore.open(home) as st:
        st.add_base("b", write_model(tmp_path / "b1", llama_like(0, hidden=16, layers=1)))
        st.add_base("b", write_model(tmp_path / "b2", llama_like(1, hidden=16, layers=1)), tags=["prod"])
        st.backend.put("catalog/tags/a/prod.json", json.dumps({"model": "b", "tag": "prod", "version": 1}).encode())
    lose_catalog(home)
    with deltastore.open(home) as st:
        with pytest.raises(CorruptRecordError, match="catalog/tags/a/prod.json.*does not match"):
            st.rebuild_catalog()
        assert st.models() == []
        st.backend.delete("catalog/tags/a/prod.json")
        st.rebuild_catalog()
        assert st.resolve("b@prod").number == 2


def test_rebuild_does_not_depend_on_the_adding_hosts_clocks(tmp_path: Path) -> None:
    """Records were imported in created_at order, so a fine-tune added from a host whose clock was
    behind the base's (created_at before its base's) was skipped as having no base. Now a record
    whose base is not imported yet waits for it; created_at order only breaks ties."""
    home = tmp_path / "home"
    b = llama_like(0, hidden=16, layers=1)
    with deltastore.open(home) as st:
        st.add_base("b", write_model(tmp_path / "b", b))
        st.add_finetune("f", write_model(tmp_path / "f", finetune_of(b)), base="b", codec="lossless")
        st.add_finetune("g", write_model(tmp_path / "g", finetune_of(b, seed=2)), base="f", codec="lossless")
        want = {(v.ref, v.base, v.manifest) for m in st.models() for v in st.versions(m.name)}
    for name, when in (("g", "2019-01-01T00:00:00"), ("f", "2020-01-01T00:00:00")):  # g, then f, then b
        key = records.version_key(name, 1)
        (home / key).write_text(json.dumps(json.loads((home / key).read_bytes()) | {"created_at": when}))
    lose_catalog(home)
    with deltastore.open(home) as st:
        rep = st.rebuild_catalog()
        assert rep.skipped == [] and rep.corrected == [] and rep.versions == 3
        assert {(v.ref, v.base, v.manifest) for m in st.models() for v in st.versions(m.name)} == want
        st.checkout("g", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(tmp_path / "g")


def test_a_record_whose_base_never_comes_is_skipped_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    b = llama_like(0, hidden=16, layers=1)
    with deltastore.open(home) as st:
        st.add_base("b", write_model(tmp_path / "b", b))
        st.add_finetune("f", write_model(tmp_path / "f", finetune_of(b)), base="b", codec="lossless")
    (home / records.version_key("b", 1)).unlink()
    lose_catalog(home)
    with deltastore.open(home) as st:
        rep = st.rebuild_catalog()
        assert rep.versions == 0 and len(rep.skipped) == 1 and "f/v1.json: its base b@v1 has no usable record" in rep.skipped[0]
