"""``deltastore://NAME@REF/path``: every version's files through fsspec, computed on read.

    import fsspec
    with fsspec.open("deltastore://llama-ft@v3/model.safetensors") as f:  # DELTASTORE_HOME's store
        f.seek(8); ...
    fs = fsspec.filesystem("deltastore", home="/data/store", cache_size="2GiB")
    fs.ls("llama-ft@latest"); fs.info("llama-ft@prod/config.json"); fs.cat_file(p, start=0, end=8)

Paths: ``""`` lists models, ``NAME`` its versions (``NAME@v1`` ...), ``NAME@REF[/folder]`` the
files of that version (REF: ``v3``, ``latest``, a tag, a manifest prefix). Registered under the
protocol ``deltastore`` by an entry point (``fsspec.specs``). Reads go through the same layouts
and decoded-unit cache as the FUSE mount (:mod:`deltastore.fileview`): a ranged read decodes only
the units it overlaps; with ``verify=False`` lossless tensors are fetched and decoded by chunk.
Read-only: opening for writing raises :class:`~deltastore.errors.ReadOnlyError`.
"""

from __future__ import annotations

from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from .errors import NotFoundError, ReadOnlyError
from .filecache import DecodedCache, parse_size
from .fileview import UNIT_BYTES, CatalogView, FileReader, VersionFile, VersionTree


