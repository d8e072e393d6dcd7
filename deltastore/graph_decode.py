"""``generate`` with each decoding step replayed from a CUDA graph (lazy models and plain ones).

Why: eager decoding of a lazy model is bound by the host. A 7B-shaped model runs 224
DeltaLinear modules a token, each a cuBLAS GEMM and Triton launches issued from Python (~0.3 ms of
host time a linear), while the GPU work is a few ms (benchmarks/results/generate_h200.md). The
kernels' grids depend only on the batch size and the number of loaded fine-tunes, and their row
plan is computed on the device from the per-row fine-tune ids, so one decoding step can be
captured once and replayed: one launch of a graph per token, no per-token Python in the model.

How, inside transformers' own ``generate`` (logits processors, stopping, streamers unchanged):
- the KV cache is a transformers ``StaticCache`` owned here and reused by later calls of the same
  batch size and length bucket (reset, not reallocated: the graph keeps its addresses);
- transformers already routes decoding steps with a static cache through
  ``model.get_compiled_call(...)`` (its torch.compile hook, the same in 5.17 and 5.24) and builds
  the 4-D attention mask outside the model for such caches; here that hook returns
  :meth:`GraphDecoder._step`, which copies the step's tensors into static buffers and replays;
- the first step of a new shape runs eagerly (it compiles the Triton kernels and builds their
  tables), the second is captured and replayed, later ones (and later ``generate`` calls of the
  same shape) only replay;
- the fine-tune ids are a static device buffer (:meth:`DeltaContext.static_ids`): a batch that
  mixes tenants differently replays the same graph;
- a graph is dropped when the model's weights move or a fine-tune is added or dropped (the
  identity of every DeltaSet's tables and the addresses of the parameters are compared).

Not graphed (``generate`` falls back to eager decoding): beam search and assisted decoding (they
reorder or crop the cache), a cache passed by the caller, ``inputs_embeds`` without ``input_ids``,
models whose DeltaLinear modules do not share one context. torch.compile(mode="reduce-overhead")
is not used: DeltaLinear's forward keeps Python-side caches (row plans, a group's kept slices)
that Dynamo would break the graph on, and its compile time is minutes for a 7B model.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import weakref
from typing import Any, Callable

import torch
from torch import nn

from .errors import BadInputError
from .kernels import DeltaContext, DeltaLinear
from .kernels.slot_params import SlotModule

#: the KV cache length is rounded up to a multiple of this, so prompts and lengths that differ a
#: little share one cache and one graph
BUCKET = 64
#: generate() options under which the cache is reordered, cropped or supplied: decoded eagerly
_EAGER_OPTIONS = ("assistant_model", "prompt_lookup_num_tokens", "past_key_values", "cache", "cache_implementation",
                  "prefill_chunk_size")


class _Graph:
    """One captured decoding step: its static input tensors, the graph, and its output."""

    def __init__(self, key: tuple, static: dict[str, Any], graph: torch.cuda.CUDAGraph | None, out: Any):
        self.key, self.static, self.graph, self.out = key, static, graph, out

    def load(self, kw: dict[str, Any]) -> None:
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                self.static[k].copy_(v)


class GraphDecoder:
    """CUDA-graph decoding for one transformers causal LM (see the module docstring).

    The KV cache is kept for the next call of the same shape: a cache that ``generate`` returns
    (``return_dict_in_generate``) is reset by the next call. ``capture=False`` runs the very same path (static cache, static buffers, device-side row
    plans) with every step eager instead of replayed: the reference the graph is tested against,
    and the part of the path that a machine without a GPU can test.
    """

    def __init__(self, model: nn.Module, *, capture: bool = True, bucket: int = BUCKET):
        self._model = weakref.ref(model)  # the model keeps its decoder (decoder_of): no cycle back to it
        self.capture = capture
        self.bucket = int(bucket)
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.2x : 5.17
        self.stats = {"replays": 0, "captures": 0, "static_steps": 0, "eager_steps": 0, "eager_generates": 0}
        self._cache: Any = None
        self._cache_key: tuple | None = None
        self._ids: torch.Tensor | None = None
        self._graph: _Graph | None = None
        self._warm: tuple | None = None
        self._fp: tuple = ()
        self._fp_refs: list[torch.Tensor] = []

    @property
    def model(self) -> nn.Module:
        m = self._model()
        if m is None:
            raise BadInputError("this GraphDecoder's model is gone")
        return m

    # -- what the model holds -----------------------------------------------------------------------
    def _context(self) -> DeltaContext | None | bool:
        """The DeltaContext every DeltaLinear (and per-row whole tensor, kernels/slot_params.py)
        shares; None: no such module; False: several."""
        ctxs = {id(m.ctx): m.ctx for m in self.model.modules() if isinstance(m, (DeltaLinear, SlotModule))}
        if len(ctxs) > 1:
            return False
        return next(iter(ctxs.values()), None)

    def _fingerprint(self, ctx: DeltaContext | None) -> tuple[tuple, list[torch.Tensor]]:
        """What a captured graph depends on beyond its inputs: parameter and buffer addresses, the
        DeltaSets and the identity of their (rebuilt on every add/drop/move) tables, and of each
        linear's lowrank tables."""
        lins = [m for m in self.model.modules() if isinstance(m, DeltaLinear)]
        sets = list({id(m.deltas): m.deltas for m in lins}.values())
        refs = []
        for ds in sets:
            if ds.n_slots:
                ds.build()
                refs.append(ds.tiers)
        refs += [m.lowrank.tables()[0] for m in lins if len(m.lowrank)]
        ptrs = tuple(t.data_ptr() for t in list(self.model.parameters()) + list(self.model.buffers()))
        return (ptrs, tuple(id(ds) for ds in sets), tuple(id(t) for t in refs), ctx.n_slots if ctx else 0), refs

    def why_not(self, args: tuple, kwargs: dict[str, Any]) -> str | None:
        """Why this call cannot be decoded under a graph (None: it can)."""
        dev = next(self.model.parameters()).device
        if self.capture and dev.type != "cuda":
            return f"the model is on {dev}, CUDA graphs need a CUDA device"
        ids = args[0] if args else kwargs.get("input_ids")
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            return "input_ids (batch, length) are needed"
        for k in _EAGER_OPTIONS:
            if kwargs.get(k) is not None:
                return f"generate option {k!r} is decoded eagerly"
        gc = kwargs.get("generation_config") or self.model.generation_config
        if int(kwargs.get("num_beams") or getattr(gc, "num_beams", 1) or 1) > 1:
            return "beam search reorders the cache: decoded eagerly"
        if getattr(gc, "cache_implementation", None) is not None:
            return f"the generation config asks for cache_implementation={gc.cache_implementation!r}"
        if kwargs.get("use_cache", getattr(gc, "use_cache", True)) is False:
            return "use_cache=False decodes without a cache"
        if self._context() is False:
            return "the model's DeltaLinear modules do not share one DeltaContext"
        return None

    # -- generate -------------------------------------------------------------------------------------
    def generate(self, generate_fn: Callable[..., Any], *args: Any, cuda_graph: bool | None = None, **kwargs: Any) -> Any:
        """``generate_fn(*args, **kwargs)`` (transformers' generate of this model) with graph-replayed
        decoding steps. ``cuda_graph``: None = where possible, False = eager, True = or an error."""
        if cuda_graph is False:
            self.stats["eager_generates"] += 1
            return generate_fn(*args, **kwargs)
        why = self.why_not(args, kwargs)
        if why is not None:
            if cuda_graph:
                raise BadInputError(f"generate(cuda_graph=True): {why}; pass cuda_graph=False")
            self.stats["eager_generates"] += 1
            return generate_fn(*args, **kwargs)
        model = self.model
        input_ids = args[0] if args else kwargs["input_ids"]
        B, T = (int(s) for s in input_ids.shape)
        gc = kwargs.get("generation_config") or model.generation_config
        new = kwargs.get("max_new_tokens", getattr(gc, "max_new_tokens", None))
        total = T + int(new) if new is not None else int(kwargs.get("max_length") or gc.max_length)
        length = -(-max(total, T + 1) // self.bucket) * self.bucket
        ctx = self._context()
        fp, refs = self._fingerprint(ctx or None)
        if fp != self._fp:  # weights moved or fine-tunes changed since the graph was captured
            self._graph, self._warm = None, None
            self._fp, self._fp_refs = fp, refs
        cache = self._static_cache(B, length, input_ids.device)
        if ctx:
            self._ids.copy_(ctx.ids_for(B, input_ids.device))  # the graph reads the ids from here
        hooks = {"get_compiled_call": lambda *a, **k: self._step, "_valid_auto_compile_criteria": lambda *a, **k: True}
        for name, fn in hooks.items():
            object.__setattr__(model, name, fn)  # instance attributes shadow transformers' methods
        try:
            return generate_fn(*args, **{**kwargs, self.cache_arg: cache})
        finally:
            for name in hooks:
                model.__dict__.pop(name, None)

    def _static_cache(self, batch: int, length: int, device: torch.device) -> Any:
        key = (batch, length, str(device))
        if self._cache_key == key:
            self._cache.reset()  # in place: the captured graph keeps reading the same tensors
            return self._cache
        from transformers import StaticCache

        self.release()
        self._cache = StaticCache(config=self.model.config, max_cache_len=length)
        self._cache_key = key
        self._ids = torch.zeros(batch, dtype=torch.int64, device=device)
        return self._cache

    def release(self) -> None:
        """Drop the graph, its memory pool and the KV cache (the next generate makes new ones)."""
        self._graph, self._warm, self._cache, self._cache_key, self._ids = None, None, None, None, None

    # -- one decoding step ----------------------------------------------------------------------------
    def _key(self, kw: dict[str, Any]) -> tuple:
        parts = []
        for k in sorted(kw):
            v = kw[k]
            if isinstance(v, torch.Tensor):
                parts.append((k, tuple(v.shape), v.dtype, str(v.device)))
            elif k == self.cache_arg:
                parts.append((k, id(v)))
            else:
                parts.append((k, v if isinstance(v, (int, float, bool, str, type(None))) else id(v)))
        return tuple(parts) + self._fp

    def _step(self, **kw: Any) -> Any:
        """transformers' decoding-step forward: replay the captured step (capturing it on the
        second step of a new shape), or run it eagerly where it cannot be replayed."""
        mask = kw.get("attention_mask")
        if kw.get(self.cache_arg) is not self._cache or not (isinstance(mask, torch.Tensor) and mask.ndim == 4):
            self.stats["eager_steps"] += 1  # no static 4-D mask (a model that builds it inside): eager
            return self.model(**kw)
        key = self._key(kw)
        g = self._graph
        if g is None or g.key != key:
            if self._warm != key:
                self._warm = key  # first step of this shape: eager (compiles kernels, builds tables)
                self.stats["eager_steps"] += 1
                # with the ids read from the static buffer, as the capture will: the same row plan (no
                # host hints), so the same kernels and tables; with the host's ids a batch of one
                # fine-tune took another path and the capture had to build tables (a host copy: an error)
                with self._ids_ctx(self._context()):
                    return self.model(**kw)
            g = self._graph = None  # the old graph's memory pool goes before the new capture
            # what the graph will read is what the tables are now: an eager forward since the generate
            # began may have rebuilt some (the tensor-core kernels add their planes on first use), and
            # a fingerprint of before would drop this graph at the next generate for nothing
            fp, refs = self._fingerprint(self._context() or None)
            if fp != self._fp:
                self._fp, self._fp_refs = fp, refs
                key = self._warm = self._key(kw)
            g = self._graph = self._record(kw, key)
        else:
            g.load(kw)
        return self._replay(g)

    def _record(self, kw: dict[str, Any], key: tuple) -> _Graph:
        static = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        ctx = self._context()
        if not self.capture:
            return _Graph(key, static, None, None)
        graph = torch.cuda.CUDAGraph()
        with self._ids_ctx(ctx):
            with torch.cuda.graph(graph):
                out = self.model(**static)
        self.stats["captures"] += 1
        return _Graph(key, static, graph, out)

    def _ids_ctx(self, ctx: DeltaContext | None | bool) -> contextlib.AbstractContextManager:
        return ctx.static_ids(self._ids) if ctx else contextlib.nullcontext()

    def _replay(self, g: _Graph) -> Any:
        if g.graph is None:  # capture=False: the same static inputs, run eagerly
            with self._ids_ctx(self._context()):
                out = self.model(**g.static)
            self.stats["static_steps"] += 1
            return out
        g.graph.replay()
        self.stats["replays"] += 1
        return copy.copy(g.out)  # generate may set fields of what it gets; the captured output stays whole


def decoder_of(model: nn.Module, *, capture: bool = True) -> GraphDecoder:
    """The model's GraphDecoder (made on first use and kept on the model)."""
    attr = "_deltastore_graph_decoder" if capture else "_deltastore_static_decoder"
    dec = model.__dict__.get(attr)
    if dec is None:
        dec = GraphDecoder(model, capture=capture)
        object.__setattr__(model, attr, dec)
    return dec


def generate(model: nn.Module, *args: Any, cuda_graph: bool | None = None, **kwargs: Any) -> Any:
    """``model.generate(*args, **kwargs)`` with CUDA-graph decoding (any transformers causal LM:
    the benchmarks time plain models this way too). ``cuda_graph`` as :meth:`GraphDecoder.generate`."""
    return decoder_of(model).generate(model.generate, *args, cuda_graph=cuda_graph, **kwargs)


__all__ = ["BUCKET", "GraphDecoder", "decoder_of", "generate"]
