"""Helpers for the codec tests: synthetic deltas with a known spectrum, derived error bounds."""

from __future__ import annotations

import math

import torch

from deltastore.codec import EncodeContext, from_bytes, to_bytes


def orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def long_tailed(m: int, n: int, power: float = 1.0, scale: float = 1e-2, seed: int = 0):
    """(target fp32, base fp32, D float64 = target - base exactly, s) with D's spectrum ~ s_i = scale * i^-power."""
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n)
    s = scale * torch.arange(1, k + 1, dtype=torch.float64) ** (-power)
    U = orthonormal(m, k, gen)
    V = orthonormal(n, k, gen)
    Dm = (U * s) @ V.T
    base = (torch.randn(m, n, generator=gen, dtype=torch.float64) * 0.02).to(torch.float32)
    target = (base.to(torch.float64) + Dm).to(torch.float32)
    D = target.to(torch.float64) - base.to(torch.float64)  # what the codec sees, exactly
    return target, base, D, s


def rel_err(D: torch.Tensor, Dh: torch.Tensor) -> float:
    D = D.to(torch.float64)
    return float(torch.linalg.matrix_norm(D - Dh.to(torch.float64)) / torch.linalg.matrix_norm(D))


def tail_energy(D: torch.Tensor, r: int) -> float:
    """sqrt(sum_{i>r} s_i^2) / ||s||: the best rank-r relative error (Eckart-Young)."""
    s = torch.linalg.svdvals(D.to(torch.float64))
    return float(torch.sqrt((s[r:] ** 2).sum()) / torch.sqrt((s**2).sum()))


def group_err_norms(scales: torch.Tensor, length: int, group_size: int) -> torch.Tensor:
    """Per row: sqrt(sum over groups of len_g * (s_g / 2)^2), the RTN error bound of a vector."""
    G = scales.shape[-1]
    lens = torch.full((G,), float(group_size), dtype=torch.float64)
    lens[-1] = length - group_size * (G - 1)
    return torch.sqrt(((scales.to(torch.float64) / 2) ** 2 * lens).sum(-1))


def roundtrip(codec, enc):
    """Serialize and parse; the decoded delta must not change."""
    enc2 = from_bytes(to_bytes(enc))
    assert enc2.nbytes == enc.nbytes == len(to_bytes(enc)) - 8  # magic + length prefix are the only extras
    a = codec.decode_delta(enc)
    b = codec.decode_delta(enc2)
    assert torch.equal(a, b)
    return enc2


def correlated_inputs(tokens: int, n: int, seed: int = 1) -> torch.Tensor:
    """Activations with a strongly non-isotropic covariance (decaying spectrum, random basis)."""
    gen = torch.Generator().manual_seed(seed)
    basis = orthonormal(n, n, gen)
    spread = torch.logspace(0, -2, n, dtype=torch.float64)
    X = torch.randn(tokens, n, generator=gen, dtype=torch.float64) * spread
    X = X @ basis.T + 0.5 * torch.randn(tokens, 1, generator=gen, dtype=torch.float64)  # shared offset
    return X.to(torch.float32)


def budget_bits(alpha: float, m: int, n: int) -> int:
    return math.floor(alpha * 16 * m * n)


def ctx(**kw) -> EncodeContext:
    return EncodeContext(**kw)


# -- the counter-based masks (codec/masks.py), written out again in numpy uint32 arithmetic, the
# way a GPU kernel computes them (wrapping 32-bit multiplies), as an oracle independent of the
# codec's int64 formulation.


def _splitmix64(seed: int) -> int:
    m64 = (1 << 64) - 1
    z = (seed + 0x9E3779B97F4A7C15) & m64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
    return z ^ (z >> 31)


def _lowbias32(x):
    import numpy as np

    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def hash32_reference(seed: int, index):
    """hash32(seed, i) for a numpy uint64 index array, in uint32 arithmetic."""
    import numpy as np

    z = _splitmix64(seed)
    k0, k1 = np.uint32(z & 0xFFFFFFFF), np.uint32(z >> 32)
    index = np.asarray(index, dtype=np.uint64)
    lo = (index & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    hi = (index >> np.uint64(32)).astype(np.uint32)
    with np.errstate(over="ignore"):
        return _lowbias32(_lowbias32(lo ^ k0) ^ k1 ^ hi)


def dare_mask_reference(m: int, n: int, keep: float, seed: int) -> torch.Tensor:
    """dare v2's mask as its docstring defines it: hash32(seed, i) < floor(keep * 2**32)."""
    import numpy as np

    h = hash32_reference(seed, np.arange(m * n, dtype=np.uint64)).astype(np.int64)
    return torch.from_numpy(h < math.floor(keep * 2**32)).reshape(m, n)


def balanced_mask_reference(m: int, n: int, h: int, c: int, seed: int) -> torch.Tensor:
    """deltadq v2's mask as its docstring defines it: per group, the c smallest hashes, ties to
    the lower column (numpy's stable argsort)."""
    import numpy as np

    h = min(h, n)
    keys = hash32_reference(seed, np.arange(m * n, dtype=np.uint64)).reshape(m, n)
    mask = np.zeros((m, n), dtype=bool)
    for g0 in range(0, n, h):
        g1 = min(n, g0 + h)
        k = c if g1 - g0 == h else (c * (g1 - g0)) // h
        if k:
            idx = np.argsort(keys[:, g0:g1], axis=1, kind="stable")[:, :k]
            np.put_along_axis(mask[:, g0:g1], idx, True, axis=1)
    return torch.from_numpy(mask)
