"""A safetensors file's own SHA-256 is recorded only when asked (``--file-sha256``): the default
add pins each file by its verbatim header and every tensor's sha256, all computed on every core,
and a checkout still gives back exactly the bytes that were added (format 2 manifests). Format 1
manifests (every file hashed) are still written byte for byte as before and read as before."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import deltastore
from deltastore.errors import CorruptObjectError
from deltastore.fs import DeltaStoreFileSystem
from deltastore.manifest import Manifest

from ..clirun import cli
from ..conftest import llama_like, sha256_file, write_model

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "manifests"


@pytest.mark.parametrize("name,fmt", [("format1.json", 1), ("format2.json", 2)])
def test_golden_manifests_parse_and_serialize_to_the_same_bytes(name: str, fmt: int) -> None:
    data = (FIXTURES / name).read_bytes()
    m = Manifest.from_json(data, "sha256:" + hashlib.sha256(data).hexdigest())
    assert m.format == fmt
    assert m.to_json() == data  # the manifest id of a stored manifest never changes on a round trip
    st_file = m.files[1]
    assert (st_file.sha256 is None) == (fmt == 2)
    assert m.files[0].sha256 is not None  # plain files always keep theirs


@pytest.mark.parametrize("change,why", [
    (lambda d: d.update(format=1), "sha256 is not 64 hex digits"),  # format 1 needs every file's sha256
    (lambda d: d["files"][0].update(sha256=None), "sha256 is not 64 hex digits"),  # a plain file keeps its sha256
    (lambda d: d.update(format=3), "not one this deltastore reads"),
    (lambda d: d.update(format=True), "not one this deltastore reads"),
])
def test_manifests_that_misuse_the_optional_sha256_are_refused(change, why: str) -> None:  # noqa: ANN001
    d = json.loads((FIXTURES / "format2.json").read_bytes())
    change(d)
    with pytest.raises(CorruptObjectError, match=why):
        Manifest.from_json(json.dumps(d).encode(), "sha256:" + "1" * 64)


@pytest.mark.parametrize("workers", [1, 3])
def test_default_add_records_no_file_hash_and_checkout_is_still_byte_identical(tmp_path: Path, workers: int) -> None:
    src = write_model(tmp_path / "m", llama_like(3), shards=2)
    st = deltastore.open(tmp_path / "home")
    st.workers = workers
    try:
        v = st.add_base("m", src)
        man = st.manifest(v.manifest)
        assert man.format == 2
        assert [f.sha256 for f in man.files if f.kind == "safetensors"] == [None, None]
        assert all(f.sha256 for f in man.files if f.kind == "blob")
        out = st.checkout("m", tmp_path / "out")
        assert out.exact
    finally:
        st.close()
    for p in sorted(src.iterdir()):
        assert sha256_file(tmp_path / "out" / p.name) == sha256_file(p), p.name


def test_file_sha256_asked_for_gives_a_format1_manifest_with_each_files_hash(tmp_path: Path) -> None:
    src = write_model(tmp_path / "m", llama_like(4), shards=2)
    st = deltastore.open(tmp_path / "home")
    try:
        v = st.add_base("m", src, file_sha256=True)
        man = st.manifest(v.manifest)
        assert man.format == 1  # what earlier deltastores wrote and read
        files = {f.path: f.sha256 for f in man.files}
    finally:
        st.close()
    for p in sorted(src.iterdir()):
        assert files[p.name] == sha256_file(p), p.name


def test_cli_flag_show_and_fsspec_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_model(tmp_path / "m", llama_like(5), shards=1)
    home = str(tmp_path / "home")
    monkeypatch.setenv("DELTASTORE_HOME", home)
    assert cli("init").returncode == 0
    assert cli("add", "base", "m", str(src)).returncode == 0
    assert cli("add", "base", "m", str(src), "--file-sha256").returncode == 0
    r1, r2 = cli("show", "m@v1"), cli("show", "m@v2")
    assert r1.returncode == 0 and r2.returncode == 0, (r1.stderr, r2.stderr)
    assert "checked by their sha256" in r1.stdout and "sha256 " + sha256_file(src / "model.safetensors")[:16] in r2.stdout
    fs = DeltaStoreFileSystem(home=home)
    i1, i2 = fs.info("m@v1/model.safetensors"), fs.info("m@v2/model.safetensors")
    assert "sha256" not in i1 and i2["sha256"] == sha256_file(src / "model.safetensors")
    assert fs.ukey("m@v1/model.safetensors") != fs.ukey("m@v1/config.json")
    assert fs.cat_file("m@v1/model.safetensors") == (src / "model.safetensors").read_bytes()
