"""Per-fine-tune whole tensors in a multi-tenant model: norms, embeddings, an lm_head, row by row.

A full fine-tune changes more than its linears: every norm's weight, the embedding and (untied)
the lm_head move too, and the store keeps those as exact deltas. A model serving several
fine-tunes at once (``lazy.load_many``) gives each row its own fine-tune's tensors; here a module
holding such a tensor is wrapped in :class:`SlotModule`, which keeps each fine-tune's replacement
stacked on the device (one row a fine-tune that changed it) beside the base's own tensor, and at
each forward picks every row's by its fine-tune id (the model's
:class:`~.linear.DeltaContext`, as DeltaLinear does; -1, or a fine-tune that left it as the base
has it, reads the base; an embedding's or a weight matrix's base rows read the module's own
tensor, not a copy). Three kinds:

- ``elementwise`` (a norm: its weight, and bias, applied to each row's features elementwise, as
  transformers' RMSNorm modules do): the module's own forward, called with the rows' gathered
  parameters in place of its own (``torch.func.functional_call``); :func:`check_elementwise`
  proves at load time that this module computes per row what it computes alone, else a clear error;
- ``embedding`` (``nn.Embedding``): the base's lookup, and one gather over the stacked tables by
  (fine-tune, token) for the rows of fine-tunes that changed it;
- ``linear`` (an ``nn.Linear`` stored exactly: an untied lm_head; or a tied lm_head reading the
  embedding's stack): the base's GEMM and one a stacked weight, each row's kept by a mask (the
  number of stacked weights is fixed between add/drop, so a CUDA graph captures it).

Memory: a changed tensor costs its full size a fine-tune (for a 7B model's embedding, 262 MB in
bf16, against ~0.8 GB for its linears' delta at 1/16); the stacks are buffers, so a captured
decoding graph sees them change (``graph_decode`` compares buffer addresses) and is captured again.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .errors import KernelError

KINDS = ("elementwise", "embedding", "linear")


class SlotModule(nn.Module):
    """``inner`` with parameters that differ per fine-tune (see the module docstring)."""

    def __init__(self, inner: nn.Module, ctx, kind: str, names: tuple[str, ...], source: "SlotModule | None" = None):  # noqa: ANN001
        super().__init__()
        if kind not in KINDS:
            raise KernelError(f"unknown slot-module kind {kind!r}")
        self.inner, self.ctx, self.kind, self.names = inner, ctx, kind, tuple(names)
        self._source = source  # a tied lm_head reads its embedding's tables
        self._tables: dict[str, dict[int, torch.Tensor]] = {n: {} for n in self.names}
        self.rebuild(0)

    def __getattr__(self, name: str):  # noqa: ANN204 - the wrapped module's attributes (weight, num_embeddings, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner":
                raise
            return getattr(self.inner, name)

    def base(self, name: str) -> torch.Tensor:
        return getattr(self.inner, name).detach()

    def set(self, slot: int, name: str, t: torch.Tensor) -> None:
        """Fine-tune ``slot``'s ``name`` (its shape and dtype checked against the base's)."""
        b = self.base(name)
        if t.shape != b.shape:
            raise KernelError(f"{name} is {list(t.shape)}, the base's {list(b.shape)}")
        self._tables[name][slot] = t.to(device=b.device, dtype=b.dtype)

    def drop(self, slot: int) -> None:
        for tab in self._tables.values():
            tab.pop(slot, None)

    def rebuild(self, n_slots: int) -> None:
        """Stack the tables for ids 0..n_slots-1 (after an add or a drop): ``index[id + 1]`` is 0 for
        the base's tensor, j >= 1 for the j-th fine-tune that changed it (stack row j of a norm's
        stack, which starts with the base's row; row j - 1 of the others, which hold no base row).
        A module reading another's tables (a tied lm_head) has nothing of its own to build: it
        reads that module's index and stacks."""
        if self._source is not None:
            return
        slots = sorted({s for tab in self._tables.values() for s in tab if s < n_slots})
        index = torch.zeros(n_slots + 1, dtype=torch.int64)
        for j, s in enumerate(slots):
            index[s + 1] = j + 1
        self.register_buffer("index", index.to(self.base(self.names[0]).device), persistent=False)
        for n in self.names:
            b = self.base(n)
            for s in slots:  # (a model moved since: its tables follow its base)
                if s in self._tables[n]:
                    self._tables[n][s] = self._tables[n][s].to(device=b.device, dtype=b.dtype)
            own = [self._tables[n].get(s, b) for s in slots]
            if self.kind == "elementwise":  # (small: the base's row in the stack keeps one gather)
                stack = torch.stack([b] + own)
            else:  # an embedding or a weight matrix: the base's rows read the module's own, not a copy
                stack = torch.stack(own) if own else b.new_empty((0, *b.shape))
            self.register_buffer(f"stack_{n}", stack, persistent=False)

    def _owner(self) -> "SlotModule":
        """The module whose index and stacks this one reads: its source, or itself."""
        return self._source if self._source is not None else self

    def _stack(self, name: str) -> torch.Tensor:
        return getattr(self._owner(), f"stack_{name}")

    def _rows(self, lead: torch.Size, device: torch.device) -> torch.Tensor:
        """The index of each of ``lead.numel()`` rows' tensor (its fine-tune's, 0 for the base)."""
        ids = self.ctx.row_ids(lead.numel(), device)
        return self._owner().index[ids + 1]

    def forward(self, x: torch.Tensor, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        if self.kind == "embedding":
            y = F.embedding(x, self.inner.weight)
            stack = self._stack("weight")
            if stack.shape[0]:
                rows = self._rows(x.shape, x.device).view(x.shape)
                own = F.embedding((rows - 1).clamp(min=0) * stack.shape[1] + x, stack.reshape(-1, stack.shape[-1]))
                y = torch.where((rows > 0).unsqueeze(-1), own, y)
            return y
        lead = x.shape[:-1]
        rows = self._rows(lead, x.device)
        if self.kind == "elementwise":
            params = {n: self._stack(n)[rows].view(*lead, *self._stack(n).shape[1:]) for n in self.names}
            return torch.func.functional_call(self.inner, params, (x, *args), kwargs)
        stack = self._stack("weight")
        bias = getattr(self.inner, "bias", None)
        y = F.linear(x, self.inner.weight, bias)
        for j in range(stack.shape[0]):  # one GEMM a fine-tune's weight; each row keeps its own
            y = torch.where((rows == j + 1).view(*lead, 1), F.linear(x, stack[j], bias), y)
        return y


def kind_of(module: nn.Module, name: str) -> str | None:
    """Which kind serves ``module``'s parameter ``name`` per fine-tune, or None (refused)."""
    if type(module) is nn.Embedding:
        return "embedding" if name == "weight" and module.max_norm is None else None
    if isinstance(module, nn.Linear):
        return "linear" if name == "weight" else None
    p = getattr(module, name, None)
    if isinstance(p, torch.Tensor) and p.dim() == 1 and not list(module.children()):
        return "elementwise"
    return None


def check_elementwise(module: nn.Module, names: tuple[str, ...]) -> str | None:
    """None if ``module`` run with per-row parameters gives each row what it gives alone (on two
    rows of random input, the base's parameters and others); else why not."""
    try:
        p0 = {n: getattr(module, n).detach() for n in names}
        width = next(iter(p0.values())).shape[0]
        g = torch.Generator().manual_seed(0)
        dev, dt = next(iter(p0.values())).device, next(iter(p0.values())).dtype
        x = torch.randn(2, 3, width, generator=g).to(device=dev, dtype=dt)
        p1 = {n: (v.float() + torch.randn(v.shape, generator=g).to(dev)).to(dt) for n, v in p0.items()}
        with torch.no_grad():
            alone = torch.cat([torch.func.functional_call(module, p, (x[i : i + 1],)) for i, p in enumerate((p0, p1))])
            rows = {n: torch.stack([p0[n], p1[n]]).view(2, 1, width).expand(2, 3, width) for n in names}
            both = torch.func.functional_call(module, rows, (x,))
        if both.shape != alone.shape or not torch.equal(both, alone):
            return f"{type(module).__name__} does not apply {', '.join(names)} elementwise"
    except Exception as e:  # noqa: BLE001 - any failure means: not servable this way
        return f"{type(module).__name__} cannot take {', '.join(names)} per row ({type(e).__name__})"
    return None
