"""The CPU path keeps dequantized factors between calls (kernels/factor_cache.py): what a user of a
lazy model on a machine without a GPU relies on is that the results stay the reference's, bit for
bit, whatever the cache holds, that a changed set of fine-tunes is never served stale factors, and
that the memory held stays within the stated budget and goes with the model."""

from __future__ import annotations

import gc

import pytest
import torch

from deltastore.kernels import DeltaSet, KernelError, apply_deltas, plan_rows, ref_ops
from deltastore.kernels import factor_cache

from .kernel_testlib import packed_delta

N, MS = 100, [75, 33]  # odd sizes: not multiples of a packed chunk or a group
SCHEDULE = [[8, 1], [3, 3], [2, None]]  # three tiers: 8, 3 and 2 bits


def _set(seeds: list[int]) -> DeltaSet:
    dset = DeltaSet(N, MS, "cpu")
    for s in seeds:
        dset.add([_delta(m, s + 10 * i) for i, m in enumerate(MS)])
    assert dset.holds_any
    return dset


def _delta(m: int, seed: int):  # noqa: ANN202
    return packed_delta(m, N, seed=seed, group_size=32, schedule=SCHEDULE)[1]


def _reference(x: torch.Tensor, dset: DeltaSet, ids: torch.Tensor) -> torch.Tensor:
    plan = plan_rows(ids, dset.n_slots)
    y = torch.zeros(x.shape[0], sum(MS), dtype=torch.float32)
    return ref_ops.expand(ref_ops.shrink(x, dset, plan), y, dset, plan)


def _served(x: torch.Tensor, dset: DeltaSet, ids: torch.Tensor) -> torch.Tensor:
    y = torch.zeros(x.shape[0], sum(MS), dtype=torch.float32)
    return apply_deltas(x, y, dset, plan_rows(ids, dset.n_slots))


@pytest.fixture(autouse=True)
def _budget(monkeypatch):  # noqa: ANN001, ANN202
    monkeypatch.delenv("DELTASTORE_CPU_FACTOR_MB", raising=False)
    gc.collect()
    yield


