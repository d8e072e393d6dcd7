"""A hostile catalog or manifest and the mount: the file it spoils fails with EIO, nothing is
allocated past what the manifest says, and the rest of the mount (its listings included) keeps
working. Real FUSE where the machine has it (skipped otherwise); the reader without FUSE."""

from __future__ import annotations

import copy
import errno
import json
import os
import tracemalloc
from pathlib import Path

import pytest
from sqlalchemy import select

import deltastore
from deltastore.catalog import Model, Tag, Version
from deltastore.errors import CorruptObjectError
from deltastore.filecache import DecodedCache
from deltastore.fileview import FileReader

from ..conftest import llama_like, write_model
from .conftest import fuse_skip_reason, start_mount, stop_mount

BIG = 64 << 20


def plant_blob_manifest(st, name: str) -> str:
    """Point ``name``'s version at a manifest whose config.json (4 bytes, it says) is a 64 MiB
    object: an object any bucket writer can add and name."""
    good = json.loads(st.objects.get(st.resolve(name).manifest))
    big = st.objects.put_bytes(b"\0" * BIG).oid
    man = copy.deepcopy(good)
    f = next(f for f in man["files"] if f["path"] == "config.json")
    f.update(object=big, size=4, sha256=big[7:])
    oid = st.objects.put_bytes(json.dumps(man).encode(), "manifest").oid
    with st.Session.begin() as s:
        s.scalar(select(Version).join(Model).where(Model.name == name)).manifest = oid
    return oid


def test_a_blob_larger_than_its_manifest_says_is_refused_before_decoding(tmp_path: Path) -> None:
    """The reader decoded a plain file's whole object (up to 16 GiB) before comparing it with the
    size the manifest gives; checkout already bounded it. Now the frame's own claim is checked
    first: one error naming the object, nothing of its size allocated."""
    with deltastore.open(tmp_path / "home") as st:
        st.add_base("b", write_model(tmp_path / "b", llama_like(0, hidden=16, layers=1)))
        oid = plant_blob_manifest(st, "b")
        man = st.manifest(oid)
        f = next(f for f in man.files if f.path == "config.json")
        cache = DecodedCache(8 << 20)
        try:
            reader = FileReader(st, cache)
            vf = reader.layout(oid, f)
            tracemalloc.start()
            try:
                with pytest.raises(CorruptObjectError) as e:
                    reader.read(vf, 0, 4)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        finally:
            cache.close()
    assert peak < 16 << 20, peak
    assert f.object in str(e.value) and "more than the 4 expected" in str(e.value)


@pytest.fixture
def hostile_home(tmp_path: Path) -> Path:
    """b (a base with a planted 64 MiB config.json), c (a good base), and catalog rows naming a tag
    and a model with '/' in them and a tag '..' (names no deltastore writes, any catalog writer can)."""
    home = tmp_path / "home"
    with deltastore.open(home) as st:
        st.add_base("b", write_model(tmp_path / "b", llama_like(0, hidden=16, layers=1)))
        st.add_base("c", write_model(tmp_path / "c", llama_like(1, hidden=16, layers=1)), tags=["ok"])
        st.add_base("d", write_model(tmp_path / "d", llama_like(2, hidden=16, layers=1)))
        plant_blob_manifest(st, "b")
        with st.Session.begin() as s:
            c = s.scalar(select(Version).join(Model).where(Model.name == "c"))
            s.add(Tag(model_id=c.model_id, name="a/b", version_id=c.id))
            s.add(Tag(model_id=c.model_id, name="..", version_id=c.id))
            s.scalar(select(Model).where(Model.name == "d")).name = "x/y"
    return home


