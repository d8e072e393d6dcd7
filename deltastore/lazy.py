"""Models built from store versions: materialized, or lazy (packed deltas beside one shared base).

``load(store, REF, device, lazy=True)`` gives the transformers model the version's config names.
With ``lazy`` (the default) every linear that the version stores as a delta-come, lowrank or bitdelta delta
becomes a :class:`~deltastore.kernels.DeltaLinear`: the base weight (loaded once per base and
device, and shared by every lazy model of that base on that device) plus the delta as stored,
applied at each forward (delta-come by the packed kernels, lowrank by two GEMMs on its factors,
bitdelta from its sign bits by one launch). Everything else (embeddings, norms, tensors stored whole) is
materialized. ``lazy=False`` gives the plain materialized model. Linears of one module that read
the same input (q/k/v, gate/up: :data:`FUSED`) share one DeltaSet, so their deltas cost one shrink
and one expand launch for the group.

``load_many(store, [REF, ...], device)`` gives one model that serves them all at once: each row of
a batch names its fine-tune (``delta_ids``, an index into ``model.deltas.refs``, -1 for the base
alone), passed to ``forward`` or ``generate``; ``model.add_delta(REF)`` / ``model.drop_delta(REF)``
change the set without reloading the base. A fine-tune that also changed whole tensors (a full
fine-tune: every norm, the embedding, an untied lm_head, stored as exact deltas) gets them row by
row too (kernels/slot_params.py: a copy of each such tensor a fine-tune, picked per row); a tensor
of any other kind of module is refused at load time.

On CUDA a lazy model's ``generate`` decodes under a CUDA graph (:mod:`deltastore.graph_decode`:
static KV cache, one graph replay a token, the fine-tune ids in a static device buffer so any mix
of tenants replays the same graph); ``generate(..., cuda_graph=False)`` decodes eagerly.

Everything read from the store is checked here, at load time: a fine-tune of another base (by the
catalog's lineage), a delta whose shape is not its base weight's, a codec without a kernel, a
payload that does not parse: one clear error before any number is computed. Uses only the public
Store API (resolve, manifest, lineage, iter_tensors, tensor, objects.get).
"""

from __future__ import annotations

import json
import logging
import weakref
from typing import Any, Iterator, Protocol, Sequence

import torch
from torch import nn

from . import codec as codecs
from .errors import BadInputError, BaseMismatchError, CorruptObjectError
from .graph_decode import decoder_of
from .kernels import (BitDeltaSigns, DeltaContext, DeltaGroup, DeltaLinear, DeltaSet, KernelError, KernelPreference, LowRankFactors,
                      NotServableError, PackedDeltaCoMe, served_from_encoded)
from .kernels.linear import concat_rows
from .kernels.slot_params import SlotModule, check_elementwise, kind_of
from .manifest import TensorEntry, payload_bound

#: what a linear's delta is served from: packed delta-come tiers, lowrank factors, or bitdelta signs
Served = PackedDeltaCoMe | LowRankFactors | BitDeltaSigns



class StoreAPI(Protocol):
    """The public Store API this module uses, and nothing else (so no import of the store here:
    the store's ``load`` methods import this module)."""

    objects: Any

    def resolve(self, ref: str) -> Any: ...
    def manifest(self, ref_or_oid: str) -> Any: ...
    def lineage(self, ref: str) -> Any: ...
    def tensor(self, ref: str, name: str, *, device: str | torch.device = "cpu") -> torch.Tensor: ...
    def iter_tensors(self, ref: str, *, device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]: ...

log = logging.getLogger(__name__)

#: linears of one module that read the same input: served by one DeltaSet (one shrink and one
#: expand for the group, the issue's "fuse the shrink across q/k/v; gate/up")
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))

# base tensors by (base manifest, tensor name, device): shared by every lazy model of that base
_BASE: "weakref.WeakValueDictionary[tuple[str, str, str], torch.Tensor]" = weakref.WeakValueDictionary()


def _config_file(store: StoreAPI, manifest_oid: str) -> dict[str, Any] | None:
    """The version's config.json (None without one), which must be a JSON object: it comes from
    the store, and ``[]`` or ``"x"`` would fail later as a raw TypeError."""
    man = store.manifest(manifest_oid)
    for f in man.files:
        if f.path == "config.json" and f.kind == "blob" and f.object:
            try:
                cfg = json.loads(store.objects.get(f.object, max_size=f.size))
            except ValueError as e:
                raise CorruptObjectError(f.object, f"config.json is not JSON: {e}") from None
            if not isinstance(cfg, dict):
                raise CorruptObjectError(f.object, f"config.json is not a JSON object (it is a JSON {type(cfg).__name__})")
            return cfg
    return None