def test_cpu_path_is_the_reference_bit_for_bit_first_call_and_after() -> None:
    dset = _set([1, 2, 3])
    x = torch.randn(7, N, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    ids = torch.tensor([2, 0, -1, 1, 0, 2, 2])
    want = _reference(x, dset, ids)
    before = factor_cache.held_bytes()
    assert torch.equal(_served(x, dset, ids), want)
    held = factor_cache.held_bytes() - before
    assert held > 0  # the factors are kept ...
    assert torch.equal(_served(x, dset, ids), want)  # ... and serve the second call the same numbers
    assert factor_cache.held_bytes() - before == held


def test_a_slot_refilled_with_another_fine_tune_is_served_its_own_factors() -> None:
    """Drop a fine-tune and load another into the same slot (same shapes, so the same buffer
    offsets): the new one's numbers, not the kept factors of the old one."""
    dset = _set([1, 2])
    x = torch.randn(3, N, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    ids = torch.tensor([0, 1, 0])
    _served(x, dset, ids)  # factors of seeds 1 and 2 kept
    dset.drop(0)
    assert dset.add([_delta(m, 50 + 10 * i) for i, m in enumerate(MS)], slot=0) == 0
    got, want = _served(x, dset, ids), _reference(x, dset, ids)
    assert torch.equal(got, want)
    assert not torch.equal(got, _reference(x, _set([1, 2]), ids))  # (and the old fine-tune's would differ)


def test_budget_bounds_what_is_held_and_zero_turns_it_off(monkeypatch) -> None:  # noqa: ANN001
    x = torch.randn(4, N, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    ids = torch.tensor([0, 1, 2, 3])
    base = factor_cache.held_bytes()
    probe = _set([1])
    _served(x[:1], probe, torch.tensor([0]))
    per_slot = factor_cache.held_bytes() - base
    del probe
    gc.collect()
    assert factor_cache.held_bytes() == base  # a set that is gone takes its factors with it

    monkeypatch.setenv("DELTASTORE_CPU_FACTOR_MB", "0")
    dset = _set([1, 2, 3, 4])
    want = _reference(x, dset, ids)
    assert torch.equal(_served(x, dset, ids), want) and factor_cache.held_bytes() == base

    monkeypatch.setenv("DELTASTORE_CPU_FACTOR_MB", str(2.5 * per_slot / 2**20))  # room for two slots, not four
    assert torch.equal(_served(x, dset, ids), want)
    held = factor_cache.held_bytes() - base
    assert per_slot <= held <= 2.5 * per_slot
    assert torch.equal(_served(x, dset, ids), want)  # the slots past the budget dequantized per call: the same numbers
    assert factor_cache.held_bytes() - base <= 2.5 * per_slot


def test_a_bad_budget_is_one_clear_error(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("DELTASTORE_CPU_FACTOR_MB", "lots")
    dset = _set([1])
    with pytest.raises(KernelError, match="DELTASTORE_CPU_FACTOR_MB"):
        _served(torch.randn(1, N).to(torch.bfloat16), dset, torch.tensor([0]))


def _signs(m: int, n: int, seed: int):  # noqa: ANN202
    from deltastore.kernels.bitdelta import BitDeltaSigns

    g = torch.Generator().manual_seed(seed)
    return BitDeltaSigns((m, n), torch.randint(-2**31, 2**31 - 1, (m, -(-n // 32)), generator=g, dtype=torch.int32), 0.01 * (seed + 1))


def test_bitdelta_on_the_cpu_keeps_its_signs_and_stays_the_reference() -> None:
    """Bitdelta's CPU path keeps each slot's unpacked signs the same way: the reference's numbers
    (apply_ref unpacking every call) bit for bit, a refilled slot its new signs, memory freed with the set.
    (triton_ok=False: the path a machine without a GPU takes; these tests run the interpreter otherwise.)"""
    from deltastore.kernels import BitDeltaSet
    from deltastore.kernels.bitdelta import apply_ref

    m, n = 45, 70
    x = torch.randn(5, n, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    ids = torch.tensor([0, 1, -1, 1, 0])
    base = factor_cache.held_bytes()
    bset = BitDeltaSet(n, m, "cpu")
    fs = {0: _signs(m, n, 0), 1: _signs(m, n, 1)}
    for s, f in fs.items():
        bset.add(f, s)

    def want(signs):  # noqa: ANN001, ANN202
        y = torch.zeros(5, m)
        for s, f in sorted(signs.items()):
            apply_ref(x, f, ids, s, y)
        return y

    assert torch.equal(bset.delta(x, ids, triton_ok=False), want(fs))
    assert factor_cache.held_bytes() - base == 2 * m * n * 4  # both slots' float32 signs kept
    assert torch.equal(bset.delta(x, ids, triton_ok=False), want(fs))
    bset.drop(0)
    fs[0] = _signs(m, n, 7)
    bset.add(fs[0], 0)
    assert torch.equal(bset.delta(x, ids, triton_ok=False), want(fs))
    del bset
    gc.collect()
    assert factor_cache.held_bytes() == base


def test_a_lazy_cpu_model_keeps_factors_for_its_life_and_they_go_with_it(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Through the API users call: a lazy model on the CPU serves its delta-come fine-tune with the
    factors kept (and the logits of the same model without any kept), and deleting the model frees them."""
    from deltastore import lazy

    from .test_lazy import PROMPTS, two_of_a_codec_and_a_delta_come

    store = two_of_a_codec_and_a_delta_come(tmp_path, "bitdelta", "bd")
    try:
        base = factor_cache.held_bytes()
        model = lazy.load(store, "dc3", device="cpu")
        with torch.no_grad():
            kept = model(PROMPTS).logits
        assert factor_cache.held_bytes() > base
        with torch.no_grad():
            assert torch.equal(model(PROMPTS).logits, kept)
        del model
        gc.collect()
        assert factor_cache.held_bytes() == base
        monkeypatch.setenv("DELTASTORE_CPU_FACTOR_MB", "0")
        fresh = lazy.load(store, "dc3", device="cpu")
        with torch.no_grad():
            assert torch.equal(fresh(PROMPTS).logits, kept)  # nothing kept: the same numbers
        assert factor_cache.held_bytes() == base
    finally:
        store.close()
