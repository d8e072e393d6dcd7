import pytest
import torch

from codec_testlib import correlated_inputs
from deltastore.codec import CodecError, quant
from deltastore.codec.gptq import gptq_quantize, output_error


@pytest.fixture(scope="module")
def layer():
    X = correlated_inputs(1024, 256)
    g = torch.Generator().manual_seed(5)
    W = torch.randn(48, 256, generator=g) * 0.02
    return X, W, X.T @ X


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_beats_rtn_on_output_error(layer, bits):
    X, W, H = layer
    res = gptq_quantize(W, H, bits, 128, "cols")
    q, s, z = quant.quantize_rtn(W, bits, 128)
    rtn = quant.dequantize(q, s, z, 128)
    e_gptq = output_error(X, W, res.dequant)
    e_rtn = output_error(X, W, rtn)
    assert e_gptq < 0.8 * e_rtn
    # the stored integers and group parameters reproduce W^ exactly
    assert torch.equal(quant.dequantize(res.q, res.scale.half(), res.zero.half(), 128), res.dequant)
    assert int(res.q.min()) >= 0 and int(res.q.max()) < 2**bits


def test_gptq_rows_grouping_beats_rtn(layer):
    """Columns quantized as whole vectors (groups along rows), per-column bits: Delta-CoMe's U."""
    X, W, H = layer
    Wt = W.T.contiguous()[:, :48]  # 256 x 48: 48 inputs
    Xs = X[:, :48] @ torch.randn(48, 48, generator=torch.Generator().manual_seed(2))
    Hs = Xs.T @ Xs
    bits = torch.tensor([3] * 16 + [2] * 32)
    res = gptq_quantize(Wt, Hs, bits, 128, "rows")
    assert res.scale.shape == (48, 2)
    q, s, z = quant.quantize_rtn(Wt.T, bits, 128)
    rtn = quant.dequantize(q, s, z, 128).T
    assert output_error(Xs, Wt, res.dequant) < output_error(Xs, Wt, rtn)
    assert torch.equal(quant.dequantize(res.q.T, res.scale.half(), res.zero.half(), 128), res.dequant.T)


def test_gptq_dead_inputs_and_shape_checks(layer):
    X, W, H = layer
    H = H.clone()
    H[:, 7] = 0
    H[7, :] = 0
    res = gptq_quantize(W, H, 4, 128)
    assert torch.equal(res.dequant[:, 7], torch.zeros(48))
    with pytest.raises(CodecError):
        gptq_quantize(W, H[:100, :100], 4)
    with pytest.raises(CodecError):
        gptq_quantize(W, H, 4, 128, "diagonal")
