import pytest
import torch

from codec_testlib import balanced_mask_reference, budget_bits, ctx, group_err_norms, long_tailed, rel_err, roundtrip
from deltastore.codec import CodecError, get_codec, to_bytes
from deltastore.codec.deltadq import DeltaDQ, balanced_mask, kept_per_row

M, N = 256, 512


def documented_mask(m, n, h, c, seed):
    """The balanced mask as deltadq's docstring defines it (format v2; not calling the codec)."""
    h = min(h, n)
    gf, L = divmod(n, h)
    mask = balanced_mask_reference(m, n, h, c, seed)
    resc = torch.zeros(m, n, dtype=torch.float64)
    if gf:
        resc[:, : gf * h] = h / c
    if L and c * L // h:
        resc[:, gf * h :] = L / (c * L // h)
    return mask, resc


@pytest.mark.parametrize("shape,h_g,alpha", [((M, N), 256, 1 / 16), ((M, N), 64, 1 / 16), ((64, 300), 128, 1 / 8), ((64, 200), 256, 1 / 2)])
def test_balanced_mask_and_error_bound(shape, h_g, alpha):
    m, n = shape
    target, base, D, _ = long_tailed(m, n, power=0.5, seed=8)
    codec = DeltaDQ(alpha=alpha, h_g=h_g)
    enc = codec.encode(target, base, ctx(seed=4))
    h, c, K = enc.meta["h"], enc.meta["keep_per_group"], enc.meta["kept_per_row"]
    assert h == min(h_g, n) and c > 0 and K == kept_per_row(n, h, c)
    mask, resc = documented_mask(m, n, h, c, 4)
    mine, _ = balanced_mask((m, n), h, c, 4)
    assert torch.equal(mask, mine)
    gf = n // h
    assert bool((mask[:, : gf * h].reshape(m, gf, h).sum(-1) == c).all())  # balanced: exactly c per group
    assert bool((mask.sum(1) == K).all())
    D_drop = D * mask * resc
    drop = rel_err(D, D_drop)
    if n % h == 0 and m * n >= 100_000:
        assert abs(drop**2 / (h / c - 1) - 1) < 0.1  # E||D - D_drop||^2 = (h/c - 1) ||D||^2
    cn = float(enc.arrays["c"][0])
    qb = cn * float(torch.linalg.vector_norm(group_err_norms(enc.arrays["s"], K, 128))) / float(torch.linalg.matrix_norm(D))
    err = rel_err(D, codec.decode_delta(enc))
    assert err <= (drop + qb) * (1 + 1e-5)
    assert enc.nbytes * 8 <= budget_bits(alpha, m, n)
    roundtrip(codec, enc)


def test_parts_change_layout_not_values():
    target, base, D, _ = long_tailed(64, 256, seed=9)
    ref = DeltaDQ(alpha=1 / 8, h_g=64, bits=4, parts=1)
    e_ref = ref.encode(target, base)
    out = ref.decode_delta(e_ref)
    for parts in (2, 4, 16):
        codec = DeltaDQ(alpha=1 / 8, h_g=64, bits=4, parts=parts)
        enc = codec.encode(target, base)
        assert torch.equal(codec.decode_delta(enc), out)
        payload = sum(a.numel() * a.element_size() for a in enc.arrays.values())
        assert payload == sum(a.numel() * a.element_size() for a in e_ref.arrays.values())  # k bits per kept value in all
    assert "part" in enc.arrays and "low" not in enc.arrays  # 16 parts of 4 bits: the part plane is everything


def test_determinism_and_bad_params():
    target, base, D, _ = long_tailed(64, 128, seed=10)
    codec = get_codec("deltadq", alpha="1/16", h_g=32)
    assert to_bytes(codec.encode(target, base)) == to_bytes(codec.encode(target, base))
    assert to_bytes(codec.encode(target, base, ctx(seed=1))) != to_bytes(codec.encode(target, base, ctx(seed=2)))
    for kw in [
        dict(h_g=0),
        dict(bits=0),
        dict(bits=9),
        dict(parts=3),
        dict(parts=32, bits=4),
        dict(bits=8, parts=2),  # 7-bit plane is not packable
        dict(bits=5, parts=1),
        dict(alpha=0),
        dict(group_size=0),
    ]:
        with pytest.raises(CodecError):
            DeltaDQ(**kw)
    with pytest.raises(CodecError):
        codec.encode(torch.zeros(3, 3), torch.zeros(3, 4))
    assert not codec.applies_to("model.layers.0.post_attention_layernorm.weight", torch.zeros(4, 4))
