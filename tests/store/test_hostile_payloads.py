"""A fine-tune's delta entry and payload planted in a shared bucket that disagree with what they
claim (the entry's dtype, its base tensor's shape, a delta-come payload's zero points) are refused
with one store error: never numbers read as another dtype, broadcast over another shape, or
dequantized with a zero point its bit width cannot hold."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from deltastore import codec as codecs
from deltastore.errors import CorruptObjectError

from ..conftest import finetune_of, llama_like, point_at, write_model

Q = "model.layers.0.self_attn.q_proj.weight"
G = "model.layers.0.mlp.gate_proj.weight"  # (one 3-bit tier at this size; q_proj keeps none)


@pytest.fixture
def lossy(store, tmp_path: Path):
    """A base and its delta-come fine-tune "ft", and ``plant(manifest dict)``: that manifest named
    by ft's catalog row, as anyone with write access to the bucket and catalog could do."""
    base = llama_like(0, hidden=64, layers=1)
    store.add_base("b", write_model(tmp_path / "b", base))
    store.add_finetune("ft", write_model(tmp_path / "ft", finetune_of(base, scale=0.05)), base="b", codec="delta-come")

    def plant(man: dict) -> None:
        point_at(store, "ft", man)

    return store, plant


def _manifest(store) -> dict:
    return json.loads(store.objects.get(store.resolve("ft").manifest))


def _entry(man: dict, name: str) -> dict:
    return next(t for f in man["files"] for t in f.get("tensors") or [] if t["name"] == name)


def _payload(store, name: str) -> codecs.Encoded:
    e = store.manifest(store.resolve("ft").manifest).tensor_map()[name]
    return codecs.from_bytes(store.objects.get(e.object))


def _replant(store, plant, name: str, enc: codecs.Encoded) -> None:
    man = _manifest(store)
    _entry(man, name)["object"] = store.objects.put_bytes(codecs.to_bytes(enc), "delta").oid
    plant(man)


def test_a_payload_of_another_dtype_is_refused(lossy, tmp_path: Path) -> None:
    """A float16 payload under a BF16 entry has the same bytes: it decoded, and its numbers were
    read as bfloat16 (the weight ~1e-11 where it is ~0.08), with no error."""
    store, plant = lossy
    enc = _payload(store, Q)
    assert enc.dtype == "bfloat16"
    _replant(store, plant, Q, dataclasses.replace(enc, dtype="float16"))
    for op in (lambda: store.tensor("ft", Q), lambda: store.state_dict("ft"), lambda: store.checkout("ft", tmp_path / "out")):
        with pytest.raises(CorruptObjectError, match="dtype float16, the manifest says BF16"):
            op()
    out = tmp_path / "out"  # files before the bad one may be there, whole; no weights, no temp file
    assert not list(out.glob("*.safetensors")) and not list(out.glob(".*"))


def test_a_delta_of_another_shape_than_its_base_tensor_is_refused(lossy) -> None:
    """The 1-D final norm turned into a [64, 64] delta entry with a valid [64, 64] payload: the
    codec's base + delta broadcast the [64] base over it and returned a [64, 64] "norm"."""
    store, plant = lossy
    man = _manifest(store)
    q, norm = _entry(man, Q), _entry(man, "model.norm.weight")
    assert norm["shape"] == [64]
    norm.update(source="delta", shape=[64, 64], nbytes=64 * 64 * 2, object=q["object"], codec="delta-come", exact=False)
    next(f for f in man["files"] if any(t is norm for t in f.get("tensors") or []))["size"] += 64 * 64 * 2 - 128
    plant(man)
    for op in (lambda: store.tensor("ft", "model.norm.weight"), lambda: store.state_dict("ft")):
        with pytest.raises(CorruptObjectError, match=r"delta of shape \[64, 64\], but its base tensor has shape \[64\]"):
            op()


@pytest.mark.parametrize("field, value, says", [("z", "2**b", "zero points are not integers"),
                                                ("z", 0.5, "zero points are not integers"),
                                                ("s", 0.0, "scales are not all positive")])
def test_delta_come_quantizer_parameters_out_of_range_are_refused(lossy, field: str, value, says: str) -> None:
    """Zero points outside [0, 2**b - 1] (or not whole) and scales that are not positive: no
    encoder writes them, the lazy kernels' loader refused them, and the CPU decode used them (a
    reviewer's 3-bit zero point of 1000 moved the weight 56x)."""
    store, plant = lossy
    enc = _payload(store, G)
    bits = enc.meta["tiers"][0][0]
    arrays = dict(enc.arrays)
    arrays[f"v0.{field}"] = torch.full_like(arrays[f"v0.{field}"], float(1 << bits) if value == "2**b" else value)
    _replant(store, plant, G, dataclasses.replace(enc, arrays=arrays))
    with pytest.raises(CorruptObjectError, match=says):
        store.state_dict("ft")
