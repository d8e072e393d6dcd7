"""Checkout writes tensor objects chunk by chunk with pwrite (ObjectDB.write_tensor) and deltas
decoded into a reused buffer with pwrite: the same files as the mapped-window path, verified, and a
wrong object is still refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deltastore import materialize
from deltastore.errors import CorruptObjectError
from deltastore.objects import ObjectDB, key_of

from ..conftest import finetune_of, llama_like, tree_hashes, write_model


def _model() -> dict[str, torch.Tensor]:
    sd = llama_like(0)
    g = torch.Generator().manual_seed(3)
    sd["big.weight"] = (0.02 * torch.randn(3 << 20, generator=g)).to(torch.bfloat16)  # 6 MiB: two stream chunks
    return sd


@pytest.mark.parametrize("pwrite", ["1", "0"])
def test_checkout_by_pwrite_is_byte_identical(store, tmp_path: Path, monkeypatch, pwrite: str) -> None:
    monkeypatch.setenv("DELTASTORE_PWRITE_TENSORS", pwrite)
    calls = []
    real = ObjectDB.write_tensor
    monkeypatch.setattr(ObjectDB, "write_tensor", lambda self, *a, **k: calls.append(a[0]) or real(self, *a, **k))
    written = []
    real_all = materialize.pwrite_all
    monkeypatch.setattr(materialize, "pwrite_all", lambda fd, view, offset: written.append(view.nbytes) or real_all(fd, view, offset))
    base = _model()
    src = write_model(tmp_path / "b", base)
    store.add_base("b", src)
    ft = write_model(tmp_path / "f", finetune_of(base, touch_norms=False))
    store.add_finetune("f", ft, base="b", codec="lossless")
    store.checkout("b@v1", tmp_path / "out-b")
    store.checkout("f@v1", tmp_path / "out-f")
    assert tree_hashes(tmp_path / "out-b") == tree_hashes(src)
    assert tree_hashes(tmp_path / "out-f") == tree_hashes(ft)
    man = store.manifest(store.resolve("f@v1").manifest)
    untouched = sum(t.source == "base" for _, t in man.tensors())
    assert untouched > 0
    # every base tensor, and the fine-tune's untouched ones (its base's objects), went by pwrite
    assert len(calls) == (len(base) + untouched if pwrite == "1" else 0)
    # and every delta, decoded into a buffer, went by one pwrite of its bytes (none through a window)
    deltas = sorted(t.nbytes for _, t in man.tensors() if t.source == "delta")
    assert deltas and sorted(written) == (deltas if pwrite == "1" else [])


def test_lossy_deltas_by_pwrite_write_the_window_paths_bytes(store, tmp_path: Path, monkeypatch) -> None:
    """A lossy fine-tune's checkout (delta-come, the default codec) by pwrite from the reused buffer
    gives the file the mapped windows give, byte for byte, including a tensor larger than the
    buffer the worker held before (the buffer grows)."""
    base = _model()
    store.add_base("b", write_model(tmp_path / "b", base))
    store.add_finetune("f", write_model(tmp_path / "f", finetune_of(base, touch_norms=True)), base="b")
    outs = {}
    for pwrite in ("0", "1"):
        monkeypatch.setenv("DELTASTORE_PWRITE_TENSORS", pwrite)
        store.checkout("f@v1", tmp_path / f"out-{pwrite}")
        outs[pwrite] = tree_hashes(tmp_path / f"out-{pwrite}")
    assert outs["0"] == outs["1"]


def test_a_tensor_object_of_other_bytes_is_refused(store, tmp_path: Path) -> None:
    sd = _model()
    store.add_base("b", write_model(tmp_path / "b", sd))
    man = store.manifest(store.resolve("b@v1").manifest)
    entry = next(t for _, t in man.tensors() if t.name == "big.weight")
    p = Path(store.backend._path(key_of(entry.object)))
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x40  # inside the last chunk's stored low-byte plane: decodes, to other bytes
    p.chmod(0o644)
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptObjectError, match="hash"):
        store.checkout("b@v1", tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_write_tensor_refuses_a_size_other_than_the_manifests(store, tmp_path: Path) -> None:
    raw = np.arange(1 << 16, dtype=np.uint16).view(np.uint8)
    put = store.objects.put_tensor(raw, 2, True)
    out = tmp_path / "f.bin"
    with open(out, "w+b") as fh:
        with pytest.raises(CorruptObjectError):
            store.objects.write_tensor(put.oid, raw.size - 2, fh.fileno(), 0)
        assert store.objects.write_tensor(put.oid, raw.size, fh.fileno(), 3)
    assert out.read_bytes()[3:] == raw.tobytes()