def _config(store: StoreAPI, manifest_oid: str, ref: str) -> dict[str, Any]:
    cfg = _config_file(store, manifest_oid)
    if cfg is None:
        raise BadInputError(f"{ref} has no config.json, so no model class to build; use checkout or state_dict")
    return cfg


def _first_line(e: BaseException) -> str:
    """The first line of an error's message (transformers' and torch's run to many lines)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


#: what a stored config.json can make transformers raise while building a model from it: a
#: missing or unknown model_type, a value of the wrong type, a size the tensors do not have
_BUILD_ERRORS: tuple[type[Exception], ...] = (TypeError, ValueError, KeyError, RuntimeError, AttributeError, IndexError)
try:  # transformers 5 validates config fields with huggingface_hub's strict dataclasses (a bare Exception)
    from huggingface_hub.errors import StrictDataclassError
    _BUILD_ERRORS += (StrictDataclassError,)
except ImportError:  # pragma: no cover - older huggingface_hub, or none
    pass


def _model_class(transformers: Any, config: dict[str, Any], ref: str) -> Any:
    """The class ``architectures`` names, or None when it names none, or a name this transformers
    lacks (a custom or renamed class: AutoModelForCausalLM by ``model_type`` then, as before).
    The config comes from the store, so a name transformers has must be a model class: a bare
    ``getattr(transformers, name)(cfg)`` would call whatever the namespace holds (a pipeline, a
    loader, AutoConfig)."""
    archs = config.get("architectures")
    if archs is None or archs == []:
        return None
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise BadInputError(f"{ref}: config.json's architectures must be a list of class names, not {archs!r:.200}")
    try:
        cls = getattr(transformers, archs[0], None)
    except Exception:  # noqa: BLE001 - transformers' lazy module imports on lookup; any failure: no such class
        cls = None
    if cls is None:
        return None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel) and cls is not transformers.PreTrainedModel):
        raise BadInputError(f"{ref}: config.json's architectures names {archs[0]!r:.200}, which is not a model class of "
                            f"transformers {transformers.__version__}")
    return cls


def _build(config: dict[str, Any], state: dict[str, torch.Tensor], device: torch.device, ref: str) -> nn.Module:
    """The config's transformers class, its parameters being the given tensors (no copies, no random init)."""
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BadInputError(f"loading a model needs transformers ({e}); `pip install deltastore[hf]`") from None
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        from transformers.modeling_utils import no_init_weights
    cls = _model_class(transformers, config, ref)
    try:
        cfg = transformers.AutoConfig.for_model(**config)
        with torch.device(device), no_init_weights():
            model = cls(cfg) if cls is not None else transformers.AutoModelForCausalLM.from_config(cfg)
    except _BUILD_ERRORS as e:
        raise BadInputError(f"{ref}: config.json does not make a model: {type(e).__name__}: {_first_line(e)}") from None
    # sizes first: torch's own error lists every mismatch after a first line that names none
    own = model.state_dict()
    wrong = [f"{k} is {list(t.shape)} stored, {list(own[k].shape)} in the model" for k, t in state.items()
             if k in own and own[k].shape != t.shape]
    if wrong:
        raise BadInputError(f"{ref}: the stored tensors do not fit its config.json ({len(wrong)} of another size): {wrong[:3]}")
    try:
        res = model.load_state_dict(state, strict=False, assign=True)
    except _BUILD_ERRORS as e:
        raise BadInputError(f"{ref}: the stored tensors do not load into {type(model).__name__}: {_first_line(e)}") from None
    if res.unexpected_keys:
        raise BadInputError(f"{ref}: tensors the model class {type(model).__name__} does not have: {res.unexpected_keys[:5]}")
    tied = {k for k in res.missing_keys if "lm_head" in k and getattr(cfg, "tie_word_embeddings", False)}
    missing = [k for k in res.missing_keys if k not in tied]
    if missing:
        raise BadInputError(f"{ref}: the version lacks tensors its model class needs: {missing[:5]}")
    if tied:
        model.tie_weights()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _payload(store: StoreAPI, entry: TensorEntry, base_shape: tuple[int, ...], ref: str) -> Served:
    """A delta object, parsed and checked against its base weight's shape."""
    oid, name = entry.object, entry.name
    try:
        enc = codecs.from_bytes(store.objects.get(oid, max_size=payload_bound(entry.nbytes)))
        return served_from_encoded(enc, tuple(base_shape), what=f"{ref}: {name}")  # type: ignore[arg-type]
    except NotServableError as e:
        raise BadInputError(f"{e} (not servable lazily)") from None
    except codecs.CodecError as e:
        raise CorruptObjectError(oid, f"{name}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptObjectError(oid, f"{name}: delta payload does not parse ({e})") from None


def _base_of(store: StoreAPI, ref: str) -> tuple[str, str]:
    """(REF, manifest id) of the version this fine-tune's deltas apply to, by the catalog's lineage."""
    info = store.resolve(ref)
    anc = store.lineage(ref).ancestors
    if not anc:
        raise BadInputError(f"{ref} is a base (it has no base to share); load it with lazy=False")
    base = store.resolve(anc[0])
    man = store.manifest(info.manifest)
    if man.base != base.manifest:
        raise CorruptObjectError(info.manifest, f"the manifest's base is {man.base}, but the catalog's base {base.ref} is {base.manifest}")
    return base.ref, base.manifest


def _siblings(name: str) -> list[str] | None:
    """The names of the tensors that one GEMM of a FUSED group reads with ``name`` (its weight or
    bias among q/k/v or gate/up of one module), in group order; None for any other tensor."""
    head, _, tail = name.rpartition(".")
    parent, _, leaf = head.rpartition(".")
    if tail not in ("weight", "bias"):
        return None
    group = next((g for g in FUSED if leaf in g), None)
    if group is None:
        return None
    return [f"{parent}.{n}.{tail}" if parent else f"{n}.{tail}" for n in group]


def _base_tensors(store: StoreAPI, base_ref: str, base_manifest: str, device: torch.device) -> dict[str, torch.Tensor]:
    """The base's tensors on ``device``, shared by every lazy model of that base there. The weights
    (and biases) of each FUSED group are row slices of one tensor (kernels.concat_rows), so a
    DeltaGroup computes the group's base output in one GEMM: views, no second copy."""
    out: dict[str, torch.Tensor] = {}
    names = [t.name for _, t in store.manifest(base_manifest).tensors()]
    for n in names:
        t = _BASE.get((base_manifest, n, str(device)))
        if t is None:
            break
        out[n] = t
    else:
        return out
    out = {}
    for n, t in store.iter_tensors(base_ref, device=device):
        out[n] = _BASE.get((base_manifest, n, str(device)), t)
        sib = _siblings(n)
        if sib is not None and all(s in out for s in sib):
            ts = [out[s] for s in sib]
            if len({(x.dtype, x.device, x.dim(), tuple(x.shape[1:])) for x in ts}) == 1 and ts[0].dim() in (1, 2):
                out.update(zip(sib, concat_rows(ts)))  # (the loaded tensors are dropped: one copy)
    for n, t in out.items():
        _BASE[(base_manifest, n, str(device))] = t
    return out


#: config.json keys that do not change what a model computes: a fine-tune's may differ from its base's
_SAME_MODEL = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"})
#: keys that change no logits but what ``generate`` takes by default (a chat fine-tune often has its
#: own end token): a difference is served, and said (pass the fine-tune's to ``generate``)
_GENERATE_ONLY = frozenset({"bos_token_id", "eos_token_id", "pad_token_id"})
_NONE = object()


def _config_values(config: dict[str, Any], ref: str) -> dict[str, Any]:
    """A config.json as transformers reads it (defaults filled in), so that a key one file writes
    and the other leaves at its default is no difference."""
    import transformers

    try:
        return transformers.AutoConfig.for_model(**config).to_dict()
    except _BUILD_ERRORS as e:
        raise BadInputError(f"{ref}: config.json does not make a model config: {type(e).__name__}: {_first_line(e)}") from None


class LazyDeltas:
    """The fine-tunes a lazy model serves: ``refs[slot]`` (None for a dropped slot), and the
    DeltaLinear modules they reach. Bound to the model as ``model.deltas``; ``model.add_delta``
    and ``model.drop_delta`` are its methods."""

    def __init__(self, store: StoreAPI, model: nn.Module, base_ref: str, base_manifest: str, device: torch.device,
                 ctx: DeltaContext, preference: KernelPreference | str, multi: bool):
        self.store, self.base_ref, self.base_manifest, self.device = store, base_ref, base_manifest, device
        self.ctx, self.preference, self.multi = ctx, KernelPreference(preference), multi
        self.refs: list[str | None] = []
        self._model = weakref.ref(model)
        self.linears: dict[str, DeltaLinear] = {}
        # one DeltaSet per linear, or per group of linears that read the same input (FUSED)
        self.sets: list[tuple[DeltaSet, list[str]]] = []
        self._base_config: dict[str, Any] | None = None  # as transformers reads it, once (multi only)
        # multi: modules whose whole tensors differ per fine-tune (norms, embedding, lm_head), by path
        self.slot_modules: dict[str, SlotModule] = {}
        #: check_elementwise's answer per norm module (it belongs to the module, not to a fine-tune)
        self._elementwise: "weakref.WeakKeyDictionary[nn.Module, str | None]" = weakref.WeakKeyDictionary()

    def _deltas_of(self, ref: str) -> tuple[dict[str, Served], dict[str, str]]:
        """Check a fine-tune against the loaded base; its packed deltas by linear, and its other
        tensors that differ from the base (name -> how)."""
        info = self.store.resolve(ref)
        base_ref, base_manifest = _base_of(self.store, ref)
        if base_manifest != self.base_manifest:
            raise BaseMismatchError(f"{info.ref} is a fine-tune of {base_ref}, not of the loaded base {self.base_ref}")
        model = self._model()
        base_entries = self.store.manifest(self.base_manifest).tensor_map()
        modules = dict(model.named_modules()) if model is not None else {}
        if self.multi:
            self._same_config(info.ref, info.manifest)
        deltas: dict[str, Served] = {}
        other: dict[str, str] = {}
        for _, e in self.store.manifest(info.manifest).tensors():
            be = base_entries.get(e.name)
            # add_finetune refuses a tensor the base lacks and one of another shape, so only a
            # crafted manifest has them; unchecked, the lazy model would load and then fail in
            # torch at the first forward (or at setattr on a module path the model lacks)
            if be is None and e.source != "delta":
                raise CorruptObjectError(info.manifest, f"tensor {e.name!r:.200}: the base {base_ref} has no such tensor")
            if be is not None and tuple(e.shape) != tuple(be.shape):
                raise CorruptObjectError(info.manifest, f"tensor {e.name!r:.200} is {list(e.shape)}, "
                                                        f"but {list(be.shape)} in the base {base_ref}")
            if e.source == "base":
                continue
            if e.source == "tensor":
                if be is None or be.sha256 != e.sha256:
                    other[e.name] = "stored whole and different from the base"
                continue
            if e.source != "delta" or be is None:
                raise CorruptObjectError(info.manifest, f"tensor {e.name!r}: source {e.source!r} without a base tensor")
            mod = modules.get(e.name.removesuffix(".weight"))
            if not e.name.endswith(".weight") or not isinstance(mod, (nn.Linear, DeltaLinear)):
                other[e.name] = "a delta on a tensor that is not a linear weight"
                continue
            if e.exact:  # a linear stored bit-exact (the lossless codec: an untied lm_head, say) is
                other[e.name] = "an exact delta of a linear"  # materialized, as the tensors stored whole
                continue
            deltas[e.name.removesuffix(".weight")] = _payload(self.store, e, tuple(be.shape), info.ref)
        return deltas, other

    def _same_config(self, ref: str, manifest_oid: str) -> None:
        """Refuse a fine-tune whose config.json computes otherwise than the base's: a model serving
        several fine-tunes is built from the base's config, so one that changed e.g. rope_theta
        (as long-context fine-tunes do) would be served with the base's, with no error. Compared
        as transformers reads them (defaults filled in), leaving out metadata (_SAME_MODEL)."""
        theirs = _config_file(self.store, manifest_oid)
        if theirs is None:
            return  # nothing to compare: its tensors were checked against the base's
        if self._base_config is None:
            self._base_config = _config_values(_config(self.store, self.base_manifest, self.base_ref), self.base_ref)
        mine, theirs = self._base_config, _config_values(theirs, ref)
        keys = sorted(k for k in mine.keys() | theirs.keys() if k not in _SAME_MODEL and mine.get(k, _NONE) != theirs.get(k, _NONE))
        told = [k for k in keys if k in _GENERATE_ONLY]
        if told:
            log.warning("%s: its config.json has other %s than the base %s's: the model serving it generates with "
                        "the base's unless given its own (%s)", ref, ", ".join(told), self.base_ref,
                        ", ".join(f"{k}={theirs.get(k)!r}" for k in told))
        keys = [k for k in keys if k not in _GENERATE_ONLY]
        if keys:
            raise BadInputError(f"{ref}: its config.json differs from the base {self.base_ref}'s in {keys[:5]}"
                                f"{f' and {len(keys) - 5} more' if len(keys) > 5 else ''}; a model serving several fine-tunes "
                                f"computes with the base's config; use load({ref!r}) for this one")

    def add(self, ref: str, checked: tuple[dict[str, Served], dict[str, str]] | None = None) -> int:
        """Serve another fine-tune of the loaded base; returns its id (the ``delta_ids`` value).
        ``checked``: its :meth:`_deltas_of`, with :meth:`check_whole` already passed where this
        model serves several (load_many checks every fine-tune before serving any)."""
        if self.multi is False and self.refs:
            raise BadInputError("this model was loaded for one fine-tune; use load_many to serve several")
        if checked is None:
            checked = self._deltas_of(ref)
            if checked[1] and self.multi:
                self.check_whole(ref, checked[1])
        deltas, other = checked
        model = self._model()
        slot = next((i for i, r in enumerate(self.refs) if r is None), len(self.refs))
        if self.multi:
            try:
                for name in other:  # each row of this fine-tune reads its own copy of these
                    path, _, leaf = name.rpartition(".")
                    self._slot_module(model, path).set(slot, leaf, self.store.tensor(ref, name, device=self.device))
            except BaseException:  # (a tensor that does not decode): nothing of this fine-tune stays behind
                for sm in self.slot_modules.values():
                    sm.drop(slot)
                raise
        for name in deltas:
            if name not in self.linears:
                self._wrap(model, name)
        for ds, names in self.sets:
            ds.add([d if isinstance(d := deltas.get(n), PackedDeltaCoMe) else None for n in names], slot=slot)
        for name, d in deltas.items():
            if isinstance(d, LowRankFactors):
                self.linears[name].lowrank.add(d, slot)
            elif isinstance(d, BitDeltaSigns):
                self.linears[name].bitdelta.add(d, slot)
        if slot == len(self.refs):
            self.refs.append(ref)
        else:
            self.refs[slot] = ref
        self.ctx.n_slots = len(self.refs)
        self._restack()
        return slot

    def check_whole(self, ref: str, other: dict[str, str]) -> None:
        """Refuse (one clear error, before anything is served) a fine-tune whose changed whole
        tensors this model cannot give row by row: a parameter of a module that is not a norm
        applying it elementwise, an ``nn.Embedding`` or an ``nn.Linear`` (kernels/slot_params.py)."""
        model = self._model()
        for name, why in other.items():
            path, _, leaf = name.rpartition(".")
            try:
                mod = model.get_submodule(path)
            except AttributeError:
                raise BadInputError(f"{ref}: it stores {name!r:.200}, which its model class does not have") from None
            inner = mod.inner if isinstance(mod, SlotModule) else mod
            kind = kind_of(inner, leaf)
            reason = None if kind is not None else f"a parameter of a {type(inner).__name__}"
            if kind == "elementwise":
                if inner not in self._elementwise:
                    self._elementwise[inner] = check_elementwise(inner, _norm_params(inner))
                reason = self._elementwise[inner]
            if reason is not None:
                raise BadInputError(f"{ref}: {name} is {why}, {reason}; load_many serves per fine-tune only the linears' "
                                    f"deltas, norms, embeddings and the lm_head; use load({ref!r}) for this one")

    def _slot_module(self, model: nn.Module, path: str) -> SlotModule:
        """The SlotModule at ``path`` (the module swapped for one on first use; a tied lm_head is
        wrapped with the embedding, reading its tables)."""
        sm = self.slot_modules.get(path)
        if sm is not None:
            return sm
        parent, _, leaf = path.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        inner = getattr(owner, leaf)
        kind = kind_of(inner, "weight")
        names = _norm_params(inner) if kind == "elementwise" else ("weight",)
        out = model.get_output_embeddings() if kind == "embedding" and hasattr(model, "get_output_embeddings") else None
        tied = out is not None and isinstance(out, nn.Linear) and out.weight is inner.weight
        sm = self.slot_modules[path] = SlotModule(inner, self.ctx, kind, names)
        setattr(owner, leaf, sm)
        if tied:
            opath = next(n for n, m in model.named_modules() if m is out)
            oparent, _, oleaf = opath.rpartition(".")
            oowner = model.get_submodule(oparent) if oparent else model
            self.slot_modules[opath] = SlotModule(out, self.ctx, "linear", ("weight",), source=sm)
            setattr(oowner, oleaf, self.slot_modules[opath])
        return sm

    def _restack(self) -> None:
        for sm in self.slot_modules.values():
            sm.rebuild(len(self.refs))

    def _wrap(self, model: nn.Module, name: str) -> None:
        """Swap the linear ``name`` for a DeltaLinear; with the other linears of its FUSED group
        (same parent, same input width, same device) when there are, sharing one DeltaSet."""
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        members = next((g for g in FUSED if leaf in g), (leaf,))
        olds = [getattr(owner, n, None) for n in members]
        if len(members) > 1 and not (all(isinstance(o, nn.Linear) for o in olds) and len({o.in_features for o in olds}) == 1
                                     and len({o.weight.device for o in olds}) == 1):
            members, olds = (leaf,), [owner.get_submodule(leaf)]
        full = [f"{parent}.{n}" if parent else n for n in members]
        group = DeltaGroup(olds[0].in_features, [o.out_features for o in olds], olds[0].weight.device) if len(members) > 1 else None
        for i, (n, fn, old) in enumerate(zip(members, full, olds)):
            lin = DeltaLinear.from_linear(old, self.ctx, self.preference, group, i)
            setattr(owner, n, lin)
            self.linears[fn] = lin
        self.sets.append((group.deltas if group is not None else self.linears[full[0]].deltas, full))

    def drop(self, ref: str) -> None:
        """Stop serving a fine-tune; rows may no longer name its id."""
        v = self.store.resolve(ref).ref
        for slot, r in enumerate(self.refs):
            if r is not None and self.store.resolve(r).ref == v:
                for ds, _ in self.sets:
                    if slot < ds.n_slots and ds.slot(slot) is not None:  # (a set made after this slot has none)
                        ds.drop(slot)
                for lin in self.linears.values():
                    lin.lowrank.drop(slot)
                    lin.bitdelta.drop(slot)
                for sm in self.slot_modules.values():
                    sm.drop(slot)
                self.refs[slot] = None
                self._restack()
                return
        raise BadInputError(f"{ref} is not served by this model (serving: {[r for r in self.refs if r]})")

    def set_ids(self, ids: Any) -> None:
        t = torch.as_tensor(ids, dtype=torch.int64).reshape(-1).cpu()
        dead = [i for i in set(t.tolist()) if i >= 0 and (i >= len(self.refs) or self.refs[i] is None)]
        if dead:
            raise BadInputError(f"delta ids {sorted(dead)} name no served fine-tune (ids: {dict(enumerate(self.refs))}; -1 = base)")
        self.ctx.set(t)


def _attach(model: nn.Module, mgr: LazyDeltas) -> None:
    """``delta_ids``/``adapter_ids`` on forward and generate, ``add_delta``/``drop_delta`` on the model."""
    state = {"set_by_forward": False}

    def pre(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        ids = kwargs.pop("delta_ids", None)
        alt = kwargs.pop("adapter_ids", None)
        ids = alt if ids is None else ids
        if ids is not None:
            mgr.set_ids(ids)
            state["set_by_forward"] = True
        elif mgr.multi and not mgr.ctx.has_ids:
            raise BadInputError(f"this model serves {len([r for r in mgr.refs if r])} fine-tunes: pass delta_ids "
                                f"(one per sequence, an index into model.deltas.refs; -1 = the base alone) to forward or generate")
        return args, kwargs

    def post(mod: nn.Module, args: tuple, out: Any) -> None:
        if state["set_by_forward"]:
            mgr.ctx.set(None)
            state["set_by_forward"] = False

    model.register_forward_pre_hook(pre, with_kwargs=True)
    model.register_forward_hook(post)
    orig = model.generate

    def generate(*args: Any, delta_ids: Any = None, adapter_ids: Any = None, cuda_graph: bool | None = None, **kwargs: Any) -> Any:
        """transformers' generate; ``delta_ids`` name each sequence's fine-tune. On CUDA each
        decoding step is replayed from a CUDA graph (static KV cache; graph_decode), the same
        tokens as eager decoding with that cache; ``cuda_graph=False`` decodes eagerly."""
        ids = adapter_ids if delta_ids is None else delta_ids
        if ids is not None:
            mgr.set_ids(ids)
        try:
            return decoder_of(model).generate(orig, *args, cuda_graph=cuda_graph, **kwargs)
        finally:
            if ids is not None:
                mgr.ctx.set(None)

    model.deltas = mgr
    model.generate = generate
    model.add_delta = mgr.add
    model.drop_delta = mgr.drop


def load(store: StoreAPI, ref: str, *, device: str | torch.device = "cpu", lazy: bool = True,
         preference: KernelPreference | str = KernelPreference.AUTO) -> nn.Module:
    """The model of one version on ``device``; lazy: delta-come, lowrank and bitdelta linears as DeltaLinear modules."""
    device = torch.device(device)
    info = store.resolve(ref)
    cfg = _config(store, info.manifest, info.ref)
    if not lazy or info.base is None:
        return _build(cfg, dict(store.iter_tensors(info.ref, device=device)), device, info.ref)
    base_ref, base_manifest = _base_of(store, info.ref)
    state = _base_tensors(store, base_ref, base_manifest, device)
    model = _build(cfg, dict(state), device, info.ref)
    model._deltastore_base = state  # keeps the shared base tensors (and their cache entries) alive with the model
    mgr = LazyDeltas(store, model, base_ref, base_manifest, device, DeltaContext(0, default_id=0), preference, multi=False)
    checked = mgr._deltas_of(info.ref)
    for name in checked[1]:  # tensors the fine-tune changed outside the delta-come linears: materialized
        _replace(model, name, store.tensor(info.ref, name, device=device), info.ref)
    if checked[1] and getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    mgr.add(info.ref, checked)
    _attach(model, mgr)
    return model


def _replace(model: nn.Module, name: str, t: torch.Tensor, ref: str) -> None:
    """Set the model's parameter ``name`` to ``t``. The name and the shape come from the store: a
    name the model class lacks would be a raw AttributeError here, a shape it does not have one at
    the first forward; both are refused."""
    try:
        old = model.get_parameter(name)
    except AttributeError:
        raise BadInputError(f"{ref}: it stores {name!r:.200}, which its model class {type(model).__name__} does not have") from None
    if old.shape != t.shape:
        raise BadInputError(f"{ref}: {name} is {list(t.shape)} stored, {list(old.shape)} in its model class {type(model).__name__}")
    parent, _, leaf = name.rpartition(".")
    mod = model.get_submodule(parent) if parent else model
    setattr(mod, leaf, nn.Parameter(t, requires_grad=False))


def _norm_params(module: nn.Module) -> tuple[str, ...]:
    """The 1-D parameters a norm applies elementwise (weight, and bias where it has one)."""
    return tuple(n for n in ("weight", "bias") if isinstance(getattr(module, n, None), torch.Tensor))


def load_many(store: StoreAPI, refs: Sequence[str], *, device: str | torch.device = "cpu",
              preference: KernelPreference | str = KernelPreference.AUTO) -> nn.Module:
    """One model that serves every fine-tune in ``refs`` (all of one base), row by row."""
    if not refs:
        raise BadInputError("load_many needs at least one REF")
    device = torch.device(device)
    first = store.resolve(refs[0])
    base_ref, base_manifest = _base_of(store, first.ref)
    cfg = _config(store, base_manifest, base_ref)
    state = _base_tensors(store, base_ref, base_manifest, device)
    model = _build(cfg, dict(state), device, base_ref)
    model._deltastore_base = state
    mgr = LazyDeltas(store, model, base_ref, base_manifest, device, DeltaContext(0, default_id=None), preference, multi=True)
    checked = [mgr._deltas_of(r) for r in refs]  # check every one before serving any
    for r, c in zip(refs, checked):
        if c[1]:
            mgr.check_whole(r, c[1])
    for r, c in zip(refs, checked):
        mgr.add(r, c)
    _attach(model, mgr)
    return model


__all__ = ["KernelError", "LazyDeltas", "load", "load_many"]
