"""A DeltaGroup whose members' base weights are row slices of one tensor (``concat_rows``; a lazy
model's q/k/v and gate/up are loaded so): one GEMM for the group's base output, the group's delta
added into that output (in place where the tl.dot kernels serve, M >= 16 rows a fine-tune), each
member's output its column slice. Checked against lone DeltaLinears (each its own weight copy and
its own DeltaSet), with the Triton kernels (TRITON_INTERPRET=1 on the CPU) and the torch ops.

Bounds, and why: the group and a lone linear run the same kernels on the same data; they may add
the delta in another order or round the base output once more (GEMV path: float32 delta added
rounding once; a lone linear off the side stream adds in place), so each element agrees within
2 units in the last place of |y| plus the kernels' delta tolerance (tests/kernels/test_ops.py:
1e-2 bf16, 3e-3 fp16 relative) times the largest delta element, as test_ops' group test states.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from deltastore.kernels import DeltaContext, DeltaGroup, DeltaLinear, triton_ops
from deltastore.kernels.linear import concat_rows, rows_view

from .kernel_testlib import DEVICE, packed_delta

DELTA_TOL = {torch.bfloat16: 1e-2, torch.float16: 3e-3}
interp_slow = pytest.mark.slow if triton_ops.interpreting() else (lambda f: f)
N, MS = 96, [64, 33, 40]  # q/k/v-like: odd widths, not multiples of the kernels' blocks


class CountLinear(TorchFunctionMode):
    """Counts the base GEMMs (F.linear calls) made inside it (an observer: every call runs)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.linear:
            self.shapes.append(tuple(args[1].shape))
        return func(*args, **(kwargs or {}))


def _tenants(dtype: torch.dtype, n_tenants: int):
    """(base weights per member, per tenant per member its packed delta): tenant t's deltas are
    fine-tunes of other random weights, which is all the same to the kernels (only shapes match)."""
    first = [packed_delta(m, N, seed=30 + i, dtype=dtype, group_size=32, schedule=[[8, 1], [3, 2], [2, None]])[:2] for i, m in enumerate(MS)]
    more = [[packed_delta(m, N, seed=50 + 10 * t + i, dtype=dtype, group_size=32, schedule=[[8, 2], [2, None]])[1] for i, m in enumerate(MS)]
            for t in range(1, n_tenants)]
    return [W for W, _ in first], [[pk for _, pk in first]] + more


def _build(dtype: torch.dtype, n_tenants: int, preference: str, bias: str = "none"):
    """(group members over one concatenated weight, lone DeltaLinears, the group, ctx, the weights)."""
    W0, pks = _tenants(dtype, n_tenants)
    Ws = [W.to(DEVICE) for W in W0]
    g = torch.Generator().manual_seed(5)
    bs = [None] * 3
    if bias != "none":
        bs = [(0.1 * torch.randn(m, generator=g)).to(dtype).to(DEVICE) for m in MS]
        if bias == "some":
            bs[1] = None
    ctx = DeltaContext(n_tenants, default_id=0 if n_tenants == 1 else None)
    group = DeltaGroup(N, MS, DEVICE)
    for t in range(n_tenants):
        group.deltas.add(pks[t])
    views = concat_rows(Ws)
    bviews = concat_rows(bs) if bias == "all" else bs
    members = [DeltaLinear(v, b, ctx, preference, group, i) for i, (v, b) in enumerate(zip(views, bviews))]
    alone = []
    for i, (W, b) in enumerate(zip(Ws, bs)):
        lin = DeltaLinear(W.clone(), None if b is None else b.clone(), ctx, preference)
        for t in range(n_tenants):
            lin.add_delta(pks[t][i])
        alone.append(lin)
    return members, alone, group, ctx, Ws


