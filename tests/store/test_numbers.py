"""A version number names one version for the life of a catalog: `rm` retires it (migration 0003)."""

from __future__ import annotations

from pathlib import Path

import pytest

import deltastore
from deltastore.errors import UnknownRefError

from ..conftest import finetune_of, llama_like, tree_hashes, write_model
from .test_schema import downgrade, revision_of, HEAD


def tiny(seed: int) -> dict:
    return llama_like(seed, hidden=32, layers=1, vocab=64)


def test_a_removed_number_is_not_handed_out_again(store, tmp_path: Path) -> None:
    base = tiny(0)
    store.add_base("b", write_model(tmp_path / "b", base))
    f1 = write_model(tmp_path / "f1", finetune_of(base, seed=1))
    f2 = write_model(tmp_path / "f2", finetune_of(base, seed=2))
    store.add_finetune("f", f1, base="b", codec="lossless")
    store.add_finetune("f", f2, base="b", codec="lossless")
    store.rm("f@v2")
    with pytest.raises(UnknownRefError, match="no version v2"):
        store.resolve("f@v2")  # an old note saying f@v2 fails loudly instead of naming another version
    assert store.add_finetune("f", f1, base="b", codec="lossless", message="again").ref == "f@v3"
    store.rm("f@v1")
    store.rm("f@v3")  # the model's last version: the model row goes, its numbers stay retired
    assert store.add_finetune("f", f2, base="b", codec="lossless").ref == "f@v4"
    store.checkout("f@v4", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(f2)


def test_a_pull_does_not_keep_a_retired_number(store, tmp_path: Path) -> None:
    """A transfer keeps the other side's number only where it was never used here."""
    base = tiny(0)
    b = write_model(tmp_path / "b", base)
    f1 = write_model(tmp_path / "f1", finetune_of(base, seed=1))
    with deltastore.open(tmp_path / "src") as src:
        src.add_base("b", b)
        src.add_finetune("f", f1, base="b", codec="lossless")
        src.push("f", str(tmp_path / "remote"))
    store.add_base("b", b)
    store.add_finetune("f", write_model(tmp_path / "f2", finetune_of(base, seed=2)), base="b", codec="lossless")
    store.rm("f@v1")
    p = store.pull("f@v1", str(tmp_path / "remote"))
    assert p.dst_ref == "f@v2"  # v1 was another version here once: the pull takes the next number
    store.checkout("f@v2", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(f1)


def test_a_home_from_before_retired_numbers_upgrades_and_retires_from_then_on(tmp_path: Path) -> None:
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'catalog.db'}"
    base = tiny(0)
    with deltastore.open(home) as st:
        st.add_base("m", write_model(tmp_path / "m1", base))
        st.add_base("m", write_model(tmp_path / "m2", tiny(1)))
    downgrade(url, "0002")
    assert revision_of(url) == "0002"
    with deltastore.open(home) as st:  # a local home upgrades itself at open
        assert revision_of(url) == HEAD
        st.rm("m@v2")
        assert st.add_base("m", write_model(tmp_path / "m3", tiny(2))).ref == "m@v3"
