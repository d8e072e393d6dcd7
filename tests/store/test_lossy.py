"""Lossy fine-tunes through the store: delta-come by default, calibration, and what show reports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deltastore.errors import BadInputError
from deltastore.report import version_report

transformers = pytest.importorskip("transformers")


def tiny_llama_dir(d: Path, seed: int, base: Path | None = None, scale: float = 0.02) -> Path:
    """A real (tiny) Llama checkpoint with a word-level tokenizer; a fine-tune when ``base`` is given:
    a low-rank-ish update like training makes, plus noise."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg)
    if base is not None:
        model.load_state_dict(transformers.LlamaForCausalLM.from_pretrained(base).state_dict())
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 2 and "embed" not in name and "lm_head" not in name:
                    m, n = p.shape
                    u, v = torch.randn(m, 8, generator=g), torch.randn(8, n, generator=g)
                    upd = (u @ v) / 8 + 0.1 * torch.randn(m, n, generator=g)
                    p.add_(scale * p.abs().mean() * upd)
    model = model.to(torch.bfloat16)
    model.save_pretrained(d)
    words = ["[UNK]", "[EOS]"] + [f"w{i}" for i in range(62)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="[EOS]")
    fast.save_pretrained(d)
    return d


@pytest.fixture
def pair(store, tmp_path: Path):
    b = tiny_llama_dir(tmp_path / "b", 0)
    f = tiny_llama_dir(tmp_path / "f", 1, base=b)
    store.add_base("b", b)
    return store, b, f


def test_default_codec_is_delta_come_and_show_reports(pair) -> None:
    store, _, f = pair
    v = store.add_finetune("f", f, base="b")
    assert v.codec == "delta-come" and v.codec_params["alpha"] == pytest.approx(1 / 16)
    rep = version_report(store, "f")
    rows = {t["name"]: t for t in rep["tensors"]}
    q = rows["model.layers.0.self_attn.q_proj.weight"]
    assert q["codec"] == "delta-come" and not q["exact"]
    assert 0 < q["rel_error"] < 1
    assert q["bpp"] <= 16 / 16 * 1.0 + 1e-9  # alpha = 1/16 of 16 bits, all-in
    # embeddings, lm_head and norms stay lossless
    for name, t in rows.items():
        if "embed" in name or "norm" in name or "lm_head" in name:
            assert t["codec"] in ("lossless", "base") and t["exact"], name
    assert rep["ratio_linears"] > 10
    assert rep["ratio_whole"] > 1


def test_lossy_checkout_loads_and_is_close(pair, tmp_path: Path) -> None:
    store, _, f = pair
    store.add_finetune("f", f, base="b", codec={"id": "delta-come", "alpha": "1/8"})
    store.checkout("f", tmp_path / "out")
    got = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    want = transformers.AutoModelForCausalLM.from_pretrained(f, dtype=torch.float32)
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b", dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        lf, lg, lb = want(ids).logits, got(ids).logits, base(ids).logits
    # the compressed fine-tune is closer to the fine-tune than the base is
    assert (lg - lf).norm() < 0.5 * (lb - lf).norm()


def test_calibrated_add_records_calib_hash(pair, tmp_path: Path) -> None:
    store, _, f = pair
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(" ".join(f"w{(i * 7 + j) % 62}" for j in range(20)) for i in range(40)))
    v = store.add_finetune("f", f, base="b", calib=calib)
    import hashlib

    assert v.calib_sha256 == hashlib.sha256(calib.read_bytes()).hexdigest()
    assert v.metrics["calib_tokens"] > 0
    assert store.verify().ok


@pytest.mark.parametrize("content, words", [(b"", "empty"), (b"\n  \n", "empty"), (b"\xff\xfe\x00bin", "not UTF-8"),
                                            (b"text\x00with nul", "not text")])
def test_bad_calib_fails_before_writing(pair, tmp_path: Path, content: bytes, words: str) -> None:
    store, _, f = pair
    calib = tmp_path / "calib.txt"
    calib.write_bytes(content)
    before = sorted(store.objects.all_oids())
    with pytest.raises(BadInputError, match=words):
        store.add_finetune("f", f, base="b", calib=calib)
    assert sorted(store.objects.all_oids()) == before


@pytest.mark.parametrize("cfg, words", [({"id": "delta-come", "alpha": 0}, "alpha"), ({"id": "delta-come", "alpha": 1.5}, "alpha"),
                                        ({"id": "delta-come", "alpha": "abc"}, "alpha"),
                                        ({"id": "delta-come", "schedule": [[5, 2]]}, "bits")])
def test_bad_codec_params_fail_before_writing(pair, cfg, words: str) -> None:
    store, _, f = pair
    before = sorted(store.objects.all_oids())
    with pytest.raises(Exception, match=words):
        store.add_finetune("f", f, base="b", codec=cfg)
    assert sorted(store.objects.all_oids()) == before
    assert [m.name for m in store.models()] == ["b"]


def test_calib_with_a_codec_that_ignores_it_is_refused(pair, tmp_path: Path) -> None:
    store, _, f = pair
    calib = tmp_path / "calib.txt"
    calib.write_text("w1 w2 w3\n")
    with pytest.raises(BadInputError, match="lowrank does not use it"):
        store.add_finetune("f", f, base="b", codec="lowrank", calib=calib)
    with pytest.raises(BadInputError, match="lossy fine-tune codecs only"):
        store.add_finetune("f", f, base="b", codec="lossless", calib=calib)
    assert [m.name for m in store.models()] == ["b"]