def _assert_close(ya: torch.Tensor, yb: torch.Tensor, x: torch.Tensor, lin: DeltaLinear, dtype: torch.dtype) -> None:
    base = torch.nn.functional.linear(x, lin.weight, lin.bias).float()
    bound = 2 * torch.finfo(dtype).eps * yb.float().abs() + DELTA_TOL[dtype] * (yb.float() - base).abs().amax()
    assert bool(((ya.float() - yb.float()).abs() <= bound + 1e-6).all()), float((ya.float() - yb.float()).abs().max())
    assert float((yb.float() - base).abs().amax()) > 0  # the delta is there: a check that checks something


def _run(dtype: torch.dtype, M: int, n_tenants: int, preference: str, bias: str = "none") -> None:
    members, alone, group, ctx, Ws = _build(dtype, n_tenants, preference, bias)
    if n_tenants > 1:  # rows of every tenant and of the base alone, interleaved
        ctx.set([(r % (n_tenants + 1)) - 1 for r in range(M)])
    x = torch.randn(M, N, generator=torch.Generator().manual_seed(M)).to(dtype).to(DEVICE)
    with CountLinear() as count:
        outs = [m(x) for m in members]
    W, _ = group.whole_weight({j: m for j, m in enumerate(members)})
    assert W is not None and count.shapes == [(sum(MS), N)]  # one GEMM over the group's weight, for all three
    for i, (a, b) in enumerate(zip(outs, alone)):
        assert a.shape == (M, MS[i]) and (M == 1 or a.stride() == (sum(MS), 1))  # a column slice of the group's output
        assert a.data_ptr() == outs[0].data_ptr() + sum(MS[:i]) * a.element_size()
        _assert_close(a, b(x), x, b, dtype)


@interp_slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,n_tenants", [(1, 1), (16, 1), (3, 2), (34, 2)])  # GEMV, tl.dot, GEMV mixed, tl.dot mixed
def test_one_gemm_group_gives_each_member_what_it_gives_alone(dtype: torch.dtype, M: int, n_tenants: int) -> None:
    _run(dtype, M, n_tenants, "triton")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,n_tenants", [(1, 1), (16, 1), (34, 2)])
def test_one_gemm_group_with_the_torch_ops(dtype: torch.dtype, M: int, n_tenants: int) -> None:
    _run(dtype, M, n_tenants, "torch")


@pytest.mark.parametrize("bias", ["all", "some"])
def test_biases_join_the_one_gemm(bias: str) -> None:
    """Biases as one vector's slices (or some missing: a small concatenated copy) go into the same GEMM."""
    _run(torch.bfloat16, 16, 1, "torch", bias)


def test_the_group_weight_is_the_members_weights_no_second_copy() -> None:
    members, _, group, _, Ws = _build(torch.bfloat16, 1, "torch")
    W, _ = group.whole_weight({j: m for j, m in enumerate(members)})
    es = W.element_size()
    assert W.untyped_storage().nbytes() == sum(MS) * N * es  # the members' storage: one copy of the base
    for j, m in enumerate(members):
        assert m.weight.untyped_storage().data_ptr() == W.untyped_storage().data_ptr()
        assert m.weight.data_ptr() == W.data_ptr() + sum(MS[:j]) * N * es
    state = torch.nn.ModuleList(members).state_dict()
    for j, w in enumerate(Ws):  # each member's weight, the values it had, bytes equal
        t = state[f"{j}.weight"]
        assert t.shape == w.shape and torch.equal(t.view(torch.int16), w.view(torch.int16))


def test_kept_slices_and_recompute() -> None:
    """The first member's call computes the group once; the others get their kept slices; an input
    changed in place, or new row ids, is computed again (never served from stale slices)."""
    members, alone, group, ctx, _ = _build(torch.bfloat16, 1, "torch")
    x = torch.randn(16, N, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).to(DEVICE)
    with CountLinear() as count:
        members[0](x)
        assert set(group._kept) == {1, 2}
        members[1](x), members[2](x)
    assert len(count.shapes) == 1 and group._kept == {}
    x.mul_(2)
    _assert_close(members[2](x), alone[2](x), x, alone[2], torch.bfloat16)


