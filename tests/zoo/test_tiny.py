"""Tiny zoo models: build, save, reload with transformers; dtypes; shards."""
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402

from deltastore.zoo._hfdir import read_state, weight_layout  # noqa: E402
from deltastore.zoo.tiny import tiny_finetune, tiny_llama_dir  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SAFE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def _load(d):
    return transformers.AutoModelForCausalLM.from_pretrained(str(d), dtype="auto").eval()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_build_and_load_back(tmp_path, dtype):
    d = tiny_llama_dir(tmp_path / "base", dtype=dtype, seed=3)
    assert (d / "model.safetensors").is_file() and (d / "config.json").is_file()
    assert not (d / "model.safetensors.index.json").exists()
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {SAFE[dtype]}
    model = _load(d)
    assert model.dtype == dtype
    state = read_state(d)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    out = model(input_ids=torch.tensor([[1, 5, 7, 9]])).logits
    assert out.shape == (1, 4, 256) and torch.isfinite(out.float()).all()


def test_deterministic_and_seeded(tmp_path):
    a = read_state(tiny_llama_dir(tmp_path / "a", seed=1))
    b = read_state(tiny_llama_dir(tmp_path / "b", seed=1))
    c = read_state(tiny_llama_dir(tmp_path / "c", seed=2))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded(tmp_path, shards):
    d = tiny_llama_dir(tmp_path / "base", shards=shards, layers=3, dtype=torch.float16)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    assert all((d / f).is_file() for f in files)
    assert not (d / "model.safetensors").exists()
    state = read_state(d)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in state.values())
    model = _load(d)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    ft = tiny_finetune(d, tmp_path / "ft", seed=0)
    assert weight_layout(ft) == weight_layout(d)
    assert json.loads((ft / "model.safetensors.index.json").read_text()) == index
    _load(ft)


def test_tied(tmp_path):
    d = tiny_llama_dir(tmp_path / "base", tie=True)
    keys = [k for ks in weight_layout(d).values() for k in ks]
    assert "lm_head.weight" not in keys
    model = _load(d)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ft = tiny_finetune(d, tmp_path / "ft", seed=0, scale=1e-2)
    m2 = _load(ft)
    assert m2.lm_head.weight.data_ptr() == m2.model.embed_tokens.weight.data_ptr()
    assert not torch.equal(m2.model.embed_tokens.weight, model.model.embed_tokens.weight)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_finetune_perturbs_like_a_finetune(tmp_path, dtype):
    base = tiny_llama_dir(tmp_path / "base", dtype=dtype)
    ft = tiny_finetune(base, tmp_path / "ft", seed=7, scale=5e-3)
    assert weight_layout(ft) == weight_layout(base)
    assert (ft / "config.json").read_bytes() == (base / "config.json").read_bytes()
    a, b = read_state(base), read_state(ft)
    for k in a:
        assert b[k].dtype == a[k].dtype and b[k].shape == a[k].shape
        if a[k].ndim == 1:
            assert torch.equal(a[k], b[k]), f"norm {k} changed"
        else:
            rel = ((b[k].float() - a[k].float()).norm() / a[k].float().norm()).item()
            assert 1e-3 < rel < 2e-2, (k, rel)
            changed = (b[k] != a[k]).float().mean().item()
            assert changed > 0.3, (k, changed)
    # deterministic in the seed
    ft2 = tiny_finetune(base, tmp_path / "ft2", seed=7, scale=5e-3)
    c = read_state(ft2)
    assert all(torch.equal(b[k], c[k]) for k in b)
    _load(ft)


def test_finetune_touch_norms(tmp_path):
    base = tiny_llama_dir(tmp_path / "base", dtype=torch.float32)
    ft = tiny_finetune(base, tmp_path / "ft", seed=1, touch_norms=True)
    a, b = read_state(base), read_state(ft)
    norms = [k for k in a if a[k].ndim == 1]
    assert norms and all(not torch.equal(a[k], b[k]) for k in norms)


def test_overwrite_is_atomic(tmp_path):
    d = tiny_llama_dir(tmp_path / "m", seed=0)
    tiny_llama_dir(tmp_path / "m", seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert not any(p.name.startswith(".tmp") for p in d.iterdir())


def test_zoo_imports_only_the_stores_safetensors_reader(tmp_path):
    """The zoo stands apart from the store, but reads safetensors with the store's own reader
    (one reader for the project), which needs nothing of the store but its error types."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    save_file({"b": torch.ones(2, dtype=torch.bfloat16), "a": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    code = ("import sys, deltastore.zoo.cache, deltastore.zoo.tiny, deltastore.zoo.tasks, "
            "deltastore.zoo.smollm2, deltastore.zoo.finetune\n"
            "from deltastore.zoo._hfdir import read_state, weight_layout\n"
            f"sd = read_state({str(tmp_path)!r})\n"
            "assert sorted(sd) == ['a', 'b'] and sd['b'].dtype.is_floating_point, sd\n"
            "allowed = {'deltastore.safetensors_io', 'deltastore.errors'}\n"
            "bad = [m for m in sys.modules if m.startswith('deltastore.') "
            "and not m.startswith('deltastore.zoo') and m not in allowed]\n"
            "assert not bad, bad\n"
            "assert 'deltastore.safetensors_io' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_read_state_refuses_a_lying_header(tmp_path):
    from deltastore.errors import BadSafetensorsError

    d = tiny_llama_dir(tmp_path / "m", dtype=torch.float32)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-4])  # truncated: the header claims 4 bytes more
    with pytest.raises(BadSafetensorsError, match="truncated"):
        read_state(d)


def test_math_tasks_deterministic():
    from deltastore.zoo import tasks

    a, b = tasks.math_problems(50, seed=5), tasks.math_problems(50, seed=5)
    assert a == b and a != tasks.math_problems(50, seed=6)
    held = tasks.math_heldout()
    assert len(held) == 500 == len({p.question for p in held})
    assert not {p.question for p in held} & {p.question for p in tasks.math_train(300)}
    for p in a:
        assert p.solution.endswith(f"Answer: {p.answer}") and tasks.extract_answer(p.solution) == p.answer
        steps = p.solution.count("=")
        assert 2 <= steps <= 4
    assert tasks.extract_answer("3 + 4 = 7. Answer: 7. Next: Answer: 9") == 7
    assert tasks.extract_answer("so it is 1,200 in total") == 1200
    assert tasks.extract_answer("no idea") is None
