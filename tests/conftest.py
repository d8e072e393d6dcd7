"""Shared fixtures: a fresh store per test, and small real safetensors models written on the fly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import deltastore
from deltastore.zoo._hfdir import write_sharded


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_hashes(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): sha256_file(p) for p in sorted(d.rglob("*")) if p.is_file()}


def llama_like(seed: int = 0, dtype: torch.dtype = torch.bfloat16, hidden: int = 64, layers: int = 2, vocab: int = 128) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for n, shape in (("self_attn.q_proj", (hidden, hidden)), ("self_attn.k_proj", (hidden // 2, hidden)),
                         ("self_attn.v_proj", (hidden // 2, hidden)), ("self_attn.o_proj", (hidden, hidden)),
                         ("mlp.gate_proj", (2 * hidden, hidden)), ("mlp.up_proj", (2 * hidden, hidden)),
                         ("mlp.down_proj", (hidden, 2 * hidden))):
            sd[f"{p}.{n}.weight"] = torch.randn(*shape, generator=g) * 0.05
        sd[f"{p}.input_layernorm.weight"] = 1 + 0.01 * torch.randn(hidden, generator=g)
        sd[f"{p}.post_attention_layernorm.weight"] = 1 + 0.01 * torch.randn(hidden, generator=g)
    sd["model.norm.weight"] = torch.ones(hidden)
    sd["lm_head.weight"] = torch.randn(vocab, hidden, generator=g) * 0.05
    return {k: v.to(dtype) for k, v in sd.items()}


def finetune_of(sd: dict[str, torch.Tensor], seed: int = 1, scale: float = 1e-2, touch_norms: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if "norm" in k and not touch_norms:
            out[k] = v.clone()
            continue
        f = v.float()
        out[k] = (f + scale * f.abs().mean() * torch.randn(f.shape, generator=g)).to(v.dtype)
    return out


def write_model(d: Path, sd: dict[str, torch.Tensor], shards: int = 1, config: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config or {"model_type": "toy", "hidden_size": 64}, indent=2))
    (d / "tokenizer.json").write_text(json.dumps({"version": "1.0", "vocab": list("abcdefgh")}))
    write_sharded(sd, d, shards)
    return d


def name_manifest(store: deltastore.Store, model: str, oid: str) -> None:
    """Point ``model``'s (first) catalog row at manifest object ``oid``."""
    from sqlalchemy import select

    from deltastore.catalog import Model, Version

    with store.Session.begin() as s:
        s.scalar(select(Version).join(Model).where(Model.name == model)).manifest = oid
    store._manifest_cache.clear()


def point_at(store: deltastore.Store, model: str, man: dict) -> str:
    """Store ``man`` (a manifest dict) as an object and name it from ``model``'s (first) catalog
    row, as anyone with write access to a shared bucket and catalog could; its object id."""
    oid = store.objects.put_bytes(json.dumps(man).encode(), "manifest").oid
    name_manifest(store, model, oid)
    return oid


@pytest.fixture
def store(tmp_path: Path) -> deltastore.Store:
    st = deltastore.open(tmp_path / "home")
    yield st
    st.close()


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    return write_model(tmp_path / "base", llama_like(0))


@pytest.fixture(autouse=True)
def _secrets_registered_by_a_test_stay_in_it():
    """``config.register_secret`` is process-wide by design (a credential seen once is masked in
    every later output). A test that registers one (test_secrets, the S3 tests' access key
    "deltastore-test") must not mask another test's text: a later test matching an error that
    names memory://deltastore-test failed only when run after them. Each test gets the set back
    as it found it."""
    from deltastore import config

    with config._lock:
        before = set(config._registered)
    yield
    with config._lock:
        config._registered.clear()
        config._registered.update(before)


@pytest.fixture(scope="module")
def pg():
    """A real PostgreSQL server for the module on loopback (stopped by pid after it; skipped where
    PostgreSQL or psycopg is not installed): the one fixture every catalog-on-PostgreSQL test uses."""
    from .pg import PostgresServer, pg_bin

    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    pytest.importorskip("psycopg")
    server = PostgresServer()
    server.start()
    yield server
    server.stop()
