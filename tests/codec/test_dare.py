import math

import pytest
import torch

from codec_testlib import budget_bits, ctx, dare_mask_reference, group_err_norms, long_tailed, rel_err, roundtrip
from deltastore.codec import CodecError, CorruptPayloadError, get_codec, to_bytes
from deltastore.codec.dare import Dare

M, N = 256, 512


def documented_mask(m, n, keep, seed):
    """The mask exactly as dare's docstring defines it (format v2; not calling the codec)."""
    return dare_mask_reference(m, n, keep, seed)


@pytest.fixture(scope="module")
def delta():
    return long_tailed(M, N, power=0.5, seed=6)


@pytest.mark.parametrize("bits", [2, 4, 16])
def test_error_within_drop_plus_quantization_bound(delta, bits):
    target, base, D, _ = delta
    codec = Dare(bits=bits)
    enc = codec.encode(target, base, ctx(seed=11))
    keep = enc.meta["keep"]
    mask = documented_mask(M, N, keep, 11)
    assert int(mask.sum()) == enc.meta["count"]
    # mask density: binomial, within 6 sigma of keep
    assert abs(mask.double().mean() - keep) <= 6 * math.sqrt(keep * (1 - keep) / (M * N))
    D_drop = D * mask / keep
    drop = rel_err(D, D_drop)
    # E||D - D_drop||^2 = (1 - keep) / keep * ||D||^2 (elementwise Bernoulli); 131k elements: within 10%
    assert abs(drop**2 / ((1 - keep) / keep) - 1) < 0.1
    Dnorm = float(torch.linalg.matrix_norm(D))
    c = float(enc.arrays["c"][0])
    if bits == 16:
        qb = 2.0**-11 * float(torch.linalg.matrix_norm(D_drop)) / Dnorm + 1e-7
    else:
        qb = c * float(group_err_norms(enc.arrays["s"], enc.meta["count"], 128)[0]) / Dnorm
    err = rel_err(D, codec.decode_delta(enc))
    assert err <= (drop + qb) * (1 + 1e-5)
    assert enc.nbytes * 8 <= budget_bits(1 / 16, M, N)
    assert enc.nbytes * 8 > 0.9 * budget_bits(1 / 16, M, N)  # and uses it (the 6-sigma margin on the count costs ~6% here)


def test_roundtrip_seeds_and_corruption(delta):
    target, base, D, _ = delta
    codec = get_codec("dare", alpha="1/8", bits=3)
    e1 = codec.encode(target, base, ctx(seed=1))
    assert to_bytes(e1) == to_bytes(codec.encode(target, base, ctx(seed=1)))
    assert to_bytes(e1) != to_bytes(codec.encode(target, base, ctx(seed=2)))
    fixed = Dare(seed=5)
    assert fixed.encode(target, base, ctx(seed=1)).meta["seed"] == 5  # the codec's own seed wins
    back = roundtrip(codec, e1)
    back.meta["seed"] = 999
    with pytest.raises(CorruptPayloadError):
        codec.decode_delta(back)


def test_bad_params_and_tiny():
    for kw in [dict(bits=5), dict(bits=0), dict(bits=32), dict(alpha=0), dict(group_size=-1), dict(seed="x"), dict(seed=-3)]:
        with pytest.raises(CodecError):
            Dare(**kw)
    codec = Dare()
    with pytest.raises(CodecError):
        codec.encode(torch.zeros(4, 4), torch.zeros(5, 4))
    enc = codec.encode(torch.randn(4, 4), None)  # budget 16 bits < header: keeps nothing
    assert enc.meta["count"] == 0 and torch.equal(codec.decode_delta(enc), torch.zeros(4, 4))
    assert not codec.applies_to("model.embed_tokens.weight", torch.zeros(4, 4))
