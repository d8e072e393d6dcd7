"""Calibration: per-linear input Hessians from running the base model on the user's text.

Delta-CoMe's GPTQ step needs, for each linear layer, H = sum_t x_t x_t^T over the layer's inputs
x_t. The base version is loaded from the store itself (its config and tokenizer blobs, its
materialized tensors), run on the calibration lines in windows of ``seq_len`` tokens, and forward
pre-hooks accumulate H in float32. Hessians are averaged over tokens (the scale does not change
GPTQ's result, only its damping, which is relative to the mean diagonal).

Limit: every linear's Hessian is held at once (SmolLM2-135M: ~100 MB; a 7B model would need
~20 GB). Layer-by-layer collection for large models is not done yet.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..errors import BadInputError
from ..protocols import StoreView


def read_calib_lines(path: Path) -> list[str]:
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln]


def calib_windows(tok, calib_path: Path, max_tokens: int, seq_len: int) -> list[torch.Tensor]:  # noqa: ANN001
    """Token windows (1 x <= seq_len) of the calibration lines, each line ended by EOS, at most
    ``max_tokens`` in all."""
    ids: list[int] = []
    for ln in read_calib_lines(calib_path):
        ids.extend(tok(ln, add_special_tokens=False)["input_ids"])
        ids.append(tok.eos_token_id if tok.eos_token_id is not None else 0)
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    if not ids:
        raise BadInputError(f"calibration file {calib_path} gave no tokens")
    return [torch.tensor([ids[i : i + seq_len]]) for i in range(0, len(ids), seq_len)]


def load_base_model(store: "StoreView", ref: str, device: str | torch.device = "cpu"):  # noqa: ANN001
    """A transformers model + tokenizer for a stored version, without writing its weights to disk."""
    try:
        import transformers
    except ImportError:  # pragma: no cover - [hf] extra missing
        raise BadInputError("--calib needs transformers: pip install 'deltastore[hf]'") from None
    v = store.resolve(ref)
    man = store.manifest(v.manifest)
    with tempfile.TemporaryDirectory() as td:
        for f in man.files:
            if f.kind == "blob":
                dest = Path(td) / f.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(store.objects.get(f.object))
        if not (Path(td) / "config.json").exists():
            raise BadInputError(f"{v.ref} has no config.json, so its model cannot be run for calibration")
        config = transformers.AutoConfig.from_pretrained(td)
        tok = transformers.AutoTokenizer.from_pretrained(td)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    sd = store.state_dict(ref, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" in missing:
        model.tie_weights()
        missing = [m for m in missing if m != "lm_head.weight"]
    if missing:
        raise BadInputError(f"{v.ref}: the checkpoint lacks {len(missing)} of the model's tensors (e.g. {missing[0]})")
    model.to(device).eval()
    return model, tok


def collect_hessians(store: "StoreView", ref: str, calib_path: Path, *, max_tokens: int = 16384, seq_len: int = 512,  # noqa: ANN001
                     device: str | torch.device | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """{weight name: H (in x in, float32, on CPU)} for every nn.Linear of the base, and the token count."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_base_model(store, ref, device)
    windows = calib_windows(tok, calib_path, max_tokens, seq_len)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook(name: str):
        def fn(mod, args):  # noqa: ANN001
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32)
            if name not in sums:
                sums[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
                counts[name] = 0
            sums[name].addmm_(x.T, x)
            counts[name] += x.shape[0]

        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_pre_hook(hook(f"{name}.weight")))
    try:
        with torch.no_grad():
            for window in windows:
                model(input_ids=window.to(device))
    finally:
        for h in hooks:
            h.remove()
    out = {k: (v / max(counts[k], 1)).cpu() for k, v in sums.items()}
    del model
    return out, sum(w.shape[1] for w in windows)
