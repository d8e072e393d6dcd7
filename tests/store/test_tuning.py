"""Calibration pre-pass (deltastore/calibrate/tuning.py): bitdelta scale distillation and deltadq's h_g search,
checked against quantities recomputed here from the stored versions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import deltastore.codec as codecs
from deltastore.codec.bitdelta import BitDelta, get_scale
from deltastore.codec.deltadq import DeltaDQ
from deltastore.calibrate import tuning
from deltastore.calibrate import read_calib_lines

from .test_lossy import tiny_llama_dir, transformers

Q0 = "model.layers.0.self_attn.q_proj.weight"
K0 = "model.layers.0.self_attn.k_proj.weight"


@pytest.fixture(autouse=True)
def one_thread():
    # the tiny model's matmuls are far slower with 2 threads on a shared 2-core box than with 1
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tpair(store, tmp_path: Path):
    b = tiny_llama_dir(tmp_path / "b", 0)
    f = tiny_llama_dir(tmp_path / "f", 1, base=b)
    store.add_base("b", b)
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(" ".join(f"w{(i * 7 + j * 3) % 62}" for j in range(20)) for i in range(40)))
    return store, b, f, calib


def _windows(f: Path, calib: Path, seq_len: int = 512) -> list[torch.Tensor]:
    tok = transformers.AutoTokenizer.from_pretrained(f)
    ids: list[int] = []
    for ln in read_calib_lines(calib):
        ids += tok(ln, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return [torch.tensor([ids[i : i + seq_len]]) for i in range(0, len(ids), seq_len)]


def _model_of(store, ref: str, f: Path):  # noqa: ANN001, ANN202
    model = transformers.AutoModelForCausalLM.from_pretrained(f, dtype=torch.float32)
    model.load_state_dict(store.state_dict(ref, dtype=torch.float32))
    return model.eval()


def _logit_mse(model, teacher, windows) -> float:  # noqa: ANN001
    num = den = 0
    with torch.no_grad():
        for w in windows:
            num += float(((model(w).logits - teacher(w).logits) ** 2).mean()) * w.numel()
            den += w.numel()
    return num / den


def test_sign_linear_gradients_and_rounding() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    B = torch.randn(4, 5, dtype=torch.float64, generator=g)
    signs = torch.randn(4, 5, generator=g) >= 0
    a = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a: tuning._SignLinear.apply(x, B, signs, a, None), (x, a))
    # with rounding: the weight is what BitDelta.reconstruct gives
    base, target = B.float().to(torch.bfloat16), (B.float() + torch.randn(4, 5, generator=g)).to(torch.bfloat16)
    c = BitDelta()
    enc = c.encode(target, base)
    signs = (target.float() - base.float()) >= 0
    W = tuning._SignLinear.weight(base.float(), signs, torch.tensor(get_scale(enc)), torch.bfloat16)
    assert torch.equal(W, c.reconstruct(enc, base).float())


def test_bitdelta_takes_scale_from_context() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(8, 40, generator=g)
    target = base + 0.01 * torch.randn(8, 40, generator=g)
    c = BitDelta()
    plain = c.encode(target, base)
    assert get_scale(plain) == pytest.approx(float((target - base).abs().mean()), rel=1e-6)
    enc = c.encode(target, base, codecs.EncodeContext(extra={"scale": 0.125}))
    assert get_scale(enc) == 0.125 and torch.equal(enc.arrays["signs"], plain.arrays["signs"])
    assert codecs.from_bytes(codecs.to_bytes(enc)).arrays["scale"].item() == 0.125
    with pytest.raises(codecs.CodecError, match="finite"):
        c.encode(target, base, codecs.EncodeContext(extra={"scale": float("nan")}))


def test_bitdelta_distillation_lowers_logit_loss(tpair, monkeypatch) -> None:
    store, _, f, calib = tpair
    monkeypatch.setattr(tuning, "DEFAULT_STEPS", 100)
    monkeypatch.setattr(tuning, "DEFAULT_LR", 0.02)
    tuned = store.add_finetune("ft", f, base="b", codec="bitdelta", calib=calib)
    store.add_finetune("f0", f, base="b", codec="bitdelta")
    m = tuned.metrics
    assert m["bitdelta_distill_steps"] == 100 and m["bitdelta_tuned_tensors"] == 14  # 7 linears x 2 layers
    first, last = m["bitdelta_loss"]
    assert last < first and m["bitdelta_scales_kept"] == "tuned" and m["calib_tokens"] > 0
    assert tuned.calib_sha256 is not None

    # the stored scales moved away from mean|D| (the plain version's)
    man_t, man_p = store.manifest("ft").tensor_map(), store.manifest("f0").tensor_map()
    scale = lambda e: get_scale(codecs.from_bytes(store.objects.get(e.object)))  # noqa: E731
    assert man_t[Q0].codec == "bitdelta" and scale(man_t[Q0]) != scale(man_p[Q0])
    assert man_t["model.embed_tokens.weight"].source == "base"

    # measured independently on the decoded versions, against the fine-tune
    teacher = transformers.AutoModelForCausalLM.from_pretrained(f, dtype=torch.float32).eval()
    ws = _windows(f, calib)
    loss_plain = _logit_mse(_model_of(store, "f0", f), teacher, ws)
    loss_tuned = _logit_mse(_model_of(store, "ft", f), teacher, ws)
    print(f"logit mse: mean|D| scales {loss_plain:.4g}, distilled {loss_tuned:.4g}; in-tuning {first:.4g} -> {last:.4g}")
    assert loss_tuned < loss_plain
    # the pre-pass's losses are those of the stored versions (it models checkout's bf16 rounding)
    assert first == pytest.approx(loss_plain, rel=1e-3) and last == pytest.approx(loss_tuned, rel=1e-3)
    assert store.verify().ok


def _attn_error(X: list[torch.Tensor], wq, wk, fq, fk, heads: int) -> float:  # noqa: ANN001
    hd = wq.shape[0] // heads
    rep = heads // (wk.shape[0] // hd)
    num = den = 0.0
    for x in X:
        T = x.shape[0]

        def s(a, b):  # noqa: ANN001, ANN202
            q = (x @ a.T).view(T, heads, hd)
            k = (x @ b.T).view(T, -1, hd).repeat_interleave(rep, dim=1)
            return torch.einsum("thd,uhd->htu", q, k).tril()

        ref = s(fq, fk)
        num += float(((s(wq, wk) - ref) ** 2).sum())
        den += float((ref**2).sum())
    return math.sqrt(num / den)


def test_deltadq_h_g_search_picks_lowest_attention_error(tpair) -> None:
    store, b, f, calib = tpair
    v = store.add_finetune("g", f, base="b", codec={"id": "deltadq", "alpha": "1/8"}, calib=calib)
    m = v.metrics
    errs = {int(k): e for k, e in m["deltadq_h_g_errors"].items()}
    chosen = m["deltadq_h_g"]
    print("deltadq h_g errors:", errs, "chosen", chosen)
    assert v.codec_params["h_g"] == chosen and store.manifest("g").codec["h_g"] == chosen
    # alpha1: the smallest power of two keeping >= 1 element per group; then doubling up to n = 128
    assert sorted(errs) == [4, 8, 16, 32, 64, 128]
    assert DeltaDQ(alpha="1/8", h_g=2).keep_per_group(128, 128) == 0 < DeltaDQ(alpha="1/8", h_g=4).keep_per_group(64, 128)

    # recompute every candidate's error from scratch: layer 0's attention input is the normed embeddings
    ft = transformers.AutoModelForCausalLM.from_pretrained(f, dtype=torch.float32).eval()
    with torch.no_grad():
        X = [ft.model.layers[0].input_layernorm(ft.model.embed_tokens(w))[0] for w in _windows(f, calib)]
    sd_f = ft.state_dict()
    bq, bk = store.tensor("b", Q0), store.tensor("b", K0)
    fq, fk = store.tensor("g", Q0), store.tensor("g", K0)  # not the fine-tune's: the stored (chosen) ones
    mine = {}
    for h in errs:
        c = DeltaDQ(alpha="1/8", h_g=h)
        wq = c.reconstruct(c.encode(sd_f[Q0].to(torch.bfloat16), bq), bq).float()
        wk = c.reconstruct(c.encode(sd_f[K0].to(torch.bfloat16), bk), bk).float()
        if h == chosen:
            assert torch.equal(wq, fq.float()) and torch.equal(wk, fk.float())
        mine[h] = _attn_error(X, wq, wk, sd_f[Q0], sd_f[K0], ft.config.num_attention_heads)
    for h in errs:
        assert mine[h] == pytest.approx(errs[h], rel=1e-4)
    assert mine[chosen] == min(mine.values())
    assert len(set(round(e, 8) for e in mine.values())) > 1  # the candidates do differ
    assert store.verify().ok


def test_tune_codec_direct_call_and_zero_steps(tpair) -> None:
    store, _, f, calib = tpair
    metrics: dict = {}
    c, extras = tuning.tune_codec(store, "b", f, calib, BitDelta(), steps=0, metrics=metrics)
    assert c == BitDelta() and metrics["bitdelta_scales_kept"] == "initial"
    D = store.tensor("b", Q0).float()
    from safetensors.torch import load_file

    D = load_file(str(f / "model.safetensors"))[Q0].float() - D
    assert extras[Q0]["scale"] == pytest.approx(float(D.abs().mean()), rel=1e-6)
    # a codec with no pre-pass comes back as it was
    lr = codecs.get_codec("lowrank")
    assert tuning.tune_codec(store, "b", f, calib, lr) == (lr, {})