def test_hostile_names_and_manifests_through_a_real_mount(hostile_home: Path, tmp_path: Path) -> None:
    """Listings used to fail whole with EIO (the kernel refuses a name with '/') once one catalog
    row held such a name: now those names are left out and the rest is listed. The planted file
    reads as EIO with a log line naming its object; the mount process lives on."""
    why = fuse_skip_reason()
    if why:
        pytest.skip(f"FUSE mount tests need FUSE: {why}")
    mp, log = tmp_path / "mnt", tmp_path / "mount.log"
    proc = start_mount(hostile_home, mp, log)
    try:
        assert sorted(os.listdir(mp)) == ["b", "c"]
        assert sorted(os.listdir(mp / "c")) == ["latest", "ok", "v1"]
        assert (mp / "c" / "ok" / "config.json").read_bytes() == (tmp_path / "c" / "config.json").read_bytes()
        with pytest.raises(OSError) as e:
            (mp / "b" / "v1" / "config.json").read_bytes()
        assert e.value.errno == errno.EIO
        assert (mp / "b" / "v1" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
        assert proc.poll() is None
        with deltastore.open(hostile_home) as st:
            big = next(f.object for f in st.manifest("b@v1").files if f.path == "config.json")
        text = log.read_text()
        assert any(big in ln and "EIO" in ln for ln in text.splitlines()), text[-2000:]
    finally:
        stop_mount(mp, proc)


def test_an_unverified_layout_has_a_bounded_number_of_segments(tmp_path: Path) -> None:
    """Unverified reads (--no-verify) cut each tensor into segments of unit_bytes: a manifest
    claiming a 2**47-byte tensor (within what it may claim) made an open build 2 million of them
    (about 20 s and 1 GiB here). Segments now grow with the file so that one file has at most
    MAX_FILE_UNITS plus one a tensor, and reading past what the object holds is an error."""
    with deltastore.open(tmp_path / "home") as st:
        st.add_base("b", write_model(tmp_path / "b", llama_like(0, hidden=16, layers=1)))
        man = json.loads(st.objects.get(st.resolve("b").manifest))
        f = next(f for f in man["files"] if f["kind"] == "safetensors")
        t = f["tensors"][0]
        n = 1 << 47
        f["size"] += n - t["nbytes"]
        t.update(shape=[n], dtype="U8", nbytes=n)
        oid = st.objects.put_bytes(json.dumps(man).encode(), "manifest").oid
        fe = next(x for x in st.manifest(oid).files if x.kind == "safetensors")
        cache = DecodedCache(8 << 20)
        try:
            reader = FileReader(st, cache, verify=False)
            vf = reader.layout(oid, fe)
            assert len(vf.units) <= (1 << 14) + 1 + len(fe.tensors)  # fileview.MAX_FILE_UNITS
            head = vf.units[0].stop
            with pytest.raises(CorruptObjectError, match="shorter than the manifest says"):
                reader.read(vf, head + (1 << 40), head + (1 << 40) + 10)
        finally:
            cache.close()


@pytest.mark.parametrize("name", ["v²", "v١", "v" + "9" * 250])
def test_a_version_name_of_other_digits_is_enoent_not_eio(tmp_path: Path, name: str) -> None:
    """'v²' passed str.isdigit() and then int() raised ValueError, which the mount answered as
    EIO with an error line, and 'v١' (an Arabic-Indic one) showed v1 under a second name; neither
    names a version: ENOENT, like any other missing name."""
    from deltastore.mount import DeltaStoreFS, fuse_missing

    if fuse_missing():
        pytest.skip(f"needs mfusepy and libfuse: {fuse_missing()}")
    with deltastore.open(tmp_path / "home") as st:
        st.add_base("b", write_model(tmp_path / "b", llama_like(0, hidden=16, layers=1)))
        cache = DecodedCache(8 << 20)
        try:
            fs = DeltaStoreFS(st, cache)
            with pytest.raises(OSError) as e:
                fs.getattr(f"/b/{name}")
            assert e.value.errno == errno.ENOENT
            assert fs.getattr("/b/v1")["st_mode"] & 0o040000
        finally:
            cache.close()
