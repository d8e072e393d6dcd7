"""Small helpers for Hugging Face model directories (no transformers needed).

Reading goes through the store's own safetensors reader (:mod:`deltastore.safetensors_io`), so
the project has one reader, which checks every header against its file; writing uses the
safetensors library's writer.
"""
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


def _weight_files(model_dir: Path) -> list[str]:
    idx = model_dir / INDEX_NAME
    if idx.exists():
        return list(dict.fromkeys(json.loads(idx.read_text())["weight_map"].values()))
    if (model_dir / SINGLE_NAME).exists():
        return [SINGLE_NAME]
    raise FileNotFoundError(f"no {SINGLE_NAME} or {INDEX_NAME} in {model_dir}")


def weight_layout(model_dir: str | os.PathLike) -> dict[str, list[str]]:
    """``{file name: [tensor names in file order]}`` for an HF safetensors dir."""
    from ..safetensors_io import read_header  # imports torch: on first use only

    model_dir = Path(model_dir)
    return {name: [t.name for t in read_header(model_dir / name).tensors]
            for name in _weight_files(model_dir)}


def read_state(model_dir: str | os.PathLike) -> dict:
    """All tensors of an HF safetensors dir, in file order (read with the store's own reader,
    which checks every claim of each header against its file)."""
    from ..safetensors_io import as_tensor, iter_tensors

    model_dir = Path(model_dir)
    out = {}
    for name in _weight_files(model_dir):
        for info, raw in iter_tensors(model_dir / name):
            out[info.name] = as_tensor(info, raw)
    return out


def save_like(base_dir: str | os.PathLike, out_dir: str | os.PathLike, tensors: Mapping,
              *, dtype=None) -> Path:
    """Write ``tensors`` to ``out_dir`` with exactly the layout of ``base_dir``.

    Same shard files, same tensor names in the same order (extra names in
    ``tensors``, e.g. a tied ``lm_head.weight``, are dropped), the same index
    file, and every non-weight file (config, tokenizer, ...) copied verbatim.
    Tensors are cast to the base tensor's dtype unless ``dtype`` is given.
    """
    from safetensors.torch import save_file

    from ..safetensors_io import read_header

    base_dir = Path(base_dir)
    with atomic_dir(out_dir) as tmp:
        for fname in _weight_files(base_dir):
            header = read_header(base_dir / fname)
            out = {}
            for t in header.tensors:
                if t.name not in tensors:
                    raise KeyError(f"tensor {t.name!r} of {base_dir} missing from the new weights")
                out[t.name] = tensors[t.name].detach().to("cpu", dtype or t.torch_dtype).contiguous()
            save_file(out, str(tmp / fname), metadata=header.metadata or {"format": "pt"})
        for p in base_dir.iterdir():
            if p.is_file() and not p.name.endswith(".safetensors"):
                shutil.copy2(p, tmp / p.name)
            elif p.is_dir() and not p.name.startswith("."):
                shutil.copytree(p, tmp / p.name)
    return Path(out_dir)


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
