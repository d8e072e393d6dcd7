import pytest
import torch

from deltastore.codec import CodecError
from deltastore.codec import quant


@pytest.mark.parametrize("bits", quant.PACKABLE_BITS)
@pytest.mark.parametrize("length", [1, 31, 32, 33, 100, 257])
def test_pack_roundtrip(bits, length):
    g = torch.Generator().manual_seed(bits * 1000 + length)
    q = torch.randint(0, 2**bits, (3, 2, length), generator=g)
    p = quant.pack(q, bits)
    assert p.dtype == torch.int32
    assert p.shape == (3, 2, quant.packed_words(length, bits)) == (3, 2, bits * -(-length // 32))
    assert torch.equal(quant.unpack(p, bits, length), q)


def _word(p, i):
    return int(p.reshape(-1)[i]) & 0xFFFFFFFF


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_layout_power_of_two(bits):
    """Value j of a 32-value chunk sits in word j // f at bit (j % f) * b, f = 32 // b."""
    g = torch.Generator().manual_seed(bits)
    q = torch.randint(0, 2**bits, (64,), generator=g)
    p = quant.pack(q, bits)
    f = 32 // bits
    for j in range(64):
        chunk, jj = divmod(j, 32)
        w = _word(p, chunk * bits + jj // f)
        assert (w >> ((jj % f) * bits)) & (2**bits - 1) == int(q[j])


def test_layout_three_bits():
    """3 bits: words 0/1 of a chunk hold the low 2 bits (2-bit layout), word 2 the high bits."""
    g = torch.Generator().manual_seed(3)
    q = torch.randint(0, 8, (70,), generator=g)
    p = quant.pack(q, 3)
    assert p.numel() == 9  # three chunks of 3 words
    for j in range(70):
        c, jj = divmod(j, 32)
        low = (_word(p, 3 * c + jj // 16) >> (2 * (jj % 16))) & 3
        high = (_word(p, 3 * c + 2) >> jj) & 1
        assert low | (high << 2) == int(q[j])
    # padding values are zeros
    assert (_word(p, 8) >> 6) == 0


def test_pack_rejects_out_of_range_and_bad_bits():
    with pytest.raises(CodecError):
        quant.pack(torch.tensor([4]), 2)
    with pytest.raises(CodecError):
        quant.pack(torch.tensor([-1]), 2)
    for b in (0, 5, 6, 16, 2.5, True):
        with pytest.raises(CodecError):
            quant.check_bits(b)
    with pytest.raises(CodecError):
        quant.check_group_size(0)


@pytest.mark.parametrize("bits", quant.PACKABLE_BITS)
def test_rtn_error_within_half_step(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(5, 300, generator=g) * 0.01 + 0.003  # 300: last group is short (44)
    q, s, z = quant.quantize_rtn(x, bits, 128)
    assert s.dtype == z.dtype == torch.float16 and s.shape == (5, 3)
    assert int(q.min()) >= 0 and int(q.max()) <= 2**bits - 1
    assert torch.equal(z, z.round()) and float(z.max()) <= 2**bits - 1
    xh = quant.dequantize(q, s, z, 128)
    step = s.to(torch.float32).repeat_interleave(128, -1)[:, :300]
    assert bool(((x - xh).abs() <= step / 2 * (1 + 1e-5)).all())
    # zero is representable exactly
    zq = z.to(torch.int32).repeat_interleave(128, -1)[:, :300]
    assert torch.equal(quant.dequantize(zq, s, z, 128), torch.zeros(5, 300))


def test_rtn_per_row_bits_and_constant_groups():
    x = torch.zeros(3, 130)
    x[1] = 1.0  # one-signed constant group: range widened to include 0
    bits = torch.tensor([2, 3, 8])
    q, s, z = quant.quantize_rtn(x, bits, 128)
    xh = quant.dequantize(q, s, z, 128)
    assert torch.equal(xh[0], x[0])
    assert torch.allclose(xh[1], x[1], atol=float(s[1].max()) / 2)
    assert int(q[2].max()) <= 255 and int(q[0].max()) <= 3


def test_fp16_ceil_rounds_up():
    x = torch.rand(1000) * 0.1 + 1e-4
    c = quant.fp16_ceil(x)
    assert bool((c >= x).all())
    assert torch.equal(c, c.to(torch.float16).to(torch.float32))
