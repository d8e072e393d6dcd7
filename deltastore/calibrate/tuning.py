"""Calibration-driven codec tuning: a pre-pass that runs before the streaming encode of a fine-tune.

Two codecs have a knob that CODECS.md sets from calibration text rather than from one tensor:

``bitdelta`` — scale distillation. The compressed model is the base with every linear the codec
applies to replaced by ``round(B_i + a_i * sign(D_i))`` (``D_i = F_i - B_i``; ``round`` to the
fine-tune's dtype, as checkout's ``reconstruct`` rounds it), and every other tensor (embeddings,
lm_head, norms, biases) the fine-tune's own, as the store keeps them lossless. Only the scales
are trained: ``a_i = a0_i * exp(t_i)`` with ``a0_i = mean|D_i|`` (the codec's own value) and
``t_i`` initialised to 0, so one learning rate fits matrices whose deltas differ by orders of
magnitude and the scales stay positive; the gradient passes straight through the rounding. The
loss is the BitDelta paper's: the mean squared error between the compressed model's logits and
the fine-tune's, on windows of the calibration text, minimised with Adam, one window per step,
the learning rate decaying to 0 on a cosine (without the decay the last steps jump about on the
rounded model's rugged loss). The loss over all windows is measured before and after (of the
rounded model, i.e. of what the store will decode); if training did not lower it the initial
scales are kept.

Memory: one float32 model (the base's, loaded from the store) plus one bool sign tensor per tuned
linear (1 byte per weight). The fine-tune is not loaded as a second model: its tensors are read
one at a time from its safetensors files into that same model, which first serves as the teacher
(its logits on the calibration windows are cached on the CPU in float32, tokens x vocab x 4
bytes: 2048 tokens of a 32k vocab is 256 MB), then the tuned linears get the base's tensors back
(read one at a time from the store) and their ``forward`` is replaced (on the instance, removed
afterwards) by a custom autograd function that builds the layer's weight in forward, saves only
the input, the base weight (the module's own), the bool signs and the scale, and rebuilds the
weight in backward: no float copy of a delta outlives its layer's forward or backward.

``deltadq`` — the dropout group size ``h_g``. Candidates are ``{alpha1, 2 alpha1, 4 alpha1, ...,
n}`` (``n``: the input width of layer 0's q_proj). DeltaDQ's ``alpha1`` is the dropout ratio:
the smallest group in which one element survives. Our codec sizes its keep count ``c`` from the
all-in budget (values, quantization scales and header), so we take ``alpha1`` as the smallest
power of two ``h`` for which the codec keeps at least one element per group of ``h`` in both
layer-0 q_proj and k_proj (8 for 128-wide matrices at alpha = 1/16, 4 bits). For each candidate
the two matrices are encoded and decoded exactly as the store would (``reconstruct``, so the
rounding to the fine-tune's dtype counts), and the error is the relative Frobenius error of the
per-head attention scores ``Q K^T`` against the fine-tune's, over the causal (lower-triangular)
entries of each calibration window; the inputs are the activations entering layer 0's attention
(the fine-tune's embeddings after its input norm), captured by a hook on q_proj. Rotary position
embeddings are not applied: the error is that of the bilinear form before the position rotation,
which needs no knowledge of the architecture beyond q_proj / k_proj names and head counts. The
lowest error wins (ties: the smaller group).
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import torch

from .. import codec as codecs
from ..errors import BadInputError
from ..protocols import StoreView
from ..safetensors_io import as_tensor, read_tensor_bytes
from ..source import scan_model_dir
from .hessians import calib_windows, load_base_model

#: Codecs that have a calibration pre-pass here.
TUNABLE_CODECS = ("bitdelta", "deltadq")

DEFAULT_STEPS = 200
DEFAULT_LR = 1e-2
DEFAULT_SEQ_LEN = 512


def tune_codec(store: StoreView, base_ref: str, finetune_dir: Path, calib_path: Path, codec: codecs.Codec, *,  # noqa: ANN001
               device: str | torch.device | None = None, steps: int | None = None, max_tokens: int | None = None,
               seq_len: int | None = None, lr: float | None = None,
               metrics: dict[str, Any] | None = None) -> tuple[codecs.Codec, dict[str, dict]]:
    """Tune ``codec`` for this fine-tune on the calibration text.

    Returns the codec to encode with (``deltadq`` with the chosen ``h_g``; others unchanged) and
    per-tensor settings for :class:`codec.EncodeContext` ``extra`` (``bitdelta``:
    ``{weight name: {"scale": a}}``). What tuning chose and measured is added to ``metrics`` when
    a dict is given. Codecs without a pre-pass come back unchanged with no settings.

    ``steps`` (distillation, default :data:`DEFAULT_STEPS`), ``lr`` (Adam on the log-scales,
    default :data:`DEFAULT_LR`), ``max_tokens`` (default 2048) and ``seq_len`` (window length,
    default 512) read the module defaults at call time, so the store's call can be tuned through them.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seq_len = seq_len or DEFAULT_SEQ_LEN
    lr = DEFAULT_LR if lr is None else lr
    out = metrics if metrics is not None else {}
    if codec.codec_id == "bitdelta":
        return codec, _distill_bitdelta(store, base_ref, Path(finetune_dir), Path(calib_path), codec, device=device,
                                        steps=DEFAULT_STEPS if steps is None else steps, max_tokens=max_tokens or 2048,
                                        seq_len=seq_len, lr=lr, metrics=out)
    if codec.codec_id == "deltadq":
        return _search_h_g(store, base_ref, Path(finetune_dir), Path(calib_path), codec, device=device,
                           max_tokens=max_tokens or 2048, seq_len=seq_len, metrics=out), {}
    return codec, {}


