"""Tiny random Llama models (and fake fine-tunes of them) for fast tests.

``tiny_llama_dir`` builds a ``LlamaForCausalLM`` from a small ``LlamaConfig``
with a seeded random init and saves a regular HF directory (safetensors,
optionally sharded with ``model.safetensors.index.json``; ``config.json``;
``generation_config.json``; with ``tokenizer=True`` also a byte-level tokenizer with a
chat template, so the zoo's tasks and :func:`deltastore.zoo.finetune.finetune` run on it).
``tiny_finetune`` perturbs a saved model the way a short fine-tune would and writes the same
layout.  fp32, fp16 and bf16 all work, and both load back with
``transformers.AutoModelForCausalLM``.
"""
from __future__ import annotations

import os
from pathlib import Path

from ._hfdir import atomic_dir, read_state, save_like, write_sharded

__all__ = ["tiny_llama_config", "tiny_llama_dir", "tiny_finetune", "tiny_tokenizer", "is_norm",
           "is_matrix", "TINY_SPECIALS", "TINY_CHAT_TEMPLATE"]

#: pad, bos, eos: ids 0, 1, 2, as :func:`tiny_llama_config` declares them
TINY_SPECIALS = ("<pad>", "<s>", "</s>")
TINY_CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}<assistant>{% endif %}")


def tiny_tokenizer():
    """A byte-level tokenizer (3 specials + 256 bytes, no merges) with a small chat template.

    Every text round-trips, and ``apply_chat_template`` works, so a tiny model can be trained
    and scored on the zoo's chat-formatted tasks without any downloaded vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(list(TINY_SPECIALS) + alphabet)}
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    pad, bos, eos = TINY_SPECIALS
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token=pad, bos_token=bos, eos_token=eos)
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def tiny_llama_config(*, hidden: int = 64, layers: int = 2, vocab: int = 256, tie: bool = False,
                      heads: int | None = None, kv_heads: int | None = None,
                      intermediate: int | None = None, max_positions: int = 256):
    from transformers import LlamaConfig

    heads = heads or max(1, hidden // 16)
    kv_heads = kv_heads or max(1, heads // 2)
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden={hidden}, heads={heads}, kv_heads={kv_heads} do not divide")
    return LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden + 32,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=tie,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, rms_norm_eps=1e-5)


def tiny_llama_dir(path: str | os.PathLike, *, dtype=None, shards: int = 1, seed: int = 0,
                   hidden: int = 64, layers: int = 2, vocab: int | None = None, tie: bool = False,
                   random_norms: bool = False, tokenizer: bool = False, **config_kw) -> Path:
    """Build a random tiny Llama and save it as an HF dir at ``path``.

    ``dtype`` defaults to ``torch.bfloat16``.  ``shards > 1`` writes
    ``model-0000i-of-0000N.safetensors`` plus the index.  With ``tie`` the
    LM head shares the embedding (only the embedding is stored).  RMSNorm
    weights are ones, as after a real init, unless ``random_norms``.
    ``tokenizer`` saves :func:`tiny_tokenizer` beside the weights (``vocab``
    then defaults to its 259 tokens rounded up to 264, and may not be smaller).
    """
    import torch
    from transformers import LlamaForCausalLM

    dtype = torch.bfloat16 if dtype is None else dtype
    tok = tiny_tokenizer() if tokenizer else None
    if vocab is None:
        vocab = 256 if tok is None else -(-len(tok) // 8) * 8
    if tok is not None and vocab < len(tok):
        raise ValueError(f"vocab={vocab} is smaller than the tiny tokenizer's {len(tok)} tokens")
    cfg = tiny_llama_config(hidden=hidden, layers=layers, vocab=vocab, tie=tie, **config_kw)
    torch.manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        if random_norms:
            g = torch.Generator().manual_seed(seed + 1)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if p.ndim == 1:
                        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    model = model.to(dtype).eval()
    model.config.dtype = dtype
    state = model.state_dict()
    if tie:
        state.pop("lm_head.weight", None)
    state = {k: v for k, v in sorted(state.items())}
    with atomic_dir(path) as tmp:
        write_sharded(state, tmp, shards=shards)
        model.config.save_pretrained(str(tmp))
        model.generation_config.save_pretrained(str(tmp))
        if tok is not None:
            tok.save_pretrained(str(tmp))
    return Path(path)


def is_norm(name: str, tensor) -> bool:
    return tensor.ndim == 1 and "norm" in name


def is_matrix(name: str, tensor) -> bool:
    """Weights a fine-tune moves: linear layers, embeddings, LM head."""
    return tensor.ndim >= 2


def tiny_finetune(base_dir: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int,
                  scale: float = 1e-3, touch_norms: bool = False) -> Path:
    """Write ``out_dir`` = ``base_dir`` with every weight matrix (linear,
    embedding, LM head) moved by Gaussian noise of relative size ``scale``
    (``delta = scale * rms(W) * N(0, 1)``, computed in float32, rounded to
    the stored dtype).  1-D norm weights stay bit-identical unless
    ``touch_norms``.  Layout, dtypes and non-weight files follow the base.

    Note that in bf16 (8 significant bits) ``scale=1e-3`` changes only the
    smaller elements; ~5e-3 changes most of them, like a real fine-tune.
    """
    import torch

    state = read_state(base_dir)
    out = {}
    for i, (name, t) in enumerate(sorted(state.items())):
        moves = is_matrix(name, t) or (touch_norms and t.ndim == 1 and t.is_floating_point())
        if not moves or not t.is_floating_point():
            out[name] = t
            continue
        g = torch.Generator().manual_seed((seed * 1_000_003 + i) % (2**63))
        w = t.float()
        rms = w.pow(2).mean().sqrt().clamp_min(1e-12)
        out[name] = (w + scale * rms * torch.randn(w.shape, generator=g)).to(t.dtype)
    return save_like(base_dir, out_dir, out)
