"""``deltastore://`` through fsspec, and ranged object reads that fetch only the chunks they need.
No FUSE needed."""

from __future__ import annotations

import os
import random
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

import deltastore
from deltastore.backend import Backend
from deltastore.errors import CorruptObjectError, ReadOnlyError
from deltastore.fs import DeltaStoreFileSystem
from deltastore.objects import ObjectDB
from deltastore.zoo._hfdir import write_sharded

from ..conftest import finetune_of, llama_like, write_model


@pytest.fixture
def home(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(5)
    big = {"a": torch.randn(3 << 20, generator=g), "b": torch.randn(1000, generator=g).to(torch.bfloat16)}
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "config.json").write_text("{}")
    write_sharded(big, tmp_path / "big", 1)
    sd = llama_like(0)
    write_model(tmp_path / "base", sd)
    write_model(tmp_path / "ft", finetune_of(sd, seed=1))
    with deltastore.open(tmp_path / "home") as st:
        st.add_base("base", tmp_path / "base", tags=["prod"])
        st.add_finetune("ft", tmp_path / "ft", "base", codec="lossless")
        st.add_base("big", tmp_path / "big")
    return tmp_path / "home"


def test_entry_point_registers_the_protocol() -> None:
    assert fsspec.get_filesystem_class("deltastore") is DeltaStoreFileSystem


def test_ls_info_cat_and_open_by_url(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELTASTORE_HOME", str(home))
    fs = fsspec.filesystem("deltastore", skip_instance_cache=True)
    assert fs.ls("", detail=False) == ["base", "big", "ft"]
    assert fs.ls("ft", detail=False) == ["ft@v1"]
    assert sorted(fs.ls("deltastore://base@prod", detail=False)) == ["base@v1/config.json", "base@v1/model.safetensors",
                                                                    "base@v1/tokenizer.json"]
    src = (tmp_path / "ft" / "model.safetensors").read_bytes()
    info = fs.info("ft@latest/model.safetensors")
    assert info["type"] == "file" and info["size"] == len(src) and info["name"] == "ft@v1/model.safetensors"
    assert fs.cat_file("ft@v1/model.safetensors") == src
    for a, b in [(0, 8), (5, 4000), (len(src) - 100, None), (-50, None), (100, -100), (len(src) + 5, None)]:
        assert fs.cat_file("ft@v1/model.safetensors", start=a, end=b) == src[slice(a, b)], (a, b)
    with fsspec.open("deltastore://ft@v1/model.safetensors", "rb") as f:
        f.seek(1234)
        assert f.read(5000) == src[1234:6234]
        f.seek(-10, os.SEEK_END)
        assert f.read() == src[-10:]
    with pytest.raises(FileNotFoundError):
        fs.info("ft@v7/model.safetensors")
    with pytest.raises(FileNotFoundError):
        fs.cat_file("ft@v1/nope.bin")
    with pytest.raises(ReadOnlyError):
        fs.open("ft@v1/x.bin", "wb")


class CountingBackend(Backend):
    """The local backend, counting the bytes each ranged read fetches."""

    fetched = 0

    def get_range(self, key: str, start: int, end: int) -> bytes | None:
        out = super().get_range(key, start, end)
        self.fetched += len(out or b"")
        return out

    def get(self, key: str, max_bytes: int | None = None) -> bytes | None:
        out = super().get(key, max_bytes)
        self.fetched += len(out or b"")
        return out


def test_get_range_fetches_only_the_chunks_it_decodes(tmp_path: Path) -> None:
    raw = np.random.default_rng(0).standard_normal(5 << 20).astype(np.float32).view(np.uint8)  # 20 MiB: 5 chunks
    be = CountingBackend(str(tmp_path / "objs"))
    db = ObjectDB(be)
    put = db.put_tensor(raw.tobytes(), 4, True)
    rng = random.Random(1)
    for _ in range(30):
        a = rng.randrange(raw.size)
        b = rng.randrange(a, raw.size + 100)
        assert db.get_range(put.oid, a, b) == raw[a:b].tobytes()
    be.fetched = 0
    assert db.get_range(put.oid, (8 << 20) + 5, (8 << 20) + 105) == raw[(8 << 20) + 5 : (8 << 20) + 105].tobytes()
    assert be.fetched < put.stored // 4  # one 4 MiB chunk of five, not the object
    assert db.get_range(put.oid, 10, 10) == b""


def test_unverified_segments_read_by_chunk(home: Path, tmp_path: Path) -> None:
    fs = DeltaStoreFileSystem(str(home), verify=False, unit_bytes=4 << 20, skip_instance_cache=True)
    src = (tmp_path / "big" / "model.safetensors").read_bytes()
    rng = random.Random(2)
    for _ in range(20):
        a = rng.randrange(len(src))
        b = a + rng.choice([1, 5000, 5 << 20])
        assert fs.cat_file("big@v1/model.safetensors", a, b) == src[a:b], (a, b)
    assert fs.cat_file("big@v1/model.safetensors") == src
    assert fs.cache.stats.misses >= 4  # the 12 MiB tensor came as segments


def test_corrupt_tensor_object_is_an_error_not_wrong_bytes(home: Path) -> None:
    with deltastore.open(home) as st:
        t = next(t for _, t in st.manifest("big@v1").tensors() if t.name == "a")
        p = Path(st.backend._path(f"objects/{t.object[7:9]}/{t.object[9:]}"))
    raw = bytearray(p.read_bytes())
    raw[-5] ^= 1  # the low mantissa plane of the last chunk is stored raw: nothing but the hash notices
    os.chmod(p, 0o644)
    p.write_bytes(bytes(raw))
    fs = DeltaStoreFileSystem(str(home), skip_instance_cache=True)
    with pytest.raises(CorruptObjectError) as e:
        fs.cat_file("big@v1/model.safetensors")
    assert t.object in str(e.value)


def test_fine_tunes_reuse_the_base_units_already_decoded(home: Path, tmp_path: Path) -> None:
    fs = DeltaStoreFileSystem(str(home), skip_instance_cache=True)
    fs.cat_file("base@v1/model.safetensors")
    with deltastore.open(home) as st:
        deltas = sum(1 for _, t in st.manifest("ft@v1").tensors() if t.source == "delta")
    hits, decoded = fs.cache.stats.hits, fs.cache.stats.misses
    assert fs.cat_file("ft@v1/model.safetensors") == (tmp_path / "ft" / "model.safetensors").read_bytes()
    assert deltas and fs.cache.stats.hits - hits >= deltas  # each delta applied to the cached base tensor
    assert fs.cache.stats.misses - decoded <= deltas + 2  # the fine-tune's own units, not the base's again


@pytest.mark.parametrize("rev", ["v\u0661", "v\u00b2", "v1\n"])
def test_a_version_in_other_digits_names_no_folder(home: Path, rev: str) -> None:
    """'ft@v\u0661' read as ft@v1 (str.isdigit and int take Arabic-Indic digits) and 'ft@v\u00b2' made
    int() raise ValueError out of fsspec; each is now a missing path, as any REF naming nothing is."""
    fs = DeltaStoreFileSystem(str(home), skip_instance_cache=True)
    for op in (lambda: fs.ls(f"ft@{rev}"), lambda: fs.cat_file(f"ft@{rev}/model.safetensors")):
        with pytest.raises(FileNotFoundError, match="bad REF"):
            op()
    assert fs.ls("ft@v1", detail=False) == ["ft@v1/config.json", "ft@v1/model.safetensors", "ft@v1/tokenizer.json"]
