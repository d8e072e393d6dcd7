"""The counter-based masks of dare and deltadq v2: pinned values, the uint32 definition a kernel
uses, sound statistics, and a checksum that catches a mask that is not the one encoded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from codec_testlib import balanced_mask_reference, ctx, dare_mask_reference, hash32_reference, long_tailed
from deltastore.codec import CorruptPayloadError, from_bytes, get_codec, to_bytes
from deltastore.codec import masks


def test_hash_values_are_pinned():
    """These numbers are the format: if they change, every stored v2 payload decodes wrong."""
    assert masks.hash32(0, torch.arange(8)).tolist() == [
        2133699716, 3733818237, 4075731012, 608131580, 4117997344, 2298859369, 1323239735, 3289787764,
    ]
    assert masks.seed_keys(0) == (0x7B1DCDAF, 0xE220A839)
    assert masks.splitmix64(0) == 0xE220A8397B1DCDAF  # SplitMix64's first output from state 0


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 + 5, 2**63 - 1])
def test_int64_formulation_equals_uint32_arithmetic(seed):
    """The codec's int64 arithmetic (no overflow) gives what wrapping uint32 multiplies give,
    which is how a Triton kernel computes it."""
    g = np.random.default_rng(seed % 2**32)
    idx = np.concatenate([np.arange(4096), g.integers(0, 2**62, 4096), [2**32 - 1, 2**32, 2**40 + 7]]).astype(np.uint64)
    got = masks.hash32(seed, torch.from_numpy(idx.astype(np.int64)))
    assert np.array_equal(got.numpy().astype(np.uint64), hash32_reference(seed, idx).astype(np.uint64))


def test_bernoulli_mask_statistics():
    m, n, keep = 512, 1024, 0.3
    mask = masks.bernoulli_mask((m, n), keep, seed=7)
    assert torch.equal(mask, dare_mask_reference(m, n, keep, 7))
    N = m * n
    sigma = math.sqrt(keep * (1 - keep) / N)
    assert abs(mask.double().mean() - keep) < 5 * sigma
    flat = mask.reshape(-1).double()
    for lag in (1, 2, n):  # neighbours along a row, and the element below: independent
        both = (flat[:-lag] * flat[lag:]).mean()
        assert abs(both - keep**2) < 5 * math.sqrt(keep**2 * (1 - keep**2) / (N - lag))
    other = masks.bernoulli_mask((m, n), keep, seed=8).double()
    agree = float((mask.double() == other).double().mean())
    p = keep**2 + (1 - keep) ** 2  # two independent masks agree this often
    assert abs(agree - p) < 5 * math.sqrt(p * (1 - p) / N)
    # nested in keep: a larger keep keeps everything a smaller one kept
    assert bool((masks.bernoulli_mask((m, n), 0.5, seed=7) | ~mask).all())
    assert not masks.bernoulli_mask((4, 4), 0.0, 1).any() and masks.bernoulli_mask((4, 4), 1.0, 1).all()


@pytest.mark.parametrize("shape,h,c", [((37, 300), 64, 20), ((8, 50), 64, 5), ((16, 128), 16, 1), ((3, 40), 8, 8)])
def test_balanced_mask_matches_definition(shape, h, c):
    m, n = shape
    mask = masks.balanced_mask(shape, h, c, seed=3)
    assert torch.equal(mask, balanced_mask_reference(m, n, h, c, 3))
    hh = min(h, n)
    gf, L = divmod(n, hh)
    if gf:
        assert bool((mask[:, : gf * hh].reshape(m, gf, hh).sum(-1) == c).all())
    if L:
        assert bool((mask[:, gf * hh :].sum(-1) == c * L // hh).all())


def test_masks_do_not_depend_on_chunking(monkeypatch):
    a = masks.bernoulli_mask((33, 70), 0.4, 9)
    b = masks.balanced_mask((33, 70), 16, 5, 9)
    monkeypatch.setattr(masks, "CHUNK", 100)  # many small steps instead of one
    assert torch.equal(a, masks.bernoulli_mask((33, 70), 0.4, 9))
    assert torch.equal(b, masks.balanced_mask((33, 70), 16, 5, 9))


@pytest.mark.parametrize("codec_id,params", [("dare", {"alpha": "1/4"}), ("deltadq", {"alpha": "1/2", "h_g": 32})])
def test_checksum_mismatch_is_an_error_naming_it(codec_id, params):
    target, base, _, _ = long_tailed(64, 96, seed=2)
    codec = get_codec(codec_id, **params)
    enc = from_bytes(to_bytes(codec.encode(target, base, ctx(seed=5))))
    assert enc.version == 2 and len(enc.meta["mask"]) == 16
    codec.decode_delta(enc)
    enc.meta["mask"] = "%016x" % (int(enc.meta["mask"], 16) ^ 1)
    with pytest.raises(CorruptPayloadError, match="mask checksum mismatch"):
        codec.decode_delta(enc)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masks_are_the_same_on_the_gpu():
    assert torch.equal(masks.bernoulli_mask((300, 700), 0.37, 11, device="cuda").cpu(), masks.bernoulli_mask((300, 700), 0.37, 11))
    assert torch.equal(masks.balanced_mask((300, 700), 64, 9, 11, device="cuda").cpu(), masks.balanced_mask((300, 700), 64, 9, 11))
    target, base, _, _ = long_tailed(128, 256, seed=2)
    for codec in (get_codec("dare", alpha="1/4"), get_codec("deltadq", alpha="1/2", h_g=32)):
        enc = codec.encode(target, base, ctx(seed=5))
        assert torch.equal(codec.decode_delta(enc, device="cuda").cpu(), codec.decode_delta(enc))


def _triton_hash_kernel():
    """hash32 written as a Triton kernel in plain uint32 arithmetic, as a decode kernel would.
    On a machine with no GPU it is built for Triton's interpreter (TRITON_INTERPRET=1, set only
    while the kernel is defined, so other tests' kernels still compile natively on a GPU)."""
    import os

    triton = pytest.importorskip("triton")
    import triton.language as tl

    interpret = not torch.cuda.is_available()
    old = os.environ.get("TRITON_INTERPRET")
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    try:

        @triton.jit
        def hash_kernel(out_ptr, n, k0, k1, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            x = offs.to(tl.uint32) ^ k0.to(tl.uint32)  # index < 2**31 here: its high word is 0
            for _ in tl.static_range(2):
                x = x ^ (x >> 16)
                x = x * 0x7FEB352D
                x = x ^ (x >> 15)
                x = x * 0x846CA68B
                x = x ^ (x >> 16)
                if _ == 0:
                    x = x ^ k1.to(tl.uint32)
            tl.store(out_ptr + offs, x.to(tl.int32, bitcast=True), mask=offs < n)

    finally:
        if interpret:
            if old is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = old
    return hash_kernel, ("cpu" if interpret else "cuda")


@pytest.mark.parametrize("seed", [0, 99, 2**63 - 1])
def test_a_triton_kernel_regenerates_the_hash(seed):
    kernel, device = _triton_hash_kernel()
    n = 5000
    out = torch.empty(n, dtype=torch.int32, device=device)
    k0, k1 = masks.seed_keys(seed)
    kernel[(triton_cdiv(n, 1024),)](out, n, k0, k1, BLOCK=1024)
    got = out.cpu().to(torch.int64) & 0xFFFFFFFF
    assert torch.equal(got, masks.hash32(seed, torch.arange(n)))


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
