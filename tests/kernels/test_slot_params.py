"""Whole tensors per fine-tune, row by row (``kernels.slot_params``): each kind gives every row what the
module gives with that row's fine-tune's tensor alone, bit for bit (the same ops on the same numbers:
a gather, the module's own forward, one GEMM per stacked weight); modules that do not apply a
parameter elementwise are told apart at load time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deltastore.kernels import DeltaContext
from deltastore.kernels.slot_params import SlotModule, check_elementwise, kind_of

transformers = pytest.importorskip("transformers")
from transformers.models.llama.modeling_llama import LlamaRMSNorm  # noqa: E402

G = torch.Generator().manual_seed(0)


def _ctx(ids: list[int], n_slots: int) -> DeltaContext:
    ctx = DeltaContext(n_slots, default_id=None)
    ctx.set(torch.tensor(ids))
    return ctx


def _alone(module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.func.functional_call(module, params, (x,))


def test_norm_rows_take_their_fine_tunes_weight() -> None:
    norm = LlamaRMSNorm(16).to(torch.bfloat16)
    norm.weight.data = torch.randn(16, generator=G).to(torch.bfloat16)
    ws = [torch.randn(16, generator=G).to(torch.bfloat16) for _ in range(2)]
    ids = [1, -1, 0, 2]  # slot 2 left the weight as the base has it
    ctx = _ctx(ids, 3)
    sm = SlotModule(norm, ctx, "elementwise", ("weight",))
    for slot, w in enumerate(ws):
        sm.set(slot, "weight", w)
    sm.rebuild(3)
    x = torch.randn(4, 5, 16, generator=G).to(torch.bfloat16)
    y = sm(x)
    for r, i in enumerate(ids):
        w = ws[i] if i in (0, 1) else norm.weight.detach()
        assert torch.equal(y[r : r + 1], _alone(norm, {"weight": w}, x[r : r + 1])), (r, i)


def test_embedding_and_tied_head_rows() -> None:
    emb = nn.Embedding(11, 8).to(torch.bfloat16)
    head = nn.Linear(8, 11, bias=False).to(torch.bfloat16)
    head.weight = emb.weight  # tied
    tables = [torch.randn(11, 8, generator=G).to(torch.bfloat16) for _ in range(2)]
    ids = [0, -1, 1]
    ctx = _ctx(ids, 2)
    se = SlotModule(emb, ctx, "embedding", ("weight",))
    sh = SlotModule(head, ctx, "linear", ("weight",), source=se)
    for slot, t in enumerate(tables):
        se.set(slot, "weight", t)
    se.rebuild(2)
    sh.rebuild(2)
    tok = torch.randint(0, 11, (3, 4), generator=G)
    e = se(tok)
    h = torch.randn(3, 4, 8, generator=G).to(torch.bfloat16)
    logits = sh(h)
    for r, i in enumerate(ids):
        W = tables[i] if i >= 0 else emb.weight.detach()
        assert torch.equal(e[r], nn.functional.embedding(tok[r], W)), (r, i)
        assert torch.equal(logits[r], nn.functional.linear(h[r], W)), (r, i)
    assert se.weight is emb.weight and se.num_embeddings == 11 and sh.in_features == 8  # the module's own attributes, as before
    se.drop(0)
    se.rebuild(2)
    sh.rebuild(2)
    assert torch.equal(sh(h)[0], nn.functional.linear(h[0], emb.weight.detach()))  # dropped: the base again


def test_what_is_not_elementwise_is_told_apart() -> None:
    assert check_elementwise(LlamaRMSNorm(8), ("weight",)) is None
    why = check_elementwise(nn.LayerNorm(8), ("weight", "bias"))  # F.layer_norm takes only the weight's own shape
    assert why is not None and "LayerNorm" in why
    assert kind_of(nn.Conv1d(2, 2, 3), "weight") is None
    assert kind_of(nn.Linear(4, 4), "bias") is None  # a changed bias: refused, not served wrong
    assert kind_of(nn.Embedding(4, 4, max_norm=1.0), "weight") is None


def test_a_table_of_another_shape_is_refused() -> None:
    from deltastore.kernels import KernelError

    sm = SlotModule(LlamaRMSNorm(8), _ctx([0], 1), "elementwise", ("weight",))
    with pytest.raises(KernelError, match="base's"):
        sm.set(0, "weight", torch.ones(9))
