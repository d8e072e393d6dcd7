"""The GEMV expand launched as a programmatic dependent of its shrink (PDL, Hopper and newer):
the same numbers as two plain launches, eagerly and inside a replayed CUDA graph.

Bounds, and why: the dependent expand runs the same kernel on the same z (it waits for the shrink
before it reads z or writes anything); only when its programs start changes. With the ordered
handshake (GEMV_ATOMIC off) the expand adds its partial sums in a fixed order whatever the order
programs ran in, so the outputs are equal bit for bit. With the default float32 atomics the parts land
in the order programs finish, in plain launches too: each output is a float32 sum of a few parts
(one a run of components), reordered, so within 1e-5 of the output's largest value (a few roundings of
6e-8 each; a wrong or missing part moves an output by orders of magnitude more). Runs only where PDL does (a CUDA GPU of compute
capability 9 or newer, compiled Triton)."""

from __future__ import annotations

import pytest
import torch

from deltastore.kernels import DeltaSet, plan_rows, triton_ops

from .kernel_testlib import packed_delta

pdl_gpu = pytest.mark.skipif(
    not (triton_ops.HAVE_GDC and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9 and not triton_ops.interpreting()),
    reason="programmatic dependent launch needs a Hopper or newer GPU and compiled Triton")


def _set(n: int, ms: list[int]) -> DeltaSet:
    made = [packed_delta(m, n, seed=60 + i, dtype=torch.bfloat16, group_size=32, schedule=[[8, 1], [3, 2], [2, None]]) for i, m in enumerate(ms)]
    ds = DeltaSet(n, ms, "cuda")
    ds.add([pk for _, pk, _ in made])
    ds.build()
    return ds


@pytest.fixture(params=["ordered", "atomic"])
def adds(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(triton_ops, "GEMV_ATOMIC", request.param == "atomic")
    return request.param


def _same(a: torch.Tensor, b: torch.Tensor, adds: str) -> bool:
    if adds == "ordered":
        return torch.equal(a, b)
    return bool(((a - b).abs() <= 1e-5 * float(b.abs().amax())).all())


def _run(x: torch.Tensor, ds: DeltaSet, plan, pdl: bool) -> torch.Tensor:
    y = torch.zeros(x.shape[0], sum(ds.out_features), dtype=torch.float32, device="cuda")
    z = triton_ops.shrink(x, ds, plan, triton_ops.pick_split_k(x.shape[0], ds), pdl=pdl)
    return triton_ops.expand(z, y, ds, plan, pdl=pdl)


def test_pdl_needs_to_be_asked_for_by_expand() -> None:
    """An expand is a dependent only when its caller says the shrink was the launch before it."""
    y = torch.zeros(1, 4)
    assert triton_ops.pdl_launch(y, False) == {}


@pdl_gpu
@pytest.mark.parametrize("M", [1, 4])
def test_pdl_expand_equals_plain_launches(M: int, adds: str) -> None:
    ds = _set(320, [256, 96, 96])
    x = torch.randn(M, 320, generator=torch.Generator().manual_seed(M)).to(torch.bfloat16).cuda()
    plan = plan_rows(torch.zeros(M, dtype=torch.int64, device="cuda"), 1)
    assert triton_ops.use_gemv(M, ds) and triton_ops.pdl_on(x, True)
    plain = _run(x, ds, plan, False)
    dep = _run(x, ds, plan, True)
    assert _same(dep, plain, adds) and float(plain.abs().amax()) > 0


@pdl_gpu
def test_pdl_inside_a_cuda_graph(adds: str) -> None:
    """Captured with the dependent launch, replayed after the input changed: equal to plain eager launches."""
    ds = _set(320, [256, 96, 96])
    x = torch.randn(1, 320, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16).cuda()
    plan = plan_rows(torch.zeros(1, dtype=torch.int64, device="cuda"), 1)
    _run(x, ds, plan, True)  # compiled and the set's tables built before the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = _run(x, ds, plan, True)
    x.copy_(torch.randn(1, 320, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16).cuda())
    g.replay()
    torch.cuda.synchronize()
    assert _same(out, _run(x, ds, plan, False), adds)
