"""delta-come's default SVD (``svd="lowrank"``, a seeded randomized range finder) on the CPU, at
shapes where the default codec really takes it: ``r + svd_oversample < min(m, n)`` (smaller
matrices fall back to the full SVD, so a test at tiny shapes never runs it)."""

from __future__ import annotations

import pytest
import torch

from codec_testlib import ctx, long_tailed, rel_err, tail_energy
from deltastore.codec.delta_come import DeltaCoMe, randomized_svd


@pytest.mark.parametrize("shape,power", [((512, 768), 0.5), ((640, 512), 1.0)])
def test_default_randomized_svd_is_taken_and_near_optimal(shape, power):
    m, n = shape
    target, base, D, _ = long_tailed(m, n, power=power, seed=21)
    codec = DeltaCoMe()  # the defaults: alpha 1/16, svd="lowrank", oversample 256, 4 power iterations
    assert codec.svd == "lowrank"
    r = sum(c for _, c in codec.allocation(m, n, "float32"))
    assert 0 < r and r + codec.svd_oversample < min(m, n), "this shape must take the randomized branch"

    # the range finder itself: its rank-r reconstruction is within 0.1% of the best rank-r one (measured: 1e-6)
    U, S, Vh = randomized_svd(D.to(torch.float32), r, codec.svd_oversample, codec.svd_niter, seed=0)
    assert U.shape == (m, r) and S.shape == (r,) and Vh.shape == (r, n)
    assert bool((S[:-1] >= S[1:]).all())
    best = tail_energy(D, r)
    assert rel_err(D, (U * S) @ Vh) <= best * 1.001
    # orthonormal columns and rows
    eye = torch.eye(r)
    assert float((U.T @ U - eye).abs().max()) < 1e-4 and float((Vh @ Vh.T - eye).abs().max()) < 1e-4

    # and the whole encode: the default gives the full SVD's error within 0.1% (measured: 1e-4)
    err_default = rel_err(D, codec.decode_delta(codec.encode(target, base, ctx(seed=0))))
    err_full = rel_err(D, DeltaCoMe(svd="full").decode_delta(DeltaCoMe(svd="full").encode(target, base, ctx(seed=0))))
    assert err_default <= err_full * 1.001
