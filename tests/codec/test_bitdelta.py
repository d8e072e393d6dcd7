import math

import pytest
import torch

from codec_testlib import long_tailed, rel_err, roundtrip
from deltastore.codec import CodecError, get_codec, to_bytes
from deltastore.codec.bitdelta import BitDelta, get_scale, set_scale


def best_sign_scale_error(D: torch.Tensor) -> float:
    """min_a ||D - a sign(D)|| / ||D|| = sqrt(1 - (sum|D|)^2 / (N ||D||^2)), computed independently."""
    D = D.to(torch.float64)
    l1, l2sq, N = float(D.abs().sum()), float((D**2).sum()), D.numel()
    return math.sqrt(max(0.0, 1 - l1 * l1 / (N * l2sq)))


@pytest.mark.parametrize("shape", [(256, 512), (33, 100)])
def test_error_equals_best_scalar_sign(shape):
    target, base, D, _ = long_tailed(*shape, power=0.5, seed=2)
    codec = BitDelta()
    enc = codec.encode(target, base)
    Dh = codec.decode_delta(enc)
    assert math.isclose(rel_err(D, Dh), best_sign_scale_error(D), rel_tol=1e-5)
    a = get_scale(enc)
    assert math.isclose(a, float(D.abs().mean()), rel_tol=1e-5)
    assert torch.equal(torch.sign(Dh), torch.where(D.to(torch.float32) >= 0, 1.0, -1.0))
    # size: 1 bit per weight (rows padded to 32) + fp32 scale + header
    m, n = shape
    arrays = sum(t.numel() * t.element_size() for t in enc.arrays.values())
    assert arrays == m * 4 * math.ceil(n / 32) + 4
    roundtrip(codec, enc)


def test_set_scale_and_determinism():
    target, base, D, _ = long_tailed(64, 128, seed=3)
    codec = get_codec("bitdelta")
    enc = codec.encode(target, base)
    assert to_bytes(enc) == to_bytes(codec.encode(target, base))
    enc2 = set_scale(enc, 0.5)
    assert get_scale(enc2) == 0.5 and get_scale(enc) != 0.5
    assert torch.equal(codec.decode_delta(enc2).abs(), torch.full((64, 128), 0.5))
    with pytest.raises(CodecError):
        set_scale(enc, float("nan"))
    with pytest.raises(CodecError):
        codec.encode(torch.zeros(4, 4), torch.zeros(4, 5))
    assert not codec.applies_to("lm_head.weight", torch.zeros(4, 4))
    with pytest.raises(TypeError):
        BitDelta(alpha=1)  # no budget knob
