"""Small helpers for Hugging Face model directories (no transformers needed)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator, Mapping

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success rename it to ``final``.

    An interrupted run leaves only a ``.tmp-*`` directory, never a half
    written ``final``.  With ``overwrite`` an existing ``final`` is replaced.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                shutil.rmtree(tmp)
                return
            old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def weight_layout(model_dir: str | os.PathLike) -> dict[str, list[str]]:
    """``{file name: [tensor names in file order]}`` for an HF safetensors dir."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    idx = model_dir / INDEX_NAME
    if idx.exists():
        files = list(dict.fromkeys(json.loads(idx.read_text())["weight_map"].values()))
    elif (model_dir / SINGLE_NAME).exists():
        files = [SINGLE_NAME]
    else:
        raise FileNotFoundError(f"no {SINGLE_NAME} or {INDEX_NAME} in {model_dir}")
    layout = {}
    for name in files:
        with safe_open(str(model_dir / name), framework="pt") as f:
            layout[name] = list(f.keys())
    return layout


def read_state(model_dir: str | os.PathLike) -> dict:
    """All tensors of an HF safetensors dir, in file order."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    out = {}
    for name in weight_layout(model_dir):
        out.update(load_file(str(model_dir / name)))
    return out


def save_like(base_dir: str | os.PathLike, out_dir: str | os.PathLike, tensors: Mapping,
              *, dtype=None) -> Path:
    """Write ``tensors`` to ``out_dir`` with exactly the layout of ``base_dir``.

    Same shard files, same tensor names in the same order (extra names in
    ``tensors``, e.g. a tied ``lm_head.weight``, are dropped), the same index
    file, and every non-weight file (config, tokenizer, ...) copied verbatim.
    Tensors are cast to the base tensor's dtype unless ``dtype`` is given.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    base_dir = Path(base_dir)
    layout = weight_layout(base_dir)
    with atomic_dir(out_dir) as tmp:
        for fname, keys in layout.items():
            with safe_open(str(base_dir / fname), framework="pt") as f:
                meta = f.metadata() or {"format": "pt"}
                out = {}
                for k in keys:
                    if k not in tensors:
                        raise KeyError(f"tensor {k!r} of {base_dir} missing from the new weights")
                    want = dtype or f.get_slice(k).get_dtype()
                    if isinstance(want, str):
                        want = _SAFE_DTYPES[want]
                    out[k] = tensors[k].detach().to("cpu", want).contiguous()
            save_file(out, str(tmp / fname), metadata=meta)
        for p in base_dir.iterdir():
            if p.is_file() and not p.name.endswith(".safetensors"):
                shutil.copy2(p, tmp / p.name)
            elif p.is_dir() and not p.name.startswith("."):
                shutil.copytree(p, tmp / p.name)
    return Path(out_dir)


def _safe_dtypes():
    import torch

    return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "F64": torch.float64, "I64": torch.int64, "I32": torch.int32,
            "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class _Lazy(dict):
    def __missing__(self, key):
        self.update(_safe_dtypes())
        return dict.__getitem__(self, key)


_SAFE_DTYPES = _Lazy()


def write_sharded(tensors: Mapping, out_dir: str | os.PathLike, shards: int = 1) -> None:
    """Write ``tensors`` (ordered) as one ``model.safetensors`` or ``shards``
    files ``model-0000i-of-0000N.safetensors`` plus the index, split into
    contiguous groups of roughly equal bytes."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    items = [(k, v.detach().cpu().contiguous()) for k, v in tensors.items()]
    if shards <= 1:
        save_file(dict(items), str(out_dir / SINGLE_NAME), metadata={"format": "pt"})
        return
    if shards > len(items):
        raise ValueError(f"cannot split {len(items)} tensors into {shards} shards")
    sizes = [v.numel() * v.element_size() for _, v in items]
    total = sum(sizes)
    # contiguous groups: shard j starts at the first tensor whose cumulative
    # byte offset reaches j/shards of the total; every shard gets >= 1 tensor
    starts = [0]
    cum = 0
    offsets = []
    for size in sizes:
        offsets.append(cum)
        cum += size
    for j in range(1, shards):
        target = total * j / shards
        s = next((i for i, off in enumerate(offsets) if off >= target), len(items))
        s = max(s, starts[-1] + 1)
        s = min(s, len(items) - (shards - j))
        starts.append(s)
    starts.append(len(items))
    groups = [items[starts[j]:starts[j + 1]] for j in range(shards)]
    weight_map = {}
    for j, group in enumerate(groups):
        name = f"model-{j + 1:05d}-of-{shards:05d}.safetensors"
        save_file(dict(group), str(out_dir / name), metadata={"format": "pt"})
        for k, _ in group:
            weight_map[k] = name
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
