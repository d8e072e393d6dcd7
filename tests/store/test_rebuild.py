"""The catalog is an index: lose it, and ``db rebuild`` gets it back from the object store."""

from __future__ import annotations

from pathlib import Path

import importlib.util
import json

import pytest

import deltastore
from deltastore import records
from deltastore.catalog import catalog_id
from deltastore.errors import BadInputError, CorruptRecordError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "records"

from ..conftest import finetune_of, llama_like, tree_hashes, write_model


def catalog_view(st) -> dict:
    out = {}
    for m in st.models():
        for v in st.versions(m.name):
            out[v.ref] = (v.manifest, v.base, v.codec, v.codec_params, v.logical_bytes, v.stored_bytes, v.message,
                          sorted(v.tags), v.created_at)
    return out


def test_rebuild_from_the_backend_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    st = deltastore.open(home)
    base = llama_like(0)
    ft1 = finetune_of(base, seed=1)
    st.add_base("b", write_model(tmp_path / "b", base), message="the base", tags=["prod"])
    st.add_finetune("f", write_model(tmp_path / "f1", ft1), base="b", codec="lossless", tags=["best"])
    st.add_finetune("f", write_model(tmp_path / "f2", finetune_of(base, seed=2)), base="b", codec="lossless")
    st.add_finetune("g", write_model(tmp_path / "g", finetune_of(ft1, seed=3)), base="f@v1", codec="lossless")
    st.add_base("tmp", write_model(tmp_path / "t", llama_like(7)))
    st.tag("f@v2", "best")  # a tag that moved
    st.rm("tmp")
    want = catalog_view(st)
    want_du = st.du()
    st.close()
    (home / "catalog.db").unlink()
    for extra in home.glob("catalog.db-*"):
        extra.unlink()

    st2 = deltastore.open(home)
    assert st2.models() == []
    rep = st2.rebuild_catalog()
    assert rep.versions == 4 and rep.tags == 2
    assert catalog_view(st2) == want
    assert st2.lineage("b").tree.children[0].children[0].ref == "g@v1"
    du = st2.du()
    assert (du.versions, du.objects, du.stored_bytes) == (want_du.versions, want_du.objects, want_du.stored_bytes)
    assert st2.verify().ok
    with st2.Session() as s:  # adopted: every record it imported now names this catalog
        cid = catalog_id(s)
    keys = sorted(st2.backend.list("catalog/versions"))
    assert len(keys) == 4 and {records.parse_version(k, st2.backend.get(k))["catalog"] for k in keys} == {cid}
    assert st2.gc().other_versions == 0 and st2.verify().ok  # frees only what tmp (removed) left
    st2.checkout("g", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(tmp_path / "g")
    with pytest.raises(BadInputError, match="already has versions"):
        st2.rebuild_catalog()


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_record_fixtures", FIXTURES / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_every_record_format_has_a_golden_fixture_that_parses() -> None:
    """Golden records (as tests/codec/test_fixtures.py does for payloads): every format this
    deltastore reads parses to the same fields; format 1 names no catalog (its reader's own)."""
    want = _fixture_module().info()
    for n in range(1, records.FORMAT + 1):
        p = FIXTURES / f"v{n}.json"
        assert p.is_file(), f"record format {n} has no golden fixture: run tests/fixtures/records/make_fixtures.py"
        r = records.parse_version("catalog/versions/llama-ft/v3.json", p.read_bytes())
        assert r["format"] == n and (r["catalog"] is None) == (n == 1)
        for k in ("model", "number", "manifest", "kind", "base", "codec", "codec_params", "logical_bytes", "stored_bytes",
                  "referenced_bytes", "message", "author", "created_at", "metrics", "calib_sha256"):
            assert r[k] == getattr(want, k), (n, k)


def test_the_writer_still_writes_the_newest_format() -> None:
    mod = _fixture_module()
    assert records.encode_version(mod.info(), mod.CATALOG) == (FIXTURES / f"v{records.FORMAT}.json").read_bytes()


@pytest.mark.parametrize("change", [{"format": 3}, {"format": "2"}, {"catalog": "team"}, {"catalog": 7}, "no-catalog",
                                    "v1-with-catalog"])
def test_record_owner_fields_are_checked(change) -> None:
    d = json.loads((FIXTURES / "v2.json").read_bytes())
    if change == "no-catalog":
        del d["catalog"]
    elif change == "v1-with-catalog":
        del d["format"]
    else:
        d.update(change)
    err = records.NewerRecordError if change == {"format": 3} else CorruptRecordError
    with pytest.raises(err):
        records.parse_version("catalog/versions/llama-ft/v3.json", json.dumps(d).encode())
    d = json.loads((FIXTURES / "v2.json").read_bytes())
    d["catalog"] = None  # a record no catalog owns (a bare remote's) is valid
    assert records.parse_version("catalog/versions/llama-ft/v3.json", json.dumps(d).encode())["catalog"] is None


def test_a_rebuilt_catalog_never_gives_a_removed_number_again(tmp_path: Path) -> None:
    """rm retires a number on the backend too: after the catalog is lost and rebuilt, the next add
    of the model takes a new number, not the removed one (scripts and notes name versions by number)."""
    home = tmp_path / "home"
    st = deltastore.open(home)
    base = llama_like(0)
    st.add_base("b", write_model(tmp_path / "b", base))
    for seed in (1, 2, 3):
        st.add_finetune("f", write_model(tmp_path / f"f{seed}", finetune_of(base, seed=seed)), base="b", codec="lossless")
    st.rm("f@v3")  # the latest: without a record of it, v3 would be handed out again
    st.rm("f@v2")
    assert sorted(records.read_retired(st.backend)) == [("f", 2), ("f", 3)]
    st.close()
    for p in home.glob("catalog.db*"):
        p.unlink()
    st2 = deltastore.open(home)
    rep = st2.rebuild_catalog()
    assert rep.versions == 2 and rep.skipped == []
    v = st2.add_finetune("f", write_model(tmp_path / "f4", finetune_of(base, seed=4)), base="b", codec="lossless")
    assert v.number == 4
    assert [x.number for x in st2.versions("f")] == [1, 4]


def test_rebuild_skips_a_version_whose_rm_stopped_before_removing_its_record(tmp_path: Path) -> None:
    """A crash after rm committed and wrote the retired record but before the version record went:
    the retired record wins (the version was removed), said in the report."""
    home = tmp_path / "home"
    st = deltastore.open(home)
    base = llama_like(0)
    st.add_base("b", write_model(tmp_path / "b", base))
    st.add_finetune("f", write_model(tmp_path / "f1", finetune_of(base, seed=1)), base="b", codec="lossless")
    key = records.version_key("f", 1)
    kept = st.backend.get(key)
    st.rm("f@v1")
    st.backend.put(key, kept)  # as if rm had stopped before deleting it
    st.close()
    for p in home.glob("catalog.db*"):
        p.unlink()
    st2 = deltastore.open(home)
    rep = st2.rebuild_catalog()
    assert rep.versions == 1 and len(rep.skipped) == 1 and "f@v1 was removed" in rep.skipped[0]
    assert [m.name for m in st2.models()] == ["b"]


def test_retired_record_golden_fixture_and_hostile_records() -> None:
    key = "catalog/retired/llama-ft/v2.json"
    data = (FIXTURES / "retired-v1.json").read_bytes()
    assert records.parse_retired(key, data) == ("llama-ft", 2)
    assert records.encode_retired("llama-ft", 2) == data  # the writer still writes format 1
    for bad_key, bad in [(key, b"{"), (key, b"[]"), ("catalog/retired/llama-ft/v3.json", data),
                         ("catalog/retired/other/v2.json", data),
                         (key, json.dumps({"format": 2, "model": "llama-ft", "number": 2}).encode()),
                         (key, json.dumps({"format": 1, "model": "llama-ft", "number": "2"}).encode()),
                         (key, json.dumps({"format": 1, "model": "../x", "number": 2}).encode()),
                         (key, b" " * (records.MAX_RECORD + 1))]:
        with pytest.raises(CorruptRecordError):
            records.parse_retired(bad_key, bad)


def test_rebuild_skips_and_names_a_stray_file_in_a_versions_folder(tmp_path: Path) -> None:
    """A file named like no record (v + other scripts' digits: 'v\\u0661.json', a copy of a real
    record) in a model's versions folder made db rebuild refuse the whole store ('its name does
    not match the version it holds'); a pull skips such a file (3d17686) and so does rebuild now,
    naming it in the report, the file left where it is."""
    home = tmp_path / "home"
    st = deltastore.open(home)
    base = llama_like(0)
    st.add_base("b", write_model(tmp_path / "b", base))
    st.add_finetune("f", write_model(tmp_path / "f1", finetune_of(base, seed=1)), base="b", codec="lossless")
    stray = "catalog/versions/f/v\u0661.json"
    st.backend.put(stray, st.backend.get(records.version_key("f", 1)))
    st.close()
    for p in home.glob("catalog.db*"):
        p.unlink()
    st2 = deltastore.open(home)
    rep = st2.rebuild_catalog()
    assert rep.versions == 2 and [m.name for m in st2.models()] == ["b", "f"]
    assert len(rep.skipped) == 1 and rep.skipped[0].startswith(stray) and "stray" in rep.skipped[0]
    assert st2.backend.get(stray) is not None
