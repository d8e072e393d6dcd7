"""Files in a store's folder are not trusted to be the size they should be: a sparse terabyte
named like an object, a manifest or a lease marker (a shared folder or bucket can hold one) is
refused after reading at most the bytes such a thing can take, with the one error naming it,
never read whole (a MemoryError traceback, or a read of a terabyte)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deltastore.errors import CorruptObjectError
from deltastore.manifest import payload_bound
from deltastore.objects import key_of

from ..conftest import finetune_of, llama_like, write_model

TIB = 1 << 40


def _sparse(p: Path, size: int = TIB) -> None:
    p.chmod(0o644)
    with open(p, "r+b") as f:
        f.truncate(size)  # sparse: costs no disk


def test_a_checkout_refuses_an_outsize_tensor_object_unread(store, tmp_path: Path) -> None:
    sd = llama_like(0)
    store.add_base("b", write_model(tmp_path / "b", sd))
    entry = store.manifest(store.resolve("b@v1").manifest).tensor_map()["lm_head.weight"]
    _sparse(Path(store.backend._path(key_of(entry.object))))
    with pytest.raises(CorruptObjectError, match=entry.object):  # (a mapped read: refused from its stream's table)
        store.checkout("b@v1", tmp_path / "out")
    with pytest.raises(CorruptObjectError, match="more than"):
        store.objects.get(entry.object, max_size=entry.nbytes)
    with pytest.raises(CorruptObjectError, match="more than"):
        store.objects.get_array(entry.object, nbytes=entry.nbytes)


def test_verify_names_an_outsize_manifest_unread(store, tmp_path: Path) -> None:
    sd = llama_like(0)
    store.add_base("b", write_model(tmp_path / "b", sd))
    store.add_finetune("f", write_model(tmp_path / "f", finetune_of(sd)), base="b", codec="lossless")
    man = store.resolve("f@v1").manifest
    _sparse(Path(store.backend._path(key_of(man))))
    report = store.verify()
    assert [p.oid for p in report.problems if "manifest unreadable" in p.what] == [man]
    assert any("more than" in p.what for p in report.problems if p.oid == man)


def test_gc_skips_an_outsize_lease_marker_unread(store, tmp_path: Path) -> None:
    """A file where another catalog's lease markers go, a sparse TiB: no lease anyone holds, so gc
    runs as if it were not there (it read at most 4 KiB of it)."""
    store.add_base("b", write_model(tmp_path / "b", llama_like(0)))
    p = Path(store.backend._path("catalog/leases/another-catalog/add-1234.json"))
    p.parent.mkdir(parents=True)
    p.write_bytes(b"{")
    _sparse(p)
    store.gc()
    assert store.resolve("b@v1").number == 1


def test_a_checkout_refuses_an_outsize_delta_payload_unread(store, tmp_path: Path) -> None:
    """A fine-tune's delta payload replaced by a sparse 64 MiB file (its tensor: 8 KiB): its checkout
    and state_dict fail with the one error naming it, having read none of it past what a delta payload of
    that tensor may take (``manifest.payload_bound``; before, such a file was read whole, up to 17 GiB)."""
    sd = llama_like(0)
    store.add_base("b", write_model(tmp_path / "b", sd))
    store.add_finetune("f", write_model(tmp_path / "f", finetune_of(sd)), base="b", codec="lossless")
    entry = next(t for t in store.manifest(store.resolve("f@v1").manifest).tensor_map().values() if t.source == "delta")
    assert payload_bound(entry.nbytes) < 2 << 20
    _sparse(Path(store.backend._path(key_of(entry.object))), 64 << 20)
    with pytest.raises(CorruptObjectError, match=f"{entry.object}.*more than"):
        store.checkout("f@v1", tmp_path / "out")
    with pytest.raises(CorruptObjectError, match=f"{entry.object}.*more than"):
        store.state_dict("f@v1")
