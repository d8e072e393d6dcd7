"""The catalog is an index: lose it, and ``db rebuild`` gets it back from the object store."""

from __future__ import annotations

from pathlib import Path

import pytest

import deltastore
from deltastore.errors import BadInputError

from ..conftest import finetune_of, llama_like, tree_hashes, write_model


def catalog_view(st) -> dict:
    out = {}
    for m in st.models():
        for v in st.versions(m.name):
            out[v.ref] = (v.manifest, v.base, v.codec, v.codec_params, v.logical_bytes, v.stored_bytes, v.message,
                          sorted(v.tags), v.created_at)
    return out


def test_rebuild_from_the_backend_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    st = deltastore.open(home)
    base = llama_like(0)
    ft1 = finetune_of(base, seed=1)
    st.add_base("b", write_model(tmp_path / "b", base), message="the base", tags=["prod"])
    st.add_finetune("f", write_model(tmp_path / "f1", ft1), base="b", codec="lossless", tags=["best"])
    st.add_finetune("f", write_model(tmp_path / "f2", finetune_of(base, seed=2)), base="b", codec="lossless")
    st.add_finetune("g", write_model(tmp_path / "g", finetune_of(ft1, seed=3)), base="f@v1", codec="lossless")
    st.add_base("tmp", write_model(tmp_path / "t", llama_like(7)))
    st.tag("f@v2", "best")  # a tag that moved
    st.rm("tmp")
    want = catalog_view(st)
    want_du = st.du()
    st.close()
    (home / "catalog.db").unlink()
    for extra in home.glob("catalog.db-*"):
        extra.unlink()

    st2 = deltastore.open(home)
    assert st2.models() == []
    rep = st2.rebuild_catalog()
    assert rep.versions == 4 and rep.tags == 2
    assert catalog_view(st2) == want
    assert st2.lineage("b").tree.children[0].children[0].ref == "g@v1"
    du = st2.du()
    assert (du.versions, du.objects, du.stored_bytes) == (want_du.versions, want_du.objects, want_du.stored_bytes)
    assert st2.verify().ok
    st2.checkout("g", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(tmp_path / "g")
    with pytest.raises(BadInputError, match="already has versions"):
        st2.rebuild_catalog()
