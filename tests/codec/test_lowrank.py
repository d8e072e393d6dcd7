import math

import pytest
import torch

from codec_testlib import budget_bits, long_tailed, rel_err, roundtrip, tail_energy
from deltastore.codec import CodecError, get_codec, to_bytes
from deltastore.codec.lowrank import LowRank, lowrank_rank

M, N = 256, 512


def test_rank_formula():
    assert lowrank_rank(4096, 4096, 1 / 16) == 128
    assert lowrank_rank(4096, 11008, "1/16") == math.floor(4096 * 11008 / (16 * (4096 + 11008))) == 186
    assert LowRank(accounting="paper").rank(4096, 4096) == 128
    assert LowRank().rank(4096, 4096) == 127  # header + scale do not fit next to 128 fp16 pairs
    assert lowrank_rank(8, 8, 1.0) == 4
    assert lowrank_rank(4, 1000, 1.0) == 3


def test_error_is_tail_energy_up_to_fp16():
    """Truncation error is exactly the tail energy; fp16 factors add at most 2 * 2^-11 * sqrt(s1 * sum s_i)."""
    target, base, D, _ = long_tailed(M, N, power=0.7)
    codec = LowRank()
    enc = codec.encode(target, base)
    r = enc.meta["rank"]
    assert r == codec.rank(M, N) == lowrank_rank(M, N) - 1 or r == lowrank_rank(M, N)
    s = torch.linalg.svdvals(D)
    fp16 = 2 * 2.0**-11 * (1 + 2.0**-11) * math.sqrt(float(s[0]) * float(s[:r].sum())) / float(torch.linalg.matrix_norm(D))
    tail = tail_energy(D, r)
    err = rel_err(D, codec.decode_delta(enc))
    assert tail * (1 - 1e-6) <= err <= tail + fp16 + 1e-6
    assert enc.nbytes * 8 <= budget_bits(1 / 16, M, N)


def test_roundtrip_determinism_bad_params():
    target, base, D, _ = long_tailed(64, 96, seed=4)
    codec = get_codec("lowrank", alpha="1/4")
    enc = codec.encode(target, base)
    assert to_bytes(enc) == to_bytes(codec.encode(target, base))
    back = roundtrip(codec, enc)
    assert back.meta["rank"] == enc.meta["rank"] > 0
    for kw in [dict(alpha=0), dict(alpha=2), dict(alpha="x"), dict(accounting="none")]:
        with pytest.raises(CodecError):
            LowRank(**kw)
    with pytest.raises(CodecError):
        codec.encode(torch.zeros(3, 4), torch.zeros(4, 3))
    assert not codec.applies_to("model.norm.weight", torch.zeros(4, 4))
    assert codec.applies_to("model.layers.1.mlp.down_proj.weight", torch.zeros(4, 4))


def test_zero_delta():
    w = torch.randn(32, 48)
    codec = LowRank(alpha=1.0)
    assert torch.equal(codec.decode_delta(codec.encode(w, w)), torch.zeros(32, 48))
