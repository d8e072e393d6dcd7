"""An add or a checkout keeps the objects it finds out of the garbage collector's full passes while
it runs (pipeline.frozen_heap) and gives them back when it ends, failed or not: the process's
collector is as the caller left it afterwards."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from deltastore.objects import key_of
from tests.conftest import finetune_of, llama_like, tree_hashes, write_model


def test_add_and_checkout_leave_the_collector_as_found(store, tmp_path: Path) -> None:
    base = llama_like(0)
    src = write_model(tmp_path / "b", base)
    ft = write_model(tmp_path / "f", finetune_of(base))
    before = gc.get_freeze_count()
    store.add_base("b", src)
    store.add_finetune("f", ft, base="b", codec="lossless")
    store.checkout("f", tmp_path / "of")
    assert tree_hashes(tmp_path / "of") == tree_hashes(ft)
    assert gc.get_freeze_count() == before
    with pytest.raises(Exception, match="exists and is not empty"):
        store.checkout("f", tmp_path / "of")
    assert gc.get_freeze_count() == before


def test_a_process_that_froze_its_heap_keeps_it_frozen(store, tmp_path: Path) -> None:
    """A server that called gc.freeze() itself (before forking workers) keeps its objects frozen
    through an add and a checkout: they are not handed back to the collector."""
    src = write_model(tmp_path / "b", llama_like(0))
    marker = [object()]  # a tracked object of the server's, frozen with the rest
    gc.freeze()
    try:
        store.add_base("b", src)
        store.checkout("b", tmp_path / "ob")
        assert not any(o is marker for o in gc.get_objects())  # still in the permanent generation
    finally:
        gc.unfreeze()
    assert tree_hashes(tmp_path / "ob") == tree_hashes(src)


def test_failed_checkout_leaves_the_collector_as_found(store, tmp_path: Path) -> None:
    src = write_model(tmp_path / "b", llama_like(0))
    store.add_base("b", src)
    victim = next(t.object for _, t in store.manifest("b@v1").tensors() if t.name.endswith("o_proj.weight"))
    path = Path(store.backend._path(key_of(victim)))
    path.chmod(0o644)  # the test plays the disk going bad
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    before = gc.get_freeze_count()
    with pytest.raises(Exception, match="corrupt"):
        store.checkout("b", tmp_path / "out")
    assert gc.get_freeze_count() == before