def test_members_not_in_one_tensor_still_serve() -> None:
    """Members with weights of their own (a model moved member by member, a group built by hand):
    a GEMM each into the group's output, the same numbers as the one-GEMM group."""
    members, _, group, ctx, Ws = _build(torch.bfloat16, 1, "torch")
    g2 = DeltaGroup(N, MS, DEVICE)
    g2.deltas = group.deltas
    apart = [DeltaLinear(W.clone(), None, ctx, "torch", g2, i) for i, W in enumerate(Ws)]
    assert g2.whole_weight({j: m for j, m in enumerate(apart)}) == (None, None)
    x = torch.randn(16, N, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16).to(DEVICE)
    with CountLinear() as count:
        a = [m(x) for m in apart]
    assert len(count.shapes) == 3
    for ya, yb in zip(a, [m(x) for m in members]):
        assert torch.equal(ya, yb)


def test_rows_view_refuses_what_is_not_one_tensor() -> None:
    whole = torch.randn(10, 4)
    assert rows_view([whole[:3], whole[3:7], whole[7:]]).data_ptr() == whole.data_ptr()
    assert rows_view([whole[:3], whole[4:7]]) is None  # a gap
    assert rows_view([whole[3:7], whole[:3]]) is None  # out of order
    assert rows_view([whole[:3], whole[3:7].clone()]) is None  # another storage
    assert rows_view([whole[:3, :2], whole[3:7, :2]]) is None  # not whole rows
    ts = concat_rows([torch.ones(2, 4), torch.zeros(3, 4)])
    assert rows_view(ts) is not None and torch.equal(rows_view(ts), torch.cat([torch.ones(2, 4), torch.zeros(3, 4)]))


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    import deltastore
    from deltastore.zoo.tiny import tiny_llama_dir

    from .test_lazy import HIDDEN, finetune_linears

    pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("group_gemm")
    base = tiny_llama_dir(d / "base", hidden=HIDDEN, layers=2, seed=0, random_norms=True)
    store = deltastore.open(d / "home")
    store.add_base("base", base)
    store.add_finetune("ft1", finetune_linears(base, d / "ft1", seed=1), base="base")
    yield store
    store.close()


def test_a_lazy_model_runs_one_gemm_a_group_over_one_copy_of_the_base(tiny_store) -> None:
    """A lazy model's q/k/v and gate/up weights are row slices of one tensor a group (loaded so,
    no second copy); its state_dict still gives every base tensor byte for byte; a forward runs one
    GEMM per group (4 a layer: qkv, o, gate_up, down; and lm_head); logits as the materialized
    fine-tune within test_lazy's bound (2e-2 relative)."""
    from deltastore import lazy

    from .kernel_testlib import rel

    lz = lazy.load(tiny_store, "ft1", device=DEVICE)
    layers = lz.model.layers
    for layer in layers:
        for lins in ([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj], [layer.mlp.gate_proj, layer.mlp.up_proj]):
            assert all(isinstance(m, DeltaLinear) for m in lins) and lins[0].group is lins[1].group
            W = rows_view([m.weight for m in lins])
            assert W is not None and W.untyped_storage().nbytes() == W.numel() * W.element_size()
    state = lz.state_dict()
    for name, t in tiny_store.iter_tensors("base", device=DEVICE):
        s = state[name]
        assert s.shape == t.shape and s.dtype == t.dtype and torch.equal(s.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name
    prompts = torch.tensor([[1, 17, 99, 5, 42, 7], [1, 200, 3, 3, 81, 250]]).to(DEVICE)
    with torch.no_grad(), CountLinear() as count:
        a = lz(input_ids=prompts).logits.float()
    H = layers[0].self_attn.q_proj.in_features
    qkv = sum(m.out_features for m in (layers[0].self_attn.q_proj, layers[0].self_attn.k_proj, layers[0].self_attn.v_proj))
    assert len(count.shapes) == 4 * len(layers) + 1 and count.shapes.count((qkv, H)) == len(layers)
    full = lazy.load(tiny_store, "ft1", device=DEVICE, lazy=False)
    with torch.no_grad():
        b = full(input_ids=prompts).logits.float()
    assert rel(a, b) < 2e-2
