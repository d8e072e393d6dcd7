"""Add then checkout gives back the exact files; dedup stores nothing twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deltastore.objects import key_of

from ..conftest import finetune_of, llama_like, tree_hashes, write_model


def object_count(store) -> int:
    return len(store.objects.all_oids())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shards", [1, 3])
def test_base_checkout_is_byte_identical(store, tmp_path: Path, dtype, shards) -> None:
    src = write_model(tmp_path / "m", llama_like(3, dtype), shards=shards)
    v = store.add_base("m", src)
    r = store.checkout(v.ref, tmp_path / "out")
    assert r.exact
    assert tree_hashes(tmp_path / "out") == tree_hashes(src)
    assert v.stored_bytes < v.logical_bytes  # byte planes + zstd compress real floats


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_lossless_finetune_roundtrips_and_beats_plain_compression(store, tmp_path: Path, dtype) -> None:
    base = llama_like(0, dtype)
    store.add_base("b", write_model(tmp_path / "b", base))
    ft = write_model(tmp_path / "f", finetune_of(base, scale=1e-3))
    v = store.add_finetune("f", ft, base="b", codec="lossless")
    store.checkout("f@v1", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(ft)
    # what the same file costs stored on its own (as a base), in this store's own best coding
    alone = store.add_base("alone", ft)
    assert v.stored_bytes < alone.stored_bytes


def test_readding_adds_no_objects(store, base_dir: Path) -> None:
    store.add_base("b", base_dir)
    n = object_count(store)
    v2 = store.add_base("b", base_dir)
    assert object_count(store) == n
    assert v2.stored_bytes == 0 and v2.number == 2
    assert store.resolve("b@v1").manifest == v2.manifest


def test_untouched_tensors_store_nothing(store, tmp_path: Path) -> None:
    base = llama_like(0)
    store.add_base("b", write_model(tmp_path / "b", base))
    ft = finetune_of(base, touch_norms=False)
    v = store.add_finetune("f", write_model(tmp_path / "f", ft), base="b", codec="lossless")
    man = store.manifest(v.manifest)
    for _, t in man.tensors():
        if "norm" in t.name:
            assert t.source == "base" and t.object is None, t.name
        else:
            assert t.source == "delta"
    # and re-adding the fine-tune adds nothing new
    n = object_count(store)
    store.add_finetune("f", tmp_path / "f", base="b", codec="lossless")
    assert object_count(store) == n


def test_finetune_of_finetune_and_state_dict(store, tmp_path: Path) -> None:
    base = llama_like(0)
    ft1 = finetune_of(base, seed=1)
    ft2 = finetune_of(ft1, seed=2)
    store.add_base("b", write_model(tmp_path / "b", base))
    store.add_finetune("f1", write_model(tmp_path / "f1", ft1), base="b", codec="lossless")
    v = store.add_finetune("f2", write_model(tmp_path / "f2", ft2), base="f1@v1", codec="lossless", tags=["best"])
    sd = store.state_dict("f2@best")
    for k, t in ft2.items():
        assert torch.equal(sd[k].view(torch.int16), t.view(torch.int16)), k
    store.checkout("f2@latest", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(tmp_path / "f2")
    lin = store.lineage("f1")
    assert lin.ancestors == ["b@v1"]
    assert [c.ref for c in lin.tree.children] == ["f2@v1"]
    assert store.lineage("f2").ancestors == ["f1@v1", "b@v1"]
    assert v.base == "f1@v1"


def test_refs_resolve(store, base_dir: Path, tmp_path: Path) -> None:
    v1 = store.add_base("b", base_dir, tags=["prod"])
    v2 = store.add_base("b", write_model(tmp_path / "b2", llama_like(5)))
    assert store.resolve("b").number == 2
    assert store.resolve("b@latest").number == 2
    assert store.resolve("b@v1").manifest == v1.manifest
    assert store.resolve("b@prod").number == 1
    assert store.resolve(f"b@{v2.manifest[7:19]}").number == 2
    store.tag("b@v2", "prod")
    assert store.resolve("b@prod").number == 2


def test_checkout_dtype_converts(store, base_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    store.add_base("b", base_dir)
    r = store.checkout("b", tmp_path / "o", dtype="fp32")
    assert not r.exact
    got = load_file(str(tmp_path / "o" / "model.safetensors"))
    want = load_file(str(base_dir / "model.safetensors"))
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k], want[k].float())


def test_rm_then_gc_frees_only_unreferenced(store, tmp_path: Path) -> None:
    base = llama_like(0)
    store.add_base("b", write_model(tmp_path / "b", base))
    store.add_base("other", write_model(tmp_path / "o", llama_like(9)))
    keep = set(store.objects.all_oids())
    store.add_finetune("f", write_model(tmp_path / "f", finetune_of(base)), base="b", codec="lossless")
    assert store.rm("f").ref == "f@v1"
    rep = store.gc()
    assert rep.deleted > 0
    assert set(store.objects.all_oids()) == keep
    assert store.verify().ok
    # rm refuses a version others depend on
    store.add_finetune("f", tmp_path / "f", base="b", codec="lossless")
    with pytest.raises(Exception, match="is the base of"):
        store.rm("b")


def test_du_counts_dedup(store, base_dir: Path) -> None:
    store.add_base("b", base_dir)
    store.add_base("c", base_dir)
    du = store.du()
    assert du.versions == 2
    assert du.dedup_saved_bytes > 0
    assert du.stored_bytes < du.logical_bytes


def test_verify_names_corrupt_object_and_broken_versions(store, tmp_path: Path) -> None:
    base = llama_like(0)
    store.add_base("b", write_model(tmp_path / "b", base))
    v = store.add_finetune("f", write_model(tmp_path / "f", finetune_of(base)), base="b", codec="lossless")
    man = store.manifest("b@v1")
    victim = next(t.object for _, t in man.tensors() if t.name.endswith("q_proj.weight"))
    path = Path(store.backend._path(key_of(victim)))
    assert path.stat().st_mode & 0o777 == 0o444  # objects are written read-only
    path.chmod(0o644)  # the test plays the disk going bad
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    rep = store.verify()
    assert not rep.ok
    bad = [p for p in rep.problems if p.oid == victim]
    assert bad and set(bad[0].versions) == {"b@v1", v.ref}
    with pytest.raises(Exception, match="corrupt"):
        store.checkout("f", tmp_path / "out")


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "written-in-order"])
def test_checkout_both_write_paths_are_byte_identical(store, tmp_path: Path, monkeypatch, mapped: bool) -> None:
    """Checkout decodes each tensor straight into a mapped window of the file it writes; where the
    file system cannot map or reserve the file it writes tensors in order instead. Both give the
    same bytes, for a base and a lossless fine-tune, with tensors of odd sizes (windows that start
    and end inside pages) and an empty tensor (no window)."""
    from deltastore import materialize

    if not mapped:
        monkeypatch.setattr(materialize, "_mappable", lambda fd, size, what="": False)
    base = llama_like(0)
    base["odd.weight"] = torch.randn(7, 13).to(torch.bfloat16)
    base["empty.weight"] = torch.zeros(0, 4, dtype=torch.bfloat16)
    src = write_model(tmp_path / "b", base)
    ft = write_model(tmp_path / "f", finetune_of(base))
    store.add_base("b", src)
    store.add_finetune("f", ft, base="b", codec="lossless")
    store.checkout("b", tmp_path / "ob")
    store.checkout("f", tmp_path / "of")
    assert tree_hashes(tmp_path / "ob") == tree_hashes(src)
    assert tree_hashes(tmp_path / "of") == tree_hashes(ft)


def test_failed_mapped_checkout_leaves_no_file(store, tmp_path: Path) -> None:
    """A tensor that fails its sha256 while being decoded into the mapped file: the checkout raises
    and neither the file nor its temp copy is left behind."""
    src = write_model(tmp_path / "b", llama_like(0))
    store.add_base("b", src)
    man = store.manifest("b@v1")
    victim = next(t.object for _, t in man.tensors() if t.name.endswith("o_proj.weight"))
    path = Path(store.backend._path(key_of(victim)))
    path.chmod(0o644)  # the test plays the disk going bad
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="corrupt"):
        store.checkout("b", tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.safetensors")) and not list((tmp_path / "out").glob(".*tmp"))