class DeltaStoreFileSystem(AbstractFileSystem):
    """Read-only fsspec filesystem over one store (``home`` / ``db_url`` / ``objects_url`` as in
    :func:`deltastore.open`, or an open ``store``)."""

    protocol = "deltastore"
    root_marker = ""

    def __init__(self, home: str | None = None, *, db_url: str | None = None, objects_url: str | None = None,
                 store: Any = None, cache_size: str | int = "1GiB", verify: bool = True,
                 unit_bytes: int = UNIT_BYTES, ttl: float = 1.0, **kwargs: Any):
        super().__init__(**kwargs)
        if store is None:
            from .store import open_store

            store = open_store(home, db_url=db_url, objects_url=objects_url, read_only=True)
        self.store = store
        self.cache = DecodedCache(parse_size(cache_size))
        self.view = CatalogView(store, ttl=ttl)
        self.reader = FileReader(store, self.cache, verify=verify, unit_bytes=unit_bytes)

    @classmethod
    def _strip_protocol(cls, path: str) -> str:  # type: ignore[override]
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("deltastore://"):
            path = path[len("deltastore://"):]
        elif path.startswith("deltastore:"):
            path = path[len("deltastore:"):]
        return path.strip("/")

    # -- names -----------------------------------------------------------------------------------
    def _version(self, first: str) -> tuple[str, str, float]:
        """``NAME@REF`` -> (canonical ``NAME@vN``, manifest id, created_at)."""
        model, _, ref = first.partition("@")
        mv = self.view.model(model)
        number = None
        if mv is not None:
            if ref[:1] == "v" and ref[1:].isascii() and ref[1:].isdigit():  # not "v\u0661" (1), "v\u00b2" (int() raises)
                number = int(ref[1:])
            elif ref == "latest":
                number = mv.latest
            elif ref in mv.tags:
                number = mv.tags[ref]
        if mv is None or number not in mv.versions:
            # not in the view: the catalog resolves it (a clone pulls it from its lazy remote now)
            try:
                number = self.store.resolve(first).number
            except NotFoundError as e:
                raise FileNotFoundError(str(e)) from None
            mv = self.view.model(model, fresh=True)
            if mv is None or number not in mv.versions:
                raise FileNotFoundError(f"{first}: no such version")
        manifest, created = mv.versions[number]
        return f"{model}@v{number}", manifest, created

    def _where(self, path: str) -> tuple[str, str, float, VersionTree, str]:
        first, _, rest = self._strip_protocol(path).partition("/")
        if "@" not in first:
            raise FileNotFoundError(f"{path}: name a version, as NAME@REF/file")
        canon, manifest, created = self._version(first)
        return canon, manifest, created, self.view.tree(manifest), rest

    def _file(self, path: str) -> VersionFile:
        _, manifest, created, tree, rest = self._where(path)
        f = tree.files.get(rest)
        if f is None:
            raise FileNotFoundError(f"{path}: no such file" + (" (a folder)" if rest in tree.dirs else ""))
        return self.reader.layout(manifest, f, created)

    # -- fsspec API ------------------------------------------------------------------------------
    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        p = self._strip_protocol(path)
        if not p:
            out = [{"name": m, "size": 0, "type": "directory"} for m in self.view.model_names()]
        elif "@" not in p.partition("/")[0]:
            if "/" in p:
                raise FileNotFoundError(f"{path}: name a version, as NAME@REF/file")
            mv = self.view.model(p)
            if mv is None:
                raise FileNotFoundError(f"no model named {p!r}")
            out = [{"name": f"{p}@v{n}", "size": 0, "type": "directory"} for n in sorted(mv.versions)]
        else:
            canon, manifest, created, tree, rest = self._where(p)
            if rest in tree.files:
                out = [self._file_info(f"{canon}/{rest}", tree.files[rest].size, tree.files[rest].sha256, created)]
            elif rest in tree.dirs:
                prefix = f"{canon}/{rest}/" if rest else f"{canon}/"
                out = []
                for child in tree.dirs[rest]:
                    sub = f"{rest}/{child}" if rest else child
                    if sub in tree.files:
                        out.append(self._file_info(prefix + child, tree.files[sub].size, tree.files[sub].sha256, created))
                    else:
                        out.append({"name": prefix + child, "size": 0, "type": "directory"})
            else:
                raise FileNotFoundError(f"{path}: no such file or folder")
        return out if detail else [o["name"] for o in out]

    @staticmethod
    def _file_info(name: str, size: int, sha256: str | None, created: float) -> dict[str, Any]:
        """A file's fsspec info; ``sha256`` only where the add recorded the file's own hash."""
        info = {"name": name, "size": size, "type": "file", "mtime": created}
        if sha256 is not None:
            info["sha256"] = sha256
        return info

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        p = self._strip_protocol(path)
        first = p.partition("/")[0]
        if not p:
            return {"name": "", "size": 0, "type": "directory"}
        if "@" not in first:
            if "/" in p or self.view.model(p) is None:
                raise FileNotFoundError(f"{path}: no such model")
            return {"name": p, "size": 0, "type": "directory"}
        canon, _, created, tree, rest = self._where(p)
        if rest in tree.files:
            f = tree.files[rest]
            return self._file_info(f"{canon}/{rest}", f.size, f.sha256, created)
        if rest in tree.dirs:
            return {"name": f"{canon}/{rest}" if rest else canon, "size": 0, "type": "directory"}
        raise FileNotFoundError(f"{path}: no such file or folder")

    def ukey(self, path: str) -> str:
        """A key that changes whenever the bytes could: the file's sha256, else its manifest and path
        (a manifest id pins every byte of its files)."""
        p = self._strip_protocol(path)
        if "@" in p.partition("/")[0]:
            _, manifest, _, tree, rest = self._where(p)
            f = tree.files.get(rest)
            if f is not None:
                return f.sha256 or f"{manifest}/{rest}"
        self.info(path)  # a folder's key is its path; a path that is not there raises here
        return p

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        vf = self._file(path)
        lo = 0 if start is None else (max(vf.size + start, 0) if start < 0 else start)
        hi = vf.size if end is None else (max(vf.size + end, 0) if end < 0 else min(end, vf.size))
        return self.reader.read(vf, lo, hi)

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, autocommit: bool = True,
              cache_options: dict | None = None, **kwargs: Any) -> "DeltaStoreFile":
        if mode != "rb":
            raise ReadOnlyError(f"deltastore:// is read-only; cannot open {path} with mode {mode!r}")
        return DeltaStoreFile(self, path, mode, block_size="default" if block_size is None else block_size,
                              cache_type="none", **kwargs)

    # every write is refused
    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise ReadOnlyError("deltastore:// is read-only")

    rm_file = rm = mkdir = makedirs = rmdir = pipe_file = put_file = mv = cp_file = touch = _refuse


class DeltaStoreFile(AbstractBufferedFile):
    """A version file opened for reading; ``seek`` and ranged reads decode only what they touch."""

    def __init__(self, fs: DeltaStoreFileSystem, path: str, mode: str = "rb", **kwargs: Any):
        self._vf = fs._file(path)
        super().__init__(fs, path, mode, size=self._vf.size, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs.reader.read(self._vf, start, end, readahead=True)
