"""A hostile catalog or manifest and the mount: the file it spoils fails with EIO, nothing is
allocated past what the manifest says, and the rest of the mount (its listings included) keeps
working. Real FUSE where the machine has it (skipped otherwise); the reader without FUSE."""

from __future__ import annotations

import copy
import json
import tracemalloc
from pathlib import Path

import pytest
from sqlalchemy import select

import deltastore
from deltastore.catalog import Model, Version
from deltastore.errors import CorruptObjectError
from deltastore.filecache import DecodedCache
from deltastore.fileview import FileReader

from ..conftest import llama_like, write_model

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

