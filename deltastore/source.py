"""What a user hands to ``add``: a Hugging Face model directory, checked before anything is stored."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInputError, PickleRefusedError
from .safetensors_io import SafetensorsHeader, read_header

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
SKIP_DIRS = {".git", ".cache", "__pycache__"}
CONVERT_HINT = (
    "deltastore never unpickles files (loading a pickle runs arbitrary code). If you trust it, convert "
    "it once with `python -c \"import transformers as t; t.AutoModel.from_pretrained('DIR').save_pretrained('OUT')\"` "
    "(writes safetensors), and drop other pickles such as training_args.bin"
)


@dataclass(frozen=True)
class SourceFile:
    rel: str  # path inside the model directory, '/'-separated
    path: Path
    size: int
    header: SafetensorsHeader | None  # for .safetensors files

    @property
    def is_safetensors(self) -> bool:
        return self.header is not None


def _looks_like_pickle(path: Path) -> bool:
    """A pickle (protocol 2+ starts with 0x80) or a torch zip checkpoint, not a safetensors file
    (whose 8-byte header length is followed by ``{``)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":
        return False
    return head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"


def scan_model_dir(path: str | Path) -> list[SourceFile]:
    """Every file of the model, in a stable order, with each safetensors header checked."""
    root = Path(path)
    if not root.exists():
        raise BadInputError(f"{root}: no such file or directory")
    if root.is_file():
        if root.suffix != ".safetensors":
            if root.suffix in PICKLE_SUFFIXES:
                raise PickleRefusedError(f"{root} is a pickle checkpoint. {CONVERT_HINT}")
            raise BadInputError(f"{root}: give a model directory or a .safetensors file")
        return [SourceFile(root.name, root, root.stat().st_size, read_header(root))]
    files: list[SourceFile] = []
    # symlinked directories are followed (a Hugging Face cache links snapshots to blobs), each
    # real directory at most once: a link back up the tree would otherwise be walked forever
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            raise BadInputError(f"{dirpath}: a symlink loop (or a second link to a directory already read); remove the link")
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            rel = p.relative_to(root).as_posix()
            if any(ord(c) < 32 for c in rel) or rel.startswith("/") or ".." in rel.split("/"):
                raise BadInputError(f"{p}: file name with control characters or '..' is not stored")
            if p.suffix in PICKLE_SUFFIXES:
                raise PickleRefusedError(f"{p} is a pickle checkpoint. {CONVERT_HINT}")
            header = None
            if p.suffix == ".safetensors":
                if _looks_like_pickle(p):
                    raise PickleRefusedError(f"{p} is named .safetensors but holds a pickle. {CONVERT_HINT}")
                header = read_header(p)
            files.append(SourceFile(rel, p, p.stat().st_size, header))
    if not any(f.is_safetensors for f in files):
        raise BadInputError(f"{root}: no .safetensors weights found (a Hugging Face model directory is expected)")
    names: dict[str, str] = {}
    for f in files:
        for t in f.header.tensors if f.header else ():
            if t.name in names:
                raise BadInputError(f"{root}: tensor {t.name!r} appears in both {names[t.name]} and {f.rel}")
            names[t.name] = f.rel
    return files
