"""Lazy models (deltastore.lazy) from a store whose manifests and objects may have been planted in
a shared bucket: a config.json or a tensor entry that does not fit is refused at load time with
one store error naming the version (or the object), never a raw TypeError, AttributeError or
RuntimeError from transformers or torch, and never a model that loads and then fails (or, worse,
computes something else) at its first forward. And load_many, which builds one model from the
base's config for every fine-tune it serves, refuses a fine-tune whose own config computes
otherwise (an honest store can hold one: a long-context fine-tune changes rope_theta)."""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import re
from pathlib import Path

import pytest
import torch

from deltastore import lazy
from deltastore.errors import BadInputError, CorruptObjectError

transformers = pytest.importorskip("transformers")
from deltastore.zoo.tiny import tiny_llama_dir  # noqa: E402

from ..conftest import name_manifest, point_at  # noqa: E402
from ..kernels.kernel_testlib import rel  # noqa: E402
from ..kernels.test_lazy import finetune_linears  # noqa: E402

HIDDEN = 64
IDS = torch.tensor([[1, 17, 99, 5, 42, 7, 3, 11]])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A base, a fine-tune of its linears (ft, delta-come), the same fine-tune with a config that
    changes only metadata (renamed), and one whose config changes rope_theta (longctx): all
    added the ordinary way."""
    import deltastore

    d = tmp_path_factory.mktemp("hostile_lazy")
    base = tiny_llama_dir(d / "base", hidden=HIDDEN, layers=1, seed=0, random_norms=True)
    store = deltastore.open(d / "home")
    store.add_base("base", base)
    store.add_finetune("ft", finetune_linears(base, d / "ft", seed=1), base="base")
    for name, seed, change in (("renamed", 2, {"_name_or_path": "someone/renamed", "transformers_version": "4.0.0",
                                               "use_cache": False}),
                               ("longctx", 3, {"rope_theta": 1.0})):
        ft = finetune_linears(base, d / name, seed=seed)
        cfg = json.loads((ft / "config.json").read_text()) | change
        if "rope_theta" in change and cfg.get("rope_parameters"):
            cfg["rope_parameters"] = cfg["rope_parameters"] | change
        (ft / "config.json").write_text(json.dumps(cfg))
        store.add_finetune(name, ft, base="base")
    yield store
    store.close()


@pytest.fixture
def planted(tiny):
    """``plant(name, manifest dict)``: that manifest as an object, named by model ``name``'s catalog
    row (as in test_hostile_manifests), and ``good(name)``: its manifest as added. Every row is
    set back after the test, so the module's store stays as added."""
    store = tiny
    rows = {m: store.resolve(m).manifest for m in ("base", "ft", "renamed", "longctx")}

    def good(name: str) -> dict:
        return json.loads(store.objects.get(rows[name]))

    def plant(name: str, man: dict) -> str:
        return point_at(store, name, man)

    yield store, good, plant
    for name, oid in rows.items():
        name_manifest(store, name, oid)


