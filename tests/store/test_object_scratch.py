"""A tensor object read into a borrowed buffer (``ObjectDB.get_array(scratch=...)``, what a
fine-tune's add does for every changed tensor's base): the same bytes as a plain read, the buffer
handed back whether the object decodes or not, and a wrong object still refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deltastore.errors import CorruptObjectError, ObjectMissingError, UnknownRefError
from deltastore.objects import key_of
from deltastore.pipeline import BufferPool

from ..conftest import llama_like, write_model


class _Counting(BufferPool):
    """A BufferPool that counts what it lends and gets back."""

    def __init__(self) -> None:
        super().__init__()
        self.lent: list[int] = []
        self.back = 0

    def take(self, n: int) -> np.ndarray:
        self.lent.append(n)
        return super().take(n)

    def give(self, arr: np.ndarray) -> None:
        self.back += 1
        super().give(arr)


def _big_entry(store, tmp_path: Path):  # noqa: ANN001, ANN202
    sd = llama_like(0)
    sd["big.weight"] = (0.02 * torch.randn(3 << 20, generator=torch.Generator().manual_seed(3))).to(torch.bfloat16)
    store.add_base("b", write_model(tmp_path / "b", sd))
    man = store.manifest(store.resolve("b@v1").manifest)
    return next(t for _, t in man.tensors() if t.name == "big.weight"), sd["big.weight"]


def test_a_read_into_scratch_gives_the_same_bytes_and_the_buffer_back(store, tmp_path: Path) -> None:
    entry, t = _big_entry(store, tmp_path)
    pool = _Counting()
    stored = Path(store.backend._path(key_of(entry.object))).stat().st_size
    for _ in range(2):  # the second read reuses the first's buffer
        got = store.objects.get_array(entry.object, nbytes=entry.nbytes, scratch=pool)
        assert got.tobytes() == t.view(torch.uint8).numpy().tobytes()
    assert pool.lent == [stored, stored] and pool.back == 2
    assert len(pool._free) == 1  # one buffer, lent twice


def test_a_wrong_or_missing_object_read_into_scratch_is_refused_and_the_buffer_comes_back(store, tmp_path: Path) -> None:
    entry, _ = _big_entry(store, tmp_path)
    p = Path(store.backend._path(key_of(entry.object)))
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x40  # inside the last chunk's stored low-byte plane: decodes, to other bytes
    p.chmod(0o644)
    p.write_bytes(bytes(data))
    pool = _Counting()
    with pytest.raises(CorruptObjectError, match="hash"):
        store.objects.get_array(entry.object, nbytes=entry.nbytes, scratch=pool)
    p.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(CorruptObjectError):
        store.objects.get_array(entry.object, nbytes=entry.nbytes, scratch=pool)
    assert pool.back == len(pool.lent) == 2
    p.unlink()
    with pytest.raises(ObjectMissingError):
        store.objects.get_array(entry.object, nbytes=entry.nbytes, scratch=pool)
    assert pool.back == len(pool.lent) == 2  # nothing lent for a missing object


def test_an_outsize_file_named_like_a_tensor_object_is_refused_before_it_is_read(store, tmp_path: Path) -> None:
    """A file far larger than any coding of the tensor takes (here a sparse TiB, as a shared folder
    could hold) is refused from its size alone: nothing borrowed, nothing read; a fine-tune's add on
    that base fails with the one error that names the object, and records no version."""
    entry, t = _big_entry(store, tmp_path)
    p = Path(store.backend._path(key_of(entry.object)))
    p.chmod(0o644)
    with open(p, "r+b") as f:
        f.truncate(1 << 40)  # sparse: costs no disk
    pool = _Counting()
    with pytest.raises(CorruptObjectError, match="more than any coding"):
        store.objects.get_array(entry.object, nbytes=entry.nbytes, scratch=pool)
    assert pool.lent == []
    sd = llama_like(0)
    sd["big.weight"] = (t.view(torch.int16) + 1).view(torch.bfloat16)  # changed: its base is decoded
    with pytest.raises(CorruptObjectError, match=entry.object):
        store.add_finetune("f", write_model(tmp_path / "f", sd), base="b", codec="lossless")
    with pytest.raises(UnknownRefError):
        store.resolve("f@v1")
