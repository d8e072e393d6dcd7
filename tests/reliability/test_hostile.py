"""Nothing read from the store is trusted: hypothesis over the manifest reader, the version and
tag record readers, object frames, REF/name parsing and the paths checkout writes to. Only the
store's own errors come out (never KeyError/TypeError/MemoryError), nothing is allocated past
what the manifest says, and nothing outside the store or OUT is touched."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltastore
from deltastore import records
from deltastore.backend import Backend
from deltastore.errors import BadInputError, BadNameError, CorruptObjectError, CorruptRecordError, ObjectMissingError, UnknownRefError
from deltastore.manifest import Manifest, check_rel_path
from deltastore.materialize import safe_dest
from deltastore.objects import ObjectDB, key_of, oid_of
from deltastore.refs import check_name, parse_ref

CASES = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=30),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                    max_leaves=6)


def _h(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def valid_manifest() -> dict:
    t = lambda name, source, **kw: {"name": name, "dtype": "BF16", "shape": [4, 8], "nbytes": 64, "sha256": _h(name),  # noqa: E731
                                    "source": source, "object": None, "codec": None, "exact": True, "rel_error": None, **kw}
    return {"format": 1, "base": "sha256:" + _h("base"), "codec": {"id": "lossless"}, "files": [
        {"path": "config.json", "kind": "blob", "size": 10, "sha256": _h("c"), "object": "sha256:" + _h("c"),
         "header": None, "tensors": []},
        {"path": "sub/model.safetensors", "kind": "safetensors", "size": 300, "sha256": _h("m"), "object": None,
         "header": "sha256:" + _h("hd"), "tensors": [
             t("a", "tensor", object="sha256:" + _h("a")), t("b", "delta", object="sha256:" + _h("d"), codec="lossless"),
             t("c", "base")]}]}


def valid_record() -> dict:
    return {"model": "m", "number": 3, "manifest": "sha256:" + _h("x"), "kind": "finetune", "base": "b@v1", "codec": "lossless",
            "codec_params": {}, "logical_bytes": 10, "stored_bytes": 5, "referenced_bytes": 7, "message": "", "author": "me",
            "created_at": "2026-11-30T06:00:00.123456Z", "metrics": {}, "calib_sha256": None, "ref": "m@v3", "ratio": 2.0}


def paths_in(d: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(d, dict):
        for k, v in d.items():
            out += paths_in(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += paths_in(v, prefix + (i,))
    return out


@st.composite
def mutated(draw, make) -> bytes:  # noqa: ANN001
    d = make()
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths_in(d)))
        if not where:
            d = draw(JSON)
            continue
        parent = d
        try:
            for k in where[:-1]:
                parent = parent[k]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[where[-1]] = draw(JSON)
            elif action == "delete":
                del parent[where[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=8))] = draw(JSON)
            else:
                parent.append(draw(JSON))
        except (KeyError, IndexError, TypeError):
            pass
    return json.dumps(d).encode() if draw(st.booleans()) else json.dumps(d, allow_nan=True).encode()[: draw(st.integers(0, 4000))]


def test_the_valid_ones_parse() -> None:
    m = Manifest.from_json(json.dumps(valid_manifest()).encode())
    assert [f.path for f in m.files] == ["config.json", "sub/model.safetensors"]
    assert records.parse_version("catalog/versions/m/v3.json", json.dumps(valid_record()).encode())["number"] == 3


@CASES
@given(st.binary(max_size=2000) | mutated(valid_manifest))
def test_manifest_reader(data: bytes) -> None:
    try:
        m = Manifest.from_json(data, "sha256:" + "0" * 64)
    except CorruptObjectError:
        return
    for f in m.files:  # what parses is what the rest of the store may rely on
        check_rel_path(f.path)
        assert f.size >= 0 and all(t.nbytes >= 0 and isinstance(t.shape, list) for t in f.tensors)


@CASES
@given(st.binary(max_size=2000) | mutated(valid_record))
def test_version_record_reader(data: bytes) -> None:
    try:
        r = records.parse_version("catalog/versions/m/v3.json", data)
    except CorruptRecordError:
        return
    assert check_name(r["model"]) and isinstance(r["number"], int)


@CASES
@given(st.binary(max_size=500) | mutated(lambda: {"model": "m", "tag": "prod", "version": 2}))
def test_tag_record_reader(data: bytes) -> None:
    try:
        records.parse_tag("catalog/tags/m/prod.json", data)
    except CorruptRecordError:
        pass


@CASES
@given(st.text(max_size=80) | st.sampled_from(["m@v1", "m@latest", "m@", "@v1", "m@@", "m@v0x1", "a/../b@v1", "m@sha256:abcdef"]))
def test_ref_and_name_parsing(text: str) -> None:
    try:
        r = parse_ref(text)
        assert "/" not in r.model and ".." not in r.model and r.model.isprintable()
    except UnknownRefError:
        pass
    try:
        check_name(text)
        assert "/" not in text and "\\" not in text and ".." not in text and text.isprintable()
    except BadNameError:
        pass


@CASES
@given(st.text(max_size=40) | st.sampled_from(["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\..\\b", "c:x", "a\x00b"]))
def test_checkout_paths_stay_inside_out(tmp_path: Path, rel: str) -> None:
    out = tmp_path / "out"
    try:
        dest = safe_dest(out, rel)
    except BadInputError:
        return
    check_rel_path(rel)
    assert dest.resolve().is_relative_to(out.resolve()) and dest != out


@pytest.fixture(scope="module")
def odb(tmp_path_factory) -> ObjectDB:
    return ObjectDB(Backend(str(tmp_path_factory.mktemp("hostile-objects"))))


FRAME = st.sampled_from([b"DSO1b\x00\x00\x00", b"DSO1t\x01\x00\x00", b"DSO1d\x02\x00\x00", b"DSO1m\x00\x00\x00", b"", b"DSO1", b"XXXX"])


@CASES
@given(FRAME, st.binary(max_size=600), st.integers(0, 1 << 20))
def test_object_reader(odb: ObjectDB, frame: bytes, body: bytes, expect: int) -> None:
    oid = "sha256:" + hashlib.sha256(frame + body).hexdigest()
    odb.backend.put(key_of(oid), frame + body)
    for read in (lambda: odb.get(oid), lambda: odb.get(oid, max_size=expect), lambda: odb.get_array(oid, nbytes=expect),
                 lambda: odb.get_range(oid, 0, 10), lambda: odb.stored_problem(oid, expect)):
        try:
            read()
        except (CorruptObjectError, ObjectMissingError):
            pass
    odb.backend.delete(key_of(oid))


def test_frames_that_claim_huge_sizes_are_refused_before_allocating(odb: ObjectDB) -> None:
    """A zstd frame or plane stream whose header claims 2**40 bytes fails at once, not with an
    attempt to allocate a terabyte; a manifest is capped even when the caller gives no size."""
    huge_zstd = bytearray(zstandard.ZstdCompressor().compress(b"x" * 100))
    params = zstandard.get_frame_parameters(bytes(huge_zstd))
    assert params.content_size == 100
    forged = zstandard.ZstdCompressor(write_content_size=True).compress(b"\0" * 64)
    # rewrite the frame content size field (8 bytes when the size is that large): a hand-built frame header
    fhd = bytes([0xC0 | 0x20])  # FCS 8 bytes, single segment
    claim = struct.pack("<Q", 1 << 40)
    frame = b"\x28\xb5\x2f\xfd" + fhd + claim + forged[len(forged) - 3 :]
    for kind, body in ((b"b\x00", frame), (b"m\x00", frame), (b"t\x01", b"DSP1" + struct.pack("<BBHIQ", 2, 1, 0, 0, 1 << 40))):
        data = b"DSO1" + kind + b"\x00\x00" + body
        oid = oid_of(data)
        odb.backend.put(key_of(oid), data)
        with pytest.raises(CorruptObjectError, match="expected|size|decode"):
            odb.get(oid)
        with pytest.raises(CorruptObjectError):
            odb.get_array(oid, nbytes=64)


def test_a_hostile_bucket_cannot_write_outside_out(tmp_path: Path) -> None:
    """A version record and manifest planted in a shared bucket, naming '../' paths: db rebuild
    refuses it with a store error, and nothing is written anywhere."""
    st_ = deltastore.open(tmp_path / "home")
    man = valid_manifest()
    man["base"] = None
    man["files"] = [{"path": "../../escaped.txt", "kind": "blob", "size": 5, "sha256": _h("e"), "object": "sha256:" + _h("e"),
                     "header": None, "tensors": []}]
    raw = json.dumps(man).encode()
    moid = st_.objects.put_bytes(raw, "manifest").oid
    rec = valid_record() | {"model": "evil", "number": 1, "manifest": moid, "kind": "base", "base": None, "ref": "evil@v1"}
    st_.backend.put("catalog/versions/evil/v1.json", json.dumps(rec).encode())
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(CorruptObjectError, match="not relative|'..'"):
        st_.rebuild_catalog()
    assert st_.models() == []
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "escaped.txt").exists()
    st_.close()


def test_a_symlink_loop_in_the_input_is_refused(tmp_path: Path) -> None:
    from ..conftest import llama_like, write_model

    d = write_model(tmp_path / "m", llama_like(0, hidden=16, layers=1))
    (d / "loop").symlink_to(d, target_is_directory=True)
    with deltastore.open(tmp_path / "home") as s:
        with pytest.raises(BadInputError, match="symlink loop"):
            s.add_base("m", d)
        assert s.models() == []