def with_config(store, man: dict, config) -> dict:  # noqa: ANN001
    """``man`` with its config.json replaced by ``config`` (any JSON value), stored as a blob."""
    data = json.dumps(config).encode()
    man = copy.deepcopy(man)
    f = next(f for f in man["files"] if f["path"] == "config.json")
    f.update(object=store.objects.put_bytes(data, "blob").oid, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    return man


def entry(man: dict, name: str) -> dict:
    return next(t for f in man["files"] for t in f.get("tensors") or [] if t["name"] == name)


def whole(store, t: torch.Tensor) -> dict:  # noqa: ANN001
    """The entry fields of ``t`` stored whole (a valid tensor object of that shape)."""
    raw = t.contiguous().view(torch.uint8).numpy().tobytes()
    oid = store.objects.put_tensor(raw, t.element_size(), True).oid
    return dict(source="tensor", dtype="BF16", shape=list(t.shape), nbytes=len(raw), sha256=oid.split(":")[1], object=oid,
                codec=None, exact=True, rel_error=None)


def loads(store, ref: str) -> list:  # noqa: ANN001
    """Each way a user builds a model of ``ref``."""
    return [lambda: lazy.load(store, ref), lambda: lazy.load(store, ref, lazy=False)]


@pytest.mark.parametrize("config", [[], "LlamaForCausalLM", 3, None])
def test_a_config_that_is_not_a_json_object_is_a_corrupt_object(planted, config) -> None:  # noqa: ANN001
    """config.json ``[]`` is JSON, but no config: it reached AutoConfig.for_model(**config) as a raw TypeError."""
    store, good, plant = planted
    man = with_config(store, good("ft"), config)
    plant("ft", man)
    oid = next(f["object"] for f in man["files"] if f["path"] == "config.json")
    for op in loads(store, "ft"):
        with pytest.raises(CorruptObjectError, match=f"object {oid} is corrupt: config.json is not a JSON object"):
            op()


@pytest.mark.parametrize("archs", [[123], "LlamaForCausalLM", [None], {"0": "LlamaForCausalLM"}])
def test_architectures_that_are_not_a_list_of_class_names_are_refused(planted, archs) -> None:  # noqa: ANN001
    """``"architectures": [123]`` gave a raw TypeError from getattr; a string was read as its first letter."""
    store, good, plant = planted
    cfg = json.loads(store.objects.get(entry_file(good("ft"), "config.json")))
    plant("ft", with_config(store, good("ft"), cfg | {"architectures": archs}))
    for op in loads(store, "ft"):
        with pytest.raises(BadInputError, match=r"ft@v1: config.json's architectures (must be a list of class names|names 'L')"):
            op()


def entry_file(man: dict, path: str) -> str:
    return next(f["object"] for f in man["files"] if f["path"] == path)


@pytest.mark.parametrize("arch", ["AutoConfig", "pipeline", "PreTrainedModel", "LlamaConfig", "DeltastoreProbe"])
def test_architectures_naming_no_model_class_are_refused_before_anything_is_called(planted, monkeypatch, arch: str) -> None:
    """``getattr(transformers, name)(config)`` called whatever the stored config named: a pipeline,
    AutoConfig (a raw OSError), or any callable in the namespace (DeltastoreProbe here, which
    must never run). Only a model class of transformers is built; LlamaForCausalLM still is."""
    store, good, plant = planted
    called = []
    # (the module lazy.py imports now: another test may have left sys.modules a new transformers)
    monkeypatch.setattr(importlib.import_module("transformers"), "DeltastoreProbe", lambda *a, **k: called.append(a), raising=False)
    cfg = json.loads(store.objects.get(entry_file(good("ft"), "config.json")))
    plant("ft", with_config(store, good("ft"), cfg | {"architectures": [arch]}))
    for op in loads(store, "ft"):
        with pytest.raises(BadInputError, match=f"ft@v1: config.json's architectures names '{arch}', which is not a model class"):
            op()
    assert called == []
    plant("ft", with_config(store, good("ft"), cfg | {"architectures": ["LlamaForCausalLM"]}))
    assert type(lazy.load(store, "ft")).__name__ == "LlamaForCausalLM"
    # a name this transformers lacks (a custom or renamed class) is built by model_type, as before
    plant("ft", with_config(store, good("ft"), cfg | {"architectures": ["NoSuchForCausalLM"]}))
    assert type(lazy.load(store, "ft")).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize("change, want", [({"hidden_size": 32}, r"the stored tensors do not fit its config.json \(12 of another size\)"),
                                          ({"model_type": "no-such-model"}, "config.json does not make a model: ValueError"),
                                          ({"model_type": None}, "config.json does not make a model"),
                                          ({"num_attention_heads": "four"}, "config.json does not make a model: .*'num_attention_heads'")])
def test_a_config_that_does_not_make_this_model_is_refused(planted, change: dict, want: str) -> None:
    """A config whose hidden_size the stored tensors do not have gave torch's RuntimeError from
    load_state_dict (dozens of lines); an unknown model_type or a value of the wrong type raw
    errors from transformers. Each is now one line naming the version."""
    store, good, plant = planted
    cfg = json.loads(store.objects.get(entry_file(good("ft"), "config.json"))) | change
    plant("ft", with_config(store, good("ft"), {k: v for k, v in cfg.items() if v is not None}))
    for op in loads(store, "ft"):
        with pytest.raises(BadInputError, match=f"ft@v1: {want}") as e:
            op()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, shape", [("model.norm.weight", [HIDDEN // 2]), ("model.layers.0.input_layernorm.weight", [2, HIDDEN])])
def test_a_whole_tensor_of_another_shape_than_the_base_is_corrupt(planted, name: str, shape: list[int]) -> None:
    """add_finetune refuses a tensor of another shape than the base's, so only a crafted manifest
    has one: load(lazy=True) used to accept it (setattr, no check) and the first forward died in
    torch; load_many is refused the same way, before it serves anything."""
    store, good, plant = planted
    man = good("ft")
    entry(man, name).update(whole(store, torch.ones(shape, dtype=torch.bfloat16)))
    oid = plant("ft", man)
    want = re.escape(f"object {oid} is corrupt: tensor '{name}' is {shape}, but [{HIDDEN}] in the base base@v1")
    with pytest.raises(CorruptObjectError, match=want):
        lazy.load(store, "ft")
    with pytest.raises(CorruptObjectError, match=want):
        lazy.load_many(store, ["renamed", "ft"])
    many = lazy.load_many(store, ["renamed"])
    with pytest.raises(CorruptObjectError, match=want):
        many.add_delta("ft")
    assert many.deltas.refs == ["renamed"]


def test_a_delta_entry_of_another_shape_than_the_base_is_corrupt(planted) -> None:
    """A delta's entry says the fine-tune's tensor has the base tensor's shape; one that says
    otherwise was never checked (only the payload was, against the base)."""
    store, good, plant = planted
    man = good("ft")
    name = "model.layers.0.mlp.down_proj.weight"
    e = entry(man, name)
    assert e["source"] == "delta"
    e["shape"] = e["shape"][::-1]
    oid = plant("ft", man)
    for op in (lambda: lazy.load(store, "ft"), lambda: lazy.load_many(store, ["ft"])):
        with pytest.raises(CorruptObjectError, match=f"object {oid} is corrupt: tensor '{name}' is"):
            op()


@pytest.mark.parametrize("name", ["score.weight", "model.nope.weight", "model.layers.0.mlp.weight"])
def test_a_whole_tensor_the_base_lacks_is_corrupt(planted, name: str) -> None:
    """add_finetune refuses a tensor the base lacks; a crafted manifest listing one gave load(lazy=True)
    a raw AttributeError from torch (its name walked into the model with get_submodule/setattr)."""
    store, good, plant = planted
    man = good("ft")
    f = next(f for f in man["files"] if f.get("tensors"))
    f["tensors"].append({"name": name} | whole(store, torch.ones(2, HIDDEN, dtype=torch.bfloat16)))
    f["size"] += 2 * HIDDEN * 2
    oid = plant("ft", man)
    want = f"object {oid} is corrupt: tensor '{name}': the base base@v1 has no such tensor"
    for op in (lambda: lazy.load(store, "ft"), lambda: lazy.load_many(store, ["ft"])):
        with pytest.raises(CorruptObjectError, match=want):
            op()
    with pytest.raises(BadInputError, match=f"ft@v1: tensors the model class LlamaForCausalLM does not have: \\['{name}'\\]"):
        lazy.load(store, "ft", lazy=False)


def test_load_many_refuses_a_fine_tune_whose_config_computes_otherwise(tiny) -> None:
    """load_many (and add_delta) build the model from the base's config.json: a fine-tune that
    changed rope_theta was served with the base's, its logits ~10% off load(REF), with no error.
    Now it is refused, naming the key and the way out; a fine-tune whose config differs only in
    metadata (_name_or_path, transformers_version, use_cache) is still served, as load(REF) serves it."""
    store = tiny
    for op in (lambda: lazy.load_many(store, ["ft", "longctx"]), lambda: lazy.load_many(store, ["ft"]).add_delta("longctx")):
        with pytest.raises(BadInputError, match=r"longctx@v1: its config.json differs from the base base@v1's in "
                                                r"\['rope_parameters'\].*use load\('longctx@v1'\) for this one"):
            op()
    with torch.no_grad():
        alone = lazy.load(store, "longctx")(input_ids=IDS).logits.float()  # the way out the error names
        full = lazy.load(store, "longctx", lazy=False)(input_ids=IDS).logits.float()
    assert rel(alone, full) < 2e-2
    many = lazy.load_many(store, ["ft", "renamed"])
    with torch.no_grad():
        got = many(input_ids=IDS, delta_ids=[1]).logits.float()
        want = lazy.load(store, "renamed")(input_ids=IDS).logits.float()
    assert rel(got, want) < 1e-5


def test_load_many_serves_a_fine_tune_with_its_own_end_token_and_says_so(planted, caplog) -> None:
    """Token ids change no logits, only what generate takes by default (a chat fine-tune often has
    its own end token): served, with a warning naming them, not refused."""
    store, good, plant = planted
    cfg = json.loads(store.objects.get(entry_file(good("ft"), "config.json")))
    plant("ft", with_config(store, good("ft"), cfg | {"eos_token_id": 7}))
    with caplog.at_level("WARNING", logger="deltastore.lazy"):
        many = lazy.load_many(store, ["ft"])
    assert many.deltas.refs == ["ft"]
    assert "ft@v1: its config.json has other eos_token_id than the base" in caplog.text and "eos_token_id=7" in caplog.text
