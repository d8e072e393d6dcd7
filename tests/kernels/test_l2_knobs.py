"""Two A/B knobs about the L2 (twenty-ninth session): the one-row base GEMV reading W evict_first
(base_gemv.EVICT_FIRST) and a side-stream prefetch of a lone fine-tune's packed words
(triton_ops.prefetch_). Neither may change a number: the GEMV gives the same bits either way, the
prefetch writes nothing (its sink stays zero) and leaves the words as they were."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaSet, base_gemv, triton_ops

from .kernel_testlib import DEVICE, packed_delta

pytestmark = pytest.mark.skipif(not triton_ops.HAVE_TRITON, reason="triton is not installed")


def test_evict_first_gemv_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 300, generator=g).to(torch.bfloat16).to(DEVICE)
    W = torch.randn(37, 300, generator=g).to(torch.bfloat16).to(DEVICE)
    want = base_gemv.gemv(x, W, path="gemv")
    monkeypatch.setattr(base_gemv, "EVICT_FIRST", True)
    assert torch.equal(base_gemv.gemv(x, W, path="gemv"), want)


def test_prefetch_writes_nothing() -> None:
    ds = DeltaSet(96, [150], DEVICE)
    ds.add([packed_delta(150, 96, seed=1, schedule=[[8, 2], [2, None]], group_size=32)[1]])
    ds.build()
    words = ds.words.clone()
    triton_ops.prefetch_(ds)
    n = -(-ds.words.numel() // triton_ops.PREFETCH_BLOCK)
    assert torch.equal(ds.words, words) and not ds.prefetch_sink(n).any()
