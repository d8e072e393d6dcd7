"""codec.quant.unpack_dequantize (the compiled one-pass decode of packed factors) against the
torch composition dequantize(unpack(...)): equal bit for bit, the same refusals."""

from __future__ import annotations

import pytest
import torch

from deltastore.codec import get_codec, quant
from deltastore.codec.errors import CodecError

pytest.importorskip("numba")


def _case(rows: int, length: int, bits: int, gs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 1 << bits, (rows, length), generator=g)
    groups = -(-length // gs)
    scale = (torch.rand(rows, groups, generator=g) * 1e-2 + 2.0**-14).to(torch.float16)
    zero = torch.randint(0, 1 << bits, (rows, groups), generator=g).to(torch.float16)
    return quant.pack(q, bits), scale, zero


@pytest.mark.parametrize("bits", quant.PACKABLE_BITS)
@pytest.mark.parametrize("length,gs", [(1, 128), (31, 128), (33, 128), (300, 128), (1000, 64), (77, 7)])
def test_equals_the_torch_composition_bit_for_bit(bits: int, length: int, gs: int) -> None:
    assert quant._compiled() is not None, "numba is installed, so the compiled path must be the one tested"
    packed, scale, zero = _case(5, length, bits, gs, seed=bits * 1000 + length)
    want = quant.dequantize(quant.unpack(packed, bits, length), scale, zero, gs)
    got = quant.unpack_dequantize(packed, bits, length, scale, zero, gs)
    assert got.dtype == torch.float32 and got.shape == (5, length)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_refuses_what_the_composition_refuses() -> None:
    packed, scale, zero = _case(3, 300, 3, 128, seed=1)
    with pytest.raises(CodecError, match="words"):
        quant.unpack_dequantize(packed[:, :-1], 3, 300, scale, zero, 128)
    with pytest.raises(CodecError, match="cannot cover"):
        quant.unpack_dequantize(packed, 3, 300, scale[:, :2], zero[:, :2], 128)
    with pytest.raises(CodecError, match="do not fit"):
        quant.unpack_dequantize(packed, 3, 300, scale[:2], zero[:2], 128)
    with pytest.raises(CodecError, match="bits"):
        quant.unpack_dequantize(packed, 5, 300, scale, zero, 128)


def test_a_delta_come_decode_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The codec's decoded delta (every tier of a real encode, odd shapes) is the same tensor
    through the compiled path and through the torch composition."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(203, 150, generator=g).to(torch.bfloat16)
    target = (base.float() + 1e-2 * torch.randn(203, 32, generator=g) @ torch.randn(32, 150, generator=g) / 6).to(torch.bfloat16)
    codec = get_codec("delta-come")
    enc = codec.encode(target, base)
    fast = codec.decode_delta(enc)
    monkeypatch.setattr(quant, "_KERNEL", None)
    slow = codec.decode_delta(enc)
    assert torch.equal(fast, slow)