# ------------------------------------------------------------------------------------------------
# shared helpers
# ------------------------------------------------------------------------------------------------
def _finetune_tensors(finetune_dir: Path, names: set[str] | None = None):  # noqa: ANN202
    """(name, tensor) of the fine-tune, one at a time, from its safetensors files (only ``names`` if
    given), through the store's own reader: the headers were checked when the add scanned them."""
    for src in scan_model_dir(finetune_dir):
        if not src.is_safetensors:
            continue
        with open(src.path, "rb") as f:
            for info in src.header.tensors:
                if names is None or info.name in names:
                    yield info.name, as_tensor(info, read_tensor_bytes(f, src.header, info))


def _finetune_names(finetune_dir: Path) -> list[str]:
    return [info.name for src in scan_model_dir(finetune_dir) if src.is_safetensors for info in src.header.tensors]


def _encoded_by_codec(codec: codecs.Codec, name: str, target: torch.Tensor, base: torch.Tensor) -> bool:
    """Whether the store would hand this tensor to ``codec``: it takes it, and the fine-tune changed it."""
    return codec.takes(name, target, base) and not torch.equal(target.to(torch.float32), base.to(torch.float32))


# ------------------------------------------------------------------------------------------------
# bitdelta: scale distillation
# ------------------------------------------------------------------------------------------------
class _SignLinear(torch.autograd.Function):
    """``x W^T`` with ``W = round(B + a * S)``, ``S = +-1`` from a bool tensor, rounded to the fine-tune's
    dtype as checkout rounds it (``rdtype``; None: no rounding).

    Saves ``x``, the base weight, the bool signs and ``a``, and rebuilds ``W`` in backward, so no
    float copy of a delta outlives its layer's forward. The gradient of ``a`` passes straight
    through the rounding: ``dL/da = sum(g * x S^T)``.
    """

    @staticmethod
    def weight(B: torch.Tensor, signs: torch.Tensor, a: torch.Tensor, rdtype: torch.dtype | None) -> torch.Tensor:
        W = B + (signs.to(B.dtype) * 2 - 1) * a.to(B.dtype)
        return W if rdtype is None else W.to(rdtype).to(B.dtype)

    @staticmethod
    def forward(ctx, x: torch.Tensor, B: torch.Tensor, signs: torch.Tensor, a: torch.Tensor,  # noqa: ANN001
                rdtype: torch.dtype | None) -> torch.Tensor:
        ctx.save_for_backward(x, B, signs, a)
        ctx.rdtype = rdtype
        return torch.nn.functional.linear(x, _SignLinear.weight(B, signs, a, rdtype))

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: ANN001, ANN205
        x, B, signs, a = ctx.saved_tensors
        gx = ga = None
        if ctx.needs_input_grad[0]:
            gx = g @ _SignLinear.weight(B, signs, a, ctx.rdtype).to(g.dtype)
        if ctx.needs_input_grad[3]:
            ga = (g * torch.nn.functional.linear(x, signs.to(x.dtype) * 2 - 1)).sum().reshape(a.shape).to(a.dtype)
        return gx, None, None, ga, None


