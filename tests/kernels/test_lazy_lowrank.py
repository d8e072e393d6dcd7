"""Lowrank fine-tunes served lazily: two GEMMs on the stored fp16 factors beside the shared base,
against the materialized model; mixed with delta-come fine-tunes row by row; bad payloads refused.

Bounds as in test_lazy.py: the lazy path adds the delta to the bf16 base output in float32 and
rounds once, the materialized model rounds W + D to bf16 first, so logits agree within 2e-2
relative; a row of a mixed batch equals its fine-tune served alone (MIXED_TOL).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deltastore import codec as codecs
from deltastore import lazy
from deltastore.codec.errors import CorruptPayloadError
from deltastore.errors import BadInputError
from deltastore.kernels import DeltaLinear, NotServableError, lowrank_from_encoded

from .kernel_testlib import DEVICE, rel

transformers = pytest.importorskip("transformers")

from .test_lazy import MIXED_TOL, _logits, rows_match_alone, two_of_a_codec_and_a_delta_come  # noqa: E402


@pytest.fixture(scope="module")
def lowrank_store(tmp_path_factory):
    store = two_of_a_codec_and_a_delta_come(tmp_path_factory.mktemp("lazy-lowrank"), "lowrank", "lr")
    yield store
    store.close()


def test_lazy_lowrank_matches_its_materialized_checkout(lowrank_store) -> None:
    store = lowrank_store
    lz = lazy.load(store, "lr1", device=DEVICE)
    lins = [m for m in lz.modules() if isinstance(m, DeltaLinear)]
    assert len(lins) == 14 and all(len(m.lowrank) == 1 and not m.deltas.holds_any for m in lins)
    full = lazy.load(store, "lr1", device=DEVICE, lazy=False)
    a, b = _logits(lz), _logits(full)
    base = _logits(lazy.load(store, "base", device=DEVICE))
    assert rel(a, b) < 2e-2
    assert rel(b, base) > 5 * rel(a, b)  # the fine-tune moved the logits far more than the two paths differ


def test_mixed_batch_of_lowrank_and_delta_come_rows_match_each_alone(lowrank_store) -> None:
    store = lowrank_store
    many = lazy.load_many(store, ["lr1", "dc3", "lr2"], device=DEVICE)
    ids = torch.tensor([2, 1, -1])
    mixed = rows_match_alone(store, many, ["lr1", "dc3", "lr2"], ids)
    # drop one lowrank fine-tune: its id is refused, the others keep their numbers; add it back
    many.drop_delta("lr2")
    with pytest.raises(BadInputError, match="name no served fine-tune"):
        _logits(many, delta_ids=ids)
    after = _logits(many, delta_ids=torch.tensor([-1, 1, -1]))
    # the other rows unchanged by the drop: on the CPU the same numbers; on a GPU these ids are
    # another batch (the host knows one fine-tune serves it: the one-fine-tune rule, other row
    # blocks, the float32 atomics in another order; before 2026-12-03 the dense path), so within what
    # a row of a mixed batch matches its fine-tune alone (H200: 4.5e-3 with the dense path)
    assert rel(after[1:], mixed[1:]) < (1e-6 if DEVICE == "cpu" else MIXED_TOL)
    assert many.add_delta("lr2") == 2
    assert rel(_logits(many, delta_ids=ids), mixed) < 1e-6


def _lowrank_payload(m: int = 64, n: int = 96, r: int = 3) -> codecs.Encoded:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(m, n, generator=g).to(torch.bfloat16)
    target = (base.float() + 0.05 * torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g)).to(torch.bfloat16)
    return codecs.get_codec("lowrank", alpha=0.5).encode(target, base)


def test_lowrank_payload_is_checked_at_load_time() -> None:
    enc = _lowrank_payload()
    f = lowrank_from_encoded(enc, (64, 96))
    assert f.rank > 0
    assert torch.allclose(f.dense(), codecs.get_codec("lowrank", alpha=0.5).decode_delta(enc), atol=1e-6)
    with pytest.raises(NotServableError, match="base weight is 64x97"):
        lowrank_from_encoded(enc, (64, 97))
    bad = []
    for name, t in (("A", enc.arrays["A"][:, :-1]), ("B", enc.arrays["B"].float()),
                    ("c", torch.tensor([float("nan")])), ("A", torch.full_like(enc.arrays["A"], float("inf")))):
        arrays = dict(enc.arrays)
        arrays[name] = t
        bad.append(dataclasses.replace(enc, arrays=arrays))
    bad.append(dataclasses.replace(enc, meta={"rank": 99}))
    for e in bad:
        with pytest.raises(CorruptPayloadError):
            lowrank_from_encoded(e, (64, 96))


def test_static_decoding_path_serves_lowrank_rows_from_the_ids_buffer(lowrank_store) -> None:
    """The path a CUDA graph replays (static KV cache, static inputs, the decoder's ids buffer
    handed to DeltaContext.static_ids), run with eager steps: lowrank rows give the same greedy
    tokens as eager decoding, for two tenant mixes of lowrank and delta-come rows, with one
    recorded step for both. (Graph capture itself needs a GPU: not run here.)"""
    from .test_lazy import static_matches_eager

    many = lazy.load_many(lowrank_store, ["lr1", "dc3", "lr2"], device=DEVICE)
    static_matches_eager(many, (torch.tensor([2, -1, 1]), torch.tensor([0, 2, 0])))