def _logits_mse(model, window: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    logits = model(input_ids=window).logits.to(torch.float32)
    return torch.nn.functional.mse_loss(logits, target)


def _distill_bitdelta(store: StoreView, base_ref: str, finetune_dir: Path, calib_path: Path, codec: codecs.Codec, *,  # noqa: ANN001
                      device: torch.device, steps: int, max_tokens: int, seq_len: int, lr: float,
                      metrics: dict[str, Any]) -> dict[str, dict]:
    t0 = time.perf_counter()
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise BadInputError(f"distillation steps must be a non-negative integer, got {steps!r}")
    model, tok = load_base_model(store, base_ref, device)
    for p in model.parameters():
        p.requires_grad_(False)
    windows = [w.to(device) for w in calib_windows(tok, calib_path, max_tokens, seq_len)]
    params = dict(model.named_parameters(remove_duplicate=False))
    modules = dict(model.named_modules())

    # 1. the model becomes the fine-tune; signs, initial scales and dtypes of the coded tensors on the way
    signs: dict[str, torch.Tensor] = {}
    a0: dict[str, float] = {}
    rdtype: dict[str, torch.dtype] = {}
    with torch.no_grad():
        for name, F in _finetune_tensors(finetune_dir):
            p = params.get(name)
            if p is None or tuple(p.shape) != tuple(F.shape):
                continue  # not a tensor of the model (e.g. a buffer): it does not change the logits
            if _encoded_by_codec(codec, name, F, p):
                D = F.to(device=device, dtype=torch.float32) - p
                signs[name] = D >= 0  # zeros count as +, as the codec packs them
                a0[name] = float(D.abs().mean(dtype=torch.float64).to(torch.float32))
                rdtype[name] = F.dtype
                del D
            p.copy_(F.to(device=device, dtype=p.dtype))

        # 2. the teacher's logits
        targets = [model(input_ids=w).logits.to(torch.float32).cpu() for w in windows]

        # 3. back to the base for the coded tensors
        for name in signs:
            params[name].copy_(store.tensor(base_ref, name).to(device=device, dtype=params[name].dtype))
    # nn.Linear weights get a forward computing x round(B + a sign(D))^T with a trainable
    tuned = [n for n in signs if n.endswith(".weight") and isinstance(modules.get(n[: -len(".weight")]), torch.nn.Linear)
             and modules[n[: -len(".weight")]].weight is params[n]]
    fixed = [n for n in signs if n not in set(tuned)]
    with torch.no_grad():
        for name in fixed:  # 2-D weights that are not nn.Linear: the codec's output, not tuned
            params[name].copy_(_SignLinear.weight(params[name], signs.pop(name), torch.tensor(a0[name]), rdtype[name]))
    log_scale = torch.zeros(len(tuned), dtype=torch.float32, device=device, requires_grad=True)
    base_scale = torch.tensor([a0[n] for n in tuned], dtype=torch.float32, device=device)
    patched = []

    def forward(i: int, mod: torch.nn.Linear, sg: torch.Tensor, rd: torch.dtype | None):  # noqa: ANN202
        def fn(x: torch.Tensor) -> torch.Tensor:
            a = base_scale[i] * torch.exp(log_scale[i])
            y = _SignLinear.apply(x, mod.weight, sg, a, rd)
            return y if mod.bias is None else y + mod.bias

        return fn

    for i, name in enumerate(tuned):
        mod = modules[name[: -len(".weight")]]
        rd = rdtype[name] if rdtype[name] != mod.weight.dtype else None
        mod.forward = forward(i, mod, signs[name], rd)  # an instance attribute: removed afterwards
        patched.append(mod)

    def full_loss() -> float:
        with torch.no_grad():
            tot = sum(float(_logits_mse(model, w, t.to(device))) * w.numel() for w, t in zip(windows, targets))
        return tot / sum(w.numel() for w in windows)

    try:
        first = full_loss()
        last = first
        if tuned and steps > 0:
            opt = torch.optim.Adam([log_scale], lr=lr)
            for step in range(steps):
                for group in opt.param_groups:  # cosine decay to 0: the last steps settle rather than jump
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                k = step % len(windows)
                opt.zero_grad(set_to_none=True)
                loss = _logits_mse(model, windows[k], targets[k].to(device))
                loss.backward()
                opt.step()
            last = full_loss()
        kept = "tuned"
        if not last < first:  # training did not help on the calibration text: keep mean|D|
            with torch.no_grad():
                log_scale.zero_()
            kept = "initial"
        scales = (base_scale * torch.exp(log_scale.detach())).cpu().tolist()
    finally:
        for mod in patched:
            del mod.forward
        del model, targets, signs
    metrics.update({
        "calib_tokens": sum(w.numel() for w in windows),
        "bitdelta_distill_steps": steps if tuned else 0,
        "bitdelta_loss": [first, last],
        "bitdelta_loss_kind": "logits mse",
        "bitdelta_tuned_tensors": len(tuned),
        "bitdelta_scales_kept": kept,
        "bitdelta_distill_seconds": round(time.perf_counter() - t0, 3),
    })
    return {n: {"scale": float(a)} for n, a in zip(tuned, scales)}


# ------------------------------------------------------------------------------------------------
# deltadq: h_g search
# ------------------------------------------------------------------------------------------------
_Q0 = re.compile(r"(^|\.)layers\.0\.(.+\.)?q_proj\.weight$")


class _Stop(Exception):
    pass


def h_g_candidates(codec: codecs.Codec, shapes: list[tuple[int, int]], n: int) -> list[int]:
    """``[alpha1, 2 alpha1, 4 alpha1, ..., n]``: alpha1 is the smallest power of two keeping >= 1 per group in every shape."""
    cfg = {k: v for k, v in codec.get_config().items() if k != "id"}
    h = 1
    while h < n and any(type(codec)(**{**cfg, "h_g": h}).keep_per_group(m, k) < 1 for m, k in shapes):
        h *= 2
    out = []
    while h < n:
        out.append(h)
        h *= 2
    out.append(n)
    return out


def attention_score_error(X: list[torch.Tensor], wq: torch.Tensor, wk: torch.Tensor, wq_ref: torch.Tensor,
                          wk_ref: torch.Tensor, n_heads: int) -> float:
    """Relative Frobenius error of per-head causal scores ``Q K^T`` (no rotary) over windows ``X`` (T x n each)."""
    hd = wq.shape[0] // n_heads
    n_kv = wk.shape[0] // hd

    def scores(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        q = (x @ a.T).reshape(T, n_heads, hd).transpose(0, 1)
        k = (x @ b.T).reshape(T, n_kv, hd).transpose(0, 1).repeat_interleave(n_heads // n_kv, dim=0)
        return (q @ k.transpose(1, 2)) * torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))

    num = den = 0.0
    for x in X:
        ref = scores(x, wq_ref, wk_ref)
        num += float((scores(x, wq, wk) - ref).pow(2).sum())
        den += float(ref.pow(2).sum())
    return math.sqrt(num / den) if den else 0.0


def _search_h_g(store: StoreView, base_ref: str, finetune_dir: Path, calib_path: Path, codec: codecs.Codec, *,  # noqa: ANN001
                device: torch.device, max_tokens: int, seq_len: int, metrics: dict[str, Any]) -> codecs.Codec:
    t0 = time.perf_counter()
    names = _finetune_names(finetune_dir)
    qname = next((n for n in names if _Q0.search(n)), None)
    if qname is None:
        metrics["deltadq_h_g_search"] = "skipped: no layer-0 q_proj weight"
        return codec
    kname = qname[: -len("q_proj.weight")] + "k_proj.weight"
    if kname not in names:
        metrics["deltadq_h_g_search"] = f"skipped: no {kname}"
        return codec
    ft = dict(_finetune_tensors(finetune_dir, {qname, kname}))
    Fq, Fk = ft[qname], ft[kname]
    Bq, Bk = store.tensor(base_ref, qname), store.tensor(base_ref, kname)
    if not (_encoded_by_codec(codec, qname, Fq, Bq) and _encoded_by_codec(codec, kname, Fk, Bk)):
        metrics["deltadq_h_g_search"] = "skipped: layer-0 q_proj/k_proj are not coded by deltadq (unchanged or not applicable)"
        return codec

    # activations entering layer 0's attention: the fine-tune's embeddings after its input norm
    model, tok = load_base_model(store, base_ref, device)
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, F in _finetune_tensors(finetune_dir):
            p = params.get(name)
            if p is not None and tuple(p.shape) == tuple(F.shape):
                p.copy_(F.to(device=device, dtype=p.dtype))
    qmod = model.get_submodule(qname[: -len(".weight")])
    X: list[torch.Tensor] = []

    def grab(mod, args):  # noqa: ANN001, ANN202
        X.append(args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32))
        raise _Stop

    h = qmod.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            for w in calib_windows(tok, calib_path, max_tokens, seq_len):
                try:
                    model(input_ids=w.to(device))
                except _Stop:
                    pass
    finally:
        h.remove()
    n_heads = getattr(model.config, "num_attention_heads", None)
    del model, params
    if not n_heads or Fq.shape[0] % n_heads or Fk.shape[0] % (Fq.shape[0] // n_heads) \
            or n_heads % (Fk.shape[0] // (Fq.shape[0] // n_heads)):
        metrics["deltadq_h_g_search"] = "skipped: cannot tell the attention heads from the config and q/k shapes"
        return codec
    n_heads = int(n_heads)

    wq_ref, wk_ref = Fq.to(device=device, dtype=torch.float32), Fk.to(device=device, dtype=torch.float32)
    n = int(Fq.shape[1])
    cands = h_g_candidates(codec, [tuple(Fq.shape), tuple(Fk.shape)], n)
    cfg = {k: v for k, v in codec.get_config().items() if k != "id"}
    errors: dict[str, float] = {}
    for hg in cands:
        c = type(codec)(**{**cfg, "h_g": hg})
        dec = []
        for name, F, B in ((qname, Fq, Bq), (kname, Fk, Bk)):
            ctx = codecs.EncodeContext(name=name, device=device)  # as the store encodes it (seed 0 unless the codec has one)
            dec.append(c.reconstruct(c.encode(F, B, ctx), B.to(device)).to(device=device, dtype=torch.float32))
        errors[str(hg)] = attention_score_error(X, dec[0], dec[1], wq_ref, wk_ref, n_heads)
    best = min(cands, key=lambda hg: errors[str(hg)])  # first minimum: the smaller group on ties
    metrics.update({
        "calib_tokens": sum(x.shape[0] for x in X),
        "deltadq_h_g": best,
        "deltadq_h_g_errors": errors,
        "deltadq_h_g_layer": [qname, kname],
        "deltadq_h_g_seconds": round(time.perf_counter() - t0, 3),
    })
    return type(codec)(**{**cfg, "h_g": best})
